"""The README: its Quickstart runs, its commands parse, its paths exist, its numbers come from
committed result files, and it stays short and free of run dates, commit ids and issue numbers."""

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def readme() -> str:
    return README.read_text()


def section(heading: str, until: str = "\n## ") -> str:
    """From `heading` to the next line starting with `until` (default: the next ## heading)."""
    text = readme()
    start = text.index(heading)
    end = text.find(until, start + len(heading))
    return text[start : end if end >= 0 else None]


def subsection(heading: str) -> str:
    """From a ### heading to the next heading of any level."""
    return section(heading, until="\n#")


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table line in `text`."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in text.splitlines() if line.startswith("|")]


def python_block_after(heading: str) -> str:
    return re.search(r"```python\n(.*?)```", section(heading), re.S).group(1)


def bash_lines(text: str) -> list[str]:
    """Command lines of the ```bash blocks (comments dropped, `\\` continuations joined)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


@pytest.mark.slow
def test_quickstart_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LENS_JSAE_CACHE", str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(python_block_after("## Quickstart"), "README Quickstart", "exec"), {})
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"torch\.Size\(\[\d+, 32, 32\]\)", lines[0]), lines
    assert lines[-1].startswith("tensor(")


def test_short_and_without_dates_commit_ids_or_issue_numbers():
    text = readme()
    assert len(text.encode()) <= 10 * 1024, f"README is {len(text.encode())} bytes"
    assert not re.findall(r"\b(?:19|20)\d\d-\d\d-\d\d\b", text), "a date"
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b", text), "a commit id"
    assert not re.findall(r"(?i)\bissues?\s*#?\d+|(?<![\w&])#\d+\b", text), "an issue number"


def test_the_two_setup_commands_are_demo_and_test():
    assert bash_lines(section("## Install")).count("bash scripts/demo.sh") == 1
    assert bash_lines(section("## Install")).count("bash scripts/test.sh") == 1
    assert [line for line in bash_lines(section("## Install")) if line.startswith("bash ")] == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_every_jsae_command_parses():
    from sae_lens_jsae.cli import build_parser

    commands = [line for line in bash_lines(readme()) if line.startswith("jsae ")]
    assert len(commands) >= 10
    for line in commands:
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit as exc:
            pytest.fail(f"README command does not parse ({exc}): {line}")


def test_every_script_link_and_path_exists():
    text = readme()
    paths = set(re.findall(r"(?<![\w/])((?:configs|scripts|benchmarks|docs|\.ci)/[\w./=-]*\w)", text))
    paths |= {link.split("#")[0] for link in re.findall(r"\]\(([^)#:]+(?:#[^)]*)?)\)", text)}
    assert len(paths) >= 12
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing
    for line in bash_lines(text):  # `python X.py` / `bash X.sh`
        for word in shlex.split(line):
            if re.fullmatch(r"[\w./-]+\.(py|sh)", word):
                assert (ROOT / word).is_file(), line


def test_extras_in_readme_are_the_declared_ones():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    install = section("## Install")
    used = {e for group in re.findall(r"sae-lens-jsae\[([\w,]+)\]|\.\[([\w,]+)\]", install) for e in ",".join(group).split(",") if e}
    assert used and used <= declared, used - declared
    assert all(f"`{extra}`" in install for extra in declared), declared  # each one explained


# --- "Results at a glance": every number is the committed summary's, rounded as printed -----
RESULTS = ROOT / "docs" / "results" / "reference-2m"
COLUMNS = {
    "λ = 0": RESULTS / "jacobian_coefficient_0_summary.json",
    "rule (0.89)": RESULTS / "jacobian_coefficient_0.8889_summary.json",
    "4 × rule (3.56)": RESULTS / "jacobian_coefficient_3.556_summary.json",
    "randomized LLM, rule": RESULTS / "randomized" / "randomized_jacobian_coefficient_0.8889_summary.json",
}
ROWS = {
    "count \\|J\\| > 0.01 (of 1024)": "jacobian_sparsity.mean_count_above[1]",
    "L1/(L2·k), lower = sparser": "jacobian_sparsity.l1_l2_ratio",
    "average CE-loss score [95%]": "splice.average_ce_loss_score",
    "explained variance, input SAE": "explained_variance.input",
}


def matches(printed: str, value: float | None) -> bool:
    """`printed` is `value` rounded to the printed number of decimals."""
    if value is None:
        return False
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(float(printed) - value) <= 0.5 * 10**-decimals + 1e-12


def cell_matches(cell: str, interval: dict) -> bool:
    """A printed "value [lo, hi]" (or "value") cell is the interval rounded as printed."""
    m = re.fullmatch(r"(-?[\d.]+)(?: \[(-?[\d.]+), (-?[\d.]+)\])?", cell.replace("−", "-"))
    if not m or not matches(m.group(1), interval["value"]):
        return False
    return not m.group(2) or (matches(m.group(2), interval["lo"]) and matches(m.group(3), interval["hi"]))


def test_results_table_comes_from_the_committed_summaries():
    rows = table_rows(subsection("### The paper's loss"))
    header, body = rows[0][1:], rows[2:]
    assert header == list(COLUMNS)
    assert [r[0] for r in body] == list(ROWS)
    from sae_lens_jsae.evals.intervals import summary_intervals

    summaries = {col: json.loads(path.read_text()) for col, path in COLUMNS.items()}
    for summary in summaries.values():
        assert summary["jacobian_sparsity"]["thresholds"][1] == 0.01 and summary["k"] == 32
    # the intervals as stored and as the current method (t quantile) gives them from the stored per-sequence sums
    versions = {col: [summary["intervals"], summary_intervals(summary)] for col, summary in summaries.items()}
    for row in body:
        key = ROWS[row[0]]
        for col, cell in zip(COLUMNS, row[1:]):
            for interval in (v[key] for v in versions[col]):
                if cell == "n/a":
                    assert interval["value"] is None and interval["na_reason"], (row[0], col)
                    continue
                assert cell_matches(cell, interval), (row[0], col, cell, interval)


def test_interop_names_are_the_codes():
    """The SAELens interop section's names exist: `load_jsae(path, model=...)`, the `mlp_sha256`
    field, the `jsae.mlp` attribute and SAELens' loaders."""
    import inspect

    from sae_lens import SAE

    import sae_lens_jsae
    from sae_lens_jsae.sae import JacobianSAE, JacobianSAEConfig

    text = section("## SAELens interop")
    for name in ("sae_lens_jsae.load_jsae(path, model=model)", "`mlp_sha256`", "SAE.load_from_disk", "SAE.from_pretrained", "jsae.mlp is None"):
        assert name in text, name
    assert "model" in inspect.signature(sae_lens_jsae.load_jsae).parameters
    assert "mlp_sha256" in JacobianSAEConfig.__dataclass_fields__
    assert hasattr(SAE, "load_from_disk") and hasattr(SAE, "from_pretrained") and hasattr(JacobianSAE, "attach_mlp_from_model")


