"""Intervals: coverage on synthetic data with known answers, paired vs unpaired, the n/a rule,
and the per-sequence sums the evals store (against direct computations)."""

import numpy as np
import pytest
import torch
from helpers import make_tiny_model
from scipy.stats import t as student_t

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.evals import jacobian_sparsity
from sae_lens_jsae.evals.intervals import (
    mean,
    paired_differences,
    ratio,
    unpaired_difference,
    unresolved_reason,
)
from sae_lens_jsae.evals.linearity import NO_SEQUENCE_IDS, linearity_estimates
from sae_lens_jsae.evals.sparsity import sparsity_estimates
from sae_lens_jsae.evals.splice import SPLICES, splice_estimates, splice_scores, splice_scores_multi


def _sequences(rng, n_seq, true_mean, seq_sd=1.0, tok_sd=2.0):
    """Per-sequence sums and lengths of tokens correlated within a sequence (shared sequence effect)."""
    lengths = rng.integers(5, 40, n_seq).astype(float)
    effect = rng.normal(0, seq_sd, n_seq)
    sums = lengths * (true_mean + effect) + rng.normal(0, tok_sd, n_seq) * np.sqrt(lengths)
    return sums, lengths, effect


def test_mean_and_ratio_intervals_cover_the_truth_95_percent():
    rng = np.random.default_rng(0)
    hits_mean = hits_ratio = 0
    reps = 600
    for _ in range(reps):
        sums, lengths, _ = _sequences(rng, 60, true_mean=3.0)
        iv = ratio(sums, lengths).interval()
        hits_mean += iv.lo <= 3.0 <= iv.hi
        # a CE-loss-score-like ratio Σ(z−s)/Σ(z−c) with true value 0.6
        den = lengths * (1.0 + rng.normal(0, 0.3, 60))
        num = 0.6 * den + rng.normal(0, 1.0, 60) * np.sqrt(lengths)
        iv = ratio(num, den).interval()
        hits_ratio += iv.lo <= 0.6 <= iv.hi
    assert 0.92 <= hits_mean / reps <= 0.98
    assert 0.92 <= hits_ratio / reps <= 0.98


def ratio_half_width(a, b) -> float:
    """95% half-width of Σa/Σb over n sequences, computed directly: t₀.₉₇₅(n−1) · delta-method SE."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n, r = a.size, a.sum() / b.sum()
    return float(student_t.ppf(0.975, n - 1) * np.sqrt(n / (n - 1) * np.sum(((a - r * b) / b.sum()) ** 2)))


@pytest.mark.parametrize("lengths", ["equal", "varying"])
def test_intervals_cover_a_known_mean_95_percent_at_8_sequences(lengths):
    """2000 draws of 8 sequences (tokens correlated within a sequence): coverage ≈ 95%. With the
    normal 1.96 instead of t(7) = 2.36, or tokens as the units, it drops to ≈ 91% or far lower."""
    rng = np.random.default_rng(22)
    n, reps, true_mean = 8, 2000, 3.0
    hits = 0
    for _ in range(reps):
        ln = np.full(n, 127.0) if lengths == "equal" else rng.integers(20, 128, n).astype(float)
        sums = ln * (true_mean + rng.normal(0, 1.0, n)) + rng.normal(0, 2.0, n) * np.sqrt(ln)
        iv = ratio(sums, ln).interval()
        assert iv.n_sequences == n
        hits += iv.lo <= true_mean <= iv.hi
    assert 0.93 <= hits / reps <= 0.97, hits / reps


def test_se_of_a_plain_mean_is_the_textbook_one():
    x = np.random.default_rng(1).normal(size=40)
    e = mean(x)
    assert e.value == pytest.approx(x.mean()) and e.se == pytest.approx(x.std(ddof=1) / np.sqrt(40))


@pytest.mark.parametrize("n,t_table", [(2, 12.7062), (8, 2.3646), (16, 2.1314), (64, 1.9983)])
def test_half_width_is_the_t_quantile_times_the_textbook_se(n, t_table):
    """The multiplier is Student's t at n − 1 dof (table values), not 1.96."""
    x = np.random.default_rng(n).normal(size=n)
    iv = mean(x).interval()
    assert (iv.hi - iv.lo) / 2 == pytest.approx(t_table * x.std(ddof=1) / np.sqrt(n), rel=1e-4)
    assert iv.hi - iv.value == pytest.approx(iv.value - iv.lo)
    sums, lengths = x + 5.0, np.random.default_rng(n + 1).integers(5, 40, n).astype(float)
    assert (ratio(sums, lengths).interval().hi - ratio(sums, lengths).value) == pytest.approx(ratio_half_width(sums, lengths), rel=1e-12)


