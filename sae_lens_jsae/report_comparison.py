"""The report's lead section when transcoders were evaluated: which method makes the MLP's
computation sparsest at equal faithfulness?

One point per model (JSAE pairs of every loss, transcoders, skip transcoders), all scored on the
same held-out tokens: edges per active downstream node for 80% of its |attribution|
(`evals/edges.py`, docs/metrics.md) against the replacement CE-loss score (the whole MLP replaced)
and against the MLP-output explained variance, with 95% interval bars, each method its own colour
and line, the λ = 0 pair starred. Then a side-by-side table (models as columns) and the goal's
verdict by interval.
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
"""… at a replacement CE-loss score no more than this below that transcoder's."""

_LOSS_TERMS = {"mlp_reconstruction_coefficient": "MLP-consistency", "edge_sparsity_coefficient": "edge penalty"}


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
        return "skip transcoder" if "skip" in d.get("architecture", "") else "TopK transcoder"
    terms = [_LOSS_TERMS.get(k, k) for k, v in sorted((d.get("series") or {}).items()) if v]
    return "JSAE + " + " + ".join(terms) if terms else "JSAE, paper loss"


def _model_name(d: dict[str, Any], method: str) -> str:
    if d.get("kind") == "transcoder":
        return f"{method} k={d['k']}"
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
    best = max(tcs, key=lambda m: ce[id(m)].value)
    rows, verdicts = [], []
    for m in jsaes:
        ratio_iv, _ = relative(m.summary, best.summary, EDGES_KEY)
        ce_iv, _ = difference(m.summary, best.summary, CE_KEY)
        v_edges, v_ce = verdict(ratio_iv, GOAL_EDGE_RATIO, "below"), verdict(ce_iv, -GOAL_CE_DROP, "above")
        both = "PASS" if v_edges == v_ce == "PASS" else "FAIL" if "FAIL" in (v_edges, v_ce) else INCONCLUSIVE
        verdicts.append(both)
        rows.append([m.name, ratio_iv.fmt(3), v_edges, ce_iv.fmt(3), v_ce, both])
    overall = "PASS" if "PASS" in verdicts else "FAIL" if all(v == "FAIL" for v in verdicts) else INCONCLUSIVE
    return Goal(overall, best.name, rows)


def add_comparison(doc: Any, pairs: list[tuple[Path, dict[str, Any]]], transcoders: list[tuple[Path, dict[str, Any]]], out: Path, rel: Any) -> None:
    """The comparison section (plot, side-by-side table, goal) into the report `doc`."""
    ms = models(pairs, transcoders)
    doc.h(2, "Which method makes the MLP's computation sparsest at equal faithfulness?")
    doc.p("Every model on the same held-out tokens. Sparsity of the computation: edges per active downstream node needed to "
          "reach 80% of its total |attribution| (upstream = an input SAE's active latents plus error and bias nodes; the pair's "
          "own input SAE for pairs, the λ = 0 pair's for transcoders; docs/metrics.md). Faithfulness: the replacement CE-loss "
          "score (the whole MLP replaced: a pair's output SAE ∘ MLP ∘ input SAE, a transcoder's ŷ(x)) and the MLP-output "
          "explained variance. 95% intervals, clustered by sequence.")
    if any(metric(m.summary, EDGES_KEY).value is not None for m in ms):
        _plot(ms, out, doc)
    _table(ms, doc, rel)
    g = goal(ms)
    doc.h(3, f"Goal: {g.verdict}")
    doc.p(f"Some JSAE variant (λ > 0 or an opt-in loss term) needs ≤ {GOAL_EDGE_RATIO:g}× the edges for 80% coverage of the best transcoder (highest "
          f"replacement CE-loss score: {g.transcoder or 'none evaluated'}) at a replacement CE-loss score no more than "
          f"{GOAL_CE_DROP:g} below it. PASS / FAIL per condition when the whole 95% interval is on one side of the bound "
          "(paired by sequence where both were scored on the same tokens).")
    if g.rows:
        doc.table(["JSAE", "edges for 80% ÷ transcoder's", f"≤ {GOAL_EDGE_RATIO:g}?", "Δ replacement CE-loss score",
                   f"≥ −{GOAL_CE_DROP:g}?", "both"], g.rows)


_COLOURS = {"JSAE, paper loss": "tab:blue", "JSAE + MLP-consistency": "tab:green", "JSAE + edge penalty": "tab:purple",
            "JSAE + edge penalty + MLP-consistency": "tab:purple", "TopK transcoder": "tab:red", "skip transcoder": "tab:orange"}


def _plot(ms: list[Model], out: Path, doc: Any) -> None:
    from sae_lens_jsae.figures import new_figure, publish

    fig, axes = new_figure(1, 2, figsize=(12, 4.6), sharey=True)
    methods = list(dict.fromkeys(m.method for m in ms))
    extra_colours = iter(["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"])
    colour = {meth: _COLOURS.get(meth) or next(extra_colours, "black") for meth in methods}
    for ax, x_key, x_label in ((axes[0], CE_KEY, "replacement CE-loss score (MLP replaced; higher is better)"),
                               (axes[1], EV_KEY, "MLP-output explained variance (higher is better)")):
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
    axes[0].legend(keep.values(), keep.keys(), fontsize=8)
    fig.suptitle("Sparse MLP computation: edges for 80% coverage vs faithfulness (95% intervals)")
    publish(fig, doc, out / "comparison.png", "edges for 80% coverage vs replacement CE-loss score and MLP-output EV",
             f"Points: each summary's `{EDGES_KEY}`, `{CE_KEY}` and `{EV_KEY}` with their `intervals`.")


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
        ("share of |attribution| on the error node", "edges.error_share"),
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
        rows.append([label, *(cell(metric(m.summary, key)) for m in ms)])
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


