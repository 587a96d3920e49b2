"""Edges per downstream node: a method-neutral measure of how sparse an MLP's computation is.

Per token, a bipartite graph. Upstream nodes are the active latents of an input SAE on the MLP
input x, which they decompose exactly with an error node e and a bias node:

    x = Σ_i s_i d_i + b_dec + e        (d_i = W_dec[i]; e is defined by this equation)

Downstream nodes are a JSAE pair's active output latents, or a transcoder's active latents. The
weight of edge i → j is the attribution of j's pre-activation h_j to upstream latent i:

  * transcoder (h = x W_enc + b_enc, linear in x; a skip transcoder has the same encoder), exact:
        a_ji = s_i · d_i·W_enc[:, j],  error_j = e·W_enc[:, j],  bias_j = b_dec·W_enc[:, j] + b_enc[j]
  * pair (h = e_out(f(x)), f the frozen MLP), linearised at x with g_j = ∂h_j/∂x:
        a_ji = J[j, i] · s_i (J from `pair.active_jacobian`),  error_j = g_j·e (a JVP of f),
        bias_j = h_j(b_dec) (the pre-activation when every latent and the error are 0), and the
        linearisation error h_j − Σ_i a_ji − error_j − bias_j = h_j(x) − h_j(b_dec) − g_j·(x − b_dec)
        is reported (Σ|·| / Σ|h_j|), not made into a node.

Headline (`edge_counts`, shared by both methods): for each active downstream node, the number of
entries of its row (|a_j1| … |a_jk|, |error_j|, |bias_j|), largest first, needed to reach 80%
(90%) of the row's total |attribution|; error and bias count as one edge each when they are
needed (they are drawn as edges in a pruned graph). Mean over a token's active nodes, then over
tokens, 95% intervals clustered by sequence (`evals.intervals`). Also: the same count restricted
to latent→latent edges, the share of |attribution| on the error node (1 − that share is
circuit-tracer's completeness, for this one layer) and on the bias node. docs/metrics.md has the
reasons.

Cost per token: a pair, one active Jacobian (jacobian.py) + one MLP JVP (d·d_mlp) + k·d for the
error node; a transcoder, one d_sae_in × d_sae_tc product per call, then gathers (k_in·k_tc).
No library computes this: circuit-tracer builds attribution graphs for transcoders only, through
the whole model (its error nodes are per layer, not per upstream SAE), and nothing attributes a
JSAE's output latents to its input latents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from sae_lens_jsae.evals._batches import TokenSource
from sae_lens_jsae.evals.intervals import METHOD, Estimate, ratio, register_summary_block, rounded
from sae_lens_jsae.evals.onepass import run_metrics, run_on_inputs
from sae_lens_jsae.evals.sparsity import tokens_digest
from sae_lens_jsae.jacobian import gathered_dots
from sae_lens_jsae.util import is_pair

COVERAGES: tuple[float, ...] = (0.8, 0.9)
"""Shares of a node's total |attribution| the headline counts edges for."""


class EdgeAttributions(NamedTuple):
    """Each downstream node's pre-activation split over upstream latents, error and bias (one batch)."""

    latents: torch.Tensor
    """(tokens, n_down, k_up): attribution of downstream node j's pre-activation to upstream slot i
    (0 where the upstream latent is inactive)."""
    error: torch.Tensor
    """(tokens, n_down): the input SAE's error node's attribution (e's contribution)."""
    bias: torch.Tensor
    """(tokens, n_down): the bias node's attribution (b_dec of the input SAE, plus the downstream
    encoder's bias; for a pair: the pre-activation at x = b_dec)."""
    pre: torch.Tensor
    """(tokens, n_down): the downstream node's pre-activation h_j."""
    active: torch.Tensor
    """(tokens, n_down) bool: the node is active (picked and h_j > 0); other rows are ignored."""
    upstream_values: torch.Tensor
    """(tokens, k_up): the upstream latent's activation s_i in each slot (0 where inactive)."""
    upstream_indices: torch.Tensor
    """(tokens, k_up): the upstream SAE's latent in each slot."""
    downstream_indices: torch.Tensor
    """(tokens, n_down): the downstream model's latent in each slot."""

    @property
    def upstream_active(self) -> torch.Tensor:
        """(tokens, k_up) bool: the upstream slot holds an active latent (s_i > 0)."""
        return self.upstream_values > 0

    @property
    def linearisation_error(self) -> torch.Tensor:
        """(tokens, n_down): h_j − Σ_i a_ji − error_j − bias_j (0 up to rounding for a transcoder)."""
        return self.pre - self.latents.sum(-1) - self.error - self.bias