def test_unpaired_difference_uses_welch_degrees_of_freedom():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 1.0, 6), rng.normal(0.0, 3.0, 10)
    va, vb = a.var(ddof=1) / 6, b.var(ddof=1) / 10
    dof = (va + vb) ** 2 / (va**2 / 5 + vb**2 / 9)
    iv = unpaired_difference(mean(a), mean(b))
    assert iv.value == pytest.approx(a.mean() - b.mean())
    assert (iv.hi - iv.lo) / 2 == pytest.approx(student_t.ppf(0.975, dof) * np.sqrt(va + vb), rel=1e-9)


def test_linearity_intervals_are_clustered_by_sequence():
    """Tokens of one sequence are summed; the sequences are the units (n = 5 here, not 40 tokens)."""
    rng = np.random.default_rng(6)
    seq = rng.integers(0, 5, 40)
    cols = {c: rng.integers(0, 6, 40).astype(float) for c in ("linear", "jumprelu", "other", "on_line")}
    cols["n_curves"] = cols["linear"] + cols["jumprelu"] + cols["other"]
    cols["n_pairs"] = cols["n_curves"]
    est = linearity_estimates({**{c: v.tolist() for c, v in cols.items()}, "sequence": seq.tolist()})
    per_seq = {c: np.array([v[seq == s].sum() for s in range(5)]) for c, v in cols.items()}
    for c, den in (("linear", "n_curves"), ("other", "n_curves"), ("on_line", "n_pairs")):
        iv = est["linearity." + ("ablation_on_line" if c == "on_line" else c)].interval()
        assert iv.n_sequences == 5 and iv.value == pytest.approx(cols[c].sum() / cols[den].sum())
        assert iv.hi - iv.value == pytest.approx(ratio_half_width(per_seq[c], per_seq[den]), rel=1e-12)
    old = linearity_estimates({c: v.tolist() for c, v in cols.items()})  # an older summary: no sequence ids
    assert not old["linearity.linear"].interval().ok and old["linearity.linear"].interval().na_reason == NO_SEQUENCE_IDS


def test_paired_difference_is_narrower_on_correlated_data_and_covers():
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(300):
        sums_a, lengths, effect = _sequences(rng, 50, true_mean=1.0, seq_sd=2.0, tok_sd=0.5)
        sums_b = sums_a - 0.2 * lengths + rng.normal(0, 0.5, 50) * np.sqrt(lengths)  # B = A − 0.2 + small noise
        a, b = ratio(sums_a, lengths), ratio(sums_b, lengths)
        paired = (a - b).interval()
        unpaired = unpaired_difference(a, b)
        assert paired.hi - paired.lo < 0.25 * (unpaired.hi - unpaired.lo)
        hits += paired.lo <= 0.2 <= paired.hi
    assert hits / 300 >= 0.9


def test_unresolved_denominator_makes_a_ratio_na_with_the_reason():
    rng = np.random.default_rng(3)
    den = rng.normal(0.0005, 0.01, 100)  # ≈ 0: e.g. zero-ablating the randomized model's MLP
    r = ratio(rng.normal(0, 0.01, 100), den, check_denominator="CE_zero − CE_clean")
    iv = r.interval()
    assert not iv.ok and iv.value is None and "CE_zero − CE_clean" in iv.na_reason and "not resolved" in iv.na_reason
    assert unresolved_reason(np.full(50, 1.0) + rng.normal(0, 0.1, 50), "d") is None
    # resolved above 0 but only to ±60%: still n/a
    wide = np.full(4, 1.0) + np.array([-1.5, 1.5, -0.9, 0.9])
    assert unresolved_reason(wide, "d") is not None


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = make_tiny_model("gated_silu")
    saes = {"a": build_jacobian_sae(model, 1, d_sae=48, k=6, jacobian_coefficient=0.5),
            "b": build_jacobian_sae(model, 1, d_sae=48, k=6, jacobian_coefficient=0.0),
            "c": build_jacobian_sae(model, 0, d_sae=32, k=4, jacobian_coefficient=1.0)}
    tokens = torch.randint(0, model.cfg.d_vocab, (10, 16), generator=torch.Generator().manual_seed(0))
    return model, saes, tokens


def test_multi_pair_splices_equal_single_pair_splices_exactly(tiny):
    model, saes, tokens = tiny
    multi = splice_scores_multi(model, saes, tokens, batch_size=4, progress=False)
    for name, sae in saes.items():
        assert multi[name] == splice_scores(model, sae, tokens, batch_size=4, progress=False)


