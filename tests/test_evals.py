"""Evaluations: each metric on hand-made cases with known answers, SAEBench formats, run_eval, CLI."""

import json
from argparse import ArgumentParser, Namespace

import numpy as np
import pytest
import torch
from helpers import make_tiny_model
from sae_lens import TopKSAE, TopKSAEConfig
from scipy.stats import t as student_t

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.evals import (
    JacobianSparsityAccumulator,
    classify_curves,
    evaluate_and_compare,
    evaluate_checkpoint,
    jacobian_sparsity,
    jacobian_sparsity_of_values,
    linearity_of_inputs,
    run_core_eval,
    run_eval,
    splice_scores,
)
from sae_lens_jsae.evals import saebench as sb
from sae_lens_jsae.evals.linearity import JUMPRELU, LINEAR, OTHER

THR = [0.005, 0.01, 0.015, 0.02]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = make_tiny_model("gated_silu")
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6, jacobian_coefficient=0.5)
    tokens = torch.randint(0, model.cfg.d_vocab, (12, 16), generator=torch.Generator().manual_seed(0))
    return model, sae, tokens


# ---- Jacobian sparsity ------------------------------------------------------------------------
def test_diagonal_jacobian_has_known_statistics():
    k, T = 4, 3
    J = torch.diag_embed(torch.full((T, k), 0.1, dtype=torch.float64))
    r = jacobian_sparsity_of_values(J, thresholds=THR, top_m=(1, 4, 16), hist_bins=10, hist_max=0.2)
    assert r.mean_count_above == [k] * 4 and r.std_count_above == [0.0] * 4
    assert r.mean_fraction_above == [k / k**2] * 4
    assert r.mean_abs == pytest.approx(0.1 / k)
    assert r.l1_l2_ratio == pytest.approx(k**0.5 / k)  # ‖J‖₁/‖J‖₂ = √k for k equal entries, / √(k²)
    assert r.top_m_mass == pytest.approx([1 / k, 1.0, 1.0])  # top-16 clipped to all 16 entries
    h = r.histogram
    assert sum(h.counts) + h.overflow == T * k * k and h.n_exact_zero == T * (k * k - k)
    assert h.counts[0] == T * (k * k - k) and h.counts[5] == T * k  # 0.1 is the left edge of bin 5
    assert len(h.bin_edges) == 11 and h.bin_edges[-1] == pytest.approx(0.2)


def test_each_threshold_is_used_separately():
    # the reference bound every threshold to the last one; here each τ gets its own count
    J = torch.tensor([[[0.007, 0.012], [0.017, 0.03]]], dtype=torch.float64)
    r = jacobian_sparsity_of_values(J, thresholds=THR)
    assert r.mean_count_above == [4, 3, 2, 1]
    assert r.count_above(0.015) == 2


def test_scale_invariant_measures_and_streaming():
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(20, 5, 5, generator=gen, dtype=torch.float64) * (torch.rand(20, 5, 5, generator=gen, dtype=torch.float64) > 0.7)
    J[3] = 0  # an all-zero token is excluded from the ratio means
    a, b = jacobian_sparsity_of_values(J), jacobian_sparsity_of_values(7.0 * J)
    assert a.l1_l2_ratio == pytest.approx(b.l1_l2_ratio) and a.top_m_mass == pytest.approx(b.top_m_mass)
    assert a.n_zero_tokens == 1
    acc = JacobianSparsityAccumulator()
    acc.update(J[:7])
    acc.update(J[7:])
    s = acc.result()
    for field in ("mean_count_above", "std_count_above", "mean_abs", "l1_l2_ratio", "top_m_mass"):
        assert getattr(s, field) == pytest.approx(getattr(a, field)), field
    assert s.histogram.counts == a.histogram.counts


