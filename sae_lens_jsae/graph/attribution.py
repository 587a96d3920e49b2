"""Per-prompt JSAE attribution graphs, written in the attribution-graph file format.

At each token t of a prompt the pair has k active input latents (s_x, layer "0") and k active
output latents (s_y, layer "1"). The edge from input latent j to output latent i carries the
attribution

    a[t, i, j] = J[t, i, j] · s_x[t, j]        (J = ∂s_y/∂s_x from `sae.active_jacobian`)

i.e. the first-order share of s_y[i] that flows through latent j. Two error nodes per token
stand for what the SAEs miss: the input SAE's error e_x = x − x̂ (its edge into output latent i
is ∂s_y[i]/∂x · e_x, a Jacobian-vector product through the frozen MLP) and the output SAE's
error y − ŷ (a sink: its activation is ‖y − ŷ‖).

Completeness (how well the edges into an output latent account for it), per output node:
- `edge_sum` Σ_j a[i, j], against `activation` s_y[i];
- `ablation_change`: the actual change of output latent i's pre-activation when all of the
  token's input latents are switched off (x → x − Σ_j s_x[j] d_j, through the frozen MLP). Its
  linearisation is exactly `edge_sum`, so |edge_sum − ablation_change| measures how linear the
  MLP is along the latents (JSAEs are trained to make this small; compare with λ=0).
- the circuit-tracer style "completeness": the latent edges' share of all |incoming
  attribution| (latents + the input-error node).

Pruning, by default, is per downstream node (`node_coverage`, 0.8): every active output latent
keeps the fewest incoming entries — input latents, the input-error node and a bias node (the
pre-activation at x = b_dec, `evals.edges`) — that reach 80% of its |attribution|, the rule the
method-neutral edge measure counts (`evals.edges.row_cover`), so a graph's edges per output
latent are that measure on this prompt. Why: circuit-tracer's global thresholds (the fewest
nodes of each layer carrying `node_threshold` of that layer's |attribution|, then the fewest
edges among them carrying `edge_threshold` of theirs; still `node_threshold=`/`edge_threshold=`)
keep whatever the strongest tokens need, and left a 32-token sentence of the demo with 1 535
nodes and 13 088 edges — no picture of how sparse each latent's computation is.

Transcoders (`transcoder_prompt_attribution`): the same bipartite graph with an upstream SAE's
input latents (e.g. the λ = 0 pair's input SAE) as layer 0 and the transcoder's latents as
layer 1; the edges are exact (`evals.edges.transcoder_attributions`), so several models can be
drawn side by side on one prompt (`write_graphs`, the viewer's side-by-side view).

Cost: one forward of the model up to the JSAE's block, one `active_jacobian` (k²·d_mlp per
token), two MLP evaluations and one JVP: well under a second for 64 tokens of SmolLM2 on CPU.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sae_lens_jsae.evals.edges import pair_attributions, row_cover, transcoder_attributions

SCHEMA_VERSION = 1
FEATURE_TYPE = "cross layer transcoder"  # what circuit-tracer / Neuronpedia call a feature node
ERROR_TYPE = "mlp reconstruction error"
BIAS_TYPE = "bias"  # a node of ours (circuit-tracer draws no bias): what the output latent gets at x = b_dec
LAYERS = {"input": 0, "output": 1}
DEFAULT_NODE_COVERAGE = 0.8
"""`jsae graph`'s default: each output latent keeps the edges reaching 80% of its |attribution|."""


def cantor(layer: int, index: int) -> int:
    """The `feature` number of a latent (circuit-tracer's Cantor pairing of layer and index)."""
    return (layer + index) * (layer + index + 1) // 2 + index


def feature_file(scan: str, layer: int, index: int) -> str:
    """Where a latent's page lives, relative to the data folder (the frontend's /features/ path)."""
    return f"features/{scan}/{cantor(layer, index)}.json"


def scan_name(sae: Any) -> str:
    """A name for the pair (the graph's `scan`): model, layer, width and λ."""
    from sae_lens_jsae.sae import layer_of_input_hook, saved_jacobian_coefficient

    model = (sae.cfg.metadata.model_name or "model").split("/")[-1]
    lam = saved_jacobian_coefficient(sae.cfg.to_dict())
    name = f"{model}-l{layer_of_input_hook(sae.cfg.metadata.hook_name)}-jsae{sae.cfg.d_sae}-lam{lam:g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lower()


