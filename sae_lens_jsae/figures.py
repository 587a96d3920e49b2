"""Matplotlib figures for the reports, without pyplot; `publish` puts one into a report.

A stand-alone `matplotlib.figure.Figure` renders PNGs through its own Agg canvas in `savefig`,
so the library never switches the process's backend (`matplotlib.use`) nor leaves figures in
pyplot's global registry: a notebook's inline plots keep working after `compare()` or
`write_report()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplots: Any) -> tuple[Any, Any]:
    """A `Figure` and its axes, as `pyplot.subplots` returns them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots)


def publish(fig: Any, doc: Any, path: Path, alt: str, source: str) -> None:
    """Save a figure as PNG and embed it in the report `doc` with where its numbers come from."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    doc.img(path.name, alt)
    doc.p(source)
