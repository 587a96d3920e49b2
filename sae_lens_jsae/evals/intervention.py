"""Intervention faithfulness: does a graph predict what the MLP does when an upstream feature weakens?

A reader of an attribution graph (a JSAE pair's, or a transcoder's) concludes: "if upstream latent
i were weaker, the downstream nodes would move along its edges, and so would the MLP's output".
This module tests that claim against the real MLP. At a token with MLP input x, decomposed by the
upstream SAE as x = Σᵢ sᵢdᵢ + b_dec + e (`evals.edges`), take each of the m largest active upstream
latents (by sᵢ‖dᵢ‖), scale it by (1 − a), and compare

    real:       Δ = f(x − a·sᵢdᵢ) − f(x)                              (the frozen MLP, run again)
    predicted:  Δ̂ = −a · Σ_{j active} W_dec_down[j] · A[j, i]  [ − a·sᵢ dᵢ W_skipᵀ ]

where A[j, i] is the graph's edge i → j (`EdgeAttributions.latents`: J[j, i]·sᵢ for a pair,
sᵢ dᵢ·W_enc[:, j] for a transcoder; the skip path for a skip transcoder), and W_dec_down is the
output SAE's decoder (pair) or the transcoder's decoder. The pruned graph keeps only the edges
`jsae graph` draws (`edges.row_cover`, 80% of each node's |attribution| by default; a skip path is
not a graph edge and is kept whole). The score is the fraction of the real change's energy the
graph explains,

    faithfulness = 1 − Σ ‖Δ − Δ̂‖² / Σ ‖Δ‖²        (sums over tokens, the m latents and sequences),

1 for a graph that is the MLP's exact linear response, 0 for predicting no change, below 0 for a
prediction worse than none. a → 0 tests the graph as a tangent; a = 1 (removing the latent) adds
the MLP's curvature, which no linear graph captures. Intervals: per-sequence sums of ‖Δ − Δ̂‖² and
‖Δ‖², a ratio estimator (`evals.intervals`). docs/metrics.md has the choices and their reasons.

Cost per token: the edge measure's attributions, then m·|strengths| MLP passes and
m·n_down·d for the predictions. No library does this: circuit-tracer validates its graphs by
steering the whole model, per prompt, not by a corpus-level score of one layer's edges.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sae_lens_jsae.evals._batches import TokenSource
from sae_lens_jsae.evals.edges import (
    EdgeAttributions,
    _check_models,
    batch_attributions,
    encoder_product,
    graph_reader,
    input_hook,
    pair_attributions,
    row_cover,
    transcoder_attributions,
)
from sae_lens_jsae.evals.intervals import METHOD, Estimate, ratio, register_summary_block, rounded
from sae_lens_jsae.evals.onepass import run_metrics, run_on_inputs
from sae_lens_jsae.evals.sparsity import tokens_digest
from sae_lens_jsae.util import is_pair

STRENGTHS: tuple[float, ...] = (0.1, 1.0)
"""a: each tested upstream latent is scaled by (1 − a); 1 removes it."""
TOP_M = 8
"""Upstream latents tested per token (the largest active ones)."""
GRAPH_COVERAGE = 0.8
"""The pruned graph's per-node coverage (`jsae graph`'s default `--node-coverage`)."""
GRAPHS = ("full", "pruned")


def strength_key(a: float) -> str:
    return f"a={a:g}"


@dataclass(frozen=True)
class InterventionSums:
    """Per-token sums of one batch: `sse[(a, graph)]` = Σ over the tested latents of ‖Δ − Δ̂‖²,
    `energy[a]` = Σ ‖Δ‖², `n_tested` = latents tested at the token."""

    sse: dict[tuple[float, str], torch.Tensor]
    energy: dict[float, torch.Tensor]
    n_tested: torch.Tensor


def _real_mlp(downstream: Any, upstream: Any, method: str) -> Any:
    for owner in (downstream,) if method == "pair" else (upstream, downstream):
        mlp = getattr(owner, "mlp", None)
        if mlp is not None:
            return mlp
    raise ValueError("no MLP to intervene on: pass mlp= (FrozenMLP.from_hooked_transformer(model, layer)) or a JSAE pair as upstream.")


def _downstream_decoder(downstream: Any, method: str) -> torch.Tensor:
    return downstream.W_dec_out if method == "pair" else downstream.W_dec


@torch.no_grad()
def intervention_sums(
    downstream: Any,
    x: torch.Tensor,
    upstream: Any = None,
    *,
    strengths: Sequence[float] = STRENGTHS,
    top_m: int = TOP_M,
    coverage: float = GRAPH_COVERAGE,
    attributions: EdgeAttributions | None = None,
    encoder_product: torch.Tensor | None = None,
    mlp: Any = None,
) -> InterventionSums:
    """`InterventionSums` of `downstream` (a JSAE pair; or a transcoder with `upstream`, an SAE on
    the MLP input) for MLP inputs x (tokens, d_in). `attributions`: the batch's edges if already
    computed (the edge measure's), else computed here. `mlp`: the real MLP (`FrozenMLP`); by
    default the pair's, or for a transcoder the upstream pair's or its own training target."""
    method = _check_models(downstream, upstream)
    if top_m < 1:
        raise ValueError(f"top_m={top_m} must be >= 1.")
    if not all(0 < a <= 1 for a in strengths):
        raise ValueError(f"strengths must be in (0, 1]; got {list(strengths)}")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage={coverage} must be in (0, 1].")
    reader = downstream if method == "pair" else upstream
    mlp = mlp if mlp is not None else _real_mlp(downstream, upstream, method)
    dtype = downstream.W_dec_out.dtype if method == "pair" else downstream.W_enc.dtype
    x = x.to(dtype)
    if attributions is None:
        if method == "pair":
            attributions = pair_attributions(downstream, x)
        else:
            attributions = transcoder_attributions(upstream, downstream, x, encoder_product)
    att = attributions
    directions = reader.W_dec[att.upstream_indices].to(dtype) * att.upstream_values.to(dtype)[..., None]  # sᵢdᵢ, (T, k_up, d)
    size = directions.norm(dim=-1).masked_fill(~att.upstream_active, -1.0)
    m = min(top_m, size.shape[-1])
    tested_size, slots = size.topk(m, dim=-1)
    tested = tested_size > 0  # (T, m): an active latent in the slot
    contribution = directions.gather(1, slots[..., None].expand(-1, -1, directions.shape[-1]))  # (T, m, d)

    rows = torch.cat([att.latents, att.error[..., None], att.bias[..., None]], -1).abs()
    keep = row_cover(rows, coverage)[..., : att.latents.shape[-1]]
    node_decoder = _downstream_decoder(downstream, method)[att.downstream_indices].to(dtype)  # (T, n_down, d)
    node_decoder = node_decoder * att.active[..., None]
    graphs = {"full": att.latents, "pruned": att.latents * keep}
    per_unit = {g: torch.einsum("tjm,tjd->tmd", edges.gather(2, slots[:, None, :].expand(-1, edges.shape[1], -1)), node_decoder)
                for g, edges in graphs.items()}  # Δ̂ for removing the whole latent, before the skip path
    skip = 0.0
    if method == "transcoder" and hasattr(downstream, "W_skip"):
        skip = contribution @ downstream.W_skip.to(dtype).T

    y = mlp(x)
    sse: dict[tuple[float, str], torch.Tensor] = {}
    energy: dict[float, torch.Tensor] = {}
    weight = tested.to(torch.float64)
    for a in strengths:
        real = (mlp((x[:, None, :] - a * contribution).reshape(-1, x.shape[-1])).reshape(contribution.shape) - y[:, None, :]).to(torch.float64)
        energy[a] = (real.pow(2).sum(-1) * weight).sum(-1)
        for g, unit in per_unit.items():
            predicted = (-a * (unit + skip)).to(torch.float64)
            sse[(a, g)] = ((real - predicted).pow(2).sum(-1) * weight).sum(-1)
    return InterventionSums(sse, energy, weight.sum(-1))


def _column(a: float, graph: str | None) -> str:
    return f"energy_{strength_key(a)}" if graph is None else f"sse_{strength_key(a)}_{graph}"


def intervention_estimates(ps: dict[str, Any]) -> dict[str, Estimate]:
    """{`intervention.a=…​.full|pruned`: faithfulness} from an `InterventionResult.per_sequence` block."""
    out: dict[str, Estimate] = {}
    for a in ps["strengths"]:
        energy = np.asarray(ps[_column(a, None)], dtype=np.float64)
        for g in GRAPHS:
            col = _column(a, g)
            if col in ps:
                out[f"intervention.{strength_key(a)}.{g}"] = ratio(ps[col], energy, check_denominator="the real change's energy").scale(-1.0, 1.0)
    return out


register_summary_block("intervention", lambda block: intervention_estimates(block["per_sequence"]))


@dataclass
class InterventionResult:
    """Intervention faithfulness of one graph on a token set (module docstring)."""

    method: str
    """"pair" or "transcoder"."""
    n_tokens: int
    top_m: int
    strengths: list[float]
    coverage: float
    faithfulness: dict[str, float]
    """{"a=0.1.full": …, "a=0.1.pruned": …, "a=1.full": …, …}: 1 − Σ‖Δ − Δ̂‖² / Σ‖Δ‖²."""
    tested_per_token: float
    intervals: dict[str, Any]
    interval_method: str
    per_sequence: dict[str, Any]
    """Per-sequence sums: n_tested, energy_a=… and sse_a=…_{full,pruned}, tokens_digest."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InterventionAccumulator:
    """Per-sequence sums of `intervention_sums`; `update` per batch, then `result()`."""

    def __init__(self, method: str, strengths: Sequence[float] = STRENGTHS, top_m: int = TOP_M, coverage: float = GRAPH_COVERAGE) -> None:
        self.method, self.strengths, self.top_m, self.coverage = method, [float(a) for a in strengths], top_m, coverage
        self._columns = ["n_tested"] + [_column(a, g) for a in self.strengths for g in (None, *GRAPHS)]
        self._rows: list[torch.Tensor] = []
        self._digest: Any = None
        self._n_seen = 0

    def update(self, sums: InterventionSums, n_sequences: int, tokens: torch.Tensor | None = None) -> None:
        T = sums.n_tested.shape[0]
        if n_sequences <= 0 or T % n_sequences:
            raise ValueError(f"{T} tokens cannot be split into {n_sequences} equal sequences")
        cols = [sums.n_tested] + [sums.energy[a] if g is None else sums.sse[(a, g)] for a in self.strengths for g in (None, *GRAPHS)]
        self._rows.append(torch.stack([c.to(torch.float64) for c in cols], 1).reshape(n_sequences, -1, len(cols)).sum(1).cpu())
        self._n_seen += T
        if tokens is not None:
            self._digest = self._digest or hashlib.sha256()
            tokens_digest(self._digest, tokens)

    def result(self) -> InterventionResult:
        if not self._rows:
            raise ValueError("No tokens were aggregated.")
        P = torch.cat(self._rows).T.numpy()
        ps: dict[str, Any] = {name: rounded(P[i]) for i, name in enumerate(self._columns)}
        ps["strengths"] = self.strengths
        ps["tokens_digest"] = None if self._digest is None else self._digest.hexdigest()
        est = intervention_estimates(ps)
        return InterventionResult(
            method=self.method,
            n_tokens=self._n_seen,
            top_m=self.top_m,
            strengths=self.strengths,
            coverage=self.coverage,
            faithfulness={key.removeprefix("intervention."): e.value for key, e in est.items()},
            tested_per_token=float(P[0].sum() / max(self._n_seen, 1)),
            intervals={key: e.interval().to_dict() for key, e in est.items()},
            interval_method=METHOD,
            per_sequence=ps,
        )


class InterventionMetric:
    """`Metric` (evals.onepass): intervention faithfulness of `downstream`'s graph (a pair, or a
    transcoder with `upstream`) on the first `max_tokens` held-out tokens. The batch's edge
    attributions are shared with the edge measure when both read it."""

    needs_logits = False

    def __init__(self, downstream: Any, upstream: Any = None, max_tokens: int | None = None, *,
                 strengths: Sequence[float] = STRENGTHS, top_m: int = TOP_M, coverage: float = GRAPH_COVERAGE, mlp: Any = None) -> None:
        method = _check_models(downstream, upstream)
        self.reader = graph_reader(downstream, upstream)
        self.downstream, self.upstream, self.max_tokens, self.mlp = downstream, upstream, max_tokens, mlp
        self.strengths, self.top_m, self.coverage = strengths, top_m, coverage
        self.product = None if method == "pair" else encoder_product(upstream, downstream)
        self.accumulator = InterventionAccumulator(method, strengths, top_m, coverage)

    def hooks(self) -> set[str]:
        return {input_hook(self.reader)}

    def update(self, batch: Any) -> None:
        x = batch.activation(input_hook(self.reader))
        att = batch_attributions(batch, self.downstream, self.upstream, 0, self.product)
        sums = intervention_sums(self.downstream, x.reshape(-1, x.shape[-1]).to(getattr(self.reader, "device", x.device)), self.upstream,
                                 strengths=self.strengths, top_m=self.top_m, coverage=self.coverage, attributions=att, mlp=self.mlp)
        self.accumulator.update(sums, batch.tokens.shape[0], batch.tokens)

    def result(self) -> InterventionResult:
        return self.accumulator.result()


@torch.no_grad()
def intervention_of_inputs(
    downstream: Any,
    inputs: Iterable[torch.Tensor],
    *,
    upstream: Any = None,
    strengths: Sequence[float] = STRENGTHS,
    top_m: int = TOP_M,
    coverage: float = GRAPH_COVERAGE,
) -> InterventionResult:
    """Intervention faithfulness on batches of MLP inputs, each (n_seqs, ctx, d_in)."""
    metric = InterventionMetric(downstream, upstream, None, strengths=strengths, top_m=top_m, coverage=coverage)
    return run_on_inputs(metric, input_hook(metric.reader), inputs)


def transcoder_mlp(model: Any, downstream: Any, upstream: Any) -> Any:
    """The real MLP a transcoder's graph is tested against when neither it nor its upstream
    carries one: the model's block (`FrozenMLP.from_hooked_transformer`); else None."""
    if is_pair(downstream) or getattr(upstream, "mlp", None) is not None or getattr(downstream, "mlp", None) is not None:
        return None
    from sae_lens_jsae.evals._batches import layer_of
    from sae_lens_jsae.mlp import FrozenMLP

    return FrozenMLP.from_hooked_transformer(model, layer_of(upstream)).to(device=downstream.W_enc.device, dtype=downstream.W_enc.dtype)


def intervention_faithfulness(
    model: Any,
    downstream: Any,
    tokens: TokenSource,
    *,
    upstream: Any = None,
    strengths: Sequence[float] = STRENGTHS,
    top_m: int = TOP_M,
    coverage: float = GRAPH_COVERAGE,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
) -> InterventionResult:
    """Intervention faithfulness of `downstream`'s graph on `model`'s MLP inputs for `tokens`
    ((n_seqs, ctx) or batches): a JSAE pair (its own input SAE upstream) or a transcoder with
    `upstream` (a pair, whose input SAE is used, or a SAELens SAE on the MLP input)."""
    _check_models(downstream, upstream)
    metric = InterventionMetric(downstream, upstream, max_tokens, strengths=strengths, top_m=top_m, coverage=coverage,
                                mlp=transcoder_mlp(model, downstream, upstream))
    return run_metrics(model, tokens, {"intervention": metric}, batch_size=batch_size,
                       desc="intervention faithfulness" if progress else None)["intervention"]