class _Upstream(NamedTuple):
    values: torch.Tensor  # (tokens, k) s_i, 0 where inactive
    indices: torch.Tensor  # (tokens, k)
    error: torch.Tensor  # (tokens, d) e = x − Σ s_i d_i − b_dec


def _decompose(sae: Any, x: torch.Tensor, indices: torch.Tensor | None = None) -> _Upstream:
    """s, indices and e of `sae`'s encoding of x; `indices`: the slots to use (else its active latents)."""
    s = sae.encode(x)
    if indices is None:
        width = max(1, int((s > 0).sum(-1).max()))
        indices = s.topk(width, dim=-1, sorted=False).indices
    values = s.gather(-1, indices).clamp_min(0)
    x_hat = F.embedding_bag(indices, sae.W_dec, per_sample_weights=values.to(sae.W_dec.dtype), mode="sum") + sae.b_dec
    return _Upstream(values, indices, x.to(x_hat.dtype) - x_hat)


@torch.no_grad()
def pair_attributions(pair: Any, x: torch.Tensor, path_steps: int = 0) -> EdgeAttributions:
    """`EdgeAttributions` of a JSAE pair's output latents to its own input latents, for MLP inputs x (tokens, d_in).

    `path_steps` = 0: the tangent at x (J as `pair.active_jacobian`, the Jacobian the JSAE
    penalises). m > 0: integrated gradients from b_dec to x, J and the error JVP averaged over m
    midpoints b_dec + α(x − b_dec) with the active sets of x (m times the cost); the attributions
    then sum to h(x) − h(b_dec) up to the midpoint rule's O(1/m²) error."""
    if path_steps < 0:
        raise ValueError(f"path_steps={path_steps} must be >= 0 (0: the tangent at x).")
    mlp = pair.require_mlp()
    x = x.to(pair.dtype)
    top_in = pair._encode_input_topk(x)
    y = mlp(x)
    top_out = pair._encode_output_topk(y)
    up = _decompose(pair, x, top_in.indices)
    # J as `pair.active_jacobian` computes it (same call), at x or at each point of the path
    alphas = [1.0] if path_steps == 0 else [(j + 0.5) / path_steps for j in range(path_steps)]
    J: Any = 0.0
    error_direction: Any = 0.0
    for alpha in alphas:
        point = x if alpha == 1.0 else pair.b_dec + alpha * (x - pair.b_dec)
        J = J + pair._jacobian(top_in, top_out, point, mlp.pre_activations(point)).values / len(alphas)
        error_direction = error_direction + torch.func.jvp(mlp, (point,), (up.error,))[1] / len(alphas)  # ∂f/∂x · e
    pre = top_out.hidden_pre.gather(-1, top_out.indices)
    at_bias = pair._encode_output_topk(mlp(pair.b_dec[None])).hidden_pre[0]
    return EdgeAttributions(
        latents=J * up.values[:, None, :],
        error=gathered_dots(error_direction, pair.W_enc_out, top_out.indices),
        bias=at_bias[top_out.indices],
        pre=pre,
        active=pre > 0,
        upstream_values=up.values,
        upstream_indices=top_in.indices,
        downstream_indices=top_out.indices,
    )


@torch.no_grad()
def transcoder_attributions(upstream: Any, transcoder: Any, x: torch.Tensor, encoder_product: torch.Tensor | None = None) -> EdgeAttributions:
    """`EdgeAttributions` of a transcoder's active latents to `upstream`'s (an SAE or a pair's input
    SAE) active latents, for MLP inputs x (tokens, d_in). Exact: the encoder is linear.

    `encoder_product`: W_dec_up @ W_enc_tc (d_sae_up, d_sae_tc), if already formed."""
    _check_transcoder(upstream, transcoder)
    W, b = transcoder.W_enc, transcoder.b_enc
    x = x.to(W.dtype)
    up = _decompose(upstream, x)
    acts = transcoder.encode(x)
    width = max(1, int((acts > 0).sum(-1).max()))
    values, indices = acts.topk(width, dim=-1, sorted=False)
    pre = gathered_dots(x, W, indices) + b[indices]
    active = values > 0
    off = (values - pre).abs().masked_fill(~active, 0).max() if active.any() else pre.new_zeros(())
    if off > 1e-3 * (1 + float(pre.abs().max())):
        raise ValueError(
            f"the transcoder's encode(x) differs from x @ W_enc + b_enc on its active latents (by up to {float(off):.3g}): "
            "the edge measure needs a ReLU-family encoder on the raw input (no b_dec subtraction, no input scaling)."
        )
    M = encoder_product if encoder_product is not None else upstream.W_dec.to(W.dtype) @ W
    latents = M[up.indices[:, None, :], indices[:, :, None]] * up.values[:, None, :].to(W.dtype)
    bias = (upstream.b_dec.to(W.dtype) @ W + b)[indices]
    error = gathered_dots(up.error.to(W.dtype), W, indices)
    return EdgeAttributions(latents, error, bias, pre, active, up.values, up.indices, indices)


