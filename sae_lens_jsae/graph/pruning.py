"""Which nodes and edges a graph keeps, and how well the edges account for the output latents.

By default per downstream node (`node_coverage`, 0.8): every active output latent keeps the
fewest incoming entries (input latents, the input-error node, the bias node) reaching 80% of its
|attribution|, the rule the method-neutral edge measure counts (`evals.edges.row_cover`).
circuit-tracer's global thresholds (`node_threshold`, `edge_threshold`) remain available.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sae_lens_jsae.evals.edges import row_cover
from sae_lens_jsae.graph.attribution import PromptAttribution

DEFAULT_NODE_COVERAGE = 0.8
"""`jsae graph`'s default: each output latent keeps the edges reaching 80% of its |attribution|."""


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


def keep(att: PromptAttribution, rule: Pruning) -> Kept:
    """What `rule` keeps of `att`."""
    if rule.node_coverage is not None:
        return _keep_by_coverage(att, rule.node_coverage)
    return _keep_by_thresholds(att, rule.node_threshold, rule.edge_threshold)  # type: ignore[arg-type]


def completeness(att: PromptAttribution, kept: Kept) -> Completeness:
    """`Completeness` of all active output latents (`kept` gives the kept fraction)."""
    total = float(att.attribution.abs().double().sum() + att.input_error.abs().double().sum())
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
