"""95% intervals for every eval metric, from per-sequence sums; paired differences between SAEs.

Every metric here is a smooth function of ratios of sums over sequences, R = Σᵢ aᵢ / Σᵢ bᵢ
(a mean per token: a = per-sequence sum, b = per-sequence token count; a CE-loss score:
a = CE_zero − CE_spliced, b = CE_zero − CE_clean summed over the sequence; an explained variance:
1 − Σ‖x − x̂‖² / Σ‖x − μ‖²). Sequences, not tokens, are the independent units (tokens of one
sequence are correlated), so the interval is a cluster-robust (delta-method) standard error over
sequences: each estimate carries its per-sequence influence values

    ψᵢ = (aᵢ − R·bᵢ) / Σⱼ bⱼ,        SE = √(n/(n−1) · Σᵢ ψᵢ²),        95% interval R ± t₀.₉₇₅(n−1)·SE,

with n the number of sequences and t₀.₉₇₅(n−1) Student's t quantile (2.13 at n = 16, 1.98 at
n = 100, → 1.96), not the normal 1.96, so the interval keeps its coverage when it rests on few
sequences. Sums, differences and scalings of estimates add their ψ. A difference between two SAEs
evaluated on the same sequences is *paired*: ψᵢ(A − B) = ψᵢ(A) − ψᵢ(B), so the sequence-to-
sequence variation both share cancels (much narrower than the unpaired √(SE_A² + SE_B²), whose
t quantile takes the Welch–Satterthwaite degrees of freedom).

A ratio whose denominator is not resolved — its own 95% interval reaches 0 or is wider than ±50%
of its value, e.g. a CE-loss score on the randomized model, where zero-ablating the MLP costs
≈ 0 nats — means nothing (the linearisation fails too): it is reported as n/a with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

METHOD = "delta-method standard error over sequences (cluster-robust), 95% = ±t(0.975, n−1)·SE, n = sequences"
"""How every interval is computed (written into the JSONs)."""
MAX_RELATIVE_DENOMINATOR_HALF_WIDTH = 0.5
"""A ratio is n/a when its denominator's 95% half-width exceeds this fraction of the denominator."""


@lru_cache(maxsize=4096)
def t95(dof: float, level: float = 0.95) -> float:
    """Two-sided multiplier of a `level` interval (95% by default): Student's t quantile
    t₍₁₊level₎/₂ with `dof` degrees of freedom (∞ below 1 dof)."""
    if not dof >= 1:
        return math.inf
    from scipy.stats import t  # imported here: the CLI's --help must stay light

    return float(t.ppf((1 + level) / 2, dof))


