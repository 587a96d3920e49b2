"""The closed-form active Jacobian J = ∂s_y/∂s_x between a JSAE's input and output latents.

For the map z ↦ e_out(f(d_in(z))) at a token, with active input latents K1 and active output
latents K2 (each k of them), the chain rule gives (dense MLP, φ' at the MLP pre-activation h):

    J[i, j] = Σ_m  A[K1_j, m] · φ'(h_m) · B[m, K2_i],    A = W_dec_in W_in,  B = W_out W_enc_out

and for a gated MLP (g = gate, u = linear branch), with A_g = W_dec_in W_gate, A_u = W_dec_in W_in:

    J[i, j] = Σ_m  B[m, K2_i] · (σ'(g_m) u_m A_g[K1_j, m] + σ(g_m) A_u[K1_j, m]).

Both are `J[t] = Bᵀ[K2_t] · (Σ_r A_r[K1_t] ⊙ c_r[t])ᵀ` with per-token slopes c_r (see
`FrozenMLP.local_slopes`). A and B are formed once per call (shared by all tokens); each token
then costs R·k·d_mlp (mixing the terms) + k²·d_mlp multiply-adds instead of a d_sae² Jacobian
(and 2·k²·d_mlp in backward). docs/performance.md has the measured costs and the FLOP floor.

Post-MLP norm (Gemma 2/3's `ln2_post`, f = w ⊙ z / rms(z)): B becomes W_out diag(w) W_enc_out,
the slopes c_r carry 1/rms(z), and each token's gathered Bᵀ[K2] gets one rank-one correction,

    J[t] = (Bᵀ[K2_t] − e_t q_tᵀ) · (Σ_r A_r[K1_t] ⊙ c_r[t])ᵀ,   e_t = (y_t W_enc_out)[K2_t],  q_t = n_t W_outᵀ / d

(n = z / rms(z), y = w ⊙ n; docs/jacobian_post_norm.md): k_out·d_mlp more per token in each
pass, k_out·d for e (`gathered_dots`), and one tokens × d × d_mlp product for q. Blocks without a
post-norm pass `post_norm=None` and run exactly the code above.

No maintained library computes this: `torch.func.jacrev` gives the same numbers (that is the
test oracle) but at d_sae² cost, hence this file.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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


class PostNormTerm(NamedTuple):
    """The rank-one term a post-MLP RMSNorm adds to each token's Jacobian (see the module doc)."""

    rows: torch.Tensor
    """(tokens, k_out): e = (y W_enc_out)[K2], y the post-normed MLP output; differentiable
    (its gradient reaches W_enc_out through `gathered_dots`)."""
    hidden: torch.Tensor
    """(tokens, d_mlp): q = n W_outᵀ / d_model, n = z / rms(z); a constant of the frozen MLP."""


