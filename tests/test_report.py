"""report.md / report.html render from fixture JSONs, with plots and traceable numbers."""

import json
import re
from pathlib import Path

import pytest

from sae_lens_jsae.report import write_report

FIX = Path(__file__).parent / "fixtures" / "report"
ORDER = ["jsae", "lambda0", "sweep_lambda2", "randomized_jsae", "randomized_lambda0"]


@pytest.fixture
def report(tmp_path):
    summaries = [FIX / f"{name}_summary.json" for name in ORDER]
    md = write_report(summaries, tmp_path, extra_core=[FIX / "core" / "jsae_output_sae_eval_results.json"])
    return tmp_path, md


def test_report_files_and_plots(report):
    out, md = report
    assert md == out / "report.md" and (out / "report.html").exists()
    text = md.read_text()
    pngs = {"jacobian_histogram.png", "count_vs_threshold.png", "pareto.png", "linearity.png", "randomized.png"}
    for png in pngs:
        assert (out / png).stat().st_size > 1000 and f"]({png})" in text
    html = (out / "report.html").read_text()
    assert all(f"src='{png}'" in html for png in pngs) and "<table>" in html
    assert "SAEBench core eval" in text and "jsae/output_sae" in text  # the extra core JSON is tabulated


def _resolve(data, key: str):
    for part in key.split("."):
        m = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        data = data[m.group(1)][int(m.group(2))] if m else data[part]
    return data


def test_every_sparsity_number_traces_to_its_json(report):
    out, md = report
    rows = [line.split(" | ") for line in md.read_text().splitlines() if line.startswith("| ") and ": jacobian_sparsity." in line]
    assert len(rows) == 5 * 10  # 4 thresholds, mean, ratio, 3 top-m, tokens
    for row in rows:
        value, source = row[2], row[3].rstrip(" |")
        file, key = source.split(": ")
        data = json.loads((out / file).resolve().read_text())
        assert f"{_resolve(data, key):.4g}" == value, source


def test_missing_optional_groups_are_left_out(tmp_path):
    md = write_report([FIX / "jsae_summary.json"], tmp_path)
    assert not (tmp_path / "randomized.png").exists()
    assert "pareto.png" in md.read_text()  # a single λ point still plots
    with pytest.raises(ValueError, match="not an evaluate_checkpoint summary"):
        write_report([FIX / "core" / "jsae_input_sae_eval_results.json"], tmp_path)
