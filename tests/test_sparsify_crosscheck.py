"""scripts/sparsify_crosscheck.py on known answers and a tiny model (no timing is checked: the
figures live in its committed result, docs/transcoders.md)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    """scripts/sparsify_crosscheck.py as a module (a script of the repository, not of the package)."""
    spec = importlib.util.spec_from_file_location("sparsify_crosscheck", ROOT / "scripts" / "sparsify_crosscheck.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _require_sparsify():
    if importlib.util.find_spec("sparsify") is None:
        pytest.skip("EleutherAI sparsify is not installed (pip install 'eai-sparsify>=1.3', the `sparsify` extra)")


def test_heldout_fvu_is_0_for_y_1_for_the_kept_mean_and_ignores_excluded_tokens(script):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(5, 7, 3, generator=gen, dtype=torch.float64)
    keep = torch.ones(5, 7, dtype=torch.bool)
    keep[:, 0] = False  # e.g. BOS
    y[:, 0] += 100.0  # excluded tokens far off: they must not move μ nor the errors
    x = y.clone()
    mu = y[keep].mean(0)
    assert script.heldout_fvu(lambda t: t, x, y, keep).value == 0.0
    fvu_mean = script.heldout_fvu(lambda t: mu.expand_as(t), x, y, keep)
    assert fvu_mean.value == pytest.approx(1.0, abs=1e-12)
    assert fvu_mean.n == 5  # one influence value per sequence: the interval is over sequences
    half = script.heldout_fvu(lambda t: mu + 0.5 * (t - mu), x, y, keep)
    assert half.value == pytest.approx(0.25, abs=1e-12)
    lo, hi = half.interval().lo, half.interval().hi
    assert lo <= 0.25 <= hi


def test_sparsify_schedule_free_weights_are_averaged_for_eval_and_restored(script):
    _require_sparsify()
    torch.manual_seed(0)
    W = torch.randn(8, 32) * 0.3
    coder = script.Sparsify(8, 32, 4, lr=1e-2, optimizer="signum", init_W_enc=W, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(coder.coder.encoder.weight, W.T)  # same start as ours
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    coder.step(x, y)
    # sparsify's first step: pre-activations centred, b_dec at the output mean (then one signum step)
    assert coder.started
    for _ in range(5):
        coder.step(x, y)
    train_weights = [p.detach().clone() for p in coder.coder.parameters()]
    train_out = coder.predict(x)
    with coder.evaluating():
        eval_out = coder.predict(x)
    assert not torch.allclose(eval_out, train_out)  # schedule-free evaluates its averaged iterate
    for p, before in zip(coder.coder.parameters(), train_weights):
        torch.testing.assert_close(p, before, rtol=1e-5, atol=1e-6)  # back to the training iterate (a float round trip)
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        script.Sparsify(8, 32, 4, lr=1e-2, optimizer="sgd", init_W_enc=W, device="cpu", dtype=torch.float32)


def test_crosscheck_trains_ours_exactly_as_the_runner_and_all_on_the_same_batches(script, tmp_path):
    """On a tiny model (≈ 10 s): every contender trained on the same (x, y) batches, ours ends bit-identical to a
    transcoder trained by `train_variants` on the same config, both learn, and section 2 runs."""
    _require_sparsify()
    from safetensors.torch import load_file

    from sae_lens_jsae.training import RunOptions, train_variants

    tokens = 64 * 12
    runner, heldout = script.quick_runner(tmp_path / "cc", tokens)
    result = script.crosscheck(runner, heldout, steps=12, work=tmp_path / "cc")
    contenders = result["contenders"]
    assert set(contenders) == {"ours", "ours_zero_bias_init", *script.SPARSIFY_VARIANTS}
    assert len({c["batches_sha256"] for c in contenders.values()}) == 1
    for c in contenders.values():
        assert 0 < c["heldout_fvu"]["value"] < 1
        assert 0 <= c["heldout_latents_never_active"] < 64
    assert contenders["sparsify"]["fvu_ratio_to_ours"]["value"] == pytest.approx(
        contenders["sparsify"]["heldout_fvu"]["value"] / contenders["ours"]["heldout_fvu"]["value"])
    assert result["training_tokens"] == tokens and result["heldout"]["sequences"] == 32

    cfg, model, dataset, _ = script.quick_setup(tmp_path / "runner", tokens)
    train_variants(cfg, [{"architecture": "topk_transcoder"}], RunOptions(log_every_n_steps=5), override_dataset=dataset, override_model=model)
    expected = load_file(tmp_path / "runner" / "out" / "architecture=topk_transcoder" / "sae_weights.safetensors")
    for key, value in expected.items():
        assert torch.equal(getattr(runner.sae, key).detach(), value), key

    times = script.step_times(runner, warmup=1, repeats=1, work=tmp_path / "st")
    assert set(times["step_median_s"]) == {"transcoder", "skip_transcoder", "jsae_pair_lambda_rule", "plain_pair_lambda_0"}
    assert times["jacobian_coefficient_rule"] == pytest.approx(0.5 * 4**2 / 16)


def test_docs_figures_come_from_the_committed_result():
    """docs/transcoders.md's cross-check and step-time tables quote the result file it links."""
    import json
    import re

    doc = (ROOT / "docs" / "transcoders.md").read_text()
    (name,) = set(re.findall(r"\(\.\./benchmarks/results/(sparsify-crosscheck-cpu-[\d-]+\.json)\)", doc)) - {
        "sparsify-crosscheck-cpu-20261202-211153.json", "sparsify-crosscheck-cpu-20261202-213006.json"}  # earlier runs it also cites
    result = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
    contenders = result["crosscheck"]["contenders"]
    assert f"{result['crosscheck']['training_tokens']:,} training tokens" in doc
    for c in contenders.values():
        iv = c["heldout_fvu"]
        assert f"{iv['value']:.3f} [{iv['lo']:.3f}, {iv['hi']:.3f}]" in doc
        if "fvu_ratio_to_ours" in c:
            r = c["fvu_ratio_to_ours"]
            assert f"{r['value']:.3f}" in doc and f"{r['lo']:.3f}, {r['hi']:.3f}]" in doc
            assert f"| {c['step_time_ratio_to_ours']:.2f} |" in doc
        assert f"| {c['heldout_latents_never_active']}" in doc
    steps = result["step_times"]
    for member, ms in steps["step_median_s"].items():
        assert f"| {ms * 1e3:.0f} |" in doc, member
    for key in ("transcoder_vs_plain_pair", "skip_transcoder_vs_plain_pair", "jsae_pair_vs_plain_pair", "jsae_pair_vs_transcoder"):
        assert f"| {steps['ratios'][key]:.2f} |" in doc, key