class PromptAttribution(NamedTuple):
    """Everything a graph is cut from, for one prompt (T tokens, k latents per SAE)."""

    tokens: list[str]
    """The prompt's tokens as strings (ctx_idx = position in this list)."""
    input_indices: torch.Tensor
    """(T, k) active input latents (TopK picks)."""
    input_values: torch.Tensor
    """(T, k) s_x at those latents (0 where ReLU clipped a pick)."""
    output_indices: torch.Tensor
    """(T, k) active output latents."""
    output_values: torch.Tensor
    """(T, k) s_y at those latents."""
    jacobian: torch.Tensor
    """(T, k_out, k_in) J on the active sets (masked)."""
    attribution: torch.Tensor
    """(T, k_out, k_in) J · s_x: the edge weights."""
    input_error: torch.Tensor
    """(T, k_out) edge weight from the input-error node: ∂s_y[i]/∂x · (x − x̂)."""
    input_error_norm: torch.Tensor
    """(T,) ‖x − x̂‖."""
    output_error_norm: torch.Tensor
    """(T,) ‖y − ŷ‖."""
    output_norm: torch.Tensor
    """(T,) ‖y‖ (to read the output error relative to it)."""
    ablation_change: torch.Tensor
    """(T, k_out) pre-activation of each output latent at x minus at x − Σ_j s_x[j] d_j."""
    bias: torch.Tensor
    """(T, k_out) the bias node's attribution (`evals.edges.EdgeAttributions.bias`; 0 where inactive)."""
    method: str = "pair"
    """"pair" (layer 1: the pair's output SAE) or "transcoder" (layer 1: the transcoder's latents)."""


@torch.no_grad()
def prompt_attribution(sae: Any, x: torch.Tensor, tokens: list[str]) -> PromptAttribution:
    """Attribution of a prompt's output latents to its input latents, from MLP inputs x (T, d_in)."""
    mlp = sae.require_mlp()
    x = x.to(sae.dtype)
    aj = sae.active_jacobian(x)
    s_x = sae.encode(x)
    y = mlp(x)
    s_y = sae.encode_output(y)
    in_vals = s_x.gather(1, aj.input_indices)
    out_vals = s_y.gather(1, aj.output_indices)
    active_out = (out_vals > 0).to(x.dtype)
    bias = pair_attributions(sae, x).bias * active_out  # same TopK picks as `active_jacobian`

    enc_out = sae.W_enc_out.T[aj.output_indices]  # (T, k, d): the active output encoder rows
    def out_pre(v: torch.Tensor) -> torch.Tensor:  # output latents' pre-activations of MLP outputs v
        v = v - sae.b_dec_out if sae.cfg.apply_b_dec_to_input else v
        return torch.einsum("td,tkd->tk", v, enc_out) + sae.b_enc_out[aj.output_indices]

    latent_part = s_x @ sae.W_dec
    x_hat = latent_part + sae.b_dec
    _, dy_err = torch.func.jvp(mlp, (x,), (x - x_hat,))
    input_error = torch.einsum("td,tkd->tk", dy_err, enc_out) * active_out
    ablation = (out_pre(y) - out_pre(mlp(x - latent_part))) * active_out
    y_hat = sae.decode_output(s_y)
    return PromptAttribution(
        tokens=list(tokens),
        input_indices=aj.input_indices, input_values=in_vals,
        output_indices=aj.output_indices, output_values=out_vals,
        jacobian=aj.values, attribution=aj.values * in_vals[:, None, :],
        input_error=input_error, input_error_norm=(x - x_hat).norm(dim=-1),
        output_error_norm=(y - y_hat).norm(dim=-1), output_norm=y.norm(dim=-1),
        ablation_change=ablation, bias=bias,
    )


