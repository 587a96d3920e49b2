"""Jacobian sparsity of a JSAE: threshold counts, mean |J|, scale-invariant measures, histograms.

Everything streams: `JacobianSparsityAccumulator.update` takes one batch of active Jacobians
(tokens, k, k) and keeps only sums, so an eval set of any size costs one batch of memory. The
Jacobian itself comes from `sae.active_jacobian` (the formula lives only in `jacobian.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from sae_lens_jsae.evals._batches import TokenSource
from sae_lens_jsae.evals.intervals import Estimate, ratio, register_summary_block
from sae_lens_jsae.evals.onepass import run_metrics

THRESHOLDS: tuple[float, ...] = (0.005, 0.01, 0.015, 0.02)
"""The paper's |J| thresholds τ."""
TOP_M: tuple[int, ...] = (1, 4, 16)
"""m of the 'fraction of L1 mass in the top-m entries' measure."""
RELATIVE_THRESHOLDS: tuple[float, ...] = (0.1,)
"""r of the scale-free count #{|J_ij| > r · max|J|} per token."""


@dataclass
class JacobianHistogram:
    """Histogram of |J| over all k² entries of every token (inactive entries are exact zeros)."""

    bin_edges: list[float]
    """The n_bins + 1 edges (|J| values) of equal-width bins on [0, max_value]."""
    counts: list[int]
    """Entries per bin (left-closed bins, the last one closed)."""
    overflow: int
    """Entries with |J| > the last edge (not in any bin)."""
    n_exact_zero: int
    """Entries exactly 0 (masked inactive latents, or exact cancellation); also counted in bin 0."""


