"""Where the input SAE's reconstruction error goes, as the frozen MLP reads it.

The Jacobian penalty is small when A = W_dec_in W (W: the MLP's input weights, ln2 folded in) is
small, i.e. when the input SAE's decoder rows avoid the directions the MLP reads. The
reconstruction x̂ then lives where the MLP is least sensitive and the error e = x − x̂ where it
is most sensitive, so the MLP's output through the reconstruction, f(x̂), degrades faster than
the input explained variance says (the splices measure that: `explained_variance.
mlp_of_input_reconstruction` and the input CE-loss score). This module measures the cause:

  * error sensitivity ρ_e = (Σ‖e W‖² / Σ‖e‖²) / (‖W‖²_F / d): how strongly the MLP's input weights
    read the error, relative to a random direction (1: indifferent; > 1: the error sits in the
    directions the MLP reads);
  * the share of Σ‖e‖² in the top singular directions of W that carry half of ‖W‖²_F, against
    the share of dimensions they are (q/d, an isotropic error's share);
  * decoder sensitivity ρ_dec: the same ratio as ρ_e for the input SAE's decoder rows, averaged
    over latents weighted by how often they fire (< 1: the dictionary avoids what the MLP reads).

W stacks `FrozenMLP.input_weights()` side by side ([W_gate, W_in] for a gated MLP). The first two
are ratios of per-sequence sums, so `evals.intervals` gives them 95% intervals and paired
differences like every other metric.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sae_lens_jsae.evals._batches import TokenSource
from sae_lens_jsae.evals.intervals import Estimate, ratio, register_summary_block
from sae_lens_jsae.evals.onepass import run_metrics
from sae_lens_jsae.evals.sparsity import tokens_digest


@dataclass
class MLPErrorAnalysis:
    """Where the input SAE's error sits relative to the MLP's input weights (module docstring)."""

    n_tokens: int
    """Tokens aggregated."""
    error_sensitivity: float
    """ρ_e: (Σ‖e W‖² / Σ‖e‖²) ÷ (‖W‖²_F / d); 1 for an isotropic error."""
    error_share_in_top_directions: float
    """Share of Σ‖e‖² in the q top singular directions of W (those with half of ‖W‖²_F)."""
    isotropic_share_in_top_directions: float
    """q / d: that share for an isotropic error."""
    top_directions: int
    """q."""
    decoder_sensitivity: float
    """ρ_dec: firing-weighted mean over latents of ‖d_i W‖² / ‖d_i‖² ÷ (‖W‖²_F / d)."""
    mean_read: float
    """‖W‖²_F / d, the normaliser of both sensitivities."""
    per_sequence: dict[str, Any]
    """Per-sequence sums `sqerr` (Σ‖e‖²), `sqerr_read` (Σ‖e W‖²), `sqerr_top` (Σ‖e U_q‖²) and
    `tokens_digest` (which tokens: differences between pairs on the same tokens are paired)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_estimates(block: dict[str, Any]) -> dict[str, Estimate]:
    """Estimates (for intervals) of the ratio metrics of an `MLPErrorAnalysis.to_dict()` block."""
    ps = block["per_sequence"]
    return {
        "mlp_error.error_sensitivity": ratio(ps["sqerr_read"], ps["sqerr"]).scale(1.0 / block["mean_read"]),
        "mlp_error.error_share_in_top_directions": ratio(ps["sqerr_top"], ps["sqerr"]),
    }


register_summary_block("mlp_error", error_estimates)


class MLPErrorMetric:
    """`Metric` (evals.onepass): `MLPErrorAnalysis` of a JSAE pair's (or any SAE's with a
    `require_mlp`) input SAE error on the first `max_tokens` held-out tokens."""

    needs_logits = False

    def __init__(self, sae: Any, max_tokens: int | None = None) -> None:
        self.sae, self.max_tokens = sae, max_tokens
        mlp = sae.require_mlp()
        W = torch.cat([w.to(torch.float64) for w in mlp.input_weights()], dim=1)  # (d, R·d_mlp)
        self.d = W.shape[0]
        self.mean_read = float(W.pow(2).sum() / self.d)  # ‖W‖²_F / d = E‖v W‖² for a random unit v
        U, S, _ = torch.linalg.svd(W, full_matrices=False)
        self.q = int((S.pow(2).cumsum(0) / S.pow(2).sum() < 0.5).sum()) + 1
        self.W, self.U_top = W.to(sae.device), U[:, : self.q].to(sae.device)
        self.sums: dict[str, list[torch.Tensor]] = {"sqerr": [], "sqerr_read": [], "sqerr_top": []}
        self.firing = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=sae.device)
        self.digest = hashlib.sha256()
        self.n_tokens = 0

    def hooks(self) -> set[str]:
        return {self.sae.cfg.metadata.hook_name}

    def update(self, batch: Any) -> None:
        tokens_digest(self.digest, batch.tokens)
        b, ctx = batch.tokens.shape
        self.n_tokens += b * ctx
        x = batch.activation(self.sae.cfg.metadata.hook_name)
        x = x.reshape(-1, x.shape[-1]).to(device=self.sae.device, dtype=self.sae.dtype)
        s_x = self.sae.encode(x)
        self.firing += (s_x > 0).sum(0).to(torch.float64)
        e = (x - self.sae.decode(s_x)).to(torch.float64).reshape(b, ctx, self.d)
        self.sums["sqerr"].append(e.pow(2).sum((1, 2)).cpu())
        self.sums["sqerr_read"].append((e @ self.W).pow(2).sum((1, 2)).cpu())
        self.sums["sqerr_top"].append((e @ self.U_top).pow(2).sum((1, 2)).cpu())

    def result(self) -> MLPErrorAnalysis:
        if not self.sums["sqerr"]:
            raise ValueError("No tokens to evaluate.")
        per_seq = {k: torch.cat(v).tolist() for k, v in self.sums.items()}
        dec = self.sae.W_dec.to(torch.float64)
        dec_read = (dec @ self.W).pow(2).sum(1) / dec.pow(2).sum(1).clamp_min(1e-300)
        weights = self.firing / self.firing.sum().clamp_min(1)
        block = {"mean_read": self.mean_read, "per_sequence": per_seq}
        est = error_estimates(block)
        return MLPErrorAnalysis(
            n_tokens=self.n_tokens,
            error_sensitivity=est["mlp_error.error_sensitivity"].value,
            error_share_in_top_directions=est["mlp_error.error_share_in_top_directions"].value,
            isotropic_share_in_top_directions=self.q / self.d,
            top_directions=self.q,
            decoder_sensitivity=float((weights * dec_read).sum()) / self.mean_read,
            mean_read=self.mean_read,
            per_sequence={**per_seq, "tokens_digest": self.digest.hexdigest()},
        )


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
    return run_metrics(model, tokens, {"mlp_error": MLPErrorMetric(sae, max_tokens)}, batch_size=batch_size,
                       desc="MLP error analysis" if progress else None)["mlp_error"]
