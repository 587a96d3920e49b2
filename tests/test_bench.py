"""`scripts/bench.py --quick` runs and writes valid JSON (benchmarks are not tests: no numbers checked)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_writes_valid_json(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--profile", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(tmp_path.glob("bench-quick-cpu-*.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
    for size in ("pythia70m_like", "smollm2_like"):
        step = result["steps"][size]
        assert step["step_ratio_vs_plain_pair"] > 0 and step["step_ratio_vs_plain_pair_flop_floor_ratio"] > 1
        assert step["step_ratio_vs_plain_pair_bf16_jacobian"] > 0
        assert len(step["jsae_step_samples_s"]) >= 5
        assert result["peak_jacobian_bytes"][size]["peak_jacobian_bytes_unchunked"] > 0
    assert result["jacobian_vs_jacrev"]["jacobian_vs_jacrev"] > 0
    assert result["profile_self_cpu_s_per_step"]["smollm2_like"]["bfloat16"]["aten::bmm"] > 0
    assert result["offline"]["llm_ran_past_hooked_block"] is False
    assert 0 < result["offline"]["sweep_ratio"] and 0 < result["offline"]["sweep_ratio_floor"] <= 1
    assert result["offline"]["end_to_end_ratio_bf16_jacobian"] > 0
    post = result["post_norm_overhead"]
    assert post["penalty_with_post_norm_float32_s"] > 0 and post["penalty_without_post_norm_bf16_s"] > 0
    assert 0 < post["post_norm_overhead_flop_estimate_gemma_2_2b_16k_batch_4096"] < 0.1
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["result_file"].endswith(files[0].name)


def test_bench_jacobian_script_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_jacobian.py"), "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["jacobian_vs_jacrev"] > 0 and result["peak_jacobian_bytes_chunked"] > 0
