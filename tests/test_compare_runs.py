"""scripts/compare_runs.py: two evaluated runs side by side, pair by pair, with B − A intervals."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from sae_lens_jsae.evals.intervals import Interval

RESULTS = Path(__file__).parents[1] / "docs" / "results"
SCRIPT = Path(__file__).parents[1] / "scripts" / "compare_runs.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _paired_direct(num, den):
    """(value, lo, hi) of Σnum/Σden over sequences: t₀.₉₇₅(n−1) · delta-method SE, computed here."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    n, r = num.size, num.sum() / den.sum()
    half = student_t.ppf(0.975, n - 1) * np.sqrt(n / (n - 1) * np.sum(((num - r * den) / den.sum()) ** 2))
    return r, r - half, r + half


def test_two_runs_on_the_same_tokens_give_paired_b_minus_a_as_computed_directly(tmp_path):
    """float32 penalty (A) vs bf16 penalty (B), the reference run evaluated twice on the same tokens:
    each pair's A and B cells are that run's, and B − A of the count |J| > 0.01 and of the input
    explained variance equal the paired difference computed here from the per-sequence sums of the
    same-named summaries (a swapped run or pair, an unpaired or a 1.96 interval fails)."""
    mod = _script()
    run_a, run_b = RESULTS / "reference-2m-float32", RESULTS / "reference-2m"
    out = tmp_path / "cmp.md"
    assert mod.main([str(run_a), str(run_b), "--labels", "f32", "bf16", "--out", str(out)]) == 0
    rows = {}
    for r in out.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", r.strip().strip("|"))]  # markdown: \| is a literal bar
        if r.startswith("| ") and "λ=" in cells[0]:
            rows[cells[0], cells[1]] = cells
    assert len(rows) == 8 * 6  # 5 trained + 3 randomized pairs × 6 metrics
    n_nonzero = 0
    for file_a in sorted(run_a.glob("*_summary.json")) + sorted((run_a / "randomized").glob("*_summary.json")):
        a = json.loads(file_a.read_text())
        b = json.loads((run_b / file_a.relative_to(run_a)).read_text())
        name = ("randomized " if a["randomized"] else "") + f"λ={a['jacobian_coefficient']:g}"
        i = a["jacobian_sparsity"]["thresholds"].index(0.01)
        count_key = f"jacobian_sparsity.mean_count_above[{i}]"
        sa, sb = a["jacobian_sparsity"]["per_sequence"], b["jacobian_sparsity"]["per_sequence"]
        pa, pb = a["splice"]["per_sequence"], b["splice"]["per_sequence"]
        assert sa["n_tokens"] == sb["n_tokens"] and pa["var_input"] == pb["var_input"]  # the same tokens
        for label, key, direct in (
            ("count \\|J\\|>0.01", count_key, _paired_direct(np.subtract(sb["count_above"][i], sa["count_above"][i]), sa["n_tokens"])),
            ("EV input", "explained_variance.input", _paired_direct(np.subtract(pa["sqerr_input"], pb["sqerr_input"]), pa["var_input"])),
        ):
            cells = rows[name, label]
            assert cells[2] == Interval.from_dict(a["intervals"][key]).fmt(3) and cells[3] == Interval.from_dict(b["intervals"][key]).fmt(3)
            if direct[0] == 0:
                assert cells[4] == "0 [0, 0]", cells
                continue
            got = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cells[4])
            assert got, cells  # paired: no "(unpaired)"
            for g, want in zip(got.groups(), direct):
                assert float(g) == pytest.approx(want, rel=6e-3, abs=1e-12), (name, label, cells[4])
            n_nonzero += 1
    assert n_nonzero >= 8  # the λ = 0 pairs are the same in both runs; the others differ


def test_runs_on_different_tokens_are_unpaired_and_only_common_pairs_are_matched():
    mod = _script()
    a, b = mod.load_run(RESULTS / "frontier-0.2m"), mod.load_run(RESULTS / "reference-2m")
    table = mod.compare(a, b, ("0.2M", "2M"))
    assert "(unpaired)" in table
    assert "In one run only:" in table and "mlp_reconstruction_coefficient=1" in table.split("In one run only:")[1]
    assert "| λ=3.556 | count \\|J\\|>0.01 |" in table