def test_jacobian_sparsity_streams_model_tokens_through_active_jacobian(setup):
    model, sae, tokens = setup
    r = jacobian_sparsity(model, sae, tokens, max_tokens=80, batch_size=2, progress=False)
    assert r.n_tokens == 80 and r.k == 6
    _, cache = model.run_with_cache(tokens[:5], names_filter=[sae.cfg.metadata.hook_name])
    x = cache[sae.cfg.metadata.hook_name].reshape(-1, 16)
    J = sae.active_jacobian(x).values.abs()
    assert r.mean_count_above[1] == pytest.approx((J > 0.01).sum((1, 2)).double().mean().item())
    assert r.mean_abs == pytest.approx(J.mean().item())


# ---- linearity --------------------------------------------------------------------------------
def test_classify_hand_made_curves():
    g = torch.linspace(0, 2, 21, dtype=torch.float64)
    curves = torch.stack([
        3 * g + 1,  # linear
        torch.full_like(g, 0.5),  # flat: linear
        torch.zeros_like(g),  # all zero: linear
        (2 * g - 1.4).relu(),  # zero then linear: JumpReLU-like
        torch.where(g > 0.9, 0.3 + g, torch.zeros_like(g)),  # zero then a jump then linear
        (1.6 - g).relu(),  # linear then zero (decreasing ReLU)
        g**2,  # curved: other
        torch.sin(3 * g),  # other
        3 * g + 1 + 0.002 * torch.sin(40 * g),  # linear within 1e-2 relative
    ])
    assert classify_curves(g, curves).tolist() == [LINEAR, LINEAR, LINEAR, JUMPRELU, JUMPRELU, JUMPRELU, OTHER, OTHER, LINEAR]
    assert classify_curves(g, curves[-1:], tol=1e-4).tolist() == [OTHER]  # tolerance is configurable


