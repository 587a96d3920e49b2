"""The report's lead section: the λ frontier (the paper's main figure) with 95% intervals.

One point per evaluated pair: Jacobian sparsity (the paper's count |J| > 0.01 and the scale-free
headline, the L1/(L2·k) ratio, see docs/metrics.md) against the average CE-loss score and against
the input SAE's explained variance, with interval bars; one series per (trained / randomized model
× loss variant), λ = 0 starred. Then a side-by-side table (pairs as columns) with every value's
interval and the paired difference to the λ = 0 pair of the same model (same tokens, so the
sequence-to-sequence noise cancels; `sae_lens_jsae.evals.intervals`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sae_lens_jsae.evals.intervals import METHOD, Interval, paired_differences, relative

COUNT_TAU = 0.01
SCALE_FREE_KEY = "jacobian_sparsity.l1_l2_ratio"
"""The headline scale-free sparsity measure (lower is sparser; docs/metrics.md says why)."""
SCALE_FREE_NAME = "L1/(L2·k) ratio"
PAPER_LOSS = "paper loss"


def resolve_key(d: dict[str, Any], key: str) -> Any:
    """The value at a dotted key such as `jacobian_sparsity.mean_count_above[1]` (None if absent)."""
    data: Any = d
    for part in key.split("."):
        m = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        try:
            data = data[m.group(1)][int(m.group(2))] if m else data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def metric(d: dict[str, Any], key: str | None) -> Interval:
    """A summary's metric with its interval (from `intervals`), or the bare value of an older summary."""
    if key is None:
        return Interval(None, None, None, 0, "not measured")
    if key in (d.get("intervals") or {}):
        return Interval.from_dict(d["intervals"][key])
    v = resolve_key(d, key)
    return Interval(float(v), None, None, 0) if isinstance(v, (int, float)) else Interval(None, None, None, 0, "not measured")


def count_key(d: dict[str, Any], tau: float = COUNT_TAU) -> str | None:
    for i, t in enumerate(d["jacobian_sparsity"]["thresholds"]):
        if abs(t - tau) < 1e-12:
            return f"jacobian_sparsity.mean_count_above[{i}]"
    return None


def series_of(d: dict[str, Any]) -> str:
    return d.get("series_label") or PAPER_LOSS


def pair_name(d: dict[str, Any]) -> str:
    if d.get("pair_name"):
        return d["pair_name"]
    lam = d.get("jacobian_coefficient")
    return ("randomized " if d.get("randomized") else "") + (f"{d['label']} (λ={lam:.3g})" if lam is not None else d["label"])


def reference(items: list[tuple[Path, dict[str, Any]]], d: dict[str, Any]) -> dict[str, Any] | None:
    """The λ = 0 pair a pair is compared with: same model (trained / randomized), paper loss preferred."""
    zeros = [e for _, e in items if e.get("jacobian_coefficient") == 0 and bool(e.get("randomized")) == bool(d.get("randomized"))]
    zeros.sort(key=lambda e: (series_of(e) != PAPER_LOSS, series_of(e) != series_of(d)))
    return zeros[0] if zeros else None


def _ordered(items: list[tuple[Path, dict[str, Any]]]) -> list[tuple[Path, dict[str, Any]]]:
    return sorted(items, key=lambda pd: (bool(pd[1].get("randomized")), series_of(pd[1]) != PAPER_LOSS, series_of(pd[1]),
                                         pd[1].get("jacobian_coefficient") if pd[1].get("jacobian_coefficient") is not None else -1))


