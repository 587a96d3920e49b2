"""Graphs for prompts: attribute (`attribution`), prune (`pruning`) and write (`format`) each
prompt's graph, for one model or several side by side, and tabulate their completeness."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from sae_lens_jsae.graph.attribution import model_attribution
from sae_lens_jsae.graph.format import Graph, GraphCounts, build_graph, graph_json, slugify, write_graph_file
from sae_lens_jsae.graph.pruning import Completeness, pruning


def prompt_graph(
    sae: Any, model: Any, prompt: str | torch.Tensor, out_dir: str | Path, *, upstream: Any = None, slug: str | None = None,
    scan: str | None = None, node_coverage: float | None = None, node_threshold: float | None = None,
    edge_threshold: float | None = None, info: dict[str, Any] | None = None,
) -> tuple[Path, Graph]:
    """Compute, prune (`pruning`) and write one prompt's graph of a pair, or of a transcoder
    against `upstream`; returns the file and the `Graph`."""
    rule = pruning(node_coverage, node_threshold, edge_threshold)  # checked before any work
    att, pages = model_attribution(sae, model, prompt, upstream)
    scan = scan or pages.output_scan
    text = prompt if isinstance(prompt, str) else "".join(att.tokens)
    graph = build_graph(att, scan, rule.node_threshold, rule.edge_threshold, node_coverage=rule.node_coverage, pages=pages)
    slug = slug or f"{scan}-{slugify(text)}"
    data = graph_json(graph, att, slug=slug, scan=scan, prompt=text, info=info)
    return write_graph_file(data, out_dir), graph


def write_prompt_graph(sae: Any, model: Any, prompt: str | torch.Tensor, out_dir: str | Path, **kwargs: Any) -> tuple[Path, Completeness]:
    """`prompt_graph`, returning the file and the graph's completeness."""
    path, graph = prompt_graph(sae, model, prompt, out_dir, **kwargs)
    return path, graph.completeness


class GraphResult(NamedTuple):
    """One written graph."""

    name: str
    """Which model ("jsae", "lambda0", a transcoder's name, ...)."""
    prompt: str
    """The prompt's text (or its token ids)."""
    path: Path
    """The graph file."""
    completeness: Completeness
    """How well its edges account for its layer-1 latents."""
    counts: GraphCounts | None = None
    """Its size after pruning."""


def write_graphs(saes: dict[str, Any], model: Any, prompts: list[Any], out_dir: str | Path, *, upstream: Any = None, **kwargs: Any) -> list[GraphResult]:
    """A graph per (model, prompt) into `out_dir` (slugs `{name}-{i}-{prompt}`): pairs, and
    transcoders against `upstream`. The graphs of one prompt share its text (`metadata.prompt`),
    which is how the viewer puts them side by side; `metadata.info.model` holds the name."""
    results = []
    for i, prompt in enumerate(prompts):
        text = prompt if isinstance(prompt, str) else f"tokens {torch.as_tensor(prompt).flatten().tolist()}"
        for name, sae in saes.items():
            path, graph = prompt_graph(sae, model, prompt, out_dir, upstream=upstream, slug=f"{name}-{i}-{slugify(text, 30)}",
                                       info={"model": name}, **kwargs)
            results.append(GraphResult(name, text, path, graph.completeness, graph.counts))
    return results


def completeness_table(results: list[GraphResult]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) comparing the models' graphs (size and completeness) on the same prompts."""
    header = ["model", "prompt", "nodes", "edges", "edges/layer-1 latent", "edges/activation", "linearisation error",
              "median rel. error", "latent share", "kept", "graph"]
    rows = []
    for r in results:
        c, n = r.completeness, r.counts
        size = [n.nodes, n.edges, round(n.edges_per_output_latent, 2)] if n is not None else ["", "", ""]
        rows.append([r.name, r.prompt[:50], *size, round(c.edge_share_of_activation, 3), round(c.linearisation_error, 3),
                     round(c.median_relative_error, 3), round(c.feature_share, 3), round(c.kept_fraction, 3), r.path.name])
    return header, rows
