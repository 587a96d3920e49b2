"""scripts/compare_runs.py: two evaluated runs side by side, pair by pair, with B − A intervals."""

import importlib.util
import re
from pathlib import Path

RESULTS = Path(__file__).parents[1] / "docs" / "results"
SCRIPT = Path(__file__).parents[1] / "scripts" / "compare_runs.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_run_against_itself_is_paired_and_zero(tmp_path):
    mod = _script()
    out = tmp_path / "cmp.md"
    assert mod.main([str(RESULTS / "frontier-0.2m"), str(RESULTS / "frontier-0.2m"), "--labels", "a", "b", "--out", str(out)]) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith("| ") and "λ=" in r]
    # 10 pairs (7 trained incl. the mlp_reconstruction series, 3 randomized) × 6 metrics
    assert len(rows) == 60
    assert any("randomized λ=0.8889" in r for r in rows) and any("mlp_reconstruction_coefficient" in r for r in rows)
    for r in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", r.strip("|"))]  # markdown: \| is a literal bar
        assert cells[2] == cells[3]
        assert cells[4] == "n/a" or (cells[4].startswith("0 [0, 0]") and "unpaired" not in cells[4]), r


def test_runs_on_different_tokens_are_unpaired_and_only_common_pairs_are_matched():
    mod = _script()
    a, b = mod.load_run(RESULTS / "frontier-0.2m"), mod.load_run(RESULTS / "reference-2m")
    table = mod.compare(a, b, ("0.2M", "2M"))
    assert "(unpaired)" in table
    assert "In one run only:" in table and "mlp_reconstruction_coefficient=1" in table.split("In one run only:")[1]
    assert "| λ=3.556 | count \\|J\\|>0.01 |" in table