# --- the comparison table: every number is the committed comparison run's, rounded as printed ----
COMPARISON = ROOT / "docs" / "results" / "faithfulness-1m"
_EDGE = COMPARISON / "mlp_reconstruction_coefficient_1_jacobian_coefficient_0_edge_sparsity_coefficient"
_MLP = COMPARISON / "mlp_reconstruction_coefficient_1_jacobian_coefficient"
_TC = COMPARISON / "transcoders" / "architecture_topk"
COMPARISON_ROWS = {  # a row per method, a model per strength (cells "a / b / c")
    "λ = 0 pair": [COMPARISON / "jacobian_coefficient_0_summary.json"],
    "paper's loss": [COMPARISON / f"jacobian_coefficient_{v}_summary.json" for v in ("0.2222", "0.8889", "3.556")],
    "MLP consistency c = 1": [Path(f"{_MLP}_{v}_summary.json") for v in ("0.8889", "3.556", "14.22")],
    "edge penalty (c = 1)": [Path(f"{_EDGE}_{v}_summary.json") for v in ("0.5", "2", "8")],
    "h = 2 + consistency": [Path(f"{_EDGE}_2_intervention_consistency_coefficient_1_summary.json")],
    "TopK transcoder": [Path(f"{_TC}_transcoder_k_{k}_summary.json") for k in (16, 32, 64)],
    "skip transcoder": [Path(f"{_TC}_skip_transcoder_k_{k}_summary.json") for k in (16, 32, 64)],
}
COMPARISON_COLUMNS = ["edges.edges_for_80", "splice.replacement.ce_loss_score", "intervention.a=0.1.full", "edges.error_share"]


def test_comparison_table_comes_from_the_committed_run():
    rows = table_rows(subsection("### JSAE or transcoder?"))
    body = rows[2:]
    assert [r[0] for r in body] == list(COMPARISON_ROWS)
    for row in body:
        summaries = [json.loads(path.read_text()) for path in COMPARISON_ROWS[row[0]]]
        assert len(row[1].split(" / ")) == len(summaries) or row[1] == "–", row  # one strength per model
        for key, cell in zip(COMPARISON_COLUMNS, row[2:]):
            values = cell.split(" / ")
            assert len(values) == len(summaries), (row[0], key, cell)
            for value, summary in zip(values, summaries):
                assert cell_matches(value, summary["intervals"][key]), (row[0], key, value, summary["intervals"][key])


def test_comparison_verdict_is_the_committed_reports():
    """The README's goal verdict is the one the committed report computed, not a hand-typed one."""
    said = re.findall(r"Goal \([^)]*\): (PASS|FAIL|INCONCLUSIVE)", subsection("### JSAE or transcoder?"))
    reported = re.findall(r"^### Goal: (PASS|FAIL|INCONCLUSIVE)", (COMPARISON / "report.md").read_text(), re.M)
    assert len(said) == 1 and reported == said, (said, reported)
