"""Packaging: `jsae eval` and the report work without the optional `saebench` extra.

(The wheel itself is built, installed into a fresh venv and run by `.ci/check_wheel.sh`, a
step of `.ci/run`: it takes minutes, too long for the test-suite.)
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sae_lens_jsae.evals import saebench as sb

TESTS = Path(__file__).parent

# Runs in a fresh interpreter where `import sae_bench` fails as it does when it is not installed.
WITHOUT_SAE_BENCH = textwrap.dedent(
    """
    import json, sys
    sys.modules["sae_bench"] = None
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    import torch
    from helpers import make_tiny_model
    from sae_lens_jsae import build_jacobian_sae
    from sae_lens_jsae.evals import compare, evaluate_checkpoint

    out = Path(sys.argv[1])
    torch.manual_seed(0)
    model = make_tiny_model("gated_silu")
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6, jacobian_coefficient=0.5)
    tokens = torch.randint(0, model.cfg.d_vocab, (12, 16), generator=torch.Generator().manual_seed(0))
    kw = dict(n_tokens=64, n_splice_tokens=32, n_core_reconstruction_tokens=32, n_core_sparsity_tokens=64,
              n_linearity_tokens=4, batch_size=4, progress=False)
    summary = evaluate_checkpoint(sae, model, tokens, out / "eval", **kw)
    compare([summary], out / "report")
    assert "sae_bench" not in sys.modules or sys.modules["sae_bench"] is None
    print("SUMMARY", summary)
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch, SAELens and TransformerLens: 35-50 s on the shared 2-core VM
def test_eval_and_report_run_without_sae_bench(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", WITHOUT_SAE_BENCH, str(tmp_path), str(TESTS)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    reason = "SAEBench's core eval skipped: sae_bench is not installed (pip install 'sae-lens-jsae[saebench]')"
    assert reason in run.stdout  # said when it happens
    summary = json.loads(Path(run.stdout.split("SUMMARY ")[-1].strip()).read_text())
    assert summary["core"] == {} and summary["core_skipped"] == reason
    assert summary["jacobian_sparsity"]["n_tokens"] == 64 and summary["intervals"]
    assert reason in (tmp_path / "report" / "report.md").read_text()  # and in the report
    # the Jacobian evals' JSONs written by the stand-ins keep SAEBench's layout: SAEBench's own
    # classes (installed in this process) read them back, and they have every schema field
    for kind in ("jacobian_sparsity", "jacobian_linearity"):
        path = tmp_path / "eval" / kind / "jsae_custom_sae_eval_results.json"
        assert sb.read_eval_output(path).eval_type_id == kind
        data = json.loads(path.read_text())
        schema = json.loads(sb.schema_path(kind).read_text())
        assert set(schema["required"]) <= set(data) and data["sae_bench_commit_hash"] == "not installed"
