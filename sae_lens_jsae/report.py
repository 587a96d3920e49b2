"""`report.md` / `report.html` with matplotlib plots, built only from eval JSONs.

Input: the summary JSONs written by `sae_lens_jsae.evals.evaluate_checkpoint` (and optionally
SAEBench core JSONs of other SAEs). Every number in the report is printed next to the JSON file
and key it was read from, so it can be traced back.

Roles, from each summary's own fields: the first summary is the main JSAE; `jacobian_coefficient
== 0` marks a λ=0 baseline; `randomized: true` the randomized-LLM control; the non-randomized
summaries with a coefficient form the λ sweep (Pareto plot).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_lens_jsae.figures import new_figure, publish

THRESHOLD_FOR_HEADLINE = 0.01


class _Doc:
    """Blocks rendered both as Markdown and as HTML."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", header, rows))

    def img(self, path: str, alt: str) -> None:
        self.blocks.append(("img", path, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out.extend("| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in b[2])
            else:
                out.append(f"![{b[2]}]({b[1]})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{html.escape(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in b[1]) + "</tr>")
                out.extend("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in b[2])
                out.append("</table>")
            else:
                out.append(f"<p><img src='{html.escape(b[1])}' alt='{html.escape(b[2])}'></p>")
        out.append("</body></html>")
        return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _load(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, dict[str, Any]]]:
    loaded = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        if d.get("format") != "sae_lens_jsae.eval/1":
            raise ValueError(f"{p} is not an evaluate_checkpoint summary JSON (format {d.get('format')!r}).")
        loaded.append((Path(p), d))
    return loaded


def _name(d: dict[str, Any]) -> str:
    lam = d.get("jacobian_coefficient")
    return f"{d['label']} (λ={lam:g})" if lam is not None else d["label"]


def _legend(d: dict[str, Any]) -> str:
    return _name(d) + (" [randomized]" if d.get("randomized") else "")


def _count_at(d: dict[str, Any], tau: float = THRESHOLD_FOR_HEADLINE) -> tuple[float | None, str]:
    sp = d["jacobian_sparsity"]
    for i, t in enumerate(sp["thresholds"]):
        if abs(t - tau) < 1e-12:
            return sp["mean_count_above"][i], f"jacobian_sparsity.mean_count_above[{i}]"
    return None, ""


def _plots(items: list[tuple[Path, dict[str, Any]]], out: Path, doc: _Doc) -> None:
    pre = [(p, d) for p, d in items if not d.get("randomized")]
    rand = [(p, d) for p, d in items if d.get("randomized")]

    # 1. |J| histograms
    fig, ax = new_figure(figsize=(6, 3.6))
    for _, d in items:
        h = d["jacobian_sparsity"]["histogram"]
        total = sum(h["counts"]) + h["overflow"]
        dens = [c / max(total, 1) for c in h["counts"]]
        ax.stairs(dens, h["bin_edges"], label=_legend(d))
    ax.set_yscale("log")
    ax.set_xlabel("|J| (active latents; inactive entries are 0)")
    ax.set_ylabel("fraction of entries")
    ax.set_title("|J| histogram")
    ax.legend(fontsize=7)
    publish(fig, doc, out / "jacobian_histogram.png", "|J| histogram (log y)", "Source: jacobian_sparsity.histogram of each summary JSON.")

    # 2. count vs τ
    fig, ax = new_figure(figsize=(6, 3.6))
    for _, d in items:
        sp = d["jacobian_sparsity"]
        ax.plot(sp["thresholds"], sp["mean_count_above"], marker="o", label=_legend(d))
    ax.set_xlabel("threshold τ")
    ax.set_ylabel("mean count |J| > τ per token (of k²)")
    ax.set_yscale("log")
    ax.set_title("Jacobian count vs threshold")
    ax.legend(fontsize=7)
    publish(fig, doc, out / "count_vs_threshold.png", "count vs threshold", "Source: jacobian_sparsity.thresholds / mean_count_above.")

    # 3. Pareto over the λ sweep
    sweep = [(p, d) for p, d in pre if d.get("jacobian_coefficient") is not None and _count_at(d)[0] is not None
             and d["splice"].get("average_ce_loss_score") is not None]
    if len(sweep) >= 1:
        sweep.sort(key=lambda pd: pd[1]["jacobian_coefficient"])
        fig, ax = new_figure(figsize=(6, 3.6))
        xs = [_count_at(d)[0] for _, d in sweep]
        ys = [d["splice"]["average_ce_loss_score"] for _, d in sweep]
        ax.plot(xs, ys, marker="o")
        for x, y, (_, d) in zip(xs, ys, sweep):
            ax.annotate(f"λ={d['jacobian_coefficient']:g}", (x, y), fontsize=7)
        ax.set_xlabel(f"mean count |J| > {THRESHOLD_FOR_HEADLINE} per token")
        ax.set_ylabel("average CE-loss score (input & output)")
        ax.set_title("CE-loss score vs Jacobian sparsity (λ sweep)")
        publish(fig, doc, out / "pareto.png", "CE-loss score vs Jacobian count", "Source: jacobian_sparsity.mean_count_above and splice.average_ce_loss_score.")

    # 4. linearity fractions
    fig, ax = new_figure(figsize=(6, 3.6))
    names = [_name(d) + (" [rand]" if d.get("randomized") else "") for _, d in items]
    bottom = [0.0] * len(items)
    for cls in ("linear", "jumprelu", "other"):
        vals = [d["linearity"][cls] for _, d in items]
        ax.bar(names, vals, bottom=bottom, label=cls)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("fraction of curves")
    ax.set_title("Linearity of input → output latent curves")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    publish(fig, doc, out / "linearity.png", "linearity fractions", "Source: linearity.linear / jumprelu / other.")

    # 5. pretrained vs randomized: the absolute count and the scale-free ratio (the verdict's measure)
    if rand and pre:
        from sae_lens_jsae.report_frontier import SCALE_FREE_KEY, SCALE_FREE_NAME, metric

        groups = []
        for cond, group in (("pretrained", pre), ("randomized", rand)):
            for role, pick in (("JSAE", lambda d: d.get("jacobian_coefficient") != 0), ("λ=0", lambda d: d.get("jacobian_coefficient") == 0)):
                chosen = [d for _, d in group if pick(d)]
                if chosen:
                    groups.append((f"{role}\n{cond}", chosen[0]))
        fig, axes = new_figure(1, 2, figsize=(9, 3.6))
        for ax, (key_of, ylabel) in zip(axes, ((lambda d: _count_at(d)[1] and "jacobian_sparsity." + _count_at(d)[1].split("jacobian_sparsity.")[1],
                                                f"mean count |J| > {THRESHOLD_FOR_HEADLINE} per token"),
                                               (lambda d: SCALE_FREE_KEY, f"{SCALE_FREE_NAME} (lower = sparser)"))):
            ivs = [metric(d, key_of(d)) for _, d in groups]
            vals = [iv.value or 0 for iv in ivs]
            err = [[(iv.value - iv.lo) if iv.lo is not None else 0 for iv in ivs], [(iv.hi - iv.value) if iv.hi is not None else 0 for iv in ivs]]
            ax.bar([g[0] for g in groups], vals, yerr=err, capsize=3, color=["C0", "C1", "C0", "C1"][: len(groups)])
            ax.set_ylabel(ylabel)
            ax.tick_params(axis="x", labelsize=7)
        fig.suptitle("Pretrained vs randomized LLM (bars: 95% intervals)", fontsize=10)
        publish(fig, doc, out / "randomized.png", "pretrained vs randomized", "Source: jacobian_sparsity.mean_count_above and l1_l2_ratio (with intervals) of the randomized / pretrained summaries.")


def write_report(
    summaries: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    extra_core: Sequence[str | os.PathLike[str]] = (),
    title: str = "Jacobian SAE evaluation",
    transcoders: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Write `report.md`, `report.html` and the PNGs into `output_dir`; returns report.md's path.
    `transcoders`: transcoders' summaries (`write_transcoder_summary`), tabulated beside the pairs."""
    if not summaries:
        raise ValueError("write_report needs at least one summary JSON.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = _load(summaries)
    doc = _Doc()
    doc.h(1, title)
    doc.p("Every number below is followed by (or listed with) the JSON file and key it comes from. "
          "Paths are relative to this report unless absolute.")

    def rel(p: Path) -> str:
        try:
            return os.path.relpath(p.resolve(), out.resolve())
        except ValueError:
            return str(p)

    from sae_lens_jsae.report_comparison import add_comparison
    from sae_lens_jsae.report_frontier import add_frontier, metric, resolve_key

    tc_items = _load(transcoders)
    if tc_items:  # the question a reader brings transcoders for leads the report
        add_comparison(doc, items, tc_items, out, rel)
    add_frontier(doc, items, out)
    if not tc_items and any(d.get("edges") for _, d in items):
        add_comparison(doc, items, [], out, rel)

    doc.h(2, "Evaluated SAEs")
    doc.table(["name", "model", "hook", "d_sae", "k", "randomized", "checkpoint", "summary JSON"],
              [[_name(d), d.get("model_name"), d.get("hook_name"), d.get("d_sae"), d.get("k"), d.get("randomized"), d.get("checkpoint"), rel(p)] for p, d in items])

    doc.h(2, "Jacobian sparsity")
    rows = []
    for p, d in items:
        sp = d["jacobian_sparsity"]

        def row(what: str, key: str, d: dict[str, Any] = d, p: Path = p) -> list[Any]:
            iv = metric(d, f"jacobian_sparsity.{key}")  # the value column is the JSON's own number, traceable by its key
            return [_name(d), what, resolve_key(d, f"jacobian_sparsity.{key}"), f"{rel(p)}: jacobian_sparsity.{key}", iv.fmt(4) if iv.lo is not None else ""]

        for i, t in enumerate(sp["thresholds"]):
            rows.append(row(f"count |J| > {t:g}", f"mean_count_above[{i}]"))
        for i, r in enumerate(sp.get("relative_thresholds") or []):
            rows.append(row(f"count |J| > {r:g}·max|J|", f"relative_count_above[{i}]"))
        rows.append(row("mean |J|", "mean_abs"))
        rows.append(row("L1/(L2·k) ratio", "l1_l2_ratio"))
        for i, m in enumerate(sp["top_m"]):
            rows.append(row(f"top-{m} L1 mass", f"top_m_mass[{i}]"))
        rows.append([_name(d), "tokens", sp["n_tokens"], f"{rel(p)}: jacobian_sparsity.n_tokens", ""])
    doc.table(["SAE", "metric", "value", "source", "95% interval"], rows)

    doc.h(2, "CE-loss and KL scores (splices vs zero-ablation of the same hook)")
    rows = []
    for p, d in items:
        for s in ("input", "output", "replacement"):
            sc = d["splice"].get(s)
            if sc:
                ce, kl = metric(d, f"splice.{s}.ce_loss_score"), metric(d, f"splice.{s}.kl_score")
                rows.append([_name(d), s, sc["hook_name"], ce.value if ce.ok else "n/a", kl.value if kl.ok else "n/a", sc["ce_clean"], sc["ce_spliced"],
                             sc["ce_zero_ablation"], f"{rel(p)}: splice.{s}", ce.fmt(3), kl.fmt(3)])
        if d["splice"].get("average_ce_loss_score") is not None:
            avg = metric(d, "splice.average_ce_loss_score")
            rows.append([_name(d), "average (input, output)", "", avg.value if avg.ok else "n/a", None, None, None, None,
                         f"{rel(p)}: splice.average_ce_loss_score", avg.fmt(3), ""])
    doc.table(["SAE", "splice", "hook", "CE-loss score", "KL score", "CE clean", "CE spliced", "CE zero-abl.", "source",
               "CE-loss score, 95% interval", "KL score, 95% interval"], rows)
    doc.p("A score is n/a when its denominator (CE_zero − CE_clean, or KL of the zero-ablation) is not resolved: "
          "its own 95% interval reaches 0 or is wider than ±50% of it (e.g. the randomized model, where removing the MLP costs ≈ 0 nats).")

    doc.h(2, "Linearity")
    doc.table(["SAE", "linear", "JumpReLU-like", "other", "ablation on line", "curves", "source", "linear, 95% interval", "ablation on line, 95% interval"],
              [[_name(d), d["linearity"]["linear"], d["linearity"]["jumprelu"], d["linearity"]["other"], d["linearity"]["ablation_on_line"], d["linearity"]["n_curves"],
                f"{rel(p)}: linearity", metric(d, "linearity.linear").fmt(3), metric(d, "linearity.ablation_on_line").fmt(3)] for p, d in items])

    core_rows = []
    for p, d in items:
        for which, c in (d.get("core") or {}).items():
            core_rows.append([f"{_name(d)} {which}", c["explained_variance"], c["mse"], c["cossim"], c["l0"], c["ce_loss_score"], c["kl_div_score"], c["dead_latents"], c["dead_window_tokens"], f"{rel(p.parent / c['file'])} (via {rel(p)}: core.{which})"])
    if extra_core:
        from sae_lens_jsae.evals.saebench import core_summary, read_core_result

        for cp in extra_core:
            c = core_summary(cp)
            r = read_core_result(cp)
            core_rows.append([f"{r.sae_lens_release_id}/{r.sae_lens_id}", c["explained_variance"], c["mse"], c["cossim"], c["l0"], c["ce_loss_score"], c["kl_div_score"], c["dead_latents"], c["dead_window_tokens"], rel(Path(cp))])
    skipped = sorted({d["core_skipped"] for _, d in items if d.get("core_skipped")})
    if core_rows or skipped:
        doc.h(2, "SAEBench core eval")
    if core_rows:
        doc.table(["SAE", "explained var.", "MSE", "cosine", "L0", "CE-loss score", "KL score", "dead latents", "dead window (tokens)", "source"], core_rows)
    if skipped:
        doc.p(" ".join(skipped))

    doc.h(2, "Plots")
    _plots(items, out, doc)
    (out / "report.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html(title))
    return out / "report.md"