class _GatheredJacobian(torch.autograd.Function):
    """J[t] = P_t @ (Σ_r A_r[K1_t] * c_r[t])ᵀ, P_t = Bt[K2_t] (− E_t q_tᵀ), token chunk by token chunk.

    Autograd of a plain gather-then-bmm saves the (tokens, k, d_mlp) gathers for backward; this
    Function saves only the A_r, Bt, the indices and the slopes, and re-gathers one chunk at a
    time in backward, so the extra memory is bounded by the chunk size in both directions.

    Speed: every per-chunk intermediate is written into a few workspace buffers allocated once
    per call (`index_select(..., out=)`, `bmm(..., out=)`, in-place mixing), so the hot loop does
    no allocation; on CPU a fresh large tensor costs more in page faults than the gather itself.
    The gated terms are mixed in place (one (t, k, d_mlp) slice, not one per term), H = Gᵀ Bt[K2]
    is formed once for all terms, and the scatters add contiguous rows (`_scatter_rows`).
    Inputs: Bt (d_sae, m), K1/K2 (T, k), chunk, the post-norm E (T, k_out) and q (T, m) (both
    None without a post-norm), then the R A_r (d_sae, m) and the R c_r (T, m).
    """

    @staticmethod
    def forward(ctx, Bt: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor, chunk: int, E, q, *terms):  # type: ignore[override]
        R = len(terms) // 2
        As, cs = terms[:R], terms[R:]
        T, k_in, k_out, m = K1.shape[0], K1.shape[1], K2.shape[1], Bt.shape[1]
        out = Bt.new_empty(T, k_out, k_in)
        chunk = max(1, min(chunk, T))
        ws = _Workspace(Bt, chunk, k_in, k_out, m, n=3 if R > 1 else 2)
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            P = ws.gather_output_rows(Bt, K2, E, q, s, e)  # (t, k_out, m)
            Q = ws.mix(As, cs, K1[s:e], s, e, slot=1)  # (t, k_in, m)
            torch.bmm(P, Q.transpose(1, 2), out=out[s:e])
        ctx.save_for_backward(Bt, K1, K2, E, q, *terms)
        ctx.chunk, ctx.R = chunk, R
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        Bt, K1, K2, E, q, *terms = ctx.saved_tensors
        R = ctx.R
        As, cs = terms[:R], terms[R:]
        need_Bt = ctx.needs_input_grad[0]
        need_A = [ctx.needs_input_grad[6 + r] for r in range(R)]
        grad_Bt = torch.zeros_like(Bt) if need_Bt else None
        grad_E = torch.zeros_like(E) if E is not None and ctx.needs_input_grad[4] else None
        grad_As = [torch.zeros_like(A) if need else None for A, need in zip(As, need_A)]
        T, k_in, k_out, m = K1.shape[0], K1.shape[1], K2.shape[1], Bt.shape[1]
        chunk = max(1, min(ctx.chunk, T))
        grad_out = grad_out.contiguous()
        ws = _Workspace(Bt, chunk, k_in, k_out, m, n=3)
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            P = ws.gather_output_rows(Bt, K2, E, q, s, e)
            Q = ws.mix(As, cs, K1[s:e], s, e, slot=1)
            ws.add_chunk_gradients(grad_out[s:e], P, Q, cs, K1[s:e], K2[s:e], s, e, grad_Bt, grad_As, q, grad_E)
        return (grad_Bt, None, None, None, grad_E, None, *grad_As, *([None] * R))


