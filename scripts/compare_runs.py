"""Compare two evaluated runs of the same sweep pair by pair (e.g. float32 vs bf16 penalty).

    python scripts/compare_runs.py docs/results/reference-2m-float32 docs/results/reference-2m \
        --labels "float32 penalty" "bf16 penalty" [--out comparison.md]

Each folder holds `jsae eval` summaries (`*_summary.json`, the randomized control's under
`randomized/`), as `publish_frontier` writes them. Pairs are matched by model (trained /
randomized), λ and loss series. For every headline metric the table gives both runs' values with
95% intervals and the difference B − A: paired (sequence by sequence) when both runs were evaluated
on the same tokens, as `jsae eval` with the same budgets and seed does, else unpaired.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sae_lens_jsae.evals.intervals import difference
from sae_lens_jsae.evals.pipeline import find_summaries
from sae_lens_jsae.report_frontier import SCALE_FREE_KEY, count_key, metric, series_of

METRICS = [
    ("count \\|J\\|>0.01", None),
    ("L1/(L2·k)", SCALE_FREE_KEY),
    ("avg CE-loss score", "splice.average_ce_loss_score"),
    ("input CE-loss score", "splice.input.ce_loss_score"),
    ("EV input", "explained_variance.input"),
    ("EV f(x̂)", "explained_variance.mlp_of_input_reconstruction"),
]


def load_run(folder: Path) -> dict[tuple[bool, float, str], dict[str, Any]]:
    """{(randomized, λ, series): summary} of the summaries in `folder` and `folder/randomized`."""
    files = find_summaries(folder)
    if not files:
        raise SystemExit(f"{folder}: no *_summary.json (pass a folder that `jsae eval` or publish_frontier wrote)")
    out = {}
    for f in files:
        d = json.loads(f.read_text())
        out[(bool(d.get("randomized")), round(float(d.get("jacobian_coefficient") or 0.0), 4), series_of(d))] = d
    return out


def compare(a: dict, b: dict, labels: tuple[str, str]) -> str:
    """Markdown: one row per (pair, metric) with A, B and B − A."""
    common = sorted(a.keys() & b.keys())
    if not common:
        raise SystemExit("the two runs share no pair (matched by model, λ and loss series)")
    lines = [f"| pair | metric | {labels[0]} | {labels[1]} | {labels[1]} − {labels[0]} (95%) | relative |", "|---|---|---|---|---|---|"]
    for key in common:
        da, db = a[key], b[key]
        name = f"{'randomized ' if key[0] else ''}λ={key[1]:g}" + ("" if key[2] == "paper loss" else f" ({key[2]})")
        for label, k in METRICS:
            k = k or count_key(da)
            va, vb = metric(da, k), metric(db, k)
            diff, paired = difference(db, da, k) if k else (None, False)
            rel = f"{diff.value / va.value:+.1%}" if diff is not None and diff.ok and va.ok and va.value else ""
            d_cell = (diff.fmt(3) + ("" if paired else " (unpaired)")) if diff is not None and diff.ok else "n/a"
            lines.append(f"| {name} | {label} | {va.fmt(3) if va.ok else 'n/a'} | {vb.fmt(3) if vb.ok else 'n/a'} | {d_cell} | {rel} |")
    only = sorted(a.keys() ^ b.keys())
    if only:
        lines.append("")
        lines.append("In one run only: " + ", ".join(f"{'randomized ' if r else ''}λ={lam:g} ({s})" for r, lam, s in only))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--labels", nargs=2, default=("A", "B"))
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    table = compare(load_run(args.run_a), load_run(args.run_b), tuple(args.labels))
    sys.stdout.write(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