def _check_transcoder(upstream: Any, transcoder: Any) -> None:
    for name in ("W_enc", "b_enc", "encode"):
        if not hasattr(transcoder, name):
            raise ValueError(f"the downstream model has no {name!r}: expected a JSAE pair or a transcoder (W_enc, b_enc, encode).")
    for name in ("W_dec", "b_dec", "encode"):
        if not hasattr(upstream, name):
            raise ValueError(f"the upstream SAE has no {name!r}: pass a JSAE pair or a SAELens SAE on the MLP input.")
    if upstream.W_dec.shape[1] != transcoder.W_enc.shape[0]:
        raise ValueError(
            f"the upstream SAE decodes to d={upstream.W_dec.shape[1]} but the transcoder reads d_in={transcoder.W_enc.shape[0]}: "
            "both must be on the same MLP input."
        )


def attributions(downstream: Any, x: torch.Tensor, upstream: Any = None, path_steps: int = 0) -> EdgeAttributions:
    """`pair_attributions` for a JSAE pair (`upstream` must be None or the pair), else
    `transcoder_attributions(upstream, downstream, x)` (exact; `path_steps` does not apply)."""
    if _check_models(downstream, upstream) == "pair":
        return pair_attributions(downstream, x, path_steps)
    return transcoder_attributions(upstream, downstream, x)


class EdgeCounts(NamedTuple):
    """Per-token results of `edge_counts` (tokens without an active downstream node have weight 0)."""

    edges: torch.Tensor
    """(tokens, n_coverages): mean over the token's active nodes of the edges (latents, error and
    bias alike) needed to reach each coverage of the node's total |attribution|."""
    latent_edges: torch.Tensor
    """(tokens, n_coverages): of those, the latent → latent edges."""
    error_share: torch.Tensor
    """(tokens,): mean over active nodes of |error| / total |attribution|."""
    bias_share: torch.Tensor
    """(tokens,): mean over active nodes of |bias| / total |attribution|."""
    n_nodes: torch.Tensor
    """(tokens,): active downstream nodes with a non-zero row (the ones averaged)."""
    n_upstream: torch.Tensor
    """(tokens,): active upstream latents."""
    abs_linearisation_error: torch.Tensor
    """(tokens,): Σ over those nodes of |h_j − Σ attributions|."""
    abs_pre: torch.Tensor
    """(tokens,): Σ over those nodes of |h_j|."""


def row_cover(rows: torch.Tensor, coverage: float) -> torch.Tensor:
    """(..., n) bool: per row of `rows` (≥ 0), the fewest entries, largest first, whose sum reaches
    `coverage` of the row's total (the entries before the one that reaches it, plus that one; never
    a zero entry). The one per-node rule: `edge_counts` counts these entries and `jsae graph`
    (`graph/pruning.py`) draws them as a node's incoming edges."""
    total = rows.sum(-1, keepdim=True)
    ordered, order = rows.sort(-1, descending=True)
    rank = order.argsort(-1)  # position of each entry in the sorted row
    count = torch.minimum((ordered.cumsum(-1) < coverage * total).sum(-1, keepdim=True) + 1, (rows > 0).sum(-1, keepdim=True))
    return rank < count