@torch.no_grad()
def transcoder_prompt_attribution(upstream: Any, transcoder: Any, x: torch.Tensor, tokens: list[str]) -> PromptAttribution:
    """`PromptAttribution` of a transcoder's active latents (layer 1) to `upstream`'s active input
    latents (layer 0; a JSAE pair's input SAE or a SAELens SAE on the MLP input), exact
    (`evals.edges.transcoder_attributions`): `jacobian` holds ∂h_j/∂s_i = d_i·W_enc[:, j],
    `ablation_change` the (linear) change of h_j when the upstream latents are switched off, and
    the output error ‖y − ŷ‖ is NaN unless `upstream` carries the frozen MLP (a pair does)."""
    ea = transcoder_attributions(upstream, transcoder, x)
    W = transcoder.W_enc
    x = x.to(W.dtype)
    s_up = upstream.encode(x)
    in_vals = s_up.gather(1, ea.upstream_indices).clamp_min(0).to(W.dtype)
    out_vals = transcoder.encode(x).gather(1, ea.downstream_indices)
    active_out = (out_vals > 0).to(W.dtype)
    latents = ea.latents * active_out[:, :, None]
    latent_part = (s_up @ upstream.W_dec).to(W.dtype)
    x_hat = latent_part + upstream.b_dec.to(W.dtype)
    ablation = (latent_part @ W).gather(1, ea.downstream_indices) * active_out
    mlp = getattr(upstream, "mlp", None)
    y = mlp(x.to(upstream.dtype)).to(W.dtype) if mlp is not None else torch.full_like(x, float("nan"))
    return PromptAttribution(
        tokens=list(tokens),
        input_indices=ea.upstream_indices, input_values=in_vals,
        output_indices=ea.downstream_indices, output_values=out_vals,
        jacobian=torch.where(in_vals[:, None, :] > 0, latents / in_vals.clamp_min(1e-30)[:, None, :], 0.0),
        attribution=latents, input_error=ea.error * active_out, input_error_norm=(x - x_hat).norm(dim=-1),
        output_error_norm=(y - transcoder(x)).norm(dim=-1), output_norm=y.norm(dim=-1),
        ablation_change=ablation, bias=ea.bias * active_out, method="transcoder",
    )


class Completeness(NamedTuple):
    """How well a graph's edges account for its output latents (all active ones, every token)."""

    edge_share_of_activation: float
    """Σ edge_sum / Σ s_y: the part of the output activations the latent edges explain."""
    linearisation_error: float
    """Σ |edge_sum − ablation_change| / Σ |ablation_change| (0: the MLP is linear along the latents)."""
    median_relative_error: float
    """median over output latents of |edge_sum − ablation_change| / |ablation_change|."""
    feature_share: float
    """Σ|latent edges| / (Σ|latent edges| + Σ|input-error edges|) (circuit-tracer's completeness score)."""
    kept_fraction: float
    """Σ|attribution| of the pruned graph's edges / Σ|attribution| of all edges the rule ranks (latent and
    error edges; bias edges too under per-node coverage)."""
    n_output_latents: int
    """Active output latents over all tokens."""