def welch_dof(*parts: tuple[float, int]) -> float:
    """Welch–Satterthwaite degrees of freedom of a sum of independent terms, each (SE, its n sequences)."""
    num = sum(se**2 for se, _ in parts) ** 2
    den = sum(se**4 / (n - 1) for se, n in parts if n > 1 and se > 0)
    if any(n <= 1 for _, n in parts) or not np.isfinite(num):
        return 0.0
    return float(num / den) if den > 0 else float(sum(n - 1 for _, n in parts))


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval (or n/a with the reason)."""

    value: float | None
    """The estimate (None when n/a)."""
    lo: float | None
    """Lower end of the 95% interval."""
    hi: float | None
    """Upper end of the 95% interval."""
    n_sequences: int
    """Independent units (sequences) it rests on."""
    na_reason: str | None = None
    """Why the metric is not reported (None when it is)."""

    @property
    def ok(self) -> bool:
        return self.na_reason is None and self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n_sequences": self.n_sequences, "na_reason": self.na_reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Interval:
        return cls(d.get("value"), d.get("lo"), d.get("hi"), int(d.get("n_sequences", 0)), d.get("na_reason"))

    def fmt(self, digits: int = 3) -> str:
        """'0.512 [0.498, 0.526]' or 'n/a (reason)'."""
        if not self.ok:
            return f"n/a ({self.na_reason})"
        if self.lo is None or self.hi is None:
            return f"{self.value:.{digits}g}"
        return f"{self.value:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}]"


class Estimate:
    """A statistic of per-sequence data with its per-sequence influence values ψ (see module docstring)."""

    def __init__(self, value: float, psi: np.ndarray, na_reason: str | None = None) -> None:
        self.value = float(value)
        self.psi = np.asarray(psi, dtype=np.float64)
        self.na_reason = na_reason

    @property
    def n(self) -> int:
        return int(self.psi.shape[0])

    @property
    def se(self) -> float:
        n = self.n
        return float(np.sqrt(n / max(n - 1, 1) * np.sum(self.psi**2))) if n > 1 else float("inf")

    def interval(self) -> Interval:
        if self.na_reason is not None or not np.isfinite(self.value):
            return Interval(None, None, None, self.n, self.na_reason or "not finite")
        if self.n <= 1:
            return Interval(self.value, -math.inf, math.inf, self.n)
        half = t95(self.n - 1) * self.se
        return Interval(self.value, self.value - half, self.value + half, self.n)

    def _check(self, other: Estimate) -> None:
        if other.n != self.n:
            raise ValueError(f"paired estimates need the same sequences; got {self.n} and {other.n} sequences")

    def __sub__(self, other: Estimate) -> Estimate:
        self._check(other)
        return Estimate(self.value - other.value, self.psi - other.psi, self.na_reason or other.na_reason)

    def __add__(self, other: Estimate) -> Estimate:
        self._check(other)
        return Estimate(self.value + other.value, self.psi + other.psi, self.na_reason or other.na_reason)

    def __truediv__(self, other: Estimate) -> Estimate:
        """self / other, linearised: ψ = ψ_self/b − (a/b²)·ψ_other (paired: same sequences)."""
        self._check(other)
        a, b = self.value, other.value
        if b == 0:
            return Estimate(float("nan"), np.zeros_like(self.psi), "division by 0")
        return Estimate(a / b, self.psi / b - a / b**2 * other.psi, self.na_reason or other.na_reason)

    def scale(self, c: float, shift: float = 0.0) -> Estimate:
        """c·self + shift."""
        return Estimate(c * self.value + shift, c * self.psi, self.na_reason)


def ratio(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, check_denominator: str | None = None,
          per: Sequence[float] | np.ndarray | None = None) -> Estimate:
    """Σa / Σb over sequences (a, b: per-sequence sums), with ψ for its standard error.

    `check_denominator`: a name; when given, the ratio is n/a unless the denominator Σb/Σper (per
    token when `per` holds token counts; per sequence by default) is resolved: its 95% interval
    excludes 0 and is narrower than ±50% of it."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"ratio needs two equal-length, non-empty per-sequence vectors; got shapes {a.shape} and {b.shape}")
    sb = b.sum()
    reason = None
    if check_denominator is not None:
        reason = unresolved_reason(b, check_denominator, per)
    if sb == 0:
        return Estimate(float("nan"), np.zeros_like(a), reason or "denominator is 0")
    r = a.sum() / sb
    return Estimate(r, (a - r * b) / sb, reason)


def mean(values: Sequence[float] | np.ndarray) -> Estimate:
    """Mean of per-sequence values (each sequence weighted equally)."""
    v = np.asarray(values, dtype=np.float64)
    return ratio(v, np.ones_like(v))


def unresolved_reason(b: np.ndarray, name: str, per: Sequence[float] | np.ndarray | None = None) -> str | None:
    """Why a denominator (per-sequence sums b, normalised by Σper; per sequence by default) is not
    resolved, or None if it is."""
    b = np.asarray(b, dtype=np.float64)
    d = ratio(b, np.ones_like(b) if per is None else per).interval()
    if d.value is None:
        return f"{name} could not be estimated"
    half = (d.hi - d.lo) / 2  # type: ignore[operator]
    if d.lo <= 0 or half > MAX_RELATIVE_DENOMINATOR_HALF_WIDTH * abs(d.value):  # type: ignore[operator]
        unit = "per sequence" if per is None else "per token"
        return (f"{name} = {d.value:.3g} {unit}, 95% [{d.lo:.3g}, {d.hi:.3g}]: not resolved above 0 to within "
                f"±{MAX_RELATIVE_DENOMINATOR_HALF_WIDTH:.0%}, so the ratio means nothing")
    return None


def unpaired_difference(a: Estimate, b: Estimate, level: float = 0.95) -> Interval:
    """a − b for estimates on different sequences (independent): SE = √(SE_a² + SE_b²), t quantile
    at the Welch–Satterthwaite degrees of freedom; a `level` interval (95% by default)."""
    if a.na_reason or b.na_reason:
        return Interval(None, None, None, min(a.n, b.n), a.na_reason or b.na_reason)
    v = a.value - b.value
    half = t95(welch_dof((a.se, a.n), (b.se, b.n)), level) * float(np.hypot(a.se, b.se))
    return Interval(v, v - half, v + half, min(a.n, b.n))


