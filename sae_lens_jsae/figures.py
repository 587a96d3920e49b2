"""Matplotlib figures for the reports, without pyplot.

A stand-alone `matplotlib.figure.Figure` renders PNGs through its own Agg canvas in `savefig`,
so the library never switches the process's backend (`matplotlib.use`) nor leaves figures in
pyplot's global registry: a notebook's inline plots keep working after `compare()` or
`write_report()`.
"""

from __future__ import annotations

from typing import Any


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplots: Any) -> tuple[Any, Any]:
    """A `Figure` and its axes, as `pyplot.subplots` returns them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots)