@torch.no_grad()
def edge_counts(att: EdgeAttributions, coverages: Sequence[float] = COVERAGES) -> EdgeCounts:
    """Edges per active downstream node to reach each coverage, for one batch (module docstring).

    Depends only on the ratios within each row, so it is unchanged when a node's row is scaled."""
    if not all(0 < c <= 1 for c in coverages):
        raise ValueError(f"coverages must be in (0, 1]; got {list(coverages)}")
    rows = torch.cat([att.latents, att.error[..., None], att.bias[..., None]], -1).abs().to(torch.float64)
    k = att.latents.shape[-1]
    total = rows.sum(-1)  # (T, n)
    used = att.active & (total > 0)
    weight = used.to(torch.float64)
    n_nodes = weight.sum(-1)
    per_node = lambda v: (v * weight).sum(-1) / n_nodes.clamp_min(1)  # noqa: E731
    edges, latent_edges = [], []
    for c in coverages:
        keep = row_cover(rows, c)
        count = keep.sum(-1).to(torch.float64)
        special = keep[..., k:].sum(-1)  # error / bias among the kept entries
        edges.append(per_node(count))
        latent_edges.append(per_node(count - special))
    safe_total = total.clamp_min(1e-300)
    lin = att.linearisation_error.abs().to(torch.float64)
    return EdgeCounts(
        edges=torch.stack(edges, -1),
        latent_edges=torch.stack(latent_edges, -1),
        error_share=per_node(rows[..., k] / safe_total),
        bias_share=per_node(rows[..., k + 1] / safe_total),
        n_nodes=n_nodes,
        n_upstream=att.upstream_active.sum(-1).to(torch.float64),
        abs_linearisation_error=(lin * weight).sum(-1),
        abs_pre=(att.pre.abs().to(torch.float64) * weight).sum(-1),
    )


_COLUMNS = ("n_tokens", "n_nodes", "n_upstream", "error_share_sum", "bias_share_sum", "abs_linearisation_error", "abs_pre")


