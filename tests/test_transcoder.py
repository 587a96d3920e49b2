"""TopK transcoders and skip transcoders: SAELens contract, training from the shared stream, resume."""

from __future__ import annotations

import json
import time

import pytest
import torch
from helpers import make_tiny_model, mlp_inputs, tiny_runner_cfg, tiny_token_dataset
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file

from sae_lens_jsae.mlp import FrozenMLP
from sae_lens_jsae.training import RunOptions, train_variants
from sae_lens_jsae.transcoder import (
    TOPK_SKIP_TRANSCODER,
    TOPK_TRANSCODER,
    TRANSCODER_CLASSES,
    TopKSkipTranscoderTrainingConfig,
    TopKTrainingSkipTranscoder,
    TopKTrainingTranscoder,
    TopKTranscoderTrainingConfig,
)

ARCHS = [TOPK_TRANSCODER, TOPK_SKIP_TRANSCODER]
TRANSCODER = {"architecture": TOPK_TRANSCODER}
SKIP = {"architecture": TOPK_SKIP_TRANSCODER}


def _inference(arch: str, d_in: int = 12, d_sae: int = 40, d_out: int = 10, k: int = 5):
    inference_cls, cfg_cls, _, _ = TRANSCODER_CLASSES[arch]
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, d_out=d_out, k=k, dtype="float32", device="cpu",
                  metadata=SAEMetadata(hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out"))
    sae = inference_cls(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return sae


# ---- SAELens' transcoder contract (what SAELens' own transcoder tests check, for ours) ---------------


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trips_and_names_the_architecture(arch):
    sae = _inference(arch)
    d = sae.cfg.to_dict()
    assert d["architecture"] == arch and d["k"] == 5 and d["d_out"] == 10
    assert d["metadata"]["hook_name_out"] == "blocks.0.hook_mlp_out"
    again = type(sae.cfg).from_dict(d)
    assert again.k == 5 and again.d_out == 10 and again.metadata.hook_name_out == "blocks.0.hook_mlp_out"


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_topk_encode_and_no_b_dec_on_the_input(arch):
    sae = _inference(arch)
    assert sae.W_enc.shape == (12, 40) and sae.W_dec.shape == (40, 10) and sae.b_dec.shape == (10,)
    x = torch.randn(7, 12)
    assert torch.equal(sae.process_sae_in(x), x)  # b_dec lives in the output space
    out, acts = sae.forward_with_activations(x)
    assert out.shape == (7, 10) and acts.shape == (7, 40)
    pre = x @ sae.W_enc + sae.b_enc
    top = pre.topk(5, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    torch.testing.assert_close(acts, expected)
    skip = x @ sae.W_skip.T if arch == TOPK_SKIP_TRANSCODER else 0
    torch.testing.assert_close(out, expected @ sae.W_dec + sae.b_dec + skip)
    assert sae.to("meta").W_enc.device.type == "meta"


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_W_dec_norm_is_refused_like_saelens_topk(arch):
    with pytest.raises(NotImplementedError, match="changes which latents TopK picks"):
        _inference(arch).fold_W_dec_norm()


def test_the_skip_path_starts_at_zero_and_adds_x_W_skipT():
    t = TopKTrainingSkipTranscoder(TopKSkipTranscoderTrainingConfig(d_in=16, d_sae=64, k=4))
    assert t.W_skip.shape == (16, 16) and torch.count_nonzero(t.W_skip) == 0
    assert torch.count_nonzero(t.W_dec) == 0  # sparsify's transcoder decoder starts at zero too
    x = torch.randn(5, 16)
    plain = t(x)
    with torch.no_grad():
        t.W_skip.copy_(torch.randn(16, 16))
    torch.testing.assert_close(t(x), plain + x @ t.W_skip.T)


# ---- training --------------------------------------------------------------------------------------


def _train(tmp_path, variants, **cfg_overrides):
    cfg = tiny_runner_cfg(tmp_path, **{"training_tokens": 64 * 12, **cfg_overrides})
    return train_variants(cfg, variants, RunOptions(log_every_n_steps=3), override_dataset=tiny_token_dataset(),
                          override_model=make_tiny_model("gated_silu", dtype=torch.float32))


def test_training_lowers_the_loss_and_logs_fvu_ev_l0_dead_tokens_per_s(tmp_path):
    started = time.perf_counter()
    saes = _train(tmp_path, [TRANSCODER, SKIP], training_tokens=64 * 30)
    wall_s = time.perf_counter() - started
    for name in ("architecture=topk_transcoder", "architecture=topk_skip_transcoder"):
        log = [json.loads(line) for line in (tmp_path / "out" / name / "train_log.jsonl").read_text().splitlines()]
        assert len(log) == 10
        first, last = log[0], log[-1]
        assert last["losses/overall_loss"] < 0.7 * first["losses/overall_loss"], (first, last)
        assert last["metrics/fvu"] < first["metrics/fvu"]
        # SAELens' explained variance is scored against the MLP output y, so it is 1 − FVU
        assert last["metrics/explained_variance"] == pytest.approx(1 - last["metrics/fvu"], abs=1e-5)
        assert last["metrics/l0"] == pytest.approx(4.0, abs=0.5)
        assert "sparsity/dead_features" in last
        # tokens/s is tokens since the start over seconds since the start: the seconds it implies
        # grow from record to record and stay within the call's wall time (a rate of sequences,
        # tokens / context_size, would imply 16x the time)
        implied_s = [r["details/n_training_samples"] / r["details/tokens_per_second"] for r in log]
        assert all(a < b for a, b in zip(implied_s, implied_s[1:])) and implied_s[-1] <= wall_s, (implied_s, wall_s)
        assert "sparsity/output_dead_features" not in last  # a pair's output SAE only
    assert isinstance(saes["architecture=topk_transcoder"], TopKTrainingTranscoder)


def test_saved_transcoder_loads_in_saelens_with_identical_outputs_and_no_mlp_weights(tmp_path):
    from sae_lens import SAE

    saes = _train(tmp_path, [SKIP])
    trained = saes["architecture=topk_skip_transcoder"]
    folder = tmp_path / "out" / "architecture=topk_skip_transcoder"
    assert set(load_file(folder / "sae_weights.safetensors")) == {"W_enc", "b_enc", "W_dec", "b_dec", "W_skip"}
    loaded = SAE.load_from_disk(folder)
    assert type(loaded).__name__ == "TopKSkipTranscoder" and loaded.cfg.k == 4
    assert loaded.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    x = torch.randn(9, 16)
    torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)


def test_spliced_into_hooked_sae_transformer_it_replaces_the_mlp(tmp_path):
    """SAELens' HookedSAETransformer reads the input hook and writes hook_mlp_out, as for its transcoders."""
    from sae_lens import SAE, HookedSAETransformer

    _train(tmp_path, [TRANSCODER])
    tc = SAE.load_from_disk(tmp_path / "out" / "architecture=topk_transcoder")
    tiny = make_tiny_model("gated_silu", dtype=torch.float32)
    model = HookedSAETransformer(tiny.cfg)
    model.load_state_dict(tiny.state_dict())
    tokens = torch.randint(1, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    captured = {}

    def capture(x, hook):
        captured["x"] = x
        return x

    def replace_mlp_out(y, hook):
        return tc(captured["x"])

    expected = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.ln2.hook_normalized", capture), ("blocks.1.hook_mlp_out", replace_mlp_out)])
    plain = tiny(tokens)
    model.add_sae(tc)
    spliced = model(tokens)
    torch.testing.assert_close(spliced, expected)
    assert not torch.allclose(spliced, plain)  # the splice did replace the MLP


def test_one_stream_feeds_a_pair_and_transcoders_bit_identically_to_training_each_alone(tmp_path):
    together = _train(tmp_path / "together", [{"jacobian_coefficient": 1.0}, TRANSCODER, SKIP])
    for variant in ({"jacobian_coefficient": 1.0}, TRANSCODER, SKIP):
        (name,) = _train(tmp_path / str(variant), [variant])
        a = load_file(tmp_path / "together" / "out" / name / "sae_weights.safetensors")
        b = load_file(tmp_path / str(variant) / "out" / name / "sae_weights.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert "W_enc_out" in dict(together["jacobian_coefficient=1.0"].named_parameters())


def test_the_sweep_shares_one_mlp_pass_per_batch_between_pairs_and_transcoders(tmp_path, monkeypatch):
    passes = []
    original = FrozenMLP.pre_activations
    monkeypatch.setattr(FrozenMLP, "pre_activations", lambda self, x: passes.append(1) or original(self, x))
    _train(tmp_path, [{"jacobian_coefficient": 0.0}, TRANSCODER, SKIP])
    # 12 steps; logging steps of the pair also run f(x̂) through the MLP (4 of them)
    assert 12 <= len(passes) <= 12 + 4


def test_sweep_checkpoint_resumes_exactly(tmp_path):
    """A sweep's checkpoint holds every member, the stream and the store: resuming it from the
    middle ends with the same weights as the uninterrupted run."""
    variants = [{"jacobian_coefficient": 1.0}, SKIP]
    cfg = tiny_runner_cfg(tmp_path / "full", training_tokens=64 * 12)
    options = RunOptions(log_every_n_steps=3, checkpoint_every_tokens=64 * 6)
    train_variants(cfg, variants, options, override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    from sae_lens_jsae.training import COMPLETE_MARKER, latest_checkpoint

    checkpoint = latest_checkpoint(tmp_path / "full" / "checkpoints")
    assert checkpoint is not None and (checkpoint / COMPLETE_MARKER).exists()
    assert {p.name for p in checkpoint.iterdir() if p.is_dir()} >= {"jacobian_coefficient=1.0", "architecture=topk_skip_transcoder"}
    resumed_cfg = tiny_runner_cfg(tmp_path / "resumed", training_tokens=64 * 12, resume_from_checkpoint=str(checkpoint))
    train_variants(resumed_cfg, variants, options, override_dataset=tiny_token_dataset(), override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    for name in ("jacobian_coefficient=1.0", "architecture=topk_skip_transcoder"):
        a = load_file(tmp_path / "full" / "out" / name / "sae_weights.safetensors")
        b = load_file(tmp_path / "resumed" / "out" / name / "sae_weights.safetensors")
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_a_single_transcoder_run_from_a_yaml_config(tmp_path):
    """`sae.architecture` picks the transcoder's config: the single-run runner (resume, torchrun) trains it."""
    from sae_lens_jsae.config import build_run_config
    from sae_lens_jsae.training import JacobianSAETrainingRunner

    base = tiny_runner_cfg(tmp_path)
    runner_tree = {k: getattr(base, k) for k in ("model_name", "hook_name", "dataset_path", "is_dataset_tokenized", "context_size",
                                                  "train_batch_size_tokens", "store_batch_size_prompts", "n_batches_in_buffer", "lr",
                                                  "device", "seed", "output_path", "dtype")}
    tree = {"runner": {**runner_tree, "training_tokens": 64 * 6, "logger": {"log_to_wandb": False}},
            "sae": {"architecture": "topk_transcoder", "d_in": 16, "d_sae": 64, "k": 4}}
    cfg, options = build_run_config(tree)
    assert isinstance(cfg.sae, TopKTranscoderTrainingConfig) and cfg.sae.d_out == 16
    sae = JacobianSAETrainingRunner(cfg, options, override_dataset=tiny_token_dataset(),
                                    override_model=make_tiny_model("gated_silu", dtype=torch.float32)).run()
    assert isinstance(sae, TopKTrainingTranscoder)
    saved = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert saved["architecture"] == "topk_transcoder" and saved["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
    with pytest.raises(ValueError, match="sae.jacobian_coefficient is not a field of TopKTranscoderTrainingConfig"):
        build_run_config({**tree, "sae": {**tree["sae"], "jacobian_coefficient": 1.0}})
    with pytest.raises(ValueError, match="architecture='topk' is not one this runner trains"):
        build_run_config({**tree, "sae": {**tree["sae"], "architecture": "topk"}})


# ---- bad configs: one line, before any work --------------------------------------------------------


def test_a_d_out_that_is_not_d_model_is_refused_before_training(tmp_path, monkeypatch):
    from sae_lens_jsae.training import JacobianSAETrainer

    monkeypatch.setattr(JacobianSAETrainer, "step", lambda *a, **k: pytest.fail("trained despite a bad config"))
    with pytest.raises(ValueError, match=r"cfg.sae.d_out=12 but tiny has d_model=16; set d_out to 16"):
        _train(tmp_path, [{**TRANSCODER, "d_out": 12}])
    with pytest.raises(ValueError, match="Cannot sweep 'jacobian_coefficient' for architecture 'topk_skip_transcoder'"):
        _train(tmp_path, [{"jacobian_coefficient": 1.0}, {**SKIP, "jacobian_coefficient": 1.0}])
    with pytest.raises(ValueError, match="architecture='transcoder' is not one this runner trains"):
        _train(tmp_path, [{"architecture": "transcoder"}])


@pytest.mark.parametrize(("fields", "match"), [
    ({"k": 0}, r"k=0 must be in \[1, d_sae=64\]"),
    ({"apply_b_dec_to_input": True}, "apply_b_dec_to_input must be False for a transcoder"),
    ({"rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm must be False"),
    ({"aux_loss_coefficient": -1.0}, "aux_loss_coefficient=-1.0 must be >= 0"),
])
def test_bad_transcoder_configs_are_one_line_errors(fields, match):
    with pytest.raises(ValueError, match=match):
        TopKTranscoderTrainingConfig(**{"d_in": 16, "d_sae": 64, **fields})


def test_attach_mlp_refuses_a_mlp_of_another_width():
    t = TopKTrainingTranscoder(TopKTranscoderTrainingConfig(d_in=16, d_sae=64, k=4))
    mlp = FrozenMLP.from_hooked_transformer(make_tiny_model("dense_gelu", d_model=8, d_head=2), 0)
    with pytest.raises(ValueError, match=r"does not fit this transcoder \(d_in 16, d_out 16\)"):
        t.attach_mlp(mlp)


def test_the_aux_loss_targets_the_mlp_output_residual():
    """AuxK reconstructs y − ŷ (the transcoder's error), not x − ŷ: with all latents dead it
    equals SAELens' TopK aux loss evaluated on (y, ŷ)."""
    model = make_tiny_model("dense_gelu", dtype=torch.float32)
    mlp = FrozenMLP.from_hooked_transformer(model, 1)
    t = TopKTrainingTranscoder(TopKTranscoderTrainingConfig(d_in=16, d_sae=64, k=4))
    t.attach_mlp(mlp)
    with torch.no_grad():
        t.W_dec.copy_(torch.randn(64, 16) * 0.1)
    from sae_lens.saes.sae import TrainStepInput

    x = mlp_inputs(model, 1).float()
    dead = torch.ones(64, dtype=torch.bool)
    out = t.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=True))
    y = mlp(x)
    expected = t.calculate_topk_aux_loss(sae_in=y, sae_out=out.sae_out, hidden_pre=out.hidden_pre, dead_neuron_mask=dead)
    wrong = t.calculate_topk_aux_loss(sae_in=x, sae_out=out.sae_out, hidden_pre=out.hidden_pre, dead_neuron_mask=dead)
    torch.testing.assert_close(out.losses["auxiliary_reconstruction_loss"], expected)
    assert not torch.allclose(expected, wrong)
    torch.testing.assert_close(out.losses["mse_loss"], (out.sae_out - y).pow(2).sum(-1).mean())
    assert torch.equal(out.sae_in, y)


# ---- first-batch bias initialisation (sparsify's), config from a pair's YAML, latent pages --------


def _spy_first_forward(monkeypatch):
    """Record, at each transcoder's training forward, its input and biases (before the step's update)."""
    seen: list[dict] = []
    original = TopKTrainingTranscoder.training_forward_pass

    def spy(self, step_input):
        seen.append({"x": step_input.sae_in.detach().clone(), "b_enc": self.b_enc.detach().clone(),
                     "b_dec": self.b_dec.detach().clone(), "W_enc": self.W_enc.detach().clone(), "mlp": self.require_mlp()})
        return original(self, step_input)

    monkeypatch.setattr(TopKTrainingTranscoder, "training_forward_pass", spy)
    return seen


@pytest.mark.parametrize("variant", [TRANSCODER, SKIP])
def test_the_first_batch_sets_the_biases_as_sparsify_does(tmp_path, monkeypatch, variant):
    """Before the first step: b_dec = mean(y), b_enc = −mean(x)·W_enc over that batch (sparsify's
    `Trainer.fit`); so the first step's ŷ is the batch's mean output (FVU 1 on it)."""
    calls = []
    original = TopKTrainingTranscoder.initialize_biases_from_batch
    monkeypatch.setattr(TopKTrainingTranscoder, "initialize_biases_from_batch", lambda self, x: calls.append(1) or original(self, x))
    seen = _spy_first_forward(monkeypatch)
    _train(tmp_path, [variant], training_tokens=64 * 3)
    assert len(calls) == 1 and len(seen) == 3
    first = seen[0]
    x = first["x"]
    y = first["mlp"](x)
    torch.testing.assert_close(first["b_dec"], y.mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(first["b_enc"], -(x.mean(0) @ first["W_enc"]), rtol=1e-6, atol=1e-7)
    assert torch.count_nonzero(first["b_dec"]) > 0 and not torch.equal(seen[1]["b_dec"], first["b_dec"])  # then trained
    log = [json.loads(line) for line in (tmp_path / "out" / variant_name_of(variant) / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["details/n_training_steps"] == 3  # logged every 3rd step: nothing to read of step 1 here


def variant_name_of(variant):
    from sae_lens_jsae.training import variant_name

    return variant_name(variant)


def test_init_biases_from_first_batch_false_keeps_zero_biases(tmp_path, monkeypatch):
    seen = _spy_first_forward(monkeypatch)
    _train(tmp_path, [{**TRANSCODER, "init_biases_from_first_batch": False}], training_tokens=64 * 2)
    assert torch.count_nonzero(seen[0]["b_dec"]) == 0 and torch.count_nonzero(seen[0]["b_enc"]) == 0


def test_the_first_step_fvu_is_one_with_the_mean_output_as_prediction():
    model = make_tiny_model("gated_silu", dtype=torch.float32)
    mlp = FrozenMLP.from_hooked_transformer(model, 1)
    t = TopKTrainingTranscoder(TopKTranscoderTrainingConfig(d_in=16, d_sae=64, k=4))
    t.attach_mlp(mlp)
    x = mlp_inputs(model, 1).float()
    t.initialize_from_first_batch(x)
    y = mlp(x)
    torch.testing.assert_close(t(x), y.mean(0).expand_as(y))  # W_dec = 0: ŷ = b_dec = mean(y)
    pre = x @ t.W_enc + t.b_enc
    torch.testing.assert_close(pre.mean(0), torch.zeros(64), atol=1e-5, rtol=0)  # pre-activations centred


def test_resuming_after_the_first_step_does_not_set_the_biases_again(tmp_path, monkeypatch):
    """SAELens checkpoints a step before counting it (a checkpoint after step 1 holds
    n_training_steps 0), so the trainer keys the initialisation on n_training_samples == 0."""
    from sae_lens_jsae.training import COMPLETE_MARKER

    calls = []
    original = TopKTrainingTranscoder.initialize_biases_from_batch
    monkeypatch.setattr(TopKTrainingTranscoder, "initialize_biases_from_batch", lambda self, x: calls.append(1) or original(self, x))
    variants = [{"jacobian_coefficient": 1.0}, TRANSCODER]
    options = RunOptions(log_every_n_steps=3, checkpoint_every_tokens=32)  # one after each step of 64 tokens
    model = lambda: make_tiny_model("gated_silu", dtype=torch.float32)  # noqa: E731
    train_variants(tiny_runner_cfg(tmp_path / "full", training_tokens=64 * 4), variants, options,
                   override_dataset=tiny_token_dataset(), override_model=model())
    assert len(calls) == 1
    (checkpoint,) = (tmp_path / "full" / "checkpoints").glob("*/64")  # after the first step
    assert (checkpoint / COMPLETE_MARKER).exists()
    assert torch.load(checkpoint / "architecture=topk_transcoder" / "trainer_state.pt", weights_only=False)["n_training_steps"] == 0
    train_variants(tiny_runner_cfg(tmp_path / "resumed", training_tokens=64 * 4, resume_from_checkpoint=str(checkpoint)), variants, options,
                   override_dataset=tiny_token_dataset(), override_model=model())
    assert len(calls) == 1  # not again on resume
    for name in ("jacobian_coefficient=1.0", "architecture=topk_transcoder"):
        a = load_file(tmp_path / "full" / "out" / name / "sae_weights.safetensors")
        b = load_file(tmp_path / "resumed" / "out" / name / "sae_weights.safetensors")
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_a_pair_yaml_trains_a_transcoder_with_set_architecture():
    """`jsae train configs/…demo.yaml --set sae.architecture=topk_transcoder`: the pair-only keys
    left at null / their default (`jacobian_coefficient: null`) are dropped; one set to a value
    is still a one-line error naming it."""
    from pathlib import Path

    from sae_lens_jsae.config import load_run_config

    demo = Path(__file__).resolve().parents[1] / "configs" / "smollm2-135m-l3-demo.yaml"
    for arch, cls in ((TOPK_TRANSCODER, TopKTranscoderTrainingConfig), (TOPK_SKIP_TRANSCODER, TopKSkipTranscoderTrainingConfig)):
        cfg, _ = load_run_config(demo, [f"sae.architecture={arch}", "sae.jacobian_warm_up_steps=null", "sae.edge_sparsity_coefficient=0"])
        assert type(cfg.sae) is cls and (cfg.sae.d_in, cfg.sae.d_sae, cfg.sae.k, cfg.sae.d_out) == (576, 2304, 32, 576)
        assert cfg.sae.init_biases_from_first_batch and cfg.sae.aux_loss_coefficient == 1.0
    with pytest.raises(ValueError, match=r"^\S+demo\.yaml with --set \S+ \S+: sae\.jacobian_coefficient is not a field of TopKTranscoderTrainingConfig"):
        load_run_config(demo, ["sae.architecture=topk_transcoder", "sae.jacobian_coefficient=0.5"])
    with pytest.raises(ValueError, match=r"^\S+demo\.yaml with --set \S+ \S+: sae\.edge_sparsity_coefficient is not a field"):
        load_run_config(demo, ["sae.architecture=topk_transcoder", "sae.edge_sparsity_coefficient=0.1"])


def test_latent_pages_for_a_transcoder(tmp_path):
    """`jsae latents` on a transcoder: one page per latent (contexts, histogram, frequency,
    direct-path logits of its decoder rows), checked against a dense encode; no partners."""
    from sae_lens import SAE

    from sae_lens_jsae.graph import cantor
    from sae_lens_jsae.latents import LatentPageConfig, is_transcoder_folder, write_latent_pages

    _train(tmp_path, [SKIP], training_tokens=64 * 6)
    folder = tmp_path / "out" / "architecture=topk_skip_transcoder"
    assert is_transcoder_folder(folder)
    tc = SAE.load_from_disk(str(folder))
    model = make_tiny_model("gated_silu", dtype=torch.float32)
    tokens = torch.randint(1, model.cfg.d_vocab, (6, 10), generator=torch.Generator().manual_seed(3))
    scan = write_latent_pages(tc, model, tokens, tmp_path / "pages", batch_size=4,
                              cfg=LatentPageConfig(n_top=3, n_quantiles=2, n_per_quantile=2, left=3, right=2, n_logits=3))
    assert scan.name == "tiny-l1-topk_skip_transcoder64-k4"
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.ln2.hook_normalized")
    with torch.no_grad():
        acts = tc.encode(cache["blocks.1.ln2.hook_normalized"].reshape(-1, 16))
    index = json.loads((scan / "index.json").read_text())
    assert index["architecture"] == TOPK_SKIP_TRANSCODER and index["n_tokens"] == 60
    assert index["layers"]["0"]["dead"] == int(((acts > 0).sum(0) == 0).sum())
    assert len(list(scan.glob("*.json"))) == 64 + 1
    W_U = model.W_U
    for i in range(64):
        page = json.loads((scan / f"{cantor(0, i)}.json").read_text())
        col = acts[:, i]
        n = int((col > 0).sum())
        assert page["sae"] == "transcoder" and page["latent"] == i and page["partners"] == []
        assert page["activation_frequency"] == pytest.approx(n / 60) and sum(page["histogram"]["counts"]) == n
        if n:
            assert page["act_max"] == pytest.approx(float(col.max()), rel=1e-5)
            assert page["examples_quantiles"][0]["examples"][0]["activation"] == pytest.approx(float(col.max()), rel=1e-3)
        d = tc.W_dec[i].detach()
        if type(model.ln_final).__name__.startswith("LayerNorm"):
            d = d - d.mean()
        d = d * model.ln_final.w if hasattr(model.ln_final, "w") else d
        want = (d @ W_U).topk(3).indices
        assert page["top_logits"] == [f"⟨{int(t)}⟩" for t in want]


_DDP_WORKER = """
import os, sys
from dataclasses import replace
from pathlib import Path
import torch
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from helpers import make_tiny_model, tiny_runner_cfg, tiny_token_dataset
from sae_lens_jsae.training import JacobianSAETrainingRunner, RunOptions
from sae_lens_jsae.transcoder import TopKTrainingTranscoder, TopKTranscoderTrainingConfig

tmp, rank = Path(sys.argv[1]), os.environ.get("RANK", "single")
init = TopKTrainingTranscoder.initialize_biases_from_batch

def record(self, x):  # the biases each process starts from
    init(self, x)
    save_file({{"b_enc": self.b_enc.detach().clone(), "b_dec": self.b_dec.detach().clone()}}, str(tmp / f"init_{{rank}}.safetensors"))

TopKTrainingTranscoder.initialize_biases_from_batch = record
cfg = tiny_runner_cfg(tmp, training_tokens=64 * 4, checkpoint_path=None)
cfg = replace(cfg, sae=TopKTranscoderTrainingConfig(d_in=16, d_sae=64, k=4, metadata=cfg.sae.metadata))
data = {{"override_dataset": tiny_token_dataset(), "override_model": make_tiny_model("gated_silu", dtype=torch.float32)}}
if os.environ.get("WORLD_SIZE", "1") == "1":
    sae = JacobianSAETrainingRunner(cfg, RunOptions(log_every_n_steps=4), **data).run()
else:
    from sae_lens_jsae.distributed import barrier_and_close, init_from_env, train_distributed
    context = init_from_env(cfg.device, "gloo", 60)
    sae = train_distributed(cfg, RunOptions(log_every_n_steps=4), context, **data)
    barrier_and_close(context)
save_file({{k: v.detach().clone() for k, v in sae.state_dict().items()}}, str(tmp / f"final_{{rank}}.safetensors"))
"""


@pytest.mark.slow
def test_torchrun_ranks_start_from_the_same_first_batch_biases(tmp_path):
    """Under torchrun data parallel (gloo, 2 ranks on half batches) the first-batch biases come
    from the global batch every rank holds: both ranks set exactly one process's biases, without
    a collective, and stay identical. (Not compared: the later weights to one process's. At the
    first step ŷ = mean(y), so b_dec's gradient is 0 up to rounding and Adam's first step on it is
    lr·sign(rounding noise), which differs between a full batch and two averaged halves.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER.format(tests=str(tests)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tests.parent)}
    runs = {"one": [sys.executable, str(worker)],
            "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker)]}
    procs = {}
    for name, cmd in runs.items():
        (tmp_path / name).mkdir()
        procs[name] = subprocess.Popen([*cmd, str(tmp_path / name)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, out[-3000:])
    single = load_file(tmp_path / "one" / "init_single.safetensors")
    assert torch.count_nonzero(single["b_dec"]) > 0
    for rank in ("0", "1"):
        start = load_file(tmp_path / "two" / f"init_{rank}.safetensors")
        for key in single:
            assert torch.equal(start[key], single[key]), (rank, key)
    final0, final1 = (load_file(tmp_path / "two" / f"final_{rank}.safetensors") for rank in ("0", "1"))
    for key in final0:
        assert torch.equal(final0[key], final1[key]), key


# ---- evaluation: beside the pairs, on the same tokens -------------------------------------------
