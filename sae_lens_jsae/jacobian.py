"""The closed-form active Jacobian J = ∂s_y/∂s_x between a JSAE's input and output latents.

For the map z ↦ e_out(f(d_in(z))) at a token, with active input latents K1 and active output
latents K2 (each k of them), the chain rule gives (dense MLP, φ' at the MLP pre-activation h):

    J[i, j] = Σ_m  A[K1_j, m] · φ'(h_m) · B[m, K2_i],    A = W_dec_in W_in,  B = W_out W_enc_out

and for a gated MLP (g = gate, u = linear branch), with A_g = W_dec_in W_gate, A_u = W_dec_in W_in:

    J[i, j] = Σ_m  B[m, K2_i] · (σ'(g_m) u_m A_g[K1_j, m] + σ(g_m) A_u[K1_j, m]).

Both are `J[t] = Bᵀ[K2_t] · (Σ_r A_r[K1_t] ⊙ c_r[t])ᵀ` with per-token slopes c_r (see
`FrozenMLP.local_slopes`). A and B are formed once per call (shared by all tokens); each token
then costs R·k²·d_mlp multiply-adds instead of a d_sae² Jacobian.

No maintained library computes this: `torch.func.jacrev` gives the same numbers (that is the
test oracle) but at d_sae² cost, hence this file.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ActiveJacobian(NamedTuple):
    """Per-token Jacobian of output latents w.r.t. input latents on the active sets."""

    values: torch.Tensor
    """(tokens, k_out, k_in): J[t, i, j] = ∂ s_y[output_indices[t, i]] / ∂ s_x[input_indices[t, j]]
    (zero where either latent is inactive: picked by TopK but clipped to 0 by ReLU)."""
    output_indices: torch.Tensor
    """(tokens, k_out): the output SAE's latents selected by TopK at each token (rows of J)."""
    input_indices: torch.Tensor
    """(tokens, k_in): the input SAE's latents selected by TopK at each token (columns of J)."""


class _GatheredJacobian(torch.autograd.Function):
    """J[t] = Bt[K2_t] @ (Σ_r A[r][K1_t] * c[r][t])ᵀ, token chunk by token chunk.

    Autograd of a plain gather-then-bmm saves the (tokens, k, d_mlp) gathers for backward; this
    Function saves only A, Bt, the indices and the slopes, and re-gathers one chunk at a time in
    backward, so the extra memory is bounded by the chunk size in both directions.
    """

    @staticmethod
    def forward(ctx, A: torch.Tensor, Bt: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor, c: torch.Tensor, chunk: int) -> torch.Tensor:  # type: ignore[override]
        # A: (R, d_sae, d_mlp), Bt: (d_sae, d_mlp), K1/K2: (T, k), c: (R, T, d_mlp)
        T = K1.shape[0]
        out = A.new_empty(T, K2.shape[1], K1.shape[1])
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            mixed = _mix(A, K1[s:e], c[:, s:e])  # (t, k_in, m)
            torch.bmm(Bt[K2[s:e]], mixed.transpose(1, 2), out=out[s:e])
        ctx.save_for_backward(A, Bt, K1, K2, c)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        A, Bt, K1, K2, c = ctx.saved_tensors
        need_A, need_Bt = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_A = torch.zeros_like(A) if need_A else None
        grad_Bt = torch.zeros_like(Bt) if need_Bt else None
        m = A.shape[-1]
        T = K1.shape[0]
        for s in range(0, T, ctx.chunk):
            e = min(s + ctx.chunk, T)
            G = grad_out[s:e]  # (t, k_out, k_in)
            k1 = K1[s:e].reshape(-1)
            if need_A:
                H = torch.bmm(G.transpose(1, 2), Bt[K2[s:e]])  # (t, k_in, m)
                for r in range(A.shape[0]):
                    grad_A[r].index_add_(0, k1, (H * c[r, s:e, None, :]).reshape(-1, m))
            if need_Bt:
                mixed = _mix(A, K1[s:e], c[:, s:e])
                grad_Bt.index_add_(0, K2[s:e].reshape(-1), torch.bmm(G, mixed).reshape(-1, m))
        return grad_A, grad_Bt, None, None, None, None


def _mix(A: torch.Tensor, K1: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Σ_r A[r][K1] * c[r][:, None, :] -> (t, k_in, d_mlp)."""
    mixed = A[0][K1] * c[0, :, None, :]
    for r in range(1, A.shape[0]):
        mixed = mixed + A[r][K1] * c[r, :, None, :]
    return mixed


def chunk_tokens(max_bytes: int | None, k: int, d_mlp: int, n_terms: int, element_size: int) -> int | None:
    """How many tokens one chunk may hold so its gathered slices stay under `max_bytes`."""
    if max_bytes is None:
        return None
    per_token = (n_terms + 2) * k * d_mlp * element_size  # gathers + the mixed slice
    return max(1, int(max_bytes // per_token))


def active_jacobian_values(
    decoder_times_mlp_in: list[torch.Tensor],
    mlp_out_times_encoder: torch.Tensor,
    slopes: list[torch.Tensor],
    input_indices: torch.Tensor,
    output_indices: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The (tokens, k_out, k_in) Jacobian on the active sets (without masking).

    Args:
        decoder_times_mlp_in: [W_dec_in @ W] for W in `FrozenMLP.input_weights()`, each (d_sae, d_mlp).
        mlp_out_times_encoder: W_out @ W_enc_out, (d_mlp, d_sae).
        slopes: `FrozenMLP.local_slopes(pre)`, each (tokens, d_mlp), matching `decoder_times_mlp_in`.
        input_indices, output_indices: (tokens, k) TopK indices of the input / output SAE.
        chunk_size: tokens per chunk (None: all at once). Values and gradients do not depend on it.
    """
    A = torch.stack(decoder_times_mlp_in)
    c = torch.stack(slopes).to(A.dtype)
    T = input_indices.shape[0]
    return _GatheredJacobian.apply(
        A, mlp_out_times_encoder.T, input_indices, output_indices, c, chunk_size or max(T, 1)
    )


def mask_inactive(values: torch.Tensor, input_latents: torch.Tensor, output_latents: torch.Tensor) -> torch.Tensor:
    """Zero the rows / columns of latents picked by TopK whose value is 0 (ReLU clipped them).

    `input_latents`/`output_latents` are the (tokens, k) TopK values, aligned with the indices.
    """
    return values * (output_latents > 0).to(values.dtype)[:, :, None] * (input_latents > 0).to(values.dtype)[:, None, :]