@dataclass
class EdgeMeasureResult:
    """The edge measure over an eval set (values with 95% intervals in `intervals`)."""

    method: str
    """"pair" or "transcoder"."""
    path_steps: int | None
    """A pair's linearisation: 0 the tangent at x, m integrated gradients over m points; None
    for a transcoder (exact)."""
    n_tokens: int
    """Tokens seen."""
    n_nodes: int
    """Active downstream nodes counted (over all tokens)."""
    coverages: list[float]
    """The coverages c of `edges_for_coverage`."""
    edges_for_coverage: list[float]
    """Per c: edges per active downstream node to reach c of its total |attribution| (mean per token)."""
    latent_edges_for_coverage: list[float]
    """Per c: of those, latent → latent edges."""
    error_share: float
    """Mean share of a node's |attribution| on the error node (completeness = 1 − this)."""
    bias_share: float
    """Mean share on the bias node."""
    linearisation_error: float
    """Σ|h − Σ attributions| / Σ|h| over counted nodes (≈ 0 for a transcoder: exact)."""
    intervals: dict[str, dict[str, Any]]
    """{metric key: Interval.to_dict()}, keys as `edge_estimates` (95%, clustered by sequence)."""
    interval_method: str
    """How the intervals are computed."""
    per_sequence: dict[str, Any]
    """Per-sequence sums (`edge_estimates` reads them; paired differences between models on the
    same `tokens_digest`): n_tokens (tokens with a counted node), n_nodes, n_upstream,
    edges_sum / latent_edges_sum (per coverage: Σ over tokens of the per-token mean),
    error_share_sum, bias_share_sum, abs_linearisation_error, abs_pre."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coverage_key(c: float) -> str:
    return f"{100 * c:g}"


def edge_estimates(ps: dict[str, Any]) -> dict[str, Estimate]:
    """Estimates (for intervals and paired differences) from an `EdgeMeasureResult.per_sequence` block."""
    n = np.asarray(ps["n_tokens"], dtype=np.float64)
    out: dict[str, Estimate] = {}
    for c, e, le in zip(ps["coverages"], ps["edges_sum"], ps["latent_edges_sum"]):
        out[f"edges.edges_for_{_coverage_key(c)}"] = ratio(e, n)
        out[f"edges.latent_edges_for_{_coverage_key(c)}"] = ratio(le, n)
    out["edges.error_share"] = ratio(ps["error_share_sum"], n)
    out["edges.completeness"] = out["edges.error_share"].scale(-1.0, 1.0)
    out["edges.bias_share"] = ratio(ps["bias_share_sum"], n)
    out["edges.active_downstream_per_token"] = ratio(ps["n_nodes"], n)
    out["edges.active_upstream_per_token"] = ratio(ps["n_upstream"], n)
    out["edges.linearisation_error"] = ratio(ps["abs_linearisation_error"], ps["abs_pre"])
    return out


register_summary_block("edges", lambda block: edge_estimates(block["per_sequence"]))


class EdgeAccumulator:
    """Per-sequence sums of `edge_counts`; `update` per batch, then `result()`."""

    def __init__(self, method: str, coverages: Sequence[float] = COVERAGES, path_steps: int | None = None) -> None:
        self.method, self.coverages, self.path_steps = method, [float(c) for c in coverages], path_steps
        self._rows: list[torch.Tensor] = []
        self._digest: Any = None
        self._n_seen = 0

    def update(self, counts: EdgeCounts, n_sequences: int, tokens: torch.Tensor | None = None) -> None:
        """Add one batch of `n_sequences` equal-length sequences (tokens in row-major order);
        `tokens`: their ids, hashed into `tokens_digest` so paired differences can check them."""
        T = counts.n_nodes.shape[0]
        if n_sequences <= 0 or T % n_sequences:
            raise ValueError(f"{T} tokens cannot be split into {n_sequences} equal sequences")
        has = (counts.n_nodes > 0).to(torch.float64)
        cols = [has, counts.n_nodes, counts.n_upstream * has, counts.error_share, counts.bias_share,
                counts.abs_linearisation_error, counts.abs_pre]
        cols += [counts.edges[:, i] for i in range(len(self.coverages))]
        cols += [counts.latent_edges[:, i] for i in range(len(self.coverages))]
        self._rows.append(torch.stack(cols, 1).reshape(n_sequences, -1, len(cols)).sum(1).cpu())
        self._n_seen += T
        if tokens is not None:
            self._digest = self._digest or hashlib.sha256()
            tokens_digest(self._digest, tokens)

    def result(self) -> EdgeMeasureResult:
        if not self._rows:
            raise ValueError("No tokens were aggregated.")
        P = torch.cat(self._rows).T.numpy()
        m = len(self.coverages)
        ps: dict[str, Any] = {name: rounded(P[i]) for i, name in enumerate(_COLUMNS)}
        ps["coverages"] = self.coverages
        ps["edges_sum"] = [rounded(P[len(_COLUMNS) + i]) for i in range(m)]
        ps["latent_edges_sum"] = [rounded(P[len(_COLUMNS) + m + i]) for i in range(m)]
        ps["tokens_digest"] = None if self._digest is None else self._digest.hexdigest()
        est = edge_estimates(ps)
        value = lambda key: est[key].value  # noqa: E731
        keys = [_coverage_key(c) for c in self.coverages]
        return EdgeMeasureResult(
            method=self.method,
            path_steps=self.path_steps,
            n_tokens=self._n_seen,
            n_nodes=int(P[1].sum()),
            coverages=self.coverages,
            edges_for_coverage=[value(f"edges.edges_for_{c}") for c in keys],
            latent_edges_for_coverage=[value(f"edges.latent_edges_for_{c}") for c in keys],
            error_share=value("edges.error_share"),
            bias_share=value("edges.bias_share"),
            linearisation_error=value("edges.linearisation_error"),
            intervals={key: e.interval().to_dict() for key, e in est.items()},
            interval_method=METHOD,
            per_sequence=ps,
        )


def _check_models(downstream: Any, upstream: Any) -> str:
    """"pair" or "transcoder", after checking that the two fit together."""
    if is_pair(downstream):
        if upstream is not None and upstream is not downstream:
            raise ValueError("a JSAE pair's upstream is its own input SAE: pass upstream=None for a pair.")
        return "pair"
    if upstream is None:
        raise ValueError("a transcoder needs an upstream SAE on the MLP input (e.g. the λ = 0 pair): pass upstream=.")
    _check_transcoder(upstream, downstream)
    return "transcoder"


def graph_reader(downstream: Any, upstream: Any) -> Any:
    """The SAE whose hook the graph's MLP inputs are read at: a pair itself, else the upstream
    SAE (after checking that the transcoder reads the same hook)."""
    if _check_models(downstream, upstream) == "pair":
        return downstream
    hook_in = getattr(getattr(getattr(downstream, "cfg", None), "metadata", None), "hook_name", None)
    if hook_in and hook_in != input_hook(upstream):
        raise ValueError(f"the transcoder reads {hook_in!r} but the upstream SAE reads {input_hook(upstream)!r}.")
    return upstream


def input_hook(reader: Any) -> str:
    """The hook an SAE reads the MLP input at (`cfg.metadata.hook_name`; "mlp_input" for a bare
    module without a SAELens config, whose inputs are handed over directly)."""
    return getattr(getattr(getattr(reader, "cfg", None), "metadata", None), "hook_name", None) or "mlp_input"


def batch_attributions(batch: Any, downstream: Any, upstream: Any = None, path_steps: int = 0,
                       encoder_product: torch.Tensor | None = None) -> EdgeAttributions:
    """`attributions` of a held-out batch (`evals.onepass.HeldOutBatch`), computed once per batch
    and shared by every metric that asks (the edge measure and intervention faithfulness).
    `encoder_product`: a transcoder's upstream W_dec @ W_enc, if already computed."""
    reader = graph_reader(downstream, upstream)
    x = batch.activation(input_hook(reader))
    flat = x.reshape(-1, x.shape[-1]).to(device=getattr(reader, "device", x.device), dtype=getattr(reader, "dtype", x.dtype))

    def compute() -> EdgeAttributions:
        if upstream is None or upstream is downstream:
            return pair_attributions(downstream, flat, path_steps)
        return transcoder_attributions(upstream, downstream, flat, encoder_product)

    return batch.shared(("attributions", id(downstream), id(upstream), path_steps), compute)


