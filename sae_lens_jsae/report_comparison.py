"""The report's lead section when transcoders were evaluated: which method makes the MLP's
computation sparsest at equal faithfulness?

Every model (JSAE pairs of every loss and strength, transcoders, skip transcoders), all scored on
the same held-out tokens: edges per active downstream node for 80% of its |attribution|
(`evals/edges.py`, docs/metrics.md) against three kinds of faithfulness — the replacement CE-loss
score (the whole MLP replaced), the MLP-output explained variance, and intervention faithfulness
(`evals/intervention.py`: does the graph predict the MLP's change when an upstream latent
weakens?) — with 95% interval bars, one line (frontier) per method through its strengths, the
λ = 0 pair starred. Then the frontiers read at the reference transcoder's faithfulness, a
side-by-side table (models as columns) and the goal's verdict by interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from sae_lens_jsae.evals.intervals import INCONCLUSIVE, Interval, difference, relative, summary_estimates, verdict
from sae_lens_jsae.report_frontier import metric

EDGES_KEY = "edges.edges_for_80"
"""The headline: edges per active downstream node to reach 80% of its total |attribution|."""
CE_KEY = "splice.replacement.ce_loss_score"
EV_KEY = "explained_variance.replacement"
GOAL_EDGE_RATIO = 0.5
"""The goal: a JSAE needs ≤ this multiple of the best transcoder's edges for 80% coverage …"""
GOAL_CE_DROP = 0.05
"""… at a replacement CE-loss score no more than this below that transcoder's, and an intervention
faithfulness (`INTERVENTION_KEY`) no lower than its."""
INTERVENTION_KEY = "intervention.a=0.1.full"
"""Intervention faithfulness, the goal's and the plot's: latents weakened by 10%, the full graph."""
INTERVENTION_ROWS = (("intervention faithfulness, a = 0.1, full graph", "intervention.a=0.1.full"),
                     ("intervention faithfulness, a = 0.1, pruned (80%)", "intervention.a=0.1.pruned"),
                     ("intervention faithfulness, a = 1 (removed), full", "intervention.a=1.full"),
                     ("intervention faithfulness, a = 1 (removed), pruned", "intervention.a=1.pruned"))

_LOSS_TERMS = {"mlp_reconstruction_coefficient": "MLP-consistency", "edge_sparsity_coefficient": "edge penalty",
               "intervention_consistency_coefficient": "intervention consistency", "replacement_coefficient": "replacement term"}


class Model(NamedTuple):
    """One evaluated model of the comparison."""

    path: Path
    """Its summary JSON."""
    summary: dict[str, Any]
    method: str
    """The line it belongs to: 'JSAE, paper loss', 'JSAE + MLP-consistency', 'TopK transcoder', …"""
    name: str
    """Its column name (method and strength)."""
    is_transcoder: bool
    is_lambda0: bool


def method_of(d: dict[str, Any]) -> str:
    """A pair's method: the opt-in loss terms it was trained with (non-zero), else the paper's loss;
    a transcoder's: its architecture."""
    if d.get("kind") == "transcoder":
        base = "skip transcoder" if "skip" in d.get("architecture", "") else "TopK transcoder"
        return base + (" + intervention consistency" if (d.get("series") or {}).get("intervention_consistency_coefficient") else "")
    terms = [_LOSS_TERMS.get(k, k) for k, v in sorted((d.get("series") or {}).items()) if v]
    return "JSAE + " + " + ".join(terms) if terms else "JSAE, paper loss"


def _model_name(d: dict[str, Any], method: str) -> str:
    if d.get("kind") == "transcoder":
        w = (d.get("series") or {}).get("intervention_consistency_coefficient")
        return f"{method.split(' + ')[0]} k={d['k']}" + (f" (consistency={w:g})" if w else "")
    lam = d.get("jacobian_coefficient")
    if lam == 0 and method == "JSAE, paper loss":
        return "λ = 0 pair"
    strengths = ", ".join(f"{_LOSS_TERMS.get(k, k).split()[0]}={v:g}" for k, v in sorted((d.get("series") or {}).items()) if v)
    return f"{method.replace('JSAE, paper loss', 'JSAE')} λ={lam:.3g}" + (f" ({strengths})" if strengths else "")