def _linear_jsae(bias_out: float):
    """A JSAE whose MLP is exactly linear on its inputs (ReLU with a huge bias)."""
    model = make_tiny_model("dense_relu")
    sae = build_jacobian_sae(model, 0, d_sae=32, k=5)
    with torch.no_grad():
        sae.mlp.b_in.add_(1e3)
        sae.mlp.b_out.sub_(1e3 * sae.mlp.W_out.sum(0))  # so f is affine with ordinary-sized outputs
        sae.b_enc_out.fill_(bias_out)
    x = torch.randn(24, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return sae, x


@pytest.mark.parametrize("around", ["reconstruction", "input"])
def test_known_linear_map_is_all_linear_and_ablation_matches_jacobian(around):
    sae, x = _linear_jsae(bias_out=1e3)  # output pre-activations never reach the ReLU's kink
    r = linearity_of_inputs(sae, x, n_grid=11, around=around)
    assert r.n_curves == 24 * 5 * 5 and r.linear == 1.0 and r.jumprelu == 0.0 and r.other == 0.0
    assert r.ablation_on_line == 1.0 and r.n_pairs == r.n_curves


def test_relu_of_linear_map_is_jumprelu_shaped_never_other():
    sae, x = _linear_jsae(bias_out=0.0)
    r = linearity_of_inputs(sae, x, n_grid=21, max_factor=4.0)
    assert r.other == 0.0 and r.jumprelu > 0 and r.linear + r.jumprelu == pytest.approx(1.0)


# ---- splices vs SAEBench's core eval ----------------------------------------------------------
def test_splice_scores_match_saebench_core_and_replacement_is_scored(setup, tmp_path):
    model, sae, tokens = setup
    s = splice_scores(model, sae, tokens, batch_size=4, progress=False)
    assert s.n_tokens == tokens.numel()
    for which in ("input", "output"):
        path = run_core_eval(model, getattr(sae, f"{which}_sae"), tokens, tmp_path, "t", which, batch_size_prompts=4,
                             n_reconstruction_tokens=tokens.numel(), n_sparsity_variance_tokens=tokens.numel(), exclude_special_tokens=False)
        core = sb.read_core_result(path).eval_result_metrics
        mine = getattr(s, which)
        assert mine.ce_loss_score == pytest.approx(core.model_performance_preservation.ce_loss_score, rel=1e-6)
        assert mine.ce_zero_ablation == pytest.approx(core.model_performance_preservation.ce_loss_with_ablation, rel=1e-6)
        assert mine.kl_score == pytest.approx(core.model_behavior_preservation.kl_div_score, rel=1e-5)
    rep = s.replacement
    assert rep.hook_name == "blocks.1.hook_mlp_out" and rep.ce_zero_ablation == pytest.approx(s.output.ce_zero_ablation)
    assert torch.isfinite(torch.tensor([rep.ce_spliced, rep.kl_spliced])).all() and rep.ce_spliced != s.output.ce_spliced


def test_replacement_of_a_lossless_pair_scores_one(setup):
    """With x̂ = x (identity-like input SAE) and ŷ = y, every splice is lossless."""
    model, _, tokens = setup
    sae = build_jacobian_sae(model, 1, d_sae=32, k=16)
    eye = torch.eye(16, dtype=torch.float64)
    with torch.no_grad():  # ±e_i codebooks: TopK(16) of 32 recovers any vector exactly
        for W_enc, W_dec in ((sae.W_enc, sae.W_dec), (sae.W_enc_out, sae.W_dec_out)):
            W_dec.copy_(torch.cat([eye, -eye]))
            W_enc.copy_(W_dec.T)
    s = splice_scores(model, sae, tokens[:4], progress=False)
    for sc in (s.input, s.output, s.replacement):
        assert sc.ce_loss_score == pytest.approx(1.0, abs=1e-9) and sc.kl_spliced == pytest.approx(0.0, abs=1e-12)


# ---- SAEBench formats -------------------------------------------------------------------------
def test_core_json_is_saebench_core_and_named_like_saebench(setup, tmp_path):
    model, sae, tokens = setup
    path = run_core_eval(model, sae.output_sae, tokens, tmp_path, "my_release", "blocks.1/out", batch_size_prompts=4,
                         n_reconstruction_tokens=64, n_sparsity_variance_tokens=128)
    assert path.name == "my_release_blocks.1_out_eval_results.json"
    data = json.loads(path.read_text())
    assert data["eval_type_id"] == "core" and data["sae_cfg_dict"]["metadata"]["hook_name"] == "blocks.1.hook_mlp_out"
    out = sb.read_core_result(path)  # SAEBench's own pydantic class
    assert out.eval_result_metrics.sparsity.l0 == pytest.approx(6.0)
    assert len(out.eval_result_details) == 48
    summ = sb.core_summary(path)
    assert summ["dead_latents"] == round(48 * (1 - summ["frac_alive"])) and summ["dead_window_tokens"] == 128


def test_shipped_schemas_equal_regenerated(tmp_path):
    for new in sb.generate_schemas(tmp_path):
        shipped = sb.schema_path(new.name.removeprefix("eval_output_schema_").removesuffix(".json"))
        assert json.loads(new.read_text()) == json.loads(shipped.read_text()), shipped.name


def test_metrics_are_flat_and_headline_ones_displayed():
    schema = json.loads(sb.schema_path("jacobian_sparsity").read_text())
    props = schema["$defs"]["JacobianSparsityMetrics"]["properties"]
    shown = {k for k, v in props.items() if v.get("ui_default_display")}
    assert {"count_abs_gt_0_01", "mean_abs_jacobian", "l1_l2_ratio"} <= shown
    lin = json.loads(sb.schema_path("jacobian_linearity").read_text())["$defs"]["JacobianLinearityMetrics"]["properties"]
    assert all(v.get("ui_default_display") for v in lin.values())


def test_run_eval_writes_valid_files_and_skips_plain_saes(setup, tmp_path):
    model, sae, tokens = setup
    plain = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4, dtype="float64", metadata=sae.cfg.metadata))
    cfg = sb.JacobianSparsityEvalConfig(n_tokens=96, batch_size_prompts=4)
    res = run_eval(cfg, [("jsae", sae), ("plain", plain)], "cpu", str(tmp_path), model=model, tokens=tokens)
    assert list(res) == ["jsae_custom_sae"] and not (tmp_path / "plain_custom_sae_eval_results.json").exists()
    out = sb.read_eval_output(tmp_path / "jsae_custom_sae_eval_results.json")
    direct = jacobian_sparsity(model, sae, tokens, max_tokens=96, progress=False)
    assert out.eval_type_id == "jacobian_sparsity"
    assert out.eval_result_metrics.jacobian_sparsity.count_abs_gt_0_01 == pytest.approx(direct.count_above(0.01))
    assert [d.threshold for d in out.eval_result_details] == THR
    lin = sb.run_linearity_eval(sb.JacobianLinearityEvalConfig(n_tokens=8), [("jsae", sae)], "cpu", str(tmp_path / "lin"), model=model, tokens=tokens)
    got = sb.read_eval_output(tmp_path / "lin" / "jsae_custom_sae_eval_results.json").eval_result_metrics.linearity
    assert got.linear_fraction + got.jumprelu_fraction + got.other_fraction == pytest.approx(1.0) and lin