def test_replacement_splice_and_explained_variance_against_direct_computation(tiny):
    """Independent oracle: full-model run with hooks (no start_at_layer, no shared passes)."""
    model, saes, tokens = tiny
    sae = saes["a"]
    r = splice_scores(model, sae, tokens, batch_size=3, progress=False)
    hook_in, hook_out = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    saved = {}
    rep = [(hook_in, lambda a, hook: saved.__setitem__("x", a)),
           (hook_out, lambda a, hook: sae.decode_output(sae.encode_output(sae.require_mlp()(sae.decode(sae.encode(saved["x"]))))))]
    with torch.no_grad():
        ce = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=rep)
        _, cache = model.run_with_cache(tokens, names_filter=[hook_in])
    assert r.replacement.ce_spliced == pytest.approx(float(ce), rel=1e-9)
    x = cache[hook_in].reshape(-1, 16)
    with torch.no_grad():
        ev = 1 - (x - sae.decode(sae.encode(x))).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert r.explained_variance["input"] == pytest.approx(float(ev), rel=1e-9)
    est = splice_estimates(r.per_sequence)  # per-sequence sums reproduce the pooled numbers
    assert est["explained_variance.input"].value == pytest.approx(float(ev), rel=1e-7)  # sums stored to 9 digits
    for s in SPLICES:
        assert est[f"splice.{s}.ce_spliced"].value == pytest.approx(getattr(r, s).ce_spliced, rel=1e-7)
        assert est[f"splice.{s}.kl_score"].value == pytest.approx(getattr(r, s).kl_score, rel=1e-7)


def test_sparsity_per_sequence_sums_reproduce_the_pooled_means(tiny):
    model, saes, tokens = tiny
    r = jacobian_sparsity(model, saes["a"], tokens, batch_size=3, progress=False)
    assert len(r.per_sequence["n_tokens"]) == tokens.shape[0] and r.per_sequence["tokens_digest"]
    est = sparsity_estimates(r.per_sequence, r.k)
    for i, c in enumerate(r.mean_count_above):
        assert est[f"jacobian_sparsity.mean_count_above[{i}]"].value == pytest.approx(c, rel=1e-9)
    assert est["jacobian_sparsity.l1_l2_ratio"].value == pytest.approx(r.l1_l2_ratio, rel=1e-9)
    assert est["jacobian_sparsity.top_m_mass[2]"].value == pytest.approx(r.top_m_mass[2], rel=1e-9)
    assert est["jacobian_sparsity.relative_count_above[0]"].value == pytest.approx(r.relative_count_above[0], rel=1e-9)
    # the relative count is scale-free: J·10 has the same one
    vals = saes["a"].active_jacobian(torch.randn(20, 16, dtype=torch.float64)).values
    from sae_lens_jsae.evals import jacobian_sparsity_of_values

    assert jacobian_sparsity_of_values(vals).relative_count_above == jacobian_sparsity_of_values(vals * 10).relative_count_above


def test_paired_differences_between_summaries(tiny):
    model, saes, tokens = tiny
    m = splice_scores_multi(model, {k: saes[k] for k in "ab"}, tokens, batch_size=4, progress=False)
    sa, sb = ({"splice": m[k].to_dict()} for k in "ab")
    d = paired_differences(sa, sb)
    ea, eb = splice_estimates(m["a"].per_sequence), splice_estimates(m["b"].per_sequence)
    key = "explained_variance.input"
    assert d[key]["paired"] and d[key]["value"] == pytest.approx(ea[key].value - eb[key].value)
    assert d[key]["lo"] == pytest.approx((ea[key] - eb[key]).interval().lo)
    other = splice_scores(model, saes["b"], tokens[:8], batch_size=4, progress=False)  # other tokens: unpaired
    assert not paired_differences(sa, {"splice": other.to_dict()})[key]["paired"]


def test_linearity_per_token_counts_reproduce_the_fractions(tiny):
    from sae_lens_jsae.evals import linearity

    model, saes, tokens = tiny
    r = linearity(model, saes["a"], tokens, n_tokens=20, progress=False)
    assert len(r.per_token["n_curves"]) == 20 and sum(r.per_token["n_curves"]) == r.n_curves
    est = linearity_estimates(r.per_token)
    for c in ("linear", "jumprelu", "other"):
        assert est[f"linearity.{c}"].value == pytest.approx(getattr(r, c), abs=1e-12)
        assert est[f"linearity.{c}"].n == r.n_sequences == len(set(r.per_token["sequence"]))
    assert est["linearity.ablation_on_line"].value == pytest.approx(r.ablation_on_line, abs=1e-12)
    other = linearity(model, saes["b"], tokens, n_tokens=20, progress=False)  # same sampled tokens: paired
    assert other.per_token["sample_digest"] == r.per_token["sample_digest"]
    d = paired_differences({"linearity": r.to_dict()}, {"linearity": other.to_dict()})["linearity.linear"]
    assert d["paired"] and d["value"] == pytest.approx(r.linear - other.linear)


