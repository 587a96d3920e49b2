"""Where the input SAE's reconstruction error goes, as the frozen MLP sees it.

The Jacobian penalty is small when A = W_dec_in W (W: the MLP's input weights, ln2 folded in) is
small, i.e. when the input SAE's decoder rows avoid the directions the MLP reads. The
reconstruction x̂ then lives where the MLP is least sensitive and the error e = x − x̂ where it
is most sensitive — the MLP's output through the reconstruction, f(x̂), degrades faster than the
input explained variance says, and so does the CE loss of the input splice. This module measures
that, per sequence (so every number gets an interval from `evals.intervals`):

  * input EV = 1 − Σ‖e‖² / Σ‖x − x̄‖²                (what the input SAE is trained on);
  * MLP-output EV = 1 − Σ‖f(x̂) − f(x)‖² / Σ‖f(x) − f̄‖²  (what the next layers get);
  * error sensitivity ρ_e = (Σ‖e W‖² / Σ‖e‖²) / (‖W‖²_F / d): how strongly the MLP's input
    weights read the error, relative to a random direction (1: indifferent; > 1: the error sits
    in the directions the MLP reads);
  * decoder sensitivity ρ_dec: the same ratio for the input SAE's decoder rows, averaged over
    latents weighted by how often they fire (< 1: the dictionary avoids what the MLP reads);
  * the share of the error's energy in the top singular directions of W that carry half of
    ‖W‖²_F, against the share of dimensions they are (a random error's expectation).

W stacks the input weights `FrozenMLP.input_weights()` side by side ([W_gate, W_in] for a gated
MLP). `mlp_error_analysis` streams token batches; nothing here trains or changes the pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from sae_lens_jsae.evals._batches import TokenSource, iter_token_batches, mlp_inputs_of


@dataclass
class MLPErrorAnalysis:
    """Where the input SAE's error sits relative to the MLP's input weights (module docstring)."""

    n_tokens: int
    """Tokens aggregated."""
    n_sequences: int
    """Sequences (the unit the intervals resample)."""
    input_explained_variance: float
    """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over the eval tokens."""
    mlp_output_explained_variance: float
    """1 − Σ‖f(x̂) − f(x)‖² / Σ‖f(x) − f̄‖²: the MLP's output through the reconstruction."""
    error_sensitivity: float
    """ρ_e: (Σ‖e W‖² / Σ‖e‖²) ÷ (‖W‖²_F / d); 1 for an isotropic error."""
    decoder_sensitivity: float
    """ρ_dec: firing-weighted mean over latents of ‖d_i W‖² / ‖d_i‖² ÷ (‖W‖²_F / d)."""
    top_directions: int
    """q: how many top singular directions of W carry half of ‖W‖²_F."""
    error_share_in_top_directions: float
    """Share of Σ‖e‖² in those q directions."""
    random_share_in_top_directions: float
    """q / d: that share for an isotropic error."""
    mean_read: float
    """‖W‖²_F / d, the normaliser of both sensitivities."""
    per_sequence: dict[str, list[float]]
    """Per-sequence sums (`x_err`, `y_err`, `err_read`, `top_err`, `x_scatter`, `y_scatter` about
    the pooled mean) and token counts (`tokens`): every ratio above, on any subset of sequences."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_basis(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left singular vectors and values of W (d × n) and q, the top directions with half of ‖W‖²_F."""
    U, S, _ = torch.linalg.svd(W.to(torch.float64), full_matrices=False)
    energy = S.pow(2).cumsum(0) / S.pow(2).sum()
    q = int((energy < 0.5).sum()) + 1
    return U, S, q


