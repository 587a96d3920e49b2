"""The graph file: pruned nodes and links in the attribution-graph JSON format, and its checks.

The format is circuit-tracer's / Neuronpedia's (top-level `metadata`, `qParams`, `nodes`,
`links`): latent nodes carry their Cantor `feature` number and the path of their latent page
(`pages.feature_file`), error and bias nodes have negative features, links carry the
attribution (and J for latent edges). `graph-metadata.json` indexes a folder of graphs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sae_lens_jsae.graph.attribution import LatentPages, PromptAttribution
from sae_lens_jsae.graph.pruning import Completeness, Pruning, completeness, keep, pruning
from sae_lens_jsae.pages import cantor, feature_file

SCHEMA_VERSION = 1
FEATURE_TYPE = "cross layer transcoder"  # what circuit-tracer / Neuronpedia call a feature node
ERROR_TYPE = "mlp reconstruction error"
BIAS_TYPE = "bias"  # a node of ours (circuit-tracer draws no bias): what the output latent gets at x = b_dec


class GraphCounts(NamedTuple):
    """The size of a pruned graph (what a reader has to look at)."""

    nodes: int
    """All nodes: latents of both layers, error and bias nodes."""
    edges: int
    """All links."""
    output_latents: int
    """Layer-1 latents drawn."""
    input_latents: int
    """Layer-0 latents drawn."""
    edges_per_output_latent: float
    """Links into layer-1 latents per layer-1 latent (under per-node coverage: the edge measure's
    edges-for-coverage on this prompt, averaged over nodes rather than tokens)."""


@dataclass
class Graph:
    """A pruned graph as lists of node and link dicts (the file format), plus its completeness."""

    nodes: list[dict[str, Any]]
    links: list[dict[str, Any]]
    completeness: Completeness
    rule: Pruning | None = None

    @property
    def counts(self) -> GraphCounts:
        latents = [n for n in self.nodes if n["feature"] >= 0]
        outputs = {n["node_id"] for n in latents if n["layer"] == "1"}
        into = sum(link["target"] in outputs for link in self.links)
        return GraphCounts(len(self.nodes), len(self.links), len(outputs), len(latents) - len(outputs), into / max(len(outputs), 1))


def build_graph(att: PromptAttribution, scan: str, node_threshold: float | None = None, edge_threshold: float | None = None, *,
                node_coverage: float | None = None, pages: LatentPages | None = None) -> Graph:
    """Prune a `PromptAttribution` (rule: `pruning(node_coverage, node_threshold, edge_threshold)`,
    per-node coverage 0.8 by default) to nodes and links; `pages`: where latent pages live
    (default: both layers in `scan`, as a pair's)."""
    rule = pruning(node_coverage, node_threshold, edge_threshold)
    kept = keep(att, rule)
    pages = pages or LatentPages(scan, 0, scan, 1)
    A = att.attribution.abs().double()
    E = att.input_error.abs().double()
    out_active = att.output_values > 0
    in_score = A.sum(1).masked_fill(~(att.input_values > 0), 0)
    out_score = (A.sum(2) + E).masked_fill(~out_active, 0)
    total = float(A.sum() + E.sum())
    nodes: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    down = "transcoder" if att.method == "transcoder" else "output"

    def latent_node(layer: int, t: int, idx: int, activation: float, influence: float, **extra: Any) -> str:
        node_id = f"{layer}_{idx}_{t}"
        page = feature_file(pages.input_scan, pages.input_layer, idx) if layer == 0 else feature_file(pages.output_scan, pages.output_layer, idx)
        nodes.append({
            "node_id": node_id, "feature": cantor(layer, idx), "layer": str(layer), "ctx_idx": t,
            "feature_type": FEATURE_TYPE, "jsNodeId": f"{layer}_{idx}-0", "clerp": "",
            "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "influence": influence, "activation": activation,
            "sae": "input" if layer == 0 else down, "latent": idx, "feature_file": page, **extra,
        })
        return node_id

    def special_node(layer: int, t: int, feature: int, kind: str, value: float, clerp: str) -> str:
        node_id = f"{layer}_{feature}_{t}"
        nodes.append({
            "node_id": node_id, "feature": feature, "layer": str(layer), "ctx_idx": t, "feature_type": kind,
            "jsNodeId": f"{layer}_{feature}-{t}", "clerp": clerp, "token_prob": 0.0, "is_target_logit": False,
            "run_idx": 0, "reverse_ctx_idx": 0, "influence": None, "activation": value,
            "sae": "input" if layer == 0 else down, "latent": feature,
        })
        return node_id

    def to(v: torch.Tensor) -> Any:
        return _round4(v.double().tolist())

    T, k_out, k_in = att.attribution.shape
    ii, oi = att.input_indices.tolist(), att.output_indices.tolist()
    iv, ov = to(att.input_values), to(att.output_values)
    ins, outs, J, W = to(in_score / max(total, 1e-12)), to(out_score / max(total, 1e-12)), to(att.jacobian), to(att.attribution)
    es, ab, ie, bi = to(att.attribution.sum(2)), to(att.ablation_change), to(att.input_error), to(att.bias)
    for t in range(T):
        in_ids = {j: latent_node(0, t, ii[t][j], iv[t][j], ins[t][j]) for j in range(k_in) if kept.inputs[t, j]}
        out_ids = {
            i: latent_node(1, t, oi[t][i], ov[t][i], outs[t][i], edge_sum=es[t][i], ablation_change=ab[t][i],
                           error_attribution=ie[t][i], bias_attribution=bi[t][i])
            for i in range(k_out) if kept.outputs[t, i]
        }
        if kept.error[t].any():
            norm = float(att.input_error_norm[t])
            err_in = special_node(0, t, -1, ERROR_TYPE, float(f"{norm:.4g}"), f"input SAE error ‖x−x̂‖={norm:.3g}")
            links.extend({"source": err_in, "target": out_ids[i], "weight": ie[t][i]} for i in kept.error[t].nonzero().flatten().tolist())
        if kept.bias[t].any():
            bias_in = special_node(0, t, -2, BIAS_TYPE, 1.0, "bias: the pre-activation at x = b_dec (no latent, no error)")
            links.extend({"source": bias_in, "target": out_ids[i], "weight": bi[t][i]} for i in kept.bias[t].nonzero().flatten().tolist())
        norm, ratio = float(att.output_error_norm[t]), float(att.output_error_norm[t] / att.output_norm[t].clamp_min(1e-12))
        if out_ids and norm == norm:  # not NaN (a transcoder without the MLP has no y)
            name = "transcoder" if att.method == "transcoder" else "output SAE"
            special_node(1, t, -1, ERROR_TYPE, float(f"{norm:.4g}"), f"{name} error ‖y−ŷ‖={norm:.3g} ({ratio:.0%} of ‖y‖)")
        for i, j in kept.edges[t].nonzero().tolist():
            links.append({"source": in_ids[j], "target": out_ids[i], "weight": W[t][i][j], "jacobian": J[t][i][j]})
    return Graph(nodes, links, completeness(att, kept), rule)


def _round4(x: Any) -> Any:
    """Nested lists of floats to 4 significant digits (the files shrink about threefold)."""
    return [_round4(y) for y in x] if isinstance(x, list) else float(f"{x:.4g}")


LAYER_NAMES = {
    "pair": {"0": "input SAE latents (MLP input)", "1": "output SAE latents (MLP output)"},
    "transcoder": {"0": "upstream SAE latents (MLP input)", "1": "transcoder latents (MLP input → output)"},
}


def graph_json(graph: Graph, att: PromptAttribution, *, slug: str, scan: str, prompt: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The graph file: top-level `metadata`, `qParams`, `nodes`, `links` (circuit-tracer / Neuronpedia).
    `info` gains the pruning rule (`pruning`) and the graph's size (`counts`)."""
    rule = graph.rule or pruning()
    return {
        "metadata": {
            "slug": slug, "scan": scan, "prompt_tokens": att.tokens, "prompt": prompt,
            "transcoder_list": [], "node_threshold": rule.node_threshold, "schema_version": SCHEMA_VERSION,
            "info": {"edge_threshold": rule.edge_threshold, "node_coverage": rule.node_coverage, "pruning": rule.describe(),
                     "method": att.method, "counts": graph.counts._asdict(), "completeness": graph.completeness._asdict(),
                     "layers": LAYER_NAMES[att.method], **(info or {})},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": graph.nodes,
        "links": graph.links,
    }


def write_graph_file(data: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `{slug}.json` into `out_dir` and add its metadata to `graph-metadata.json` there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = data["metadata"]["slug"]
    path = out / f"{slug}.json"
    path.write_text(json.dumps(data))
    index_path = out / "graph-metadata.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"graphs": []}
    index["graphs"] = [g for g in index["graphs"] if g.get("slug") != slug] + [data["metadata"]]
    index_path.write_text(json.dumps(index, indent=1))
    return path


def slugify(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "prompt"


REQUIRED_NODE_FIELDS = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp")


def validate_graph_file(data: dict[str, Any]) -> list[str]:
    """Problems that stop circuit-tracer's frontend / Neuronpedia from reading a graph ([] if none)."""
    problems = [f"missing top-level {key!r}" for key in ("metadata", "qParams", "nodes", "links") if key not in data]
    if problems:
        return problems
    for key in ("slug", "scan", "prompt_tokens", "prompt"):
        if key not in data["metadata"]:
            problems.append(f"metadata lacks {key!r}")
    for key in ("pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"):
        if key not in data["qParams"]:
            problems.append(f"qParams lacks {key!r}")
    ids = set()
    n_ctx = len(data["metadata"].get("prompt_tokens", []))
    for n in data["nodes"]:
        missing = [f for f in REQUIRED_NODE_FIELDS if f not in n]
        if missing:
            problems.append(f"node {n.get('node_id')} lacks {missing}")
            continue
        if not isinstance(n["layer"], (str, int)) or not isinstance(n["feature"], int) or not 0 <= n["ctx_idx"] < n_ctx:
            problems.append(f"node {n['node_id']}: bad layer/feature/ctx_idx types or range")
        ids.add(n["node_id"])
    if not any(str(n["layer"]) not in ("E",) and n["feature_type"] != "logit" and str(n["layer"]).isdigit() and int(n["layer"]) >= 1 for n in data["nodes"]):
        problems.append("no non-logit node on a layer >= 1 (Neuronpedia's renderer needs one)")
    for link in data["links"]:
        if link.get("source") not in ids or link.get("target") not in ids or not isinstance(link.get("weight"), float):
            problems.append(f"bad link {link}")
            break
    return problems