class _Workspace:
    """Reusable (chunk·k, d_mlp) buffers for one call of `_GatheredJacobian` or `_JacobianL1`."""

    def __init__(self, like: torch.Tensor, chunk: int, k_in: int, k_out: int, m: int, n: int, convert: torch.dtype | None = None):
        rows = chunk * max(k_in, k_out)
        self.m = m
        self.bufs = [like.new_empty(rows * m) for _ in range(n)]
        # `scatter` into a wider accumulator goes through this buffer (index_add_ needs one dtype)
        self.wide = like.new_empty(rows * m, dtype=convert) if convert is not None else None

    def buffer(self, slot: int, t: int, k: int) -> torch.Tensor:
        return self.bufs[slot][: t * k * self.m].view(t, k, self.m)

    def gather(self, slot: int, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        t, k = idx.shape
        out = self.buffer(slot, t, k)
        torch.index_select(table, 0, idx.reshape(-1), out=out.view(t * k, self.m))
        return out

    def gather_output_rows(self, Bt, K2, E, q, s: int, e: int) -> torch.Tensor:
        """P = Bt[K2[s:e]] into slot 0, minus the post-norm's rank-one E qᵀ per token if E is given."""
        P = self.gather(0, Bt, K2[s:e])
        if E is not None:
            P.baddbmm_(E[s:e, :, None], q[s:e, None, :], alpha=-1)
        return P

    def scatter(self, acc: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> None:
        """acc[idx[i]] += rows[i] for the (t, k, m) `rows` of a (t, k) `idx`, widening if needed."""
        rows = rows.reshape(-1, self.m)
        if rows.dtype != acc.dtype:
            assert self.wide is not None
            rows = self.wide[: rows.numel()].view_as(rows).copy_(rows)
        _scatter_rows(acc, idx.reshape(-1), rows)

    def add_chunk_gradients(self, G, P, Q, cs, K1, K2, s: int, e: int, grad_Bt, grad_As, q=None, grad_E=None) -> None:
        """Add one chunk's share of ∂L/∂Bᵀ, ∂L/∂A_r and ∂L/∂E (tables that are None are skipped).

        G (t, k_out, k_in) = ∂L/∂J of the chunk, P = Bᵀ[K2] − E qᵀ in slot 0, Q = Σ_r A_r[K1] ⊙ c_r
        in slot 1: ∂Bᵀ[K2] += G·Q, ∂E = −(G·Q)·q, ∂A_r[K1] += (Gᵀ·P) ⊙ c_r. Overwrites all three slots.
        """
        t, k_out, k_in = G.shape
        if any(g is not None for g in grad_As):
            H = self.buffer(2, t, k_in)
            torch.bmm(G.transpose(1, 2), P, out=H)  # (t, k_in, m): ∂L/∂(mixed rows)
        if grad_Bt is not None or grad_E is not None:
            GQ = self.buffer(0, t, k_out)  # P is dead once H is formed
            torch.bmm(G, Q, out=GQ)  # ∂L/∂P
            if grad_E is not None:  # (1 × m)·(m × k_out) per token: bmm with a 1-column right side is ~10× slower on CPU
                grad_E[s:e] -= torch.bmm(q[s:e, None, :], GQ.transpose(1, 2)).squeeze(1).to(grad_E.dtype)
            if grad_Bt is not None:
                self.scatter(grad_Bt, K2, GQ)
        for r, grad_A in enumerate(grad_As):
            if grad_A is not None:
                scaled = H if len(grad_As) == 1 else self.buffer(1, t, k_in)  # Q is dead too
                torch.mul(H, cs[r][s:e, None, :], out=scaled)
                self.scatter(grad_A, K1, scaled)

    def mix(self, As, cs, idx: torch.Tensor, s: int, e: int, slot: int) -> torch.Tensor:
        """Σ_r A_r[idx] * c_r[s:e, None, :] into buffer `slot` (uses `slot + 1` as scratch)."""
        mixed = self.gather(slot, As[0], idx)
        mixed.mul_(cs[0][s:e, None, :])
        for r in range(1, len(As)):
            mixed.addcmul_(self.gather(slot + 1, As[r], idx), cs[r][s:e, None, :])
        return mixed


class JacobianPenalty(NamedTuple):
    """The training loss's Jacobian term, from `active_jacobian_l1`."""

    mean_abs: torch.Tensor
    """Scalar mean of |J| over tokens and the k_out × k_in active entries (masked entries count
    as 0); differentiable w.r.t. the weight products (and through them the SAE weights)."""
    values: torch.Tensor
    """(tokens, k_out, k_in) masked J, detached (for logging), in the accumulation dtype."""


class _JacobianL1(torch.autograd.Function):
    """mean|J ⊙ mask| with its gradients formed in the same pass over the tokens as J.

    ∂ mean|J| / ∂J = sign(J) / J.numel() is known as soon as a chunk's J is, so the chunk's gathered
    slices P = Bt[K2] and Q = Σ_r A_r[K1] ⊙ c_r serve the value and both gradients while they
    are still in cache, instead of being gathered again in backward (which `_GatheredJacobian`
    must do for an arbitrary upstream gradient). Backward only scales the stored gradients by
    the incoming scalar. Gradients accumulate in float32 (or the inputs' dtype, if wider), so
    bf16 products (`jacobian_dtype` or autocast) keep full-precision sums over tokens.
    Inputs: Bt (d_sae, m), K1/K2 (T, k), keep_in/keep_out (T, k) 0/1 masks, chunk, the
    post-norm E (T, k_out) and q (T, m) (None without one), then the R A_r (d_sae, m) and the R
    c_r (T, m), all in one compute dtype.
    """

    @staticmethod
    def forward(ctx, Bt, K1, K2, keep_in, keep_out, chunk: int, E, q, *terms):  # type: ignore[override]
        R = len(terms) // 2
        As, cs = terms[:R], terms[R:]
        T, k_in, k_out, m = K1.shape[0], K1.shape[1], K2.shape[1], Bt.shape[1]
        acc_dtype = torch.promote_types(Bt.dtype, torch.float32)
        need_Bt, need_A = ctx.needs_input_grad[0], [ctx.needs_input_grad[8 + r] for r in range(R)]
        grad_Bt = Bt.new_zeros(Bt.shape, dtype=acc_dtype) if need_Bt else None
        grad_E = E.new_zeros(E.shape, dtype=acc_dtype) if E is not None and ctx.needs_input_grad[6] else None
        grad_As = [A.new_zeros(A.shape, dtype=acc_dtype) if need else None for A, need in zip(As, need_A)]
        values = Bt.new_empty(T, k_out, k_in, dtype=acc_dtype)
        chunk = max(1, min(chunk, T))
        ws = _Workspace(Bt, chunk, k_in, k_out, m, n=3, convert=acc_dtype if acc_dtype != Bt.dtype else None)
        J = Bt.new_empty(chunk * k_out * k_in)
        G = Bt.new_empty(chunk * k_out * k_in)
        with torch.autocast(Bt.device.type, enabled=False):
            for s in range(0, T, chunk):
                e, t = min(s + chunk, T), min(chunk, T - s)
                P = ws.gather_output_rows(Bt, K2, E, q, s, e)  # (t, k_out, m)
                Q = ws.mix(As, cs, K1[s:e], s, e, slot=1)  # (t, k_in, m); slot 2 was scratch
                Jc, Gc = J[: t * k_out * k_in].view(t, k_out, k_in), G[: t * k_out * k_in].view(t, k_out, k_in)
                torch.bmm(P, Q.transpose(1, 2), out=Jc)
                Jc.mul_(keep_out[s:e, :, None]).mul_(keep_in[s:e, None, :])
                values[s:e].copy_(Jc)
                torch.sign(Jc, out=Gc)  # ∂|J|/∂J, 0 where masked
                ws.add_chunk_gradients(Gc, P, Q, cs, K1[s:e], K2[s:e], s, e, grad_Bt, grad_As, q, grad_E)
        ctx.grads = (grad_Bt, grad_As, grad_E)
        ctx.numel = values.numel()
        ctx.mark_non_differentiable(values)
        return values.abs().sum() / max(1, values.numel()), values

    @staticmethod
    def backward(ctx, grad_mean, _grad_values):  # type: ignore[override]
        if not hasattr(ctx, "grads"):
            raise RuntimeError("The fused Jacobian penalty was already backpropagated once; recompute it for another backward.")
        grad_Bt, grad_As, grad_E = ctx.grads
        del ctx.grads  # scaled in place and handed on: a second backward would double-scale
        scale = grad_mean / max(1, ctx.numel)
        scaled = lambda g: None if g is None else g.mul_(scale)  # noqa: E731
        R = len(grad_As)
        return (scaled(grad_Bt), None, None, None, None, None, scaled(grad_E), None, *(scaled(g) for g in grad_As), *([None] * R))


CACHE_CHUNK_ELEMENTS = 1 << 20
"""Elements of one (chunk, k, d_mlp) workspace buffer when the byte budget allows more: small
chunks keep the gathered slices in cache between gather, mix, bmm and scatter (measured on CPU,
gated SmolLM2-like sizes, 4096 tokens: 16-token chunks 1.45 s, 128: 1.62 s, 512: 2.0 s)."""


def chunk_tokens(max_bytes: int | None, k: int, d_mlp: int, element_size: int) -> int | None:
    """How many tokens one chunk may hold so its workspace buffers stay under `max_bytes`
    (and, for speed, at most about `CACHE_CHUNK_ELEMENTS` per buffer). None: no chunking."""
    if max_bytes is None:
        return None
    per_token = 3 * k * d_mlp * element_size  # the three workspace buffers
    return max(1, min(int(max_bytes // per_token), CACHE_CHUNK_ELEMENTS // (k * d_mlp)))


def _tables(
    decoder_times_mlp_in: list[torch.Tensor],
    mlp_out_times_encoder: torch.Tensor,
    slopes: list[torch.Tensor],
    post_norm: PostNormTerm | None,
):
    """(A_r, c_r, Bt, E, q) contiguous in the A_r's dtype: the rows of Bt = (W_out W_enc_out)ᵀ
    are what a token's K2 gathers (contiguous rows for index_select); E, q are None without a post-norm."""
    dtype = decoder_times_mlp_in[0].dtype
    As = [A.contiguous() for A in decoder_times_mlp_in]
    cs = [c.to(dtype).contiguous() for c in slopes]
    E = q = None
    if post_norm is not None:
        E, q = post_norm.rows.to(dtype).contiguous(), post_norm.hidden.to(dtype).contiguous()
    return As, cs, mlp_out_times_encoder.to(dtype).T.contiguous(), E, q


def active_jacobian_values(
    decoder_times_mlp_in: list[torch.Tensor],
    mlp_out_times_encoder: torch.Tensor,
    slopes: list[torch.Tensor],
    input_indices: torch.Tensor,
    output_indices: torch.Tensor,
    chunk_size: int | None = None,
    post_norm: PostNormTerm | None = None,
) -> torch.Tensor:
    """The (tokens, k_out, k_in) Jacobian on the active sets (without masking).

    Args:
        decoder_times_mlp_in: [W_dec_in @ W] for W in `FrozenMLP.input_weights()`, each (d_sae, d_mlp).
        mlp_out_times_encoder: `FrozenMLP.output_weight()` @ W_enc_out, (d_mlp, d_sae).
        slopes: `FrozenMLP.local_slopes(pre)`, each (tokens, d_mlp), matching `decoder_times_mlp_in`.
        input_indices, output_indices: (tokens, k) TopK indices of the input / output SAE.
        chunk_size: tokens per chunk (None: all at once). Values and gradients do not depend on it.
        post_norm: the post-MLP norm's rank-one term (None: the block has no post-norm).
    """
    As, cs, Bt, E, q = _tables(decoder_times_mlp_in, mlp_out_times_encoder, slopes, post_norm)
    T = input_indices.shape[0]
    return _GatheredJacobian.apply(Bt, input_indices.contiguous(), output_indices.contiguous(), chunk_size or max(T, 1), E, q, *As, *cs)


def active_jacobian_l1(
    decoder_times_mlp_in: list[torch.Tensor],
    mlp_out_times_encoder: torch.Tensor,
    slopes: list[torch.Tensor],
    input_indices: torch.Tensor,
    output_indices: torch.Tensor,
    input_values: torch.Tensor,
    output_values: torch.Tensor,
    chunk_size: int | None = None,
    post_norm: PostNormTerm | None = None,
) -> JacobianPenalty:
    """mean |J| over the active sets (the training penalty) and the masked J, in one pass.

    Same arguments as `active_jacobian_values`, plus the (tokens, k) TopK values that mask the
    picked-but-clipped latents (as `mask_inactive`). Values and gradients equal
    `mask_inactive(active_jacobian_values(...), ...).abs().mean()`; only the order of float
    additions differs. The products run in the dtype of `decoder_times_mlp_in`.
    """
    As, cs, Bt, E, q = _tables(decoder_times_mlp_in, mlp_out_times_encoder, slopes, post_norm)
    keep_in = (input_values > 0).to(Bt.dtype)
    keep_out = (output_values > 0).to(Bt.dtype)
    if not torch.is_grad_enabled():  # no gradient sums to form in the pass
        As, cs, Bt = [A.detach() for A in As], [c.detach() for c in cs], Bt.detach()
        E = None if E is None else E.detach()
    T = input_indices.shape[0]
    mean_abs, values = _JacobianL1.apply(
        Bt, input_indices.contiguous(), output_indices.contiguous(), keep_in, keep_out, chunk_size or max(T, 1), E, q, *As, *cs
    )
    return JacobianPenalty(mean_abs, values)


def mask_inactive(values: torch.Tensor, input_latents: torch.Tensor, output_latents: torch.Tensor) -> torch.Tensor:
    """Zero the rows / columns of latents picked by TopK whose value is 0 (ReLU clipped them).

    `input_latents`/`output_latents` are the (tokens, k) TopK values, aligned with the indices.
    """
    return values * (output_latents > 0).to(values.dtype)[:, :, None] * (input_latents > 0).to(values.dtype)[:, None, :]


def attribution_row_ratio(values: torch.Tensor, input_latents: torch.Tensor, output_latents: torch.Tensor) -> torch.Tensor:
    """Mean over tokens and active output latents o of ‖r_o‖₁ / (‖r_o‖₂ · k), r_o = J[o, :] ⊙ s_x.

    r_o is the attribution row of o's pre-activation over the k active input latents (J from
    `active_jacobian_values`, masked or not; `input_latents`/`output_latents` the (tokens, k)
    TopK values). In [1/k, 1/√k]: 1/k for a row on one input latent, 1/√k for equal magnitudes;
    unchanged by J → cJ and by scaling any row. Rows that are all zero are left out (0 when none
    is left). Differentiable w.r.t. J and s_x; computed in at least float32.
    """
    dtype = torch.promote_types(values.dtype, torch.float32)
    rows = values.to(dtype) * input_latents.to(dtype)[:, None, :]
    l1 = rows.abs().sum(-1)
    square = rows.pow(2).sum(-1)
    keep = (output_latents > 0) & (square > 0)
    ratio = l1 / square.clamp_min(torch.finfo(dtype).tiny).sqrt()  # the clamp keeps the gradient finite at 0
    return (ratio * keep).sum() / (keep.sum().clamp_min(1) * values.shape[-1])


# ---- sparse TopK SAE kernels for the training pass ------------------------------------------
# The training step only ever needs each token's k active latents. SAELens' dense TopK path
# materialises a (tokens, d_sae) gradient and pays a second tokens·d·d_sae product for ∂W_enc;
# `topk_encode` computes the same values and gradients from the k active columns only (as
# EleutherAI sparsify's fused encoder does). The SAELens-facing `encode`/`decode` are untouched.
# (Decoding uses `F.embedding_bag`, whose own backward measured faster than a hand-written one.)

_ROWS_PER_SCATTER = 1 << 15


def _scatter_rows(out: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """`out.index_add_(0, index, src)` (rows of `src` added into the rows `index` of `out`).

    On CPU with 2-4 threads the rows are added one after another on the calling thread:
    `index_add_` along dim 1 of a (1, rows, width) view takes PyTorch's per-slice loop (one
    vectorised add per row, inline below the parallel grain size), while dim 0 goes through
    `scatter_add_`'s parallel sort-and-sum, whose parallel regions wait for descheduled threads
    on a busy small machine (single calls measured 10-100× slower on the 2-core VM). The same
    additions in the same order: bit-identical to dim 0. One thread, large pools and GPUs use
    dim 0. (It replaced one thread set process-wide around the call; benchmarks/bench_scatter.py
    compares the two, docs/performance.md has the ratio.)
    """
    if out.device.type == "cpu" and 1 < torch.get_num_threads() <= 4:
        out[None].index_add_(1, index, src[None])
    else:
        out.index_add_(0, index, src)


def _token_chunk(k: int, width: int) -> int:
    """Tokens per chunk so a (tokens, k, width) workspace holds about 2M elements."""
    return max(1, _ROWS_PER_SCATTER * 64 // max(1, k * width))


def _column_outer_sum(x: torch.Tensor, g: torch.Tensor, indices: torch.Tensor, n_columns: int) -> torch.Tensor:
    """(d, n_columns) gradient Σ_t Σ_i g[t, i] · x[t] placed in column indices[t, i] (chunked)."""
    T, k = indices.shape
    d = x.shape[1]
    grad_WT = x.new_zeros(n_columns, d, dtype=g.dtype)
    step = _token_chunk(k, d)
    buf = grad_WT.new_empty(min(step, T) * k * d)
    for s in range(0, T, step):
        e = min(s + step, T)
        rows = buf[: (e - s) * k * d].view(e - s, k, d)
        torch.mul(g[s:e, :, None], x[s:e, None, :], out=rows)
        _scatter_rows(grad_WT, indices[s:e].reshape(-1), rows.view(-1, d))
    return grad_WT.T


class _GatheredDots(torch.autograd.Function):
    """e[t, i] = y[t] · W[:, idx[t, i]] from the k picked columns only (k·d per token both ways)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        T, k = idx.shape
        d = y.shape[1]
        WT = W.T.contiguous()
        out = y.new_empty(T, k, dtype=W.dtype)
        step = _token_chunk(k, d)
        with torch.autocast(W.device.type, enabled=False):
            for s in range(0, T, step):
                e = min(s + step, T)
                cols = torch.index_select(WT, 0, idx[s:e].reshape(-1)).view(e - s, k, d)
                torch.bmm(y[s:e, None, :].to(W.dtype), cols.transpose(1, 2), out=out[s:e, None, :])  # not cols·y: see ∂E
        ctx.save_for_backward(y, W, idx)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        y, W, idx = ctx.saved_tensors
        grad = grad.to(W.dtype).contiguous()
        grad_y = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_y = torch.nn.functional.embedding_bag(idx, W.T.contiguous(), per_sample_weights=grad, mode="sum").to(y.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = _column_outer_sum(y.to(W.dtype), grad, idx, W.shape[1])
        return grad_y, grad_W, None


def gathered_dots(y: torch.Tensor, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(tokens, k) e[t, i] = y[t] · W[:, idx[t, i]] for y (tokens, d), W (d, n), idx (tokens, k).

    Equals `(y @ W).gather(1, idx)` in value and gradient, at tokens·k·d instead of tokens·n·d.
    """
    return _GatheredDots.apply(y, W, idx)


class _TopKEncoder(torch.autograd.Function):
    """values, indices, hidden_pre of `TopK(x W_enc + b_enc)` then ReLU, with a sparse backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int):  # type: ignore[override]
        # under autocast the product runs in autocast's dtype; outputs are in the weights' dtype
        hidden_pre = torch.addmm(b_enc, x, W_enc).to(W_enc.dtype)
        top, indices = hidden_pre.topk(k, dim=-1, sorted=False)
        values = top.relu()
        ctx.save_for_backward(x, W_enc, indices, values)
        ctx.mark_non_differentiable(indices, hidden_pre)
        return values, indices, hidden_pre

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor, _grad_indices: Any, _grad_pre: Any):  # type: ignore[override]
        x, W_enc, indices, values = ctx.saved_tensors
        g = (grad_values * (values > 0)).to(W_enc.dtype).contiguous()  # ReLU' (0 at 0, as autograd's relu)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.functional.embedding_bag(indices, W_enc.T.contiguous(), per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:
            grad_W = _column_outer_sum(x, g, indices, W_enc.shape[1])
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(W_enc.shape[1], dtype=g.dtype, device=g.device).index_add_(0, indices.reshape(-1), g.reshape(-1))
        return grad_x, grad_W, grad_b, None


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, indices, hidden_pre) of ReLU(TopK(x W_enc + b_enc)) for x (tokens, d).

    Values and gradients equal the dense path `relu(topk(x @ W_enc + b_enc))`, but the backward
    touches only the k active columns per token (no dense (tokens, d_sae) gradient).
    """
    return _TopKEncoder.apply(x, W_enc, b_enc, k)