def models(pairs: list[tuple[Path, dict[str, Any]]], transcoders: list[tuple[Path, dict[str, Any]]]) -> list[Model]:
    """The comparison's models (randomized pairs left out), pairs first, λ = 0 first."""
    out = []
    for p, d in [*[(p, d) for p, d in pairs if not d.get("randomized")], *transcoders]:
        m = method_of(d)
        is_tc = d.get("kind") == "transcoder"
        out.append(Model(p, d, m, _model_name(d, m), is_tc, not is_tc and d.get("jacobian_coefficient") == 0 and m == "JSAE, paper loss"))
    return sorted(out, key=lambda m: (m.is_transcoder, not m.is_lambda0, m.method, m.summary.get("jacobian_coefficient") or 0, m.summary.get("k")))


def active_latents(d: dict[str, Any]) -> int:
    """Latents active per token: k for a transcoder, k_in + k_out for a pair."""
    return int(d["k"]) if d.get("kind") == "transcoder" else 2 * int(d["k"])


def parameters(d: dict[str, Any]) -> int | None:
    """Trained parameters (a pair: its two SAEs; the MLP is frozen); None in older summaries."""
    return None if d.get("n_parameters") is None else int(d["n_parameters"])


class Goal(NamedTuple):
    """The comparison's goal, decided by interval."""

    verdict: str
    """PASS: some JSAE meets both conditions with its whole intervals; FAIL: every JSAE misses one
    with its whole interval; INCONCLUSIVE otherwise (or nothing to compare)."""
    transcoder: str | None
    """The best transcoder (the highest replacement CE-loss score)."""
    rows: list[list[Any]]
    """Per JSAE: name, edges ÷ the transcoder's (interval), Δ CE-loss score (interval), verdicts."""


def goal(ms: list[Model]) -> Goal:
    """Does some JSAE variant (any pair but the plain λ = 0 one) need ≤ 0.5× the edges for 80% coverage of the best transcoder at a
    replacement CE-loss score no more than 0.05 below that transcoder's?"""
    ce = {id(m): summary_estimates(m.summary).get(CE_KEY) for m in ms}
    tcs = [m for m in ms if m.is_transcoder and ce[id(m)] is not None and ce[id(m)].na_reason is None]
    jsaes = [m for m in ms if not m.is_transcoder and not m.is_lambda0]  # every JSAE variant (λ > 0 or an opt-in term)
    if not tcs or not jsaes:
        return Goal(INCONCLUSIVE, None, [])
    best = reference_transcoder(ms, tcs, ce)
    rows, verdicts = [], []
    for m in jsaes:
        ratio_iv, _ = relative(m.summary, best.summary, EDGES_KEY)
        ce_iv, _ = difference(m.summary, best.summary, CE_KEY)
        v_edges, v_ce = verdict(ratio_iv, GOAL_EDGE_RATIO, "below"), verdict(ce_iv, -GOAL_CE_DROP, "above")
        checks = [v_edges, v_ce]
        row = [m.name, ratio_iv.fmt(3), v_edges, ce_iv.fmt(3), v_ce]
        if INTERVENTION_KEY in summary_estimates(m.summary) and INTERVENTION_KEY in summary_estimates(best.summary):
            faith_iv, _ = difference(m.summary, best.summary, INTERVENTION_KEY)
            v_faith = verdict(faith_iv, 0.0, "above")
            checks.append(v_faith)
            row += [faith_iv.fmt(3), v_faith]
        else:
            row += ["not measured", INCONCLUSIVE]
            checks.append(INCONCLUSIVE)
        both = "PASS" if all(c == "PASS" for c in checks) else "FAIL" if "FAIL" in checks else INCONCLUSIVE
        verdicts.append(both)
        rows.append([*row, both])
    overall = "PASS" if "PASS" in verdicts else "FAIL" if all(v == "FAIL" for v in verdicts) else INCONCLUSIVE
    return Goal(overall, best.name, rows)


def reference_transcoder(ms: list[Model], tcs: list[Model], ce: dict[int, Any]) -> Model:
    """The transcoder the goal compares with: the skip transcoder (untrained for consistency) at the
    pairs' k, the SAE width a reader would pick for the same budget; else the highest CE-loss score."""
    pair_k = {m.summary.get("k") for m in ms if not m.is_transcoder}
    same = [m for m in tcs if m.method == "skip transcoder" and m.summary.get("k") in pair_k]
    return same[0] if same else max(tcs, key=lambda m: ce[id(m)].value)