def rows_spec(d: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(row label, metric key) of the side-by-side table."""
    rel = d["jacobian_sparsity"].get("relative_thresholds") or []
    return [
        (f"count |J| > {COUNT_TAU:g} (of k²)", count_key(d)),
        (f"{SCALE_FREE_NAME} (scale-free headline; lower = sparser)", SCALE_FREE_KEY),
        *[(f"count |J| > {r:g}·max|J| (scale-free)", f"jacobian_sparsity.relative_count_above[{i}]") for i, r in enumerate(rel)],
        ("top-16 L1 mass (scale-free; higher = sparser)", f"jacobian_sparsity.top_m_mass[{(d['jacobian_sparsity'].get('top_m') or [1, 4, 16]).index(16)}]"
         if 16 in (d["jacobian_sparsity"].get("top_m") or []) else None),
        ("average CE-loss score (input, output)", "splice.average_ce_loss_score"),
        ("input CE-loss score", "splice.input.ce_loss_score"),
        ("output CE-loss score", "splice.output.ce_loss_score"),
        ("replacement CE-loss score", "splice.replacement.ce_loss_score"),
        ("explained variance, input SAE", "explained_variance.input"),
        ("explained variance, output SAE", "explained_variance.output"),
        ("explained variance of f(x̂) vs f(x)", "explained_variance.mlp_of_input_reconstruction"),
        ("MLP's sensitivity to the input SAE's error (1 = isotropic)", "mlp_error.error_sensitivity"),
        ("MLP's sensitivity to the input SAE's decoder rows (weights; no interval)", "mlp_error.decoder_sensitivity"),
        ("linear fraction (linearity)", "linearity.linear"),
    ]


DELTA_KEYS = ("count", SCALE_FREE_KEY, "splice.average_ce_loss_score", "splice.input.ce_loss_score", "explained_variance.input",
              "explained_variance.mlp_of_input_reconstruction", "mlp_error.error_sensitivity", "linearity.linear")
"""Metrics whose paired difference to λ = 0 is tabulated ('count': the count |J| > COUNT_TAU)."""


def _cell(iv: Interval) -> str:
    return iv.fmt(3) if iv.ok else "n/a"


def frontier_table(items: list[tuple[Path, dict[str, Any]]]) -> tuple[list[str], list[list[Any]], list[str]]:
    """(header, rows, notes): pairs as columns; values with intervals, then paired Δ vs λ = 0."""
    ordered = _ordered(items)
    header = ["metric"] + [pair_name(d) for _, d in ordered]
    spec = rows_spec(ordered[0][1])
    rows: list[list[Any]] = [["λ"] + [f"{d['jacobian_coefficient']:.3g}" if d.get("jacobian_coefficient") is not None else "" for _, d in ordered],
                             ["model"] + ["randomized" if d.get("randomized") else "trained" for _, d in ordered],
                             ["loss"] + [series_of(d) for _, d in ordered]]
    notes: list[str] = []
    for label, _ in spec:
        row = [label]
        for _, d in ordered:
            key = dict(rows_spec(d))[label] if label in dict(rows_spec(d)) else None
            iv = metric(d, key)
            if not iv.ok and iv.na_reason not in (None, "not measured"):
                note = f"{pair_name(d)}: n/a — {iv.na_reason}"
                if note not in notes:
                    notes.append(note)
            row.append(_cell(iv))
        rows.append(row)
    for what, key_of in ((f"count |J| > {COUNT_TAU:g}", count_key), (SCALE_FREE_NAME, lambda d: SCALE_FREE_KEY)):
        row = [f"{what} ÷ λ=0's (paired)"]
        for _, d in ordered:
            row.append(_relative(d, reference(items, d), key_of(d)))
        rows.append(row)
    for want in DELTA_KEYS:
        label = next(lab for lab, key in spec if (key == count_key(ordered[0][1]) if want == "count" else key == want))
        row = [f"Δ vs λ=0 (paired): {label}"]
        for _, d in ordered:
            row.append(_delta(d, reference(items, d), count_key(d) if want == "count" else want))
        rows.append(row)
    return header, rows, notes


def _relative(d: dict[str, Any], ref: dict[str, Any] | None, key: str | None) -> str:
    if ref is None or key is None or ref is d:
        return "—"
    iv, paired = relative(d, ref, key)
    if iv.ok:
        return iv.fmt(3) + ("" if paired else " (unpaired)")
    a, b = metric(d, key), metric(ref, key)
    return f"{a.value / b.value:.3f}" if a.ok and b.ok and b.value else "n/a"  # type: ignore[operator]


def _delta(d: dict[str, Any], ref: dict[str, Any] | None, key: str | None) -> str:
    if ref is None or key is None or ref is d:
        return "—"
    diffs = paired_differences(d, ref)
    if key in diffs:
        iv = Interval.from_dict(diffs[key])
        return iv.fmt(3) + ("" if diffs[key].get("paired") else " (unpaired)") if iv.ok else "n/a"
    a, b = metric(d, key), metric(ref, key)
    return f"{a.value - b.value:.3g}" if a.ok and b.ok else "n/a"  # type: ignore[operator]


def frontier_plot(items: list[tuple[Path, dict[str, Any]]], path: Path) -> None:
    """2×2 panels: sparsity (count, scale-free) against average CE-loss score and input explained variance."""
    from sae_lens_jsae.figures import new_figure

    ordered = _ordered(items)
    groups: dict[tuple[bool, str], list[dict[str, Any]]] = {}
    for _, d in ordered:
        groups.setdefault((bool(d.get("randomized")), series_of(d)), []).append(d)
    fig, axes = new_figure(2, 2, figsize=(10, 7.5), squeeze=False)
    xs = [("splice.average_ce_loss_score", "average CE-loss score (input, output)"), ("explained_variance.input", "explained variance, input SAE")]
    ys = [(None, f"count |J| > {COUNT_TAU:g} per token"), (SCALE_FREE_KEY, f"{SCALE_FREE_NAME} (lower = sparser)")]
    for gi, ((rand, _series), ds) in enumerate(groups.items()):
        color = f"C{gi}"
        for r, (ykey, ylabel) in enumerate(ys):
            for c, (xkey, xlabel) in enumerate(xs):
                ax = axes[r][c]
                pts = []
                for d in ds:
                    x, y = metric(d, xkey), metric(d, ykey or count_key(d))
                    if x.ok and y.ok:
                        pts.append((x, y, d))
                if pts:
                    ax.plot([p[0].value for p in pts], [p[1].value for p in pts], ls="--" if rand else "-", color=color, alpha=0.6)
                for x, y, d in pts:
                    xerr = [[x.value - x.lo], [x.hi - x.value]] if x.lo is not None else None
                    yerr = [[y.value - y.lo], [y.hi - y.value]] if y.lo is not None else None
                    zero = d.get("jacobian_coefficient") == 0
                    ax.errorbar(x.value, y.value, xerr=xerr, yerr=yerr, fmt="*" if zero else ("s" if rand else "o"),
                                ms=11 if zero else 5, color=color, capsize=2, lw=1)
                    ax.annotate(f"λ={d.get('jacobian_coefficient', 0):.3g}", (x.value, y.value), fontsize=6, xytext=(3, 3), textcoords="offset points")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
    axes[0][0].set_title("sparsity vs CE-loss score")
    axes[0][1].set_title("sparsity vs explained variance")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{gi}", ls="--" if rand else "-", marker="s" if rand else "o", label=f"{'randomized' if rand else 'trained'} · {series}")
               for gi, (rand, series) in enumerate(groups)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle("Frontier over λ (★ = λ=0; bars: 95% intervals)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)


def add_frontier(doc, items: list[tuple[Path, dict[str, Any]]], out: Path) -> None:
    """Append the frontier section (plot, side-by-side table, notes) to a report `_Doc`."""
    doc.h(2, "Frontier: Jacobian sparsity vs CE-loss score and explained variance")
    frontier_plot(items, out / "frontier.png")
    doc.img("frontier.png", "frontier: sparsity vs CE-loss score and explained variance")
    doc.p(f"Intervals: 95%, {METHOD}; Δ rows: paired differences to the λ=0 pair of the same model (same tokens). "
          f"Headline scale-free sparsity: {SCALE_FREE_NAME} (docs/metrics.md). CE-loss scores, explained variances and "
          "splices on the splice tokens; Jacobian sparsity on the sparsity tokens. Source: each summary JSON's `intervals` "
          "(recomputable from its per_sequence sums).")
    header, rows, notes = frontier_table(items)
    doc.table(header, rows)
    for n in notes:
        doc.p(n)