# ---- evaluate_checkpoint + CLI ---------------------------------------------------------------
def test_evaluate_checkpoint_from_disk_and_mlp_check(setup, tmp_path):
    model, sae, tokens = setup
    sae.save_model(tmp_path / "ckpt")
    kw = dict(n_tokens=64, n_splice_tokens=32, n_core_reconstruction_tokens=32, n_core_sparsity_tokens=64, n_linearity_tokens=4, batch_size=4, progress=False)
    path = evaluate_checkpoint(tmp_path / "ckpt", model, tokens, tmp_path / "out", **kw)
    d = json.loads(path.read_text())
    assert d["jacobian_coefficient"] == 0.5 and d["mlp_relative_error"] < 1e-9
    assert set(d["core"]) == {"input", "output"} and (tmp_path / "out" / d["core"]["input"]["file"]).exists()
    assert d["splice"]["average_ce_loss_score"] == pytest.approx((d["splice"]["input"]["ce_loss_score"] + d["splice"]["output"]["ce_loss_score"]) / 2)
    other = make_tiny_model("gated_silu", seed=5)  # e.g. the randomized model: its MLP is not the pair's (checksum)
    with pytest.raises(ValueError, match="not the one this Jacobian SAE was trained with"):
        evaluate_checkpoint(tmp_path / "ckpt", other, tokens, tmp_path / "out2", **kw)
    # a penalised pair passed as the λ=0 baseline is refused before any evaluation runs
    with pytest.raises(ValueError, match="jacobian_coefficient=0.5, not 0"):
        evaluate_and_compare(tmp_path / "ckpt", model, tokens, tmp_path / "out3", baseline=tmp_path / "ckpt", **kw)
    assert not (tmp_path / "out3").exists()