def test_linearity_samples_the_whole_eval_set_and_records_each_tokens_sequence(tiny):
    """40 tokens from 40 sequences of 16: 10 sequences (4 tokens each) drawn from all 40, not the
    first batch; BOS skipped; each sampled token's counts are those of its (sequence, position)
    computed directly."""
    from sae_lens_jsae.evals import linearity, linearity_of_inputs
    from sae_lens_jsae.evals._batches import mlp_inputs_of

    model, saes, _ = tiny
    sae = saes["a"]
    tokens = torch.randint(0, model.cfg.d_vocab, (40, 16), generator=torch.Generator().manual_seed(3))
    r = linearity(model, sae, tokens, n_tokens=40, batch_size=4, progress=False)
    seq, pos = r.per_token["sequence"], r.per_token["position"]
    assert len(seq) == 40 and len(set(zip(seq, pos))) == 40 and min(pos) >= 1
    assert max(seq) >= 20 and r.n_sequences == len(set(seq)) == 10  # the first batch alone: sequences 0–3
    assert sorted(seq.count(s) for s in set(seq)) == [4] * 10
    x = mlp_inputs_of(model, sae, tokens).reshape(40, 16, -1)[torch.tensor(seq), torch.tensor(pos)]
    direct = linearity_of_inputs(sae, x, sequence=seq)
    for c in ("linear", "jumprelu", "other", "n_curves", "on_line", "n_pairs", "sequence"):
        assert r.per_token[c] == direct.per_token[c], c
    assert linearity(model, sae, tokens, n_tokens=40, batch_size=16, progress=False).per_token == r.per_token  # batching does not change the sample
    assert linearity(model, sae, tokens[:2], n_tokens=8, progress=False).n_sequences == 2  # fewer sequences: more tokens each
    with pytest.raises(ValueError, match="n_tokens and tokens_per_sequence must be ≥ 1"):
        linearity(model, sae, tokens, n_tokens=0, progress=False)


def test_saebench_format_json_carries_the_intervals(tiny, tmp_path):
    import json

    from sae_lens_jsae.evals import saebench as sb

    model, saes, tokens = tiny
    sb.run_eval(sb.JacobianSparsityEvalConfig(n_tokens=64, batch_size_prompts=4), [("a", saes["a"])], "cpu", str(tmp_path), model=model, tokens=tokens)
    data = json.loads((tmp_path / "a_custom_sae_eval_results.json").read_text())
    iv = data["eval_result_unstructured"]["intervals"]["jacobian_sparsity.l1_l2_ratio"]
    ps = data["eval_result_unstructured"]["result"]["per_sequence"]
    assert iv["value"] == pytest.approx(data["eval_result_metrics"]["jacobian_sparsity"]["l1_l2_ratio"], rel=1e-9)
    assert iv["n_sequences"] == 4 and iv["hi"] - iv["value"] == pytest.approx(ratio_half_width(ps["ratio_sum"], ps["n_nonzero"]), rel=1e-9)
    assert sb.read_eval_output(tmp_path / "a_custom_sae_eval_results.json").eval_type_id == "jacobian_sparsity"  # still valid


def test_parallel_attention_blocks_splice_like_hooks():
    """GPT-NeoX/Pythia-style blocks (attention and MLP both read resid_pre): same numbers as hooks."""
    model = make_tiny_model("dense_gelu", parallel_attn_mlp=True)
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6)
    tokens = torch.randint(0, model.cfg.d_vocab, (4, 16), generator=torch.Generator().manual_seed(1))
    r = splice_scores(model, sae, tokens, progress=False)
    hook_in, hook_out = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    with torch.no_grad():
        for s, hooks in (("input", [(hook_in, lambda a, hook: sae.decode(sae.encode(a)))]),
                         ("output", [(hook_out, lambda a, hook: sae.decode_output(sae.encode_output(a)))])):
            ce = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks)
            assert getattr(r, s).ce_spliced == pytest.approx(float(ce), rel=1e-9), s


def test_relative_to_lambda0_is_a_paired_ratio():
    from sae_lens_jsae.evals.intervals import ratio

    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(300):
        sums, lengths, effect = _sequences(rng, 50, true_mean=4.0, seq_sd=1.0, tok_sd=0.5)
        base = ratio(sums, lengths)
        jsae = ratio(0.5 * sums + rng.normal(0, 0.3, 50) * np.sqrt(lengths), lengths)  # ≈ 0.5× the baseline, same sequences
        iv = (jsae / base).interval()
        hits += iv.lo <= 0.5 <= iv.hi
    assert hits / 300 >= 0.9


def test_every_metric_block_is_registered_on_first_import():
    """intervals imports no metric: the metric modules register their summary blocks, and importing
    intervals alone (through the evals package) registers all of them, in a fresh process."""
    import subprocess
    import sys

    code = "from sae_lens_jsae.evals.intervals import registered_blocks; print(sorted(registered_blocks()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(["edges", "intervention", "jacobian_sparsity", "linearity", "mlp_error", "splice"])