def encoder_product(upstream: Any, transcoder: Any) -> torch.Tensor:
    """The d_sae_up × d_sae_tc product upstream W_dec @ transcoder W_enc (once per metric)."""
    return upstream.W_dec.to(transcoder.W_enc.dtype) @ transcoder.W_enc


class EdgeMetric:
    """`Metric` (evals.onepass): the edge measure of `downstream` (a pair, or a transcoder with
    `upstream`) on the first `max_tokens` held-out tokens."""

    needs_logits = False

    def __init__(self, downstream: Any, upstream: Any = None, max_tokens: int | None = None,
                 coverages: Sequence[float] = COVERAGES, path_steps: int = 0) -> None:
        method = _check_models(downstream, upstream)
        if path_steps < 0:
            raise ValueError(f"path_steps={path_steps} must be >= 0 (0: the tangent at x).")
        self.reader = graph_reader(downstream, upstream)
        self.downstream, self.upstream, self.max_tokens = downstream, upstream, max_tokens
        self.coverages, self.path_steps = coverages, path_steps if method == "pair" else 0
        self.accumulator = EdgeAccumulator(method, coverages, path_steps if method == "pair" else None)
        self.product = None if method == "pair" else encoder_product(upstream, downstream)

    def hooks(self) -> set[str]:
        return {input_hook(self.reader)}

    def update(self, batch: Any) -> None:
        att = batch_attributions(batch, self.downstream, self.upstream, self.path_steps, self.product)
        self.accumulator.update(edge_counts(att, self.coverages), batch.tokens.shape[0], batch.tokens)

    def result(self) -> EdgeMeasureResult:
        return self.accumulator.result()


@torch.no_grad()
def edge_measure_of_inputs(
    downstream: Any,
    inputs: Iterable[torch.Tensor],
    *,
    upstream: Any = None,
    coverages: Sequence[float] = COVERAGES,
    path_steps: int = 0,
) -> EdgeMeasureResult:
    """The edge measure of `downstream` (a JSAE pair, or a transcoder with `upstream`) on batches
    of MLP inputs, each (n_seqs, ctx, d_in) (sequences are the units of the intervals).
    `path_steps`: a pair's linearisation (`pair_attributions`)."""
    metric = EdgeMetric(downstream, upstream, None, coverages, path_steps)
    return run_on_inputs(metric, input_hook(metric.reader), inputs)


@torch.no_grad()
def edge_measure(
    model: Any,
    downstream: Any,
    tokens: TokenSource,
    *,
    upstream: Any = None,
    coverages: Sequence[float] = COVERAGES,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
    path_steps: int = 0,
) -> EdgeMeasureResult:
    """The edge measure of `downstream` on `model`'s MLP inputs for `tokens` ((n_seqs, ctx) or batches).

    `downstream`: a JSAE pair (upstream = its own input SAE; leave `upstream` None) or a
    transcoder on the same MLP input (then `upstream` is required: a pair, whose input SAE is
    used, or a SAELens SAE at `blocks.L.ln2.hook_normalized`). The MLP inputs are read at the
    upstream SAE's hook. `path_steps` (pairs only): 0, the tangent at x; m, integrated gradients
    from the input SAE's b_dec with m midpoints (`pair_attributions`)."""
    metric = EdgeMetric(downstream, upstream, max_tokens, coverages, path_steps)
    return run_metrics(model, tokens, {"edges": metric}, batch_size=batch_size, desc="edge measure" if progress else None)["edges"]