def test_cli_modules_parse_and_saebench_skips_hub_evals_offline(setup, tmp_path, monkeypatch):
    from sae_lens_jsae.cli import eval as cli_eval
    from sae_lens_jsae.cli import saebench as cli_saebench

    p = ArgumentParser()
    cli_eval.add_arguments(p)
    a = p.parse_args(["ck", "--baseline", "b", "--saes", "r/i", "--n-tokens", "100"])
    assert a.model_source == "gguf-smollm2" and a.saes == ["r/i"] and a.n_tokens == 100

    model, sae, tokens = setup
    sae.save_model(tmp_path / "ckpt")
    import sae_lens_jsae.sources as sources

    class DS(dict):
        def __len__(self):
            return len(self["input_ids"])

    monkeypatch.setattr(sources, "load_hooked_model", lambda *a, **k: model)
    monkeypatch.setattr(sources, "sotu_token_dataset", lambda *a, **k: DS(input_ids=tokens.tolist()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"checkpoints": {"jsae": str(tmp_path / "ckpt")}, "model_source": "gguf-smollm2", "device": "cpu", "context_size": 16,
           "n_tokens": 64, "output_dir": str(tmp_path / "sb"), "evals": ["jacobian_sparsity", "sparse_probing", "absorption"]}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert cli_saebench.run(Namespace(config=str(tmp_path / "c.json"), force_rerun=False)) == 0
    status = json.loads((tmp_path / "sb" / "saebench_run.json").read_text())
    assert list(status["ran"]) == ["jacobian_sparsity"]
    assert set(status["skipped"]) == {"sparse_probing", "absorption"} and "HF_HUB_OFFLINE" in status["skipped"]["sparse_probing"]


# ---- where the input SAE's error goes (MLP error analysis) ------------------------------------
@pytest.mark.parametrize("kind", ["gated_silu", "dense_gelu"])
def test_mlp_error_analysis_matches_direct_computation(kind):
    from sae_lens_jsae.evals._batches import mlp_inputs_of
    from sae_lens_jsae.evals.error_analysis import error_estimates, mlp_error_analysis

    torch.manual_seed(0)
    model = make_tiny_model(kind)
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6)
    tokens = torch.randint(0, model.cfg.d_vocab, (10, 16), generator=torch.Generator().manual_seed(1))
    r = mlp_error_analysis(model, sae, tokens, batch_size=4, progress=False)
    x = mlp_inputs_of(model, sae, tokens)
    with torch.no_grad():
        e = x - sae.decode(sae.encode(x))
    W = torch.cat(sae.mlp.input_weights(), dim=1)
    isotropic = float(W.pow(2).sum() / W.shape[0])
    assert r.n_tokens == 160 and len(r.per_sequence["sqerr"]) == 10
    assert r.error_sensitivity == pytest.approx(float((e @ W).pow(2).sum() / e.pow(2).sum()) / isotropic, rel=1e-9)
    # an isotropic error scores 1
    iso = torch.randn(20000, W.shape[0], dtype=torch.float64)
    assert float((iso @ W).pow(2).sum() / iso.pow(2).sum()) / isotropic == pytest.approx(1, rel=0.05)
    U = torch.linalg.svd(W, full_matrices=False)[0][:, : r.top_directions]
    assert r.error_share_in_top_directions == pytest.approx(float((e @ U).pow(2).sum() / e.pow(2).sum()), rel=1e-9)
    assert r.isotropic_share_in_top_directions == r.top_directions / W.shape[0]
    # the per-sequence sums carry intervals around the same values: half-width t₀.₉₇₅(9) · delta-method SE
    # of Σ‖eW‖² / Σ‖e‖² over the 10 sequences, computed here from e directly; a subset's ratio is that subset's
    est = error_estimates(r.to_dict())["mlp_error.error_sensitivity"]
    iv = est.interval()
    read, sq = ((e @ W).pow(2).sum(-1).reshape(10, 16).sum(1).numpy(), e.pow(2).sum(-1).reshape(10, 16).sum(1).numpy())
    ratio_ = read.sum() / sq.sum()
    se = np.sqrt(10 / 9 * np.sum(((read - ratio_ * sq) / sq.sum()) ** 2)) / isotropic
    assert iv.value == pytest.approx(r.error_sensitivity) and est.n == iv.n_sequences == 10
    assert iv.hi - iv.value == pytest.approx(student_t.ppf(0.975, 9) * se, rel=1e-6)
    sub = mlp_error_analysis(model, sae, tokens[:5], progress=False)
    ps = r.per_sequence
    assert sum(ps["sqerr_read"][:5]) / sum(ps["sqerr"][:5]) / r.mean_read == pytest.approx(sub.error_sensitivity)
    # decoder sensitivity: a decoder made of the MLP's least-read direction scores near 0
    with torch.no_grad():
        sae.W_dec.copy_(torch.linalg.svd(W, full_matrices=True)[0][:, -1].expand_as(sae.W_dec))
    assert mlp_error_analysis(model, sae, tokens, progress=False).decoder_sensitivity < 0.5
