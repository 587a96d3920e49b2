"""Linearity of the JSAE's computation in its own basis (the paper's Section 5 check).

For a token with input latents s_x and active input latent j, vary s_x[j] over
`factors · s_x[j]` (default 0..2× in `n_grid` points), decode with the other latents fixed,
apply the MLP, and read the output SAE's pre-activations on the token's active output set K2
(TopK of the true y = f(x), held fixed) through a ReLU. Each (j, i ∈ K2) curve is classified as

  * linear: a least-squares line fits it within `tol · max|curve|` everywhere;
  * JumpReLU-like: not linear, but zero (within the same tolerance) on a prefix of the grid
    and linear on the rest; by symmetry a zero *suffix* (a decreasing ReLU) also counts;
  * other: anything else.

The ablation check: the change of s_y[i] when s_x[j] is removed (factor 1 → 0 on the same
curve) against J_ij · s_x[j]; the fraction within `ablation_tol` (absolute) is reported.

The tokens are sampled across the whole eval set and each remembers its sequence, so the
intervals treat sequences, not tokens, as the independent units (`linearity_estimates`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from sae_lens_jsae.evals._batches import TokenSource, iter_token_batches
from sae_lens_jsae.evals.intervals import Estimate, ratio, register_summary_block
from sae_lens_jsae.evals.onepass import run_metrics
from sae_lens_jsae.evals.sparsity import tokens_digest

LINEAR, JUMPRELU, OTHER = 0, 1, 2
CLASS_NAMES = ("linear", "jumprelu", "other")


def _max_line_residual(grid: torch.Tensor, curves: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Max |residual| of a weighted least-squares line fit, over the points with weight 1.

    grid (G,), curves (N, G), weights (P, G) 0/1 masks -> (N, P).
    """
    w = weights[None]  # (1, P, G)
    c = curves[:, None, :]  # (N, 1, G)
    n = w.sum(-1).clamp_min(1)
    g_mean = (w * grid).sum(-1) / n  # (1, P)
    c_mean = (w * c).sum(-1) / n  # (N, P)
    dg = grid - g_mean[..., None]
    var = (w * dg * dg).sum(-1)
    slope = (w * dg * (c - c_mean[..., None])).sum(-1) / var.clamp_min(1e-300)
    fit = c_mean[..., None] + slope[..., None] * dg
    return ((c - fit).abs() * w).amax(-1)


@torch.no_grad()
def classify_curves(grid: torch.Tensor, curves: torch.Tensor, tol: float = 1e-2, chunk: int = 65536) -> torch.Tensor:
    """Label each curve (N, G) sampled at `grid` (G,) as LINEAR (0), JUMPRELU (1) or OTHER (2).

    Tolerances are relative to each curve's max |value| (a curve that is all zero is linear).
    """
    grid = grid.to(torch.float64)
    G = grid.shape[0]
    if G < 3:
        raise ValueError("need at least 3 grid points to tell lines from kinks")
    idx = torch.arange(G)
    # split p: zero on [0, p) and a line on [p, G) (needs >= 2 points); or line on [0, G-p'), zero after
    prefixes = torch.arange(1, G - 1)
    line_after = (idx[None] >= prefixes[:, None]).to(torch.float64)  # (P, G)
    line_before = line_after.flip(-1)
    labels = torch.empty(curves.shape[0], dtype=torch.long)
    for s in range(0, curves.shape[0], chunk):
        c = curves[s : s + chunk].to(torch.float64)
        atol = tol * c.abs().amax(-1).clamp_min(1e-30)  # (N,)
        linear = _max_line_residual(grid, c, torch.ones(1, G, dtype=torch.float64))[:, 0] <= atol
        jump = torch.zeros_like(linear)
        for line_w in (line_after, line_before):
            zero_ok = ((c[:, None, :].abs() * (1 - line_w)[None]).amax(-1) <= atol[:, None])  # (N, P)
            line_ok = _max_line_residual(grid, c, line_w) <= atol[:, None]
            jump |= (zero_ok & line_ok).any(-1)
        lab = torch.full_like(linear, OTHER, dtype=torch.long)
        lab[jump] = JUMPRELU
        lab[linear] = LINEAR
        labels[s : s + chunk] = lab
    return labels