@torch.no_grad()
def mlp_error_analysis(
    model,
    sae,
    tokens: TokenSource,
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
) -> MLPErrorAnalysis:
    """`MLPErrorAnalysis` of JSAE `sae` on `model`'s MLP inputs for `tokens` ((n_seqs, ctx) or batches)."""
    mlp = sae.require_mlp()
    W = torch.cat([w.to(torch.float64) for w in mlp.input_weights()], dim=1)  # (d, R·d_mlp)
    d = W.shape[0]
    mean_read = float(W.pow(2).sum() / d)  # ‖W‖²_F / d: E‖v W‖² for a random unit v
    U, _, q = _read_basis(W)
    U_top = U[:, :q]
    W, U_top = W.to(sae.device), U_top.to(sae.device)
    per_seq: dict[str, list[torch.Tensor]] = {k: [] for k in ("tokens", "x_err", "y_err", "err_read", "top_err", "x_sum", "x_sq", "y_sum", "y_sq")}
    firing = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=sae.device)
    for batch in iter_token_batches(tokens, batch_size, max_tokens, desc="MLP error analysis" if progress else None):
        b, ctx = batch.shape
        x = mlp_inputs_of(model, sae, batch)
        s_x = sae.encode(x)
        x_hat = sae.decode(s_x)
        firing += (s_x > 0).sum(0).to(torch.float64)
        x64, y64 = x.to(torch.float64).reshape(b, ctx, d), mlp(x).to(torch.float64).reshape(b, ctx, d)
        e = x64 - x_hat.to(torch.float64).reshape(b, ctx, d)
        y_err = mlp(x_hat).to(torch.float64).reshape(b, ctx, d) - y64
        for key, value in (
            ("tokens", torch.full((b,), float(ctx), dtype=torch.float64)),
            ("x_err", e.pow(2).sum((1, 2))), ("y_err", y_err.pow(2).sum((1, 2))),
            ("err_read", (e @ W).pow(2).sum((1, 2))), ("top_err", (e @ U_top).pow(2).sum((1, 2))),
            ("x_sum", x64.sum(1)), ("x_sq", x64.pow(2).sum((1, 2))), ("y_sum", y64.sum(1)), ("y_sq", y64.pow(2).sum((1, 2))),
        ):
            per_seq[key].append(value.cpu())
    if not per_seq["tokens"]:
        raise ValueError("No tokens to evaluate.")
    t = {k: torch.cat(v) for k, v in per_seq.items()}
    n_tokens = float(t["tokens"].sum())
    sums = {k: t[k].tolist() for k in ("tokens", "x_err", "y_err", "err_read", "top_err")}
    # each sequence's scatter about the pooled mean m: Σ‖v − m‖² = Σ‖v‖² − 2 m·Σv + n‖m‖²
    for v in ("x", "y"):
        m = t[f"{v}_sum"].sum(0) / n_tokens
        sums[f"{v}_scatter"] = (t[f"{v}_sq"] - 2 * t[f"{v}_sum"] @ m + t["tokens"] * m.pow(2).sum()).tolist()
    dec = sae.W_dec.to(torch.float64)
    dec_read = (dec @ W).pow(2).sum(1) / dec.pow(2).sum(1).clamp_min(1e-300)
    weights = firing / firing.sum().clamp_min(1)
    return MLPErrorAnalysis(
        n_tokens=int(n_tokens),
        n_sequences=len(sums["tokens"]),
        decoder_sensitivity=float((weights * dec_read).sum()) / mean_read,
        top_directions=q,
        random_share_in_top_directions=q / d,
        mean_read=mean_read,
        per_sequence=sums,
        **ratios(sums, mean_read),
    )


RATIOS: tuple[str, ...] = ("input_explained_variance", "mlp_output_explained_variance", "error_sensitivity", "error_share_in_top_directions")
"""The `MLPErrorAnalysis` fields that are ratios of per-sequence sums (what intervals resample)."""


def ratios(sums: dict[str, Any], mean_read: float, index: torch.Tensor | None = None) -> dict[str, float]:
    """The ratio metrics from per-sequence sums, on the sequences `index` (None: all; a
    bootstrap passes resampled indices)."""
    t = {k: torch.as_tensor(sums[k], dtype=torch.float64) for k in ("x_err", "y_err", "err_read", "top_err", "x_scatter", "y_scatter")}
    if index is not None:
        t = {k: v[index] for k, v in t.items()}
    s = {k: v.sum() for k, v in t.items()}
    return {
        "input_explained_variance": float(1 - s["x_err"] / s["x_scatter"]),
        "mlp_output_explained_variance": float(1 - s["y_err"] / s["y_scatter"]),
        "error_sensitivity": float(s["err_read"] / s["x_err"] / mean_read),
        "error_share_in_top_directions": float(s["top_err"] / s["x_err"]),
    }