class FrontierPoint(NamedTuple):
    """A method's frontier read at one value of a faithfulness metric."""

    method: str
    edges: Interval
    """Edges for 80% at that faithfulness, linearly interpolated between the method's two models
    that bracket it (their interval ends interpolated the same way: an approximation)."""
    between: str
    """The two models interpolated between, or why the frontier does not reach the value."""


def frontier_at(ms: list[Model], method: str, x_key: str, x0: float) -> FrontierPoint:
    """`method`'s edges for 80% at faithfulness `x0` of metric `x_key`, along its frontier."""
    pts = sorted(((metric(m.summary, x_key), metric(m.summary, EDGES_KEY), m) for m in ms if m.method == method), key=lambda t: t[0].value or 0)
    pts = [t for t in pts if t[0].value is not None and t[1].value is not None]
    if not pts:
        return FrontierPoint(method, Interval(None, None, None, 0, "not measured"), "")
    for (xa, ya, ma), (xb, yb, mb) in zip(pts, pts[1:]):
        if xa.value <= x0 <= xb.value and xb.value > xa.value:
            w = (x0 - xa.value) / (xb.value - xa.value)
            mix = lambda a, b, w=w: None if a is None or b is None else (1 - w) * a + w * b  # noqa: E731
            return FrontierPoint(method, Interval(mix(ya.value, yb.value), mix(ya.lo, yb.lo), mix(ya.hi, yb.hi), min(ya.n_sequences, yb.n_sequences)),
                                 f"{ma.name} – {mb.name}")
    for x, y, m in pts:
        if abs(x.value - x0) < 1e-12:
            return FrontierPoint(method, y, m.name)
    lo, hi = pts[0][0].value, pts[-1][0].value
    reason = f"its models span {lo:.3g} – {hi:.3g}"
    return FrontierPoint(method, Interval(None, None, None, 0, reason), reason)


def add_comparison(doc: Any, pairs: list[tuple[Path, dict[str, Any]]], transcoders: list[tuple[Path, dict[str, Any]]], out: Path, rel: Any) -> None:
    """The comparison section (plot, side-by-side table, goal) into the report `doc`."""
    ms = models(pairs, transcoders)
    doc.h(2, "Which method makes the MLP's computation sparsest at equal faithfulness?")
    clustered = any((m.summary.get("heldout") or {}).get("speech") for m in ms)
    doc.p("Every model on the same held-out tokens. Sparsity of the computation: edges per active downstream node needed to "
          "reach 80% of its total |attribution| (upstream = an input SAE's active latents plus error and bias nodes; the pair's "
          "own input SAE for pairs, the λ = 0 pair's for transcoders; docs/metrics.md). Faithfulness: the replacement CE-loss "
          "score (the whole MLP replaced: a pair's output SAE ∘ MLP ∘ input SAE, a transcoder's ŷ(x)), the MLP-output "
          "explained variance, and intervention faithfulness (weaken one of the 8 largest upstream latents by 10%, run the "
          "real MLP: the share of its output change the graph predicts; 1 = exact, 0 = no better than predicting no change). "
          f"95% intervals, clustered by {'speech' if clustered else 'sequence'}.")
    if any(metric(m.summary, EDGES_KEY).value is not None for m in ms):
        _plot(ms, out, doc)
    g = goal(ms)
    if g.transcoder is not None:
        _frontier_reading(ms, g.transcoder, doc)
    _frontier_table(ms, doc)
    _table(ms, doc, rel)
    doc.h(3, f"Goal: {g.verdict}")
    doc.p(f"Some JSAE variant (λ > 0 or an opt-in loss term) needs ≤ {GOAL_EDGE_RATIO:g}× the edges for 80% coverage of the reference "
          f"transcoder ({g.transcoder or 'none evaluated'}: the skip transcoder at the pairs' k, else the highest replacement CE-loss "
          f"score) at a replacement CE-loss score no more than {GOAL_CE_DROP:g} below it and an intervention faithfulness "
          f"(`{INTERVENTION_KEY}`) no lower than its. PASS / FAIL per condition when the whole 95% interval is on one side of "
          "the bound (paired where both were scored on the same tokens).")
    if g.rows:
        doc.table(["JSAE", "edges for 80% ÷ transcoder's", f"≤ {GOAL_EDGE_RATIO:g}?", "Δ replacement CE-loss score",
                   f"≥ −{GOAL_CE_DROP:g}?", "Δ intervention faithfulness", "≥ 0?", "all"], g.rows)