@dataclass
class LinearityResult:
    """Curve classes and the ablation check over sampled tokens."""

    n_tokens: int
    """Tokens sampled."""
    n_curves: int
    """(token, active input latent j, active output latent i) curves classified."""
    linear: float
    """Fraction of curves fit by a line."""
    jumprelu: float
    """Fraction of curves that are zero on a prefix (or suffix) and linear elsewhere."""
    other: float
    """Fraction of the remaining curves."""
    n_pairs: int
    """(token, i, j) pairs in the ablation check (= n_curves)."""
    ablation_on_line: float
    """Fraction of pairs with |Δs_y[i] − J_ij·s_x[j]| <= ablation_tol when s_x[j] is removed."""
    tol: float
    """Relative tolerance of the classification."""
    ablation_tol: float
    """Absolute tolerance of the ablation check."""
    n_grid: int
    """Grid points per curve."""
    max_factor: float
    """The grid runs over s_x[j] · [0, max_factor]."""
    around: str
    """'reconstruction' (decode s_x) or 'input' (the true x plus the change along W_dec[j])."""
    per_token: dict[str, Any] | None = None
    """Per sampled token (lists) for intervals: linear, jumprelu, other, n_curves, on_line, n_pairs
    counts, sequence and position (where the token is in the eval tokens; `linearity` sets the
    position), and sample_digest (which tokens were sampled); `linearity_estimates`."""
    n_sequences: int = 0
    """Distinct sequences the sampled tokens come from (the independent units of the intervals)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearityResult:
        return cls(**d)


@torch.no_grad()
def scan_curves(
    sae, x: torch.Tensor, *, n_grid: int = 21, max_factor: float = 2.0, around: Literal["reconstruction", "input"] = "reconstruction"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scan each active input latent of each token in x (T, d_in).

    Returns (factors (G,), curves (T, k_in, k_out, G), delta (T, k_out, k_in), predicted (T, k_out, k_in)),
    where curves[t, j, i] is s_y[K2_i] along s_x[K1_j]·factors, delta the change of s_y[i] from
    removing s_x[j] and predicted = J_ij · s_x[j]. Inactive (ReLU-clipped) latents give NaN curves.
    """
    if n_grid % 2 == 0:
        n_grid += 1  # keep factor 1 (the token's own value) on the grid
    mlp = sae.require_mlp()
    x = x.to(sae.dtype)
    top_in = sae._encode_input_topk(x)
    jac = sae.active_jacobian(x)
    y = mlp(x)
    top_out = sae._encode_output_topk(y)
    factors = torch.linspace(0, max_factor, n_grid, dtype=sae.dtype, device=sae.device)
    one = int(torch.argmin((factors - 1).abs()))
    base = sae.decode(top_in.dense) if around == "reconstruction" else x
    v = top_in.values  # (T, k_in)
    W = sae.W_dec[top_in.indices]  # (T, k_in, d)
    # x(t, j, g) = base_t + (factor_g − 1) · v_tj · W_dec[K1_tj]
    xs = base[:, None, None, :] + ((factors - 1)[None, None, :, None] * v[:, :, None, None]) * W[:, :, None, :]
    ys = mlp(xs)  # (T, k_in, G, d)
    Wout = sae.W_enc_out[:, top_out.indices]  # (d, T, k_out)
    if sae.cfg.apply_b_dec_to_input:
        ys = ys - sae.b_dec_out
    pre = torch.einsum("tjgd,dti->tjig", ys, Wout) + sae.b_enc_out[top_out.indices][:, None, :, None]
    curves = pre.relu()
    active = (v > 0)[:, :, None, None] & (top_out.values > 0)[:, None, :, None]
    curves = torch.where(active, curves, torch.full_like(curves, float("nan")))
    delta = (curves[..., one] - curves[..., 0]).transpose(1, 2)  # (T, k_out, k_in)
    predicted = jac.values * v[:, None, :]
    return factors, curves, delta, predicted