def _smallest_cover(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the fewest entries of `scores` (≥ 0) whose sum reaches `fraction` of the total."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    total = scores.sum()
    if scores.numel() == 0 or total <= 0:
        return keep
    order = scores.argsort(descending=True)
    cum = scores[order].cumsum(0)
    n = int((cum < fraction * total).sum()) + 1
    keep[order[: min(n, scores.numel())]] = True
    return keep


class Pruning(NamedTuple):
    """Which nodes and edges a graph keeps: one of two rules (`pruning` builds and checks one)."""

    node_coverage: float | None
    """Per active output latent, the fewest incoming entries (latents, input error, bias), largest
    first, reaching this share of its |attribution| (`evals.edges.row_cover`); every active output
    latent stays. None: circuit-tracer's rule below."""
    node_threshold: float | None
    """circuit-tracer: the fewest nodes of each layer carrying this share of its |attribution| ..."""
    edge_threshold: float | None
    """... then the fewest edges among them carrying this share of theirs (no bias node)."""

    def describe(self) -> str:
        if self.node_coverage is not None:
            return f"each output latent's edges to {self.node_coverage:g} of its |attribution|"
        return f"circuit-tracer thresholds: nodes {self.node_threshold:g}, edges {self.edge_threshold:g}"


def pruning(node_coverage: float | None = None, node_threshold: float | None = None, edge_threshold: float | None = None) -> Pruning:
    """The rule for these settings: circuit-tracer's when a threshold is given (the other one at
    its circuit-tracer default, 0.8 nodes / 0.98 edges), else per-node coverage (default 0.8)."""
    for name, v in (("node_coverage", node_coverage), ("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if v is not None and not 0 < v <= 1:
            raise ValueError(f"{name}={v} must lie in (0, 1]: the fraction of |attribution| to keep (circuit-tracer uses 0.8 and 0.98).")
    if node_threshold is None and edge_threshold is None:
        return Pruning(DEFAULT_NODE_COVERAGE if node_coverage is None else node_coverage, None, None)
    if node_coverage is not None:
        raise ValueError("node_coverage (per output latent) and node/edge thresholds (circuit-tracer) are two pruning rules: pass one.")
    return Pruning(None, 0.8 if node_threshold is None else node_threshold, 0.98 if edge_threshold is None else edge_threshold)


class Kept(NamedTuple):
    """What a pruning rule keeps of a `PromptAttribution` (boolean masks)."""

    inputs: torch.Tensor
    """(T, k_in) input latents drawn."""
    outputs: torch.Tensor
    """(T, k_out) output latents drawn."""
    edges: torch.Tensor
    """(T, k_out, k_in) latent → latent edges."""
    error: torch.Tensor
    """(T, k_out) edges from the input-error node."""
    bias: torch.Tensor
    """(T, k_out) edges from the bias node."""
    ranked: float
    """Σ |attribution| the rule ranks (latents + error, and bias under per-node coverage)."""
    kept: float
    """Σ |attribution| of the kept edges."""


def _keep_by_coverage(att: PromptAttribution, coverage: float) -> Kept:
    """Per active output latent, `row_cover` of its row [|a_j1| … |a_jk|, |error_j|, |bias_j|]."""
    k_in = att.attribution.shape[2]
    out_active = att.output_values > 0
    rows = torch.cat([att.attribution, att.input_error[..., None], att.bias[..., None]], -1).abs().double() * out_active[..., None]
    keep = row_cover(rows, coverage)
    edges = keep[..., :k_in]
    return Kept(edges.any(1), out_active, edges, keep[..., k_in], keep[..., k_in + 1], float(rows.sum()), float((rows * keep).sum()))


def _keep_by_thresholds(att: PromptAttribution, node_threshold: float, edge_threshold: float) -> Kept:
    """circuit-tracer's rule: nodes per layer to `node_threshold`, then edges to `edge_threshold`."""
    T, k_out, k_in = att.attribution.shape
    A = att.attribution.abs().double()
    E = att.input_error.abs().double()
    in_score = A.sum(1).masked_fill(~(att.input_values > 0), 0)
    out_score = (A.sum(2) + E).masked_fill(~(att.output_values > 0), 0)
    keep_in = _smallest_cover(in_score.flatten(), node_threshold).view(T, k_in)
    keep_out = _smallest_cover(out_score.flatten(), node_threshold).view(T, k_out)
    # edges among kept nodes (error edges compete with latent edges)
    cand = keep_out[:, :, None] & keep_in[:, None, :]
    scores = torch.cat([(A * cand).flatten(), (E * keep_out).flatten()])
    kept = _smallest_cover(scores, edge_threshold)
    keep_edge = kept[: A.numel()].view(T, k_out, k_in)
    keep_err = kept[A.numel():].view(T, k_out)
    return Kept(keep_in & keep_edge.any(1), keep_out, keep_edge, keep_err, torch.zeros_like(keep_err),
                float(A.sum() + E.sum()), float((A * keep_edge).sum() + (E * keep_err).sum()))


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


class LatentPages(NamedTuple):
    """Where each layer's latent pages live (`feature_file`; `jsae latents` writes them)."""

    input_scan: str
    """The scan (folder under features/) of the layer-0 latents."""
    input_layer: int
    """Their layer in that scan's page numbering."""
    output_scan: str
    """The scan of the layer-1 latents."""
    output_layer: int
    """Their layer there (1 for a pair's output SAE, 0 for a transcoder's latents)."""


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
    kept = (_keep_by_coverage(att, rule.node_coverage) if rule.node_coverage is not None
            else _keep_by_thresholds(att, rule.node_threshold, rule.edge_threshold))
    pages = pages or LatentPages(scan, 0, scan, 1)
    A = att.attribution.abs().double()
    E = att.input_error.abs().double()
    out_active = att.output_values > 0
    in_score = A.sum(1).masked_fill(~(att.input_values > 0), 0)
    out_score = (A.sum(2) + E).masked_fill(~out_active, 0)
    total = float(A.sum() + E.sum())
    completeness = _completeness(att, kept, total)
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
    return Graph(nodes, links, completeness, rule)


def _completeness(att: PromptAttribution, kept: Kept, total: float) -> Completeness:
    """`Completeness` of all active output latents (`kept` gives the kept fraction)."""
    out_active = att.output_values > 0
    edge_sum = att.attribution.sum(2)
    act = att.output_values
    dev = (edge_sum - att.ablation_change).abs()
    rel = (dev / att.ablation_change.abs().clamp_min(1e-12))[out_active]
    return Completeness(
        edge_share_of_activation=float(edge_sum[out_active].sum() / act[out_active].sum().clamp_min(1e-12)),
        linearisation_error=float(dev[out_active].sum() / att.ablation_change[out_active].abs().sum().clamp_min(1e-12)),
        median_relative_error=float(rel.median()) if rel.numel() else float("nan"),
        feature_share=float(att.attribution.abs().double().sum() / max(total, 1e-12)),
        kept_fraction=kept.kept / max(kept.ranked, 1e-12),
        n_output_latents=int(out_active.sum()),
    )


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


def mlp_inputs(model: Any, sae: Any, prompt: str | torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The JSAE's MLP inputs x (T, d_in) for a prompt (text or token ids) and its tokens as strings."""
    from sae_lens_jsae.sae import layer_of_input_hook

    hook = sae.cfg.metadata.hook_name
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else torch.as_tensor(prompt).reshape(1, -1)
    tokens = tokens.to(model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=layer_of_input_hook(hook) + 1)
    return cache[hook][0].to(sae.device), token_strings(model, tokens[0])


def token_strings(model: Any, tokens: torch.Tensor) -> list[str]:
    """Token ids as strings (`⟨id⟩` for a model without a tokenizer, e.g. a test's tiny model)."""
    if getattr(model, "tokenizer", None) is None:
        return [f"⟨{int(t)}⟩" for t in tokens]
    return [str(s) for s in model.to_str_tokens(tokens)]


def slugify(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "prompt"


def is_pair(sae: Any) -> bool:
    """Whether `sae` is a JSAE pair (else a transcoder, drawn against an upstream SAE)."""
    return hasattr(sae, "active_jacobian") and hasattr(sae, "W_enc_out")


def model_attribution(sae: Any, model: Any, prompt: str | torch.Tensor, upstream: Any = None) -> tuple[PromptAttribution, LatentPages]:
    """A pair's `prompt_attribution`, or a transcoder's against `upstream` (required then), and
    where the two layers' latent pages live."""
    if is_pair(sae):
        scan = scan_name(sae)
        x, tokens = mlp_inputs(model, sae, prompt)
        return prompt_attribution(sae, x, tokens), LatentPages(scan, 0, scan, 1)
    from sae_lens_jsae.latents import TRANSCODER_LAYERS, transcoder_scan_name

    if upstream is None:
        raise ValueError("a transcoder's graph needs an upstream SAE on the MLP input (e.g. the λ = 0 pair): pass upstream=.")
    x, tokens = mlp_inputs(model, upstream, prompt)
    pages = LatentPages(scan_name(upstream) if is_pair(upstream) else "upstream", 0, transcoder_scan_name(sae), TRANSCODER_LAYERS["transcoder"])
    return transcoder_prompt_attribution(upstream, sae, x, tokens), pages


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


# ---- whole-command helpers (the CLI and the eval report call these) ------------------------------
def pair_layer_and_model(source: str | Path) -> tuple[int, str | None]:
    """(block index, model name) from a local pair's cfg.json, without loading weights."""
    from sae_lens_jsae.hub import read_pair_cfg
    from sae_lens_jsae.sae import layer_of_input_hook

    cfg_path = Path(source) / "cfg.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{source} is not a JSAE folder (no cfg.json): pass the folder `jsae train` wrote (cfg.json + sae_weights.safetensors).")
    cfg = read_pair_cfg(cfg_path)
    return layer_of_input_hook((cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")), (cfg.get("metadata") or {}).get("model_name")


def load_pair_and_model(sources: list[str], model_source: str, model_name: str | None, device: str = "cpu") -> tuple[list[Any], Any]:
    """Load JSAE pairs (local folders) and their model; the pairs' files and the layer are
    checked first, then each pair's MLP comes from its `mlp.safetensors` or the model."""
    from sae_lens_jsae.hub import check_pair_files, load_jsae
    from sae_lens_jsae.sources import check_layer, load_hooked_model

    for source in sources:
        check_pair_files(source)
    layer, saved_name = pair_layer_and_model(sources[0])
    name = model_name or saved_name
    if name is None:
        raise ValueError(f"{sources[0]}/cfg.json names no model (metadata.model_name): pass --model-name.")
    check_layer(model_source, name, layer)
    model = load_hooked_model(model_source, name, device=device)
    return [load_jsae(s, device=device, model=model) for s in sources], model


def _folder_layer_and_model(source: str | Path) -> tuple[int, str | None]:
    """`pair_layer_and_model` for a pair or one of our transcoders (checked: files, then cfg)."""
    from sae_lens_jsae.latents import is_transcoder_folder
    from sae_lens_jsae.sae import layer_of_input_hook

    if not is_transcoder_folder(source):
        from sae_lens_jsae.hub import check_pair_files

        check_pair_files(source)
        return pair_layer_and_model(source)
    metadata = json.loads((Path(source) / "cfg.json").read_text()).get("metadata") or {}
    return layer_of_input_hook(metadata.get("hook_name")), metadata.get("model_name")


def load_models(sources: dict[str, str], upstream: str | None, model_source: str, model_name: str | None,
                device: str = "cpu") -> tuple[dict[str, Any], Any, Any]:
    """Load several saved models of one MLP — JSAE pairs and transcoders, by name — plus the
    upstream pair that transcoders are drawn against, and the language model: ({name: model},
    upstream or None, model). Every folder's files and layer are checked before any weights load;
    `upstream` may be one of `sources`' paths (then it is loaded once)."""
    from sae_lens import SAE

    from sae_lens_jsae.hub import load_jsae
    from sae_lens_jsae.latents import is_transcoder_folder
    from sae_lens_jsae.sources import check_layer, load_hooked_model

    folders = list(sources.values()) + ([upstream] if upstream else [])
    found = {str(f): _folder_layer_and_model(f) for f in folders}
    layers = {layer for layer, _ in found.values()}
    if len(layers) != 1:
        raise ValueError(f"the models read different layers ({', '.join(f'{f}: {v[0]}' for f, v in found.items())}): graphs side by side need one MLP.")
    if upstream and is_transcoder_folder(upstream):
        raise ValueError(f"--upstream {upstream} is a transcoder: pass a JSAE pair (its input SAE gives the upstream latents).")
    name = model_name or next((m for _, m in found.values() if m), None)
    if name is None:
        raise ValueError(f"{folders[0]}/cfg.json names no model (metadata.model_name): pass --model-name.")
    check_layer(model_source, name, layers.pop())
    model = load_hooked_model(model_source, name, device=device)
    loaded: dict[str, Any] = {}

    def load(folder: str) -> Any:
        if folder not in loaded:
            loaded[folder] = SAE.load_from_disk(folder, device=device) if is_transcoder_folder(folder) else load_jsae(folder, device=device, model=model)
        return loaded[folder]

    models = {label: load(str(folder)) for label, folder in sources.items()}
    return models, (load(str(upstream)) if upstream else None), model


def sotu_prompts(n: int = 3, min_words: int = 12, max_words: int = 35) -> list[str]:
    """`n` sentences of the sotu eval split (the first ones of 12–35 words, in file order)."""
    from sae_lens_jsae.sources import sotu_split_files

    out: list[str] = []
    for f in sotu_split_files("eval"):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(f.read_text(encoding="utf-8").split())):
            if min_words <= len(sentence.split()) <= max_words:
                out.append(sentence)
                if len(out) == n:
                    return out
    return out


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


def add_graphs_to_report(report_md: str | Path, saes: dict[str, Any], model: Any, prompts: list[Any] | None = None) -> list[GraphResult]:
    """Write graphs of a few sotu sentences into `<report dir>/graphs` and append a section that
    links them (and their completeness) to report.md and report.html."""
    import html

    report_md = Path(report_md)
    results = write_graphs(saes, model, prompts if prompts is not None else sotu_prompts(), report_md.parent / "graphs")
    header, rows = completeness_table(results)
    intro = ("Attribution graphs (input latents → output latents, edge = J·s_x) of sotu eval sentences, in the "
             "attribution-graph JSON format; view them with `jsae serve graphs` (run `jsae latents` into the same "
             "folder for latent pages). Completeness per graph: how much of the output activations the edges explain "
             "and how far the linearisation is from the actual effect of switching the input latents off.")
    md = ["", "## Attribution graphs", "", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(c) for c in row[:-1]) + f" | [{row[-1]}](graphs/{row[-1]}) |" for row in rows]
    with report_md.open("a") as f:
        f.write("\n".join(md) + "\n")
    page = report_md.with_suffix(".html")
    if page.exists():
        table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row[:-1])
            + f"<td><a href='graphs/{html.escape(row[-1])}'>{html.escape(row[-1])}</a></td></tr>" for row in rows) + "</table>"
        text = page.read_text()
        section = f"<h2>Attribution graphs</h2><p>{html.escape(intro)}</p>{table}"
        page.write_text(text.replace("</body>", section + "</body>") if "</body>" in text else text + section)
    return results