def _frontier_reading(ms: list[Model], reference: str, doc: Any) -> None:
    ref = next(m for m in ms if m.name == reference)
    doc.h(3, "The frontiers at the reference transcoder's faithfulness")
    rows = []
    for key, label in ((CE_KEY, "replacement CE-loss score"), (INTERVENTION_KEY, "intervention faithfulness (a = 0.1)")):
        x0 = metric(ref.summary, key).value
        if x0 is None:
            continue
        for meth in dict.fromkeys(m.method for m in ms):
            p = frontier_at(ms, meth, key, x0)
            rows.append([f"{label} = {x0:.3g}", meth, p.edges.fmt(3) if p.edges.ok else "beyond the frontier", p.between])
    doc.p(f"Each method's edges for 80% where its frontier crosses {reference}'s faithfulness, linearly interpolated between "
          "the two models that bracket it (the interval's ends interpolated the same way, an approximation); a method whose "
          "models all lie on one side does not reach it.")
    doc.table(["at", "method", "edges for 80% (interpolated)", "between"], rows)


_COLOURS = {"JSAE, paper loss": "tab:blue", "JSAE + MLP-consistency": "tab:green", "JSAE + edge penalty": "tab:purple",
            "JSAE + edge penalty + MLP-consistency": "tab:purple", "TopK transcoder": "tab:red", "skip transcoder": "tab:orange",
            "JSAE + edge penalty + intervention consistency + MLP-consistency": "tab:cyan",
            "JSAE + edge penalty + MLP-consistency + replacement term": "tab:olive",
            "skip transcoder + intervention consistency": "tab:brown"}