def linearity_of_inputs(
    sae,
    x: torch.Tensor,
    *,
    n_grid: int = 21,
    max_factor: float = 2.0,
    tol: float = 1e-2,
    ablation_tol: float = 0.1,
    around: Literal["reconstruction", "input"] = "reconstruction",
    chunk_tokens: int = 16,
    sequence: torch.Tensor | np.ndarray | list[int] | None = None,
) -> LinearityResult:
    """`LinearityResult` over MLP inputs x (T, d_in), `chunk_tokens` tokens at a time.

    `sequence` (T,): which sequence each row of x comes from (the units of the intervals); by
    default each row is its own sequence."""
    seq_ids = np.arange(x.shape[0]) if sequence is None else np.asarray(torch.as_tensor(sequence).cpu(), dtype=np.int64)
    if seq_ids.shape != (x.shape[0],):
        raise ValueError(f"sequence must hold one id per row of x ({x.shape[0]}); got shape {tuple(seq_ids.shape)}")
    counts = torch.zeros(3, dtype=torch.long)
    on_line = n_pairs = 0
    n_grid_used = n_grid + (n_grid % 2 == 0)
    per_token: list[torch.Tensor] = []  # (T, 6): linear, jumprelu, other, n_curves, on_line, n_pairs
    for s in range(0, x.shape[0], chunk_tokens):
        factors, curves, delta, predicted = scan_curves(sae, x[s : s + chunk_tokens], n_grid=n_grid, max_factor=max_factor, around=around)
        T = curves.shape[0]
        flat = curves.reshape(-1, curves.shape[-1])
        keep = ~flat.isnan().any(-1)
        token = torch.arange(T, device=flat.device).repeat_interleave(flat.shape[0] // max(T, 1))[keep]
        classes = classify_curves(factors, flat[keep], tol)
        counts += torch.bincount(classes, minlength=3).cpu()
        ok = ~delta.isnan()
        hit = ((delta - predicted).abs() <= ablation_tol) & ok
        on_line += int(hit.sum())
        n_pairs += int(ok.sum())
        by_class = torch.bincount(token * 3 + classes.to(token.device), minlength=3 * T).reshape(T, 3)
        per_token.append(torch.cat([by_class, by_class.sum(1, keepdim=True), hit.flatten(1).sum(1, keepdim=True),
                                    ok.flatten(1).sum(1, keepdim=True)], 1).cpu())
    P = torch.cat(per_token).T.tolist() if per_token else [[] for _ in range(6)]
    per_token_dict: dict[str, Any] = dict(zip(("linear", "jumprelu", "other", "n_curves", "on_line", "n_pairs"), P))
    per_token_dict["sequence"] = seq_ids.tolist()
    n = int(counts.sum())
    fr = (counts.double() / max(n, 1)).tolist()
    return LinearityResult(
        n_tokens=int(x.shape[0]), n_curves=n, linear=fr[0], jumprelu=fr[1], other=fr[2], n_pairs=n_pairs,
        ablation_on_line=on_line / max(n_pairs, 1), tol=tol, ablation_tol=ablation_tol, n_grid=n_grid_used,
        max_factor=max_factor, around=around, per_token=per_token_dict, n_sequences=len(np.unique(seq_ids)),
    )


def _token_matrix(tokens: TokenSource, batch_size: int) -> torch.Tensor:
    """`tokens` as one (n_seqs, ctx) tensor (an iterable of batches is read to its end)."""
    if isinstance(tokens, torch.Tensor):
        return tokens[None] if tokens.ndim == 1 else tokens
    batches = list(iter_token_batches(tokens, batch_size, None))
    if len({b.shape[1] for b in batches}) > 1:
        raise ValueError(f"linearity needs token batches of one sequence length; got {sorted({b.shape[1] for b in batches})}")
    return torch.cat(batches) if batches else torch.zeros(0, 0, dtype=torch.long)


class LinearityMetric:
    """`Metric` (evals.onepass): linearity fractions and the ablation check on `n_tokens` tokens
    sampled from the held-out rows `tokens` ((n_seqs, ctx), the rows the pass reads, in order).

    A two-stage sample (seeded) across the whole eval set: ⌈n_tokens / tokens_per_sequence⌉
    sequences drawn uniformly from all of `tokens` (all of them if there are fewer, with more
    tokens each), then positions drawn uniformly within each (sequence position 0, usually BOS,
    is skipped when `skip_first_position`). Each sampled token records its sequence and position;
    the sequences are the intervals' units. The pass feeds it rows up to the last sampled one."""

    needs_logits = False

    def __init__(self, sae: Any, tokens: torch.Tensor, n_tokens: int = 512, *, n_grid: int = 21, max_factor: float = 2.0,
                 tol: float = 1e-2, ablation_tol: float = 0.1, around: Literal["reconstruction", "input"] = "reconstruction",
                 skip_first_position: bool = True, seed: int = 0, tokens_per_sequence: int = 4, progress: bool = False) -> None:
        if n_tokens < 1 or tokens_per_sequence < 1:
            raise ValueError(f"n_tokens and tokens_per_sequence must be ≥ 1; got {n_tokens} and {tokens_per_sequence}")
        toks = tokens[None] if tokens.ndim == 1 else tokens
        first = 1 if skip_first_position and toks.ndim == 2 and toks.shape[1] > 1 else 0
        if toks.ndim != 2 or toks.shape[0] == 0 or toks.shape[1] <= first:
            raise ValueError(f"linearity needs (n_seqs, ctx) tokens with at least one position to sample; got shape {tuple(toks.shape)}")
        self.sae, self.progress = sae, progress
        self.settings = dict(n_grid=n_grid, max_factor=max_factor, tol=tol, ablation_tol=ablation_tol, around=around)
        n_seqs, ctx = toks.shape
        per_seq = ctx - first
        gen = torch.Generator().manual_seed(seed)
        n_rows = min(n_seqs, -(-n_tokens // tokens_per_sequence))
        per_row = min(per_seq, -(-n_tokens // n_rows))
        chosen = torch.randperm(n_seqs, generator=gen)[:n_rows]
        within = torch.rand(n_rows, per_seq, generator=gen).argsort(1)[:, :per_row]  # distinct positions in each sequence
        keep = torch.randperm(n_rows * per_row, generator=gen)[:n_tokens]  # trim to n_tokens
        self.seq, self.pos = chosen.repeat_interleave(per_row)[keep], within.reshape(-1)[keep] + first
        self.pick = self.seq * ctx + self.pos  # flat index into tokens (for the sample digest)
        self.max_tokens = (int(self.seq.max()) + 1) * ctx
        self.x: torch.Tensor | None = None
        digest = hashlib.sha256()
        tokens_digest(digest, toks)
        tokens_digest(digest, self.pick)
        self.sample_digest = digest.hexdigest()

    def hooks(self) -> set[str]:
        return {self.sae.cfg.metadata.hook_name}

    def update(self, batch: Any) -> None:
        b = batch.tokens.shape[0]
        sel = ((self.seq >= batch.row_start) & (self.seq < batch.row_start + b)).nonzero().squeeze(1)
        if sel.numel() == 0:
            return
        acts = batch.activation(self.sae.cfg.metadata.hook_name).to(device=self.sae.device, dtype=self.sae.dtype)
        if self.x is None:
            self.x = acts.new_empty(self.pick.numel(), acts.shape[-1])
        self.x[sel.to(self.x.device)] = acts[(self.seq[sel] - batch.row_start).to(acts.device), self.pos[sel].to(acts.device)]

    def result(self) -> LinearityResult:
        if self.x is None:
            raise ValueError("No tokens to evaluate.")
        from tqdm.auto import tqdm

        step = 64
        parts = [linearity_of_inputs(self.sae, self.x[s : s + step], sequence=self.seq[s : s + step], **self.settings)  # type: ignore[arg-type]
                 for s in tqdm(range(0, self.x.shape[0], step), desc="Linearity", disable=not self.progress, leave=False)]
        result = merge_linearity(parts)
        if result.per_token is not None:
            result.per_token["position"] = self.pos.tolist()
            result.per_token["sample_digest"] = self.sample_digest
        return result


def linearity(
    model,
    sae,
    tokens: TokenSource,
    *,
    n_tokens: int = 512,
    n_grid: int = 21,
    max_factor: float = 2.0,
    tol: float = 1e-2,
    ablation_tol: float = 0.1,
    around: Literal["reconstruction", "input"] = "reconstruction",
    skip_first_position: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    tokens_per_sequence: int = 4,
) -> LinearityResult:
    """Linearity fractions and the ablation check on `n_tokens` tokens sampled from `tokens`
    ((n_seqs, ctx) or batches): `LinearityMetric` in a pass of its own."""
    toks = _token_matrix(tokens, batch_size)
    metric = LinearityMetric(sae, toks, n_tokens, n_grid=n_grid, max_factor=max_factor, tol=tol, ablation_tol=ablation_tol, around=around,
                             skip_first_position=skip_first_position, seed=seed, tokens_per_sequence=tokens_per_sequence, progress=progress)
    return run_metrics(model, toks, {"linearity": metric}, batch_size=batch_size, desc=None)["linearity"]


def merge_linearity(parts: list[LinearityResult]) -> LinearityResult:
    """Combine results over disjoint token sets of one token source (same settings; sequence ids
    refer to the same sequences)."""
    n = sum(p.n_curves for p in parts)
    pairs = sum(p.n_pairs for p in parts)
    frac = lambda name: sum(getattr(p, name) * p.n_curves for p in parts) / max(n, 1)  # noqa: E731
    first = parts[0]
    per_token = None
    if all(p.per_token is not None for p in parts):
        per_token = {k: [v for p in parts for v in p.per_token[k]] for k in first.per_token}  # type: ignore[index]
    n_sequences = len(set(per_token["sequence"])) if per_token is not None and "sequence" in per_token else sum(p.n_sequences for p in parts)
    return LinearityResult(
        n_tokens=sum(p.n_tokens for p in parts), n_curves=n, linear=frac("linear"), jumprelu=frac("jumprelu"), other=frac("other"),
        n_pairs=pairs, ablation_on_line=sum(p.ablation_on_line * p.n_pairs for p in parts) / max(pairs, 1),
        tol=first.tol, ablation_tol=first.ablation_tol, n_grid=first.n_grid, max_factor=first.max_factor, around=first.around,
        per_token=per_token, n_sequences=n_sequences,
    )


# --------------------------------------------------------------------------- intervals
LINEARITY_COLUMNS = ("linear", "jumprelu", "other", "n_curves", "on_line", "n_pairs")
"""Per-token counts of a `LinearityResult.per_token` block."""
NO_SEQUENCE_IDS = ("the linearity sample has no sequence ids (evaluated before its tokens were clustered by sequence; "
                   "its tokens are not independent): re-run jsae eval")


def linearity_estimates(pt: Mapping[str, Any]) -> dict[str, Estimate]:
    """Estimates of the linearity fractions from a `LinearityResult.per_token` block.

    The sampled tokens' counts are summed per sequence (`pt["sequence"]`: which sequence each token
    came from) and the sequences are the units, as for every other metric: several tokens of one
    sequence are not independent. A block without sequence ids (older summaries) is n/a."""
    n = np.asarray(pt["n_curves"], dtype=np.float64)
    if n.size == 0 or n.sum() == 0:
        return {}
    if "sequence" not in pt:
        col = {c: np.asarray(pt[c], dtype=np.float64) for c in LINEARITY_COLUMNS}
        na = {f"linearity.{c}": Estimate(col[c].sum() / n.sum(), np.zeros(0), NO_SEQUENCE_IDS) for c in ("linear", "jumprelu", "other")}
        if col["n_pairs"].sum() > 0:
            na["linearity.ablation_on_line"] = Estimate(col["on_line"].sum() / col["n_pairs"].sum(), np.zeros(0), NO_SEQUENCE_IDS)
        return na
    seq = np.asarray(pt["sequence"])
    if seq.shape != n.shape:
        raise ValueError(f"linearity per_token: {seq.size} sequence ids for {n.size} tokens")
    _, unit = np.unique(seq, return_inverse=True)
    col = {c: np.bincount(unit, weights=np.asarray(pt[c], dtype=np.float64)) for c in LINEARITY_COLUMNS}
    out = {f"linearity.{c}": ratio(col[c], col["n_curves"]) for c in ("linear", "jumprelu", "other")}
    if col["n_pairs"].sum() > 0:
        out["linearity.ablation_on_line"] = ratio(col["on_line"], col["n_pairs"])
    return out


register_summary_block("linearity", lambda block: linearity_estimates(block["per_token"]), data="per_token", digest="sample_digest")