def rounded(values: np.ndarray | Sequence[float], digits: int = 9) -> list[float]:
    """Per-sequence sums as a compact JSON list (9 significant digits)."""
    return [float(f"{float(v):.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]


# --------------------------------------------------------------------------- metrics of a summary
BlockEstimates = Callable[[Mapping[str, Any]], dict[str, Estimate]]
"""A summary block (e.g. `summary["edges"]`) → {metric key: Estimate}."""


@dataclass(frozen=True)
class SummaryBlock:
    """How one metric's block of an `evaluate_checkpoint` summary becomes estimates."""

    name: str
    """The block's key in the summary ("jacobian_sparsity", "splice", "edges", ...)."""
    estimates: BlockEstimates
    """Its estimates, called only when the block holds `data`."""
    data: str = "per_sequence"
    """The block's per-sequence (or per-token) data; a block without it has no estimates."""
    digest: str = "tokens_digest"
    """The key, inside `data`, naming the tokens evaluated (equal digests: differences are paired)."""


_BLOCKS: dict[str, SummaryBlock] = {}


def register_summary_block(name: str, estimates: BlockEstimates, *, data: str = "per_sequence", digest: str = "tokens_digest") -> None:
    """Make `summary_estimates` (and the differences below) read block `name` with `estimates`.

    Each metric module registers its own block at import, so this module knows no metric and
    imports none (the metrics import it); `sae_lens_jsae.evals` imports every metric module."""
    _BLOCKS[name] = SummaryBlock(name, estimates, data, digest)


def registered_blocks() -> dict[str, SummaryBlock]:
    """The registered summary blocks, by name."""
    return dict(_BLOCKS)


def _numeric(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(e, (int, float)) for e in v)


def per_sequence_length(data: Mapping[str, Any]) -> int:
    """How many sequences a metric block's per-sequence data covers: the length of its longest
    numeric list (nested lists, e.g. one per coverage, too); shorter lists are parameters
    (coverages, strengths). 0 when it has none."""
    lengths = [len(v) for v in data.values() if _numeric(v)] + [len(e) for v in data.values() if isinstance(v, list) for e in v if _numeric(e)]
    return max(lengths, default=0)


def map_per_sequence(data: Mapping[str, Any], fn: Callable[[list[float]], list[Any]]) -> dict[str, Any]:
    """`data` with `fn` applied to each per-sequence column: every numeric list of
    `per_sequence_length(data)` entries, and every list of such lists; the rest unchanged."""
    n = per_sequence_length(data)
    out = dict(data)
    for key, v in data.items():
        if _numeric(v) and len(v) == n:
            out[key] = fn(v)
        elif isinstance(v, list) and v and all(_numeric(e) and len(e) == n for e in v):
            out[key] = [fn(e) for e in v]
    return out


def cluster_block(data: Mapping[str, Any], clusters: Sequence[str]) -> dict[str, Any]:
    """A metric block's per-sequence data with each per-sequence column summed per cluster.

    Sequence i of the block is row i of the held-out selection (every metric reads a prefix of
    it); a column is per-sequence when it is a list as long as the block's longest numeric list
    (nested lists, e.g. one per coverage, too). Per-token data with a `sequence` column has it
    replaced by the cluster, so the metric's own grouping groups by cluster."""
    if "sequence" in data:  # per-token rows (the linearity sample)
        return {**data, "sequence": [clusters[int(i)] for i in data["sequence"]]}
    n = per_sequence_length(data)
    if n == 0:
        return dict(data)
    if n > len(clusters):
        raise ValueError(f"a block with {n} sequences but only {len(clusters)} recorded held-out rows")
    _, unit = np.unique(np.asarray(clusters[:n]), return_inverse=True)
    return map_per_sequence(data, lambda v: np.bincount(unit, weights=np.asarray(v, dtype=np.float64)).tolist())


def _estimates_by_block(summary: Mapping[str, Any]) -> dict[str, tuple[str, Estimate]]:
    """{metric key: (its block, Estimate)} for every registered block the summary holds data for."""
    out: dict[str, tuple[str, Estimate]] = {}
    clusters = (summary.get("heldout") or {}).get("speech")  # sequences of one speech are one unit
    for name in sorted(_BLOCKS):
        spec, block = _BLOCKS[name], summary.get(name) or {}
        if block.get(spec.data):
            if clusters:
                block = {**block, spec.data: cluster_block(block[spec.data], clusters)}
            out.update({key: (name, e) for key, e in spec.estimates(block).items()})
    return out


def summary_estimates(summary: Mapping[str, Any]) -> dict[str, Estimate]:
    """Every estimated metric of an `evaluate_checkpoint` summary that has per-sequence data."""
    return {key: e for key, (_, e) in _estimates_by_block(summary).items()}


def summary_intervals(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{metric key: Interval dict} for a summary (written into it as `intervals`)."""
    return {k: e.interval().to_dict() for k, e in summary_estimates(summary).items()}


def _digest(summary: Mapping[str, Any], block: str) -> str | None:
    """Which tokens `block` of `summary` was evaluated on (None: unknown)."""
    spec = _BLOCKS[block]
    return ((summary.get(block) or {}).get(spec.data) or {}).get(spec.digest)


def _same_tokens(a: Mapping[str, Any], b: Mapping[str, Any], block: str) -> bool:
    return _digest(a, block) is not None and _digest(a, block) == _digest(b, block)


def paired_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{metric key: Interval dict of a − b, plus `paired`} for every metric both summaries estimate.

    Paired (ψ subtracted sequence by sequence) when both were evaluated on the same tokens (same
    `tokens_digest`); otherwise the unpaired √(SE_a² + SE_b²) interval, with `paired: false`."""
    ea, eb = _estimates_by_block(a), _estimates_by_block(b)
    out: dict[str, dict[str, Any]] = {}
    for key in ea.keys() & eb.keys():
        (block, x), (_, y) = ea[key], eb[key]
        same = _same_tokens(a, b, block)
        iv = (x - y).interval().to_dict() if same and x.n == y.n else unpaired_difference(x, y).to_dict()
        out[key] = {**iv, "paired": bool(same)}
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- verdicts
PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


def difference(a: Mapping[str, Any], b: Mapping[str, Any], key: str, scale_b: float = 1.0) -> tuple[Interval, bool]:
    """(interval of a[key] − scale_b·b[key], paired?) from two summaries' per-sequence sums.

    Paired when both were evaluated on the same tokens; otherwise independent (unpaired)."""
    ea, eb = _estimates_by_block(a).get(key), _estimates_by_block(b).get(key)
    if ea is None or eb is None:
        missing = "a" if ea is None else "b"
        return Interval(None, None, None, 0, f"{key} has no per-sequence data in summary {missing} (re-run jsae eval)"), False
    (block, x), (_, y) = ea, eb
    if _same_tokens(a, b, block) and x.n == y.n:
        return (x - y.scale(scale_b)).interval(), True
    return unpaired_difference(x, y.scale(scale_b)), False


def relative(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> tuple[Interval, bool]:
    """(interval of a[key] / b[key], paired?): e.g. a JSAE's count as a multiple of λ = 0's."""
    ea, eb = _estimates_by_block(a).get(key), _estimates_by_block(b).get(key)
    if ea is None or eb is None:
        return Interval(None, None, None, 0, f"{key} has no per-sequence data"), False
    (block, x), (_, y) = ea, eb
    if _same_tokens(a, b, block) and x.n == y.n:
        return (x / y).interval(), True
    if x.na_reason or y.na_reason or y.value == 0:
        return Interval(None, None, None, min(x.n, y.n), x.na_reason or y.na_reason or "division by 0"), False
    r = x.value / y.value
    se_a, se_b = abs(x.se / y.value), abs(r * y.se / y.value)
    half = t95(welch_dof((se_a, x.n), (se_b, y.n))) * float(np.hypot(se_a, se_b))
    return Interval(r, r - half, r + half, min(x.n, y.n)), False


def verdict(iv: Interval, bound: float = 0.0, want: str = "below") -> str:
    """PASS if the whole 95% interval is on the wanted side of `bound` ('below' or 'above'), FAIL if
    the whole interval is on the other side, INCONCLUSIVE if it straddles the bound (or is n/a)."""
    if want not in ("below", "above"):
        raise ValueError(f"want must be 'below' or 'above'; got {want!r}")
    if not iv.ok or iv.lo is None or iv.hi is None:
        return INCONCLUSIVE
    lo, hi = (iv.lo, iv.hi) if want == "below" else (-iv.hi, -iv.lo)
    b = bound if want == "below" else -bound
    return PASS if hi < b else FAIL if lo > b else INCONCLUSIVE
