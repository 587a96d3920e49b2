"""benchmarks/bench.py's arithmetic, result files and scripts, on known answers (no timing is
checked: speed lives in the benchmark's own results, docs/performance.md)."""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench.py as a module (it is a script of the repository, not of the package)."""
    spec = importlib.util.spec_from_file_location("jsae_benchmark", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_flop_floors_match_a_hand_count(bench):
    # d=2, d_mlp=3, d_sae=4, k=1, T=5 tokens, counted by hand from the docstring's terms (x2 per multiply-add):
    # sparse 2·4·T·k·d = 80, encoders 2·T·d·S = 80, MLP (R+1)·T·d·m, weights 2·(R+1)·S·d·m, per token 3·T·k²·m = 45
    assert bench.flops((2, 3, "gelu", False, 4, 1), 5) == {  # dense: R = 1
        "plain_pair": 2 * 220, "sparsify_pair": 2 * 160, "jacobian_weights": 2 * 96, "jacobian_per_token": 2 * 45, "jsae": 2 * 361}
    assert bench.flops((2, 3, "silu", True, 4, 1), 5) == {  # gated: R = 2
        "plain_pair": 2 * 250, "sparsify_pair": 2 * 160, "jacobian_weights": 2 * 144, "jacobian_per_token": 2 * 45, "jsae": 2 * 439}
    # post-norm: added T·d·m + 2·T·k·m + 2·T·k·d = 80 over 2·(R+1)·S·d·m + T·(3·k²·m + 2·R·k·m) = 249
    assert bench.post_norm_flop_share((2, 3, "gelu_pytorch_tanh", True, 4, 1), 5) == pytest.approx(80 / 249)


def test_step_ratios_divide_each_jsae_by_the_plain_pair(bench, monkeypatch):
    """Section 1 with the timer replaced: known step times in, the ratios and floors out."""
    medians = iter([2.0, 5.0, 3.0, 0.5])  # plain_pair, jsae, jsae_bf16_jacobian, sparsify (when importable)
    ran = []

    def fake_time_steps(step, warmup, repeats, sync=lambda: None):
        step()  # the step must still run
        ran.append(step)
        m = next(medians)
        return bench.Timing(m, [m] * repeats)

    monkeypatch.setattr(bench, "time_steps", fake_time_steps)
    size = bench.QUICK_SIZES["smollm2_like"]
    out = bench.bench_steps("smollm2_like", size, 16, torch.device("cpu"), warmup=0, repeats=5)
    assert (out["plain_pair_step_s"], out["jsae_step_s"], out["jsae_bf16_jacobian_step_s"]) == (2.0, 5.0, 3.0)
    assert out["step_ratio_vs_plain_pair"] == 2.5 and out["step_ratio_vs_plain_pair_bf16_jacobian"] == 1.5
    fl = bench.flops(size, 16)
    assert out["step_ratio_vs_plain_pair_flop_floor_ratio"] == fl["jsae"] / fl["plain_pair"] > 1
    if "sparsify" in out:  # sparsify not installed: said so, no ratio
        assert len(ran) == 3 and "vs_sparsify_pair" not in out
    else:
        assert len(ran) == 4 and out["vs_sparsify_pair"] == 10.0 and out["plain_pair_vs_sparsify"] == 4.0


def test_peak_bytes_is_the_running_maximum_in_time_order(bench):
    # allocations +100 (t=1), +50 (t=2), -100 (t=3), +20 (t=4), listed out of order: peak 150 at t=2
    trace = {"traceEvents": [{"name": "[memory]", "ts": t, "args": {"Bytes": b}} for t, b in ((3, -100), (1, 100), (4, 20), (2, 50))]
             + [{"name": "aten::mm", "ts": 0, "dur": 5}]}
    assert bench.peak_allocated_bytes(trace) == 150
    assert bench.peak_allocated_bytes(trace["traceEvents"]) == 150  # a bare event list (the other trace form)

    def allocations():  # 4 MB, 4 MB, free the first, 2 MB: the peak is 8 MB
        a = torch.ones(1_000_000)
        b = torch.ones(1_000_000)
        del a
        c = torch.ones(500_000)
        del b, c

    peak = bench._peak_cpu_bytes(allocations)
    assert 8_000_000 <= peak < 8_000_000 + 65_536, peak


@pytest.mark.parametrize(
    "result, prefix",
    [
        ({"quick": True, "precision": "float32", "machine": {"device": "cpu"}, "steps": {}}, "bench-quick-cpu-"),
        ({"quick": False, "precision": "bf16 autocast", "machine": {"device": "cuda:0"}, "steps": {}}, "bench-cuda-bf16-"),
        ({"quick": False, "precision": "float32", "machine": {"device": "cpu"}, "post_norm_overhead": {}}, "bench-post-norm-cpu-"),
        ({"quick": False, "precision": "float32", "machine": {"device": "cpu"}, "data_parallel": {}}, "bench-data-parallel-cpu-"),
    ],
)
def test_result_file_name_says_what_ran(bench, tmp_path, result, prefix):
    path = bench.write_result(result, tmp_path)
    assert path.parent == tmp_path and path.name.startswith(prefix) and path.suffix == ".json"
    assert json.loads(path.read_text()) == result


def test_bench_script_writes_the_json_it_prints(bench, tmp_path):
    """`python benchmarks/bench.py` as a user runs it (section 6 only, tiny sizes)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--post-norm-only", "--no-keep-freed-memory", "--out-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])
    (path,) = tmp_path.glob("bench-quick-post-norm-cpu-*.json")
    assert printed.pop("result_file") == str(path) and json.loads(path.read_text()) == printed
    post = printed["post_norm_overhead"]
    size, batch = bench.QUICK_POST_NORM_SIZE
    # the estimate recomputed here from the sizes the result records, by name (docs/performance.md's
    # multiply-adds): fails if the script unpacks its size tuple in another order (k for d_sae, d_mlp
    # for d_model), forgets the gate's extra product (R = 2) or takes another batch than it timed
    sz, T = post["sizes"], post["batch"]
    assert T == batch and sz == dict(zip(("d_model", "d_mlp", "act_fn", "gated", "d_sae", "k"), size))
    d, m, S, k, R = sz["d_model"], sz["d_mlp"], sz["d_sae"], sz["k"], 2 if sz["gated"] else 1
    assert R == 2  # the quick size is gated, so the gate's term is exercised
    expected = (T * d * m + 2 * T * k * m + 2 * T * k * d) / (2 * (R + 1) * S * d * m + T * (3 * k * k * m + 2 * R * k * m))
    assert post["post_norm_overhead_flop_estimate"] == pytest.approx(expected, rel=1e-12)
    for precision in ("float32", "bf16"):
        # from the raw samples: fails if a reported time is not their median (a mean with the
        # warm-up in it, the last sample) or the overhead divides the wrong pair (CPU time, swapped)
        med = {label: statistics.median(post[f"penalty_{label}_post_norm_{precision}_samples_s"]) for label in ("with", "without")}
        for label in ("with", "without"):
            assert len(post[f"penalty_{label}_post_norm_{precision}_samples_s"]) == 5
            assert post[f"penalty_{label}_post_norm_{precision}_s"] == pytest.approx(med[label], abs=1e-5)  # samples rounded to 5 places
        w, wo = med["with"], med["without"]
        assert post[f"post_norm_overhead_{precision}"] == pytest.approx(w / wo - 1, abs=1e-5 * (1 / wo + w / wo**2))  # the rounding, propagated
    assert printed["machine"]["glibc_keep_freed_memory"] is False


def test_bench_jacobian_script_agrees_with_jacrev():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_jacobian.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["max_abs_diff_float32"] < 1e-5  # the closed form is the Jacobian jacrev computes
    assert 0 < result["peak_jacobian_bytes_chunked"] < result["peak_jacobian_bytes_unchunked"]