def _plot(ms: list[Model], out: Path, doc: Any) -> None:
    from sae_lens_jsae.figures import new_figure, publish

    panels = [(CE_KEY, "replacement CE-loss score (MLP replaced; higher is better)"),
              (INTERVENTION_KEY, "intervention faithfulness, a = 0.1 (higher is better)"),
              (EV_KEY, "MLP-output explained variance (higher is better)")]
    panels = [pl for pl in panels if any(metric(m.summary, pl[0]).value is not None for m in ms)]
    fig, axes = new_figure(1, len(panels), figsize=(6 * len(panels), 5), sharey=True, squeeze=False)
    axes = list(axes[0])
    methods = list(dict.fromkeys(m.method for m in ms))
    extra_colours = iter(["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"])
    colour = {meth: _COLOURS.get(meth) or next(extra_colours, "black") for meth in methods}
    for ax, (x_key, x_label) in zip(axes, panels):
        for meth in methods:
            pts = []
            for m in ms:
                if m.method != meth:
                    continue
                x, y = metric(m.summary, x_key), metric(m.summary, EDGES_KEY)
                if x.value is not None and y.value is not None:
                    pts.append((m, x, y))
            pts.sort(key=lambda t: t[1].value)
            if not pts:
                continue
            xs, ys = [t[1].value for t in pts], [t[2].value for t in pts]
            ax.plot(xs, ys, "-o", color=colour[meth], label=meth, ms=5)
            for m, x, y in pts:
                ax.errorbar(x.value, y.value, xerr=_err(x), yerr=_err(y), color=colour[meth], capsize=2, lw=1)
                if m.is_lambda0:
                    ax.plot(x.value, y.value, "*", color="black", ms=14, zorder=5, label="λ = 0 pair")
                ax.annotate(m.name.replace(meth, "").strip() or m.name, (x.value, y.value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("edges per active node for 80% of |attribution|\n(lower is sparser)")
    handles, labels = axes[0].get_legend_handles_labels()
    keep = dict(zip(labels, handles))
    axes[0].legend(keep.values(), keep.keys(), fontsize=7)
    fig.suptitle("Sparse MLP computation: edges for 80% coverage vs faithfulness, one frontier per method (95% intervals)")
    publish(fig, doc, out / "comparison.png", "edges for 80% coverage vs replacement CE-loss score, intervention faithfulness and MLP-output EV",
             f"Points: each summary's `{EDGES_KEY}` and {', '.join(f'`{k}`' for k, _ in panels)} with their `intervals`.")


FRONTIER_COLUMNS = (("edges for 80%", EDGES_KEY), ("replacement CE-loss score", CE_KEY),
                    ("intervention a = 0.1", INTERVENTION_KEY), ("intervention a = 1", "intervention.a=1.full"),
                    ("error share", "edges.error_share"), ("edges for 80%, IG", "edges_path.edges.edges_for_80"))


def _frontier_table(ms: list[Model], doc: Any) -> None:
    """One row per model, grouped by method in order of CE-loss score: the frontiers as numbers."""
    rows = []
    for meth in dict.fromkeys(m.method for m in ms):
        line = sorted((m for m in ms if m.method == meth), key=lambda m: metric(m.summary, CE_KEY).value or 0)
        for m in line:
            cells = [_metric(m.summary, key) for _, key in FRONTIER_COLUMNS]
            rows.append([meth, m.name.replace(meth, "").strip() or m.name, *(c.fmt(3) if c.ok else "" for c in cells)])
    doc.h(3, "The frontiers, model by model")
    doc.p("Each method's models in order of replacement CE-loss score, 95% intervals; intervention faithfulness with the full "
          "graph; IG: the edge measure with integrated gradients (8 midpoints) instead of the tangent, where measured.")
    doc.table(["method", "model", *(label for label, _ in FRONTIER_COLUMNS)], rows)


def _err(iv: Interval) -> Any:
    if iv.lo is None or iv.hi is None or iv.value is None:
        return None
    return [[max(0.0, iv.value - iv.lo)], [max(0.0, iv.hi - iv.value)]]


def _table(ms: list[Model], doc: Any, rel: Any) -> None:
    zero = next((m for m in ms if m.is_lambda0), None)
    rows_spec = [
        ("edges for 80% coverage", EDGES_KEY),
        ("edges for 90% coverage", "edges.edges_for_90"),
        ("latent → latent edges for 80%", "edges.latent_edges_for_80"),
        ("edges for 80%, integrated gradients (pairs)", "edges_path.edges.edges_for_80"),
        ("share of |attribution| on the error node", "edges.error_share"),
        ("share of |attribution| on the bias node", "edges.bias_share"),
        *INTERVENTION_ROWS,
        ("linearisation error (pairs)", "edges.linearisation_error"),
        ("replacement CE-loss score", CE_KEY),
        ("replacement KL score", "splice.replacement.kl_score"),
        ("MLP-output explained variance", EV_KEY),
    ]
    rows, reasons = [], set()

    def cell(iv: Interval) -> str:
        if iv.value is None and iv.na_reason:
            reasons.add(iv.na_reason)
            return "n/a"
        return iv.fmt(3)

    for label, key in rows_spec:
        rows.append([label, *(cell(_metric(m.summary, key)) for m in ms)])
        if zero is not None and key in (EDGES_KEY, CE_KEY):
            rows.append(["  Δ vs λ = 0 pair (paired)", *("" if m is zero else cell(difference(m.summary, zero.summary, key)[0]) for m in ms)])
    rows.append(["active latents per token", *(active_latents(m.summary) for m in ms)])
    rows.append(["trained parameters", *(parameters(m.summary) or "" for m in ms)])
    rows.append(["dead latents (of d_sae)", *(_dead(m.summary) for m in ms)])
    rows.append(["Jacobian count |J| > 0.01 (pairs)", *("" if m.is_transcoder else metric(m.summary, _count_key(m.summary)).fmt(3) for m in ms)])
    rows.append(["method", *(m.method for m in ms)])
    rows.append(["summary JSON", *(rel(m.path) for m in ms)])
    doc.table(["", *(m.name for m in ms)], rows)
    if reasons:
        doc.p("n/a: " + "; ".join(sorted(reasons)))


def _metric(d: dict[str, Any], key: str) -> Interval:
    """`metric`, plus `edges_path.<key>`: the integrated-gradients edge block's own intervals."""
    if key.startswith("edges_path."):
        iv = ((d.get("edges_path") or {}).get("intervals") or {}).get(key.removeprefix("edges_path."))
        return Interval.from_dict(iv) if iv else Interval(None, None, None, 0, None)
    return metric(d, key)


def _dead(d: dict[str, Any]) -> str:
    """Dead latents on the eval tokens, of all the model's latents."""
    dead = d.get("dead_latents", (d.get("splice") or {}).get("dead_latents"))
    if dead is None:
        return ""
    total = d["d_sae"] if d.get("kind") == "transcoder" else 2 * d["d_sae"]
    return f"{dead} / {total}"


def _count_key(d: dict[str, Any]) -> str | None:
    from sae_lens_jsae.report_frontier import count_key

    return count_key(d)


