"""The eval report's "Attribution graphs" section: graphs of a few corpus sentences, written next
to `report.md` and linked from it (and from `report.html`) with their completeness."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from sae_lens_jsae.graph.loaders import sotu_prompts
from sae_lens_jsae.graph.write import GraphResult, completeness_table, write_graphs

TITLE = "Attribution graphs"
INTRO = ("Attribution graphs (input latents → output latents, edge = J·s_x) of sotu eval sentences, in the "
         "attribution-graph JSON format; view them with `jsae serve graphs` (run `jsae latents` into the same "
         "folder for latent pages). Completeness per graph: how much of the output activations the edges explain "
         "and how far the linearisation is from the actual effect of switching the input latents off.")


def section_markdown(results: list[GraphResult], folder: str = "graphs") -> str:
    """The section as markdown: a table of the graphs, each linked by its file name."""
    header, rows = completeness_table(results)
    md = ["", f"## {TITLE}", "", INTRO, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(c) for c in row[:-1]) + f" | [{row[-1]}]({folder}/{row[-1]}) |" for row in rows]
    return "\n".join(md) + "\n"


def section_html(results: list[GraphResult], folder: str = "graphs") -> str:
    """The same section as an HTML fragment (every text escaped)."""
    header, rows = completeness_table(results)
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row[:-1])
        + f"<td><a href='{html.escape(folder)}/{html.escape(row[-1])}'>{html.escape(row[-1])}</a></td></tr>" for row in rows)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + cells + "</table>"
    return f"<h2>{html.escape(TITLE)}</h2><p>{html.escape(INTRO)}</p>{table}"


def add_graphs_to_report(report_md: str | Path, saes: dict[str, Any], model: Any, prompts: list[Any] | None = None) -> list[GraphResult]:
    """Write graphs of a few sotu sentences into `<report dir>/graphs` and append the section to
    report.md and (before its closing body tag) report.html."""
    report_md = Path(report_md)
    results = write_graphs(saes, model, prompts if prompts is not None else sotu_prompts(), report_md.parent / "graphs")
    with report_md.open("a") as f:
        f.write(section_markdown(results))
    page = report_md.with_suffix(".html")
    if page.exists():
        text = page.read_text()
        end = text.rfind("</body>")  # the report's own closing tag: the last one
        fragment = section_html(results)
        page.write_text(text[:end] + fragment + text[end:] if end >= 0 else text + fragment)
    return results