@dataclass
class JacobianSparsityResult:
    """Jacobian sparsity statistics aggregated over an eval set."""

    n_tokens: int
    """Tokens aggregated."""
    k: int
    """Active latents per SAE; each token's J has k² = k_out·k_in entries."""
    thresholds: list[float]
    """The thresholds τ, each used for its own count."""
    mean_count_above: list[float]
    """Per τ (same order): mean over tokens of #{|J_ij| > τ} (out of k²)."""
    mean_fraction_above: list[float]
    """Per τ: mean_count_above / k²."""
    std_count_above: list[float]
    """Per τ: standard deviation over tokens of the count."""
    mean_abs: float
    """Mean |J| over all entries and tokens (the quantity the training penalty uses)."""
    max_abs: float
    """Largest |J| seen."""
    l1_l2_ratio: float
    """Mean over tokens of ‖J‖₁ / (‖J‖₂ · √(k²)): scale-invariant, 1/k for one non-zero entry, 1 for equal magnitudes."""
    top_m: list[int]
    """The m of the top-m mass measure."""
    top_m_mass: list[float]
    """Per m: mean over tokens of (sum of the m largest |J|) / ‖J‖₁. Scale-invariant; higher is sparser."""
    n_zero_tokens: int
    """Tokens whose J is entirely 0; excluded from the two scale-invariant means."""
    histogram: JacobianHistogram
    """Histogram of |J|."""
    relative_thresholds: list[float] = field(default_factory=list)
    """The r of the relative counts."""
    relative_count_above: list[float] = field(default_factory=list)
    """Per r: mean over tokens of #{|J_ij| > r · max_ij |J_ij|} (scale-free; 0 for an all-zero J)."""
    per_sequence: dict[str, Any] | None = None
    """Per-sequence sums for intervals (`sparsity_estimates`): n_tokens, n_nonzero,
    count_above (per τ), relative_count_above (per r), abs_sum, ratio_sum, top_m_mass_sum (per m),
    and tokens_digest (which tokens); None when the sequences were not given."""

    def count_above(self, threshold: float) -> float:
        """mean_count_above for the threshold `threshold` (KeyError-like ValueError if not measured)."""
        for t, c in zip(self.thresholds, self.mean_count_above):
            if abs(t - threshold) < 1e-12:
                return c
        raise ValueError(f"threshold {threshold} was not measured; thresholds: {self.thresholds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JacobianSparsityResult:
        return cls(**{**d, "histogram": JacobianHistogram(**d["histogram"])})


def tokens_digest(digest: Any, batch: torch.Tensor) -> None:
    """Feed a token batch into a hashlib digest (identifies the eval sequences for paired differences)."""
    digest.update(batch.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())


@dataclass
class JacobianSparsityAccumulator:
    """Streaming sums for `JacobianSparsityResult`; call `update(values)` per batch, then `result()`."""

    thresholds: Sequence[float] = THRESHOLDS
    top_m: Sequence[int] = TOP_M
    hist_bins: int = 100
    hist_max: float = 0.2
    relative_thresholds: Sequence[float] = RELATIVE_THRESHOLDS
    _per_seq: list[torch.Tensor] = field(default_factory=list)
    _rel_sum: torch.Tensor | None = None
    _digest: Any = None
    _n: int = 0
    _k: int = 0
    _count_sum: torch.Tensor | None = None
    _count_sq_sum: torch.Tensor | None = None
    _abs_sum: float = 0.0
    _max: float = 0.0
    _ratio_sum: float = 0.0
    _top_sum: torch.Tensor | None = None
    _n_nonzero: int = 0
    _hist: torch.Tensor | None = None
    _overflow: int = 0
    _zeros: int = 0
    _entries: int = field(default=0)

    @torch.no_grad()
    def update(self, values: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
        """Add a batch of active Jacobians, (tokens, k_out, k_in).

        `tokens`: the (n_seqs, ctx) token batch they come from (row-major); when given (every
        update), per-sequence sums are kept for intervals."""
        if values.ndim != 3:
            raise ValueError(f"values must be (tokens, k_out, k_in); got {tuple(values.shape)}")
        if tokens is not None and tokens.numel() != values.shape[0]:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not match {values.shape[0]} Jacobians")
        A = values.detach().abs().to(torch.float64).flatten(1)  # (T, k²)
        T, n = A.shape
        if T == 0:
            return
        if self._k == 0:
            self._k = values.shape[-1]
        thr = torch.tensor(list(self.thresholds), dtype=torch.float64, device=A.device)
        counts = (A[:, :, None] > thr).sum(1).to(torch.float64)  # (T, n_thr): each τ on its own
        l1 = A.sum(1)
        l2 = A.pow(2).sum(1).sqrt()
        nz = l1 > 0
        m_max = min(max(self.top_m), n)
        top = A.topk(m_max, dim=1).values.cumsum(1)  # (T, m_max)
        top_idx = torch.tensor([min(m, n) - 1 for m in self.top_m], device=A.device)
        top_mass = top[:, top_idx] / l1.clamp_min(1e-300)[:, None]
        rel_thr = torch.tensor(list(self.relative_thresholds), dtype=torch.float64, device=A.device)
        rel = (A[:, :, None] > rel_thr * A.amax(1)[:, None, None]).sum(1).to(torch.float64)  # (T, n_rel)
        if tokens is not None:
            # per sequence: [n_tokens, n_nonzero, counts…, rel counts…, abs sum, ratio sum, top-m mass…]
            ratio_tok = torch.where(nz, l1 / (l2.clamp_min(1e-300) * n**0.5), 0.0)
            cols = torch.cat([torch.ones_like(l1)[:, None], nz.to(torch.float64)[:, None], counts, rel, l1[:, None],
                              ratio_tok[:, None], torch.where(nz[:, None], top_mass, 0.0)], 1)
            self._per_seq.append(cols.reshape(tokens.shape[0], -1, cols.shape[1]).sum(1).cpu())
            if self._digest is None:
                import hashlib

                self._digest = hashlib.sha256()
            tokens_digest(self._digest, tokens)
        hist = torch.histc(A.clamp_max(self.hist_max), bins=self.hist_bins, min=0.0, max=self.hist_max)
        over = int((A > self.hist_max).sum())
        hist[-1] -= over  # clamped overflow landed in the last bin
        if self._count_sum is None:
            self._count_sum = counts.sum(0)
            self._count_sq_sum = counts.pow(2).sum(0)
            self._top_sum = top_mass[nz].sum(0)
            self._rel_sum = rel.sum(0)
            self._hist = hist
        else:
            self._count_sum += counts.sum(0)
            self._count_sq_sum += counts.pow(2).sum(0)
            self._top_sum += top_mass[nz].sum(0)
            self._rel_sum += rel.sum(0)
            self._hist += hist
        self._n += T
        self._entries += A.numel()
        self._abs_sum += float(l1.sum())
        self._max = max(self._max, float(A.max()))
        self._ratio_sum += float((l1[nz] / (l2[nz] * n**0.5)).sum())
        self._n_nonzero += int(nz.sum())
        self._overflow += over
        self._zeros += int((A == 0).sum())

    def result(self) -> JacobianSparsityResult:
        if self._n == 0 or self._count_sum is None:
            raise ValueError("No tokens were aggregated.")
        n_entries = self._k * self._k
        mean = self._count_sum / self._n
        var = (self._count_sq_sum / self._n - mean.pow(2)).clamp_min(0)
        nnz = max(self._n_nonzero, 1)
        edges = torch.linspace(0, self.hist_max, self.hist_bins + 1, dtype=torch.float64)
        per_seq = None
        if self._per_seq:
            from sae_lens_jsae.evals.intervals import rounded

            P = torch.cat(self._per_seq).T.numpy()  # (columns, n_seqs)
            nt, nr, nm = len(self.thresholds), len(self.relative_thresholds), len(self.top_m)
            per_seq = {
                "n_tokens": rounded(P[0]), "n_nonzero": rounded(P[1]),
                "count_above": [rounded(r) for r in P[2 : 2 + nt]],
                "relative_count_above": [rounded(r) for r in P[2 + nt : 2 + nt + nr]],
                "abs_sum": rounded(P[2 + nt + nr]), "ratio_sum": rounded(P[3 + nt + nr]),
                "top_m_mass_sum": [rounded(r) for r in P[4 + nt + nr : 4 + nt + nr + nm]],
                "tokens_digest": self._digest.hexdigest() if self._digest is not None else None,
            }
        return JacobianSparsityResult(
            n_tokens=self._n,
            k=self._k,
            thresholds=[float(t) for t in self.thresholds],
            mean_count_above=mean.tolist(),
            mean_fraction_above=(mean / n_entries).tolist(),
            std_count_above=var.sqrt().tolist(),
            mean_abs=self._abs_sum / self._entries,
            max_abs=self._max,
            l1_l2_ratio=self._ratio_sum / nnz,
            top_m=[int(m) for m in self.top_m],
            top_m_mass=(self._top_sum / nnz).tolist(),
            n_zero_tokens=self._n - self._n_nonzero,
            histogram=JacobianHistogram(
                bin_edges=edges.tolist(),
                counts=[int(round(c)) for c in self._hist.tolist()],
                overflow=self._overflow,
                n_exact_zero=self._zeros,
            ),
            relative_thresholds=[float(r) for r in self.relative_thresholds],
            relative_count_above=(self._rel_sum / self._n).tolist(),
            per_sequence=per_seq,
        )


def jacobian_sparsity_of_values(values: torch.Tensor, **kwargs: Any) -> JacobianSparsityResult:
    """`JacobianSparsityResult` of given active Jacobians (tokens, k, k). kwargs: accumulator fields."""
    acc = JacobianSparsityAccumulator(**kwargs)
    acc.update(values)
    return acc.result()


class JacobianSparsityMetric:
    """`Metric` (evals.onepass) of a JSAE's Jacobian sparsity: `JacobianSparsityAccumulator` over
    the active Jacobians of the first `max_tokens` held-out tokens."""

    needs_logits = False

    def __init__(self, sae: Any, max_tokens: int | None = None, **accumulator: Any) -> None:
        self.sae, self.max_tokens = sae, max_tokens
        self.accumulator = JacobianSparsityAccumulator(**accumulator)

    def hooks(self) -> set[str]:
        return {self.sae.cfg.metadata.hook_name}

    def update(self, batch: Any) -> None:
        x = batch.activation(self.sae.cfg.metadata.hook_name)
        x = x.reshape(-1, x.shape[-1]).to(device=self.sae.device, dtype=self.sae.dtype)
        self.accumulator.update(self.sae.active_jacobian(x).values, tokens=batch.tokens)

    def result(self) -> JacobianSparsityResult:
        return self.accumulator.result()


def jacobian_sparsity(
    model,
    sae,
    tokens: TokenSource,
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    top_m: Sequence[int] = TOP_M,
    hist_bins: int = 100,
    hist_max: float = 0.2,
    relative_thresholds: Sequence[float] = RELATIVE_THRESHOLDS,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
) -> JacobianSparsityResult:
    """Jacobian sparsity of JSAE `sae` on `model`'s MLP inputs for `tokens` ((n_seqs, ctx) or batches).

    Streams `batch_size` sequences at a time (model run up to the JSAE's block only); at most
    `max_tokens` tokens (whole sequences; None: all).
    """
    metric = JacobianSparsityMetric(sae, max_tokens, thresholds=thresholds, top_m=top_m, hist_bins=hist_bins, hist_max=hist_max,
                                    relative_thresholds=relative_thresholds)
    return run_metrics(model, tokens, {"jacobian_sparsity": metric}, batch_size=batch_size,
                       desc="Jacobian sparsity" if progress else None)["jacobian_sparsity"]


def sparsity_estimates(ps: Mapping[str, Any], k: int) -> dict[str, Estimate]:
    """Estimates of the Jacobian sparsity metrics from a `JacobianSparsityResult.per_sequence` block."""
    n_tok = np.asarray(ps["n_tokens"], dtype=np.float64)
    nnz = np.asarray(ps["n_nonzero"], dtype=np.float64)
    out = {f"jacobian_sparsity.mean_count_above[{i}]": ratio(c, n_tok) for i, c in enumerate(ps["count_above"])}
    out.update({f"jacobian_sparsity.relative_count_above[{i}]": ratio(c, n_tok) for i, c in enumerate(ps.get("relative_count_above", []))})
    out["jacobian_sparsity.mean_abs"] = ratio(ps["abs_sum"], n_tok * k * k)
    if nnz.sum() > 0:
        out["jacobian_sparsity.l1_l2_ratio"] = ratio(ps["ratio_sum"], nnz)
        out.update({f"jacobian_sparsity.top_m_mass[{i}]": ratio(c, nnz) for i, c in enumerate(ps["top_m_mass_sum"])})
    return out


register_summary_block("jacobian_sparsity", lambda block: sparsity_estimates(block["per_sequence"], int(block["k"])))
