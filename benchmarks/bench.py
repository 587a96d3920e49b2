#!/usr/bin/env python
"""A reproducible performance benchmark of the JSAE (a script of the repository, not of the package).

    python benchmarks/bench.py [--quick] [--batch N] [--threads N] [--profile] [--device cuda --bf16]
    python benchmarks/bench.py --post-norm-only      # section 6 only
    python benchmarks/bench.py --data-parallel-only  # section 7 only: torchrun, 2 gloo ranks vs 1 process

Every ratio is measured inside ONE process run on ONE machine, each timing the median of
>= 5 timed steps after warm-up, and printed next to the FLOP floor the shapes imply
(`flop_floor_ratio`), so results read against physics. The result is one JSON object, printed
and written under `benchmarks/results/`. See docs/performance.md for numbers and how to read them.

Sections (see `run_benchmark`):
1.  step_ratio_vs_plain_pair: JSAE training step ÷ the same step with λ = 0 (J not computed).
1b. vs_sparsify_pair / plain_pair_vs_sparsify: against two steps of EleutherAI sparsify's
    `SparseCoder` (eager, fused sparse encoder), when `sparsify` imports.
2.  jacobian_vs_jacrev: the closed form vs `torch.func.jacrev` on the same active sets.
3.  peak_jacobian_bytes: the Jacobian term's peak extra memory, chunked vs unchunked.
4.  sweep_ratio: a 4-λ sweep sharing one activation stream ÷ 4 separate runs (offline model).
5.  activation_tokens_per_s: LLM activation collection on the offline model (`stop_at_layer`),
    and end-to-end training tokens/s of the JSAE vs the λ = 0 pair.
6.  post_norm_overhead: the training penalty (forward + backward, weight products included) on
    a block with a norm after the MLP (Gemma 2/3) ÷ the same block without it, at gemma-2-2b's
    proportions scaled down (`POST_NORM_SIZE`; `--post-norm-only` runs just this section).
7.  data_parallel: `torchrun --nproc_per_node 2` (gloo, one thread per rank) ÷ one process (one
    thread) training the offline default (configs/smollm2-135m-l3-demo.yaml) at its batch and at
    twice it, with each rank's communication seconds per step (`--data-parallel-only`; CPU only,
    separate processes, so the host must have a core per rank).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# name -> (d_model, d_mlp, act_fn, gated, d_sae, k)
SIZES: dict[str, tuple[int, int, str, bool, int, int]] = {
    "pythia70m_like": (512, 2048, "gelu", False, 16384, 32),
    "smollm2_like": (576, 1536, "silu", True, 4608, 32),
}
QUICK_SIZES: dict[str, tuple[int, int, str, bool, int, int]] = {
    "pythia70m_like": (32, 64, "gelu", False, 256, 8),
    "smollm2_like": (36, 48, "silu", True, 192, 8),
}
GEMMA_2_2B = (2304, 9216, "gelu_pytorch_tanh", True, 16384, 32)
"""gemma-2-2b layer with a Gemma Scope 16k-wide pair, k 32 (the post-norm FLOP estimate at full size)."""
POST_NORM_SIZE = ((576, 2304, "gelu_pytorch_tanh", True, 4096, 32), 1024)
"""(size, batch) of section 6: gemma-2-2b with d, d_mlp, d_sae and the batch (4096) divided by 4,
so d_mlp/d, d_sae/d and tokens/d_sae (which set the post-norm's share) stay gemma's; k stays 32."""
QUICK_POST_NORM_SIZE = ((36, 48, "gelu_pytorch_tanh", True, 192, 8), 64)


@dataclass
class Timing:
    median_s: float
    samples_s: list[float]


def time_steps(step: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] = lambda: None) -> Timing:
    """Median wall time of `step` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        samples.append(time.perf_counter() - t0)
    return Timing(statistics.median(samples), [round(s, 5) for s in samples])


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


# ---- building blocks ------------------------------------------------------------------------
def random_mlp(
    d: int, d_mlp: int, act_fn: str, gated: bool, device: torch.device, dtype: torch.dtype, seed: int = 0, post_norm: bool = False
):
    """A FrozenMLP with random weights; `post_norm`: with an RMSNorm after it (Gemma 2/3)."""
    from sae_lens_jsae.mlp import FrozenMLP

    gen = torch.Generator().manual_seed(seed)
    mlp = FrozenMLP(d, d_mlp, act_fn, gated, dtype=torch.float32, post_norm_eps=1e-6 if post_norm else None)
    with torch.no_grad():
        for name, buf in mlp.named_buffers():
            if name == "post_norm_eps":
                continue
            if name == "w_post":
                buf.copy_(1 + 0.5 * torch.randn(buf.shape, generator=gen))
                continue
            fan_in = buf.shape[0] if buf.ndim == 2 else 1
            scale = 1 / math.sqrt(fan_in) if buf.ndim == 2 else 0.02
            buf.copy_(torch.randn(buf.shape, generator=gen) * scale)
    return mlp.to(device=device, dtype=dtype)


def make_pair(
    size: tuple[int, int, str, bool, int, int],
    lam: float,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    chunk_bytes: int | None = 256 * 2**20,
    seed: int = 0,
    jacobian_dtype: str | None = None,
    post_norm: bool = False,
):
    from sae_lens_jsae import JacobianTrainingSAE, JacobianTrainingSAEConfig

    d, d_mlp, act_fn, gated, d_sae, k = size
    torch.manual_seed(seed)
    cfg = JacobianTrainingSAEConfig(
        d_in=d,
        d_sae=d_sae,
        k=k,
        d_mlp=d_mlp,
        mlp_act_fn=act_fn,
        gated_mlp=gated,
        jacobian_coefficient=lam,
        jacobian_chunk_bytes=chunk_bytes,
        jacobian_dtype=jacobian_dtype,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
    )
    sae = JacobianTrainingSAE(cfg).to(device)
    sae.attach_mlp(random_mlp(d, d_mlp, act_fn, gated, device, dtype, seed, post_norm))
    return sae


def mlp_like_inputs(n: int, d: int, device: torch.device, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """RMS-normalised Gaussian rows: what `ln2.hook_normalized` looks like."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    return (x / x.pow(2).mean(-1, keepdim=True).sqrt()).to(device=device, dtype=dtype)


def jsae_train_step(sae, x: torch.Tensor, lam: float, autocast: Any = None) -> Callable[[], None]:
    """One full training step: forward (with decoder renorm), backward, Adam, zero_grad."""
    from sae_lens.saes.sae import TrainStepInput

    opt = torch.optim.Adam(sae.parameters(), lr=5e-4)
    state = {"step": 0}
    ctx = autocast or contextlib.nullcontext

    def step() -> None:
        with ctx():
            out = sae.training_forward_pass(
                TrainStepInput(
                    # a new batch tensor every step, as from the activation stream: the frozen
                    # MLP's pass is reused only for the same tensor (pairs of a sweep)
                    sae_in=x.clone(),
                    coefficients={"jacobian_coefficient": lam},
                    dead_neuron_mask=None,
                    n_training_steps=state["step"],
                    is_logging_step=False,
                )
            )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1

    return step


def sparsify_pair_step(
    size: tuple[int, int, str, bool, int, int], x: torch.Tensor, y: torch.Tensor, autocast: Any = None
) -> Callable[[], None] | None:
    """Two steps of EleutherAI sparsify's SparseCoder (input SAE on x, output SAE on y)."""
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except Exception:  # noqa: BLE001 - optional dependency
        return None
    d, _, _, _, d_sae, k = size
    cfg = SparseCoderConfig(num_latents=d_sae, k=k)
    coders = [SparseCoder(d, cfg, device=x.device, dtype=x.dtype) for _ in range(2)]
    opts = [torch.optim.Adam(c.parameters(), lr=5e-4) for c in coders]
    ctx = autocast or contextlib.nullcontext

    def step() -> None:
        for coder, opt, data in zip(coders, opts, (x, y)):
            coder.set_decoder_norm_to_unit_norm()
            with ctx():
                out = coder(data)
            out.fvu.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


PROFILED_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::scatter_add_", "aten::index_select", "aten::topk", "aten::copy_", "aten::fill_")


def profile_steps(size, batch: int, device: torch.device, steps: int = 2) -> dict[str, Any]:
    """Self CPU seconds per JSAE step of the main ops (`torch.profiler`), penalty in float32 and bf16."""
    from torch.profiler import ProfilerActivity, profile

    x = mlp_like_inputs(batch, size[0], device, torch.float32)
    out: dict[str, Any] = {}
    for label, jacobian_dtype in (("float32", None), ("bfloat16", "bfloat16")):
        step = jsae_train_step(make_pair(size, 1.0, device, jacobian_dtype=jacobian_dtype), x, 1.0)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        per_op = {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()}
        out[label] = {"total_s": sum(per_op.values()), **{op: per_op.get(op, 0.0) for op in PROFILED_OPS}}
    return out


# ---- FLOP floors ------------------------------------------------------------------------------
def flops(size: tuple[int, int, str, bool, int, int], T: int) -> dict[str, float]:
    """Multiply-adds x 2 of one training step, from the shapes alone (see docs/performance.md).

    plain_pair: both encoders (dense forward x·W_enc: T·d·S each), the frozen MLP forward
    ((R+1)·T·d·m, R = 2 for gated), and the sparse work (decode, sparse ∂W_enc/∂W_dec: ~4·T·k·d
    each SAE). sparsify_pair: the same without the MLP (its targets are given). jacobian: the
    weight products A_r = W_dec W_r and B = W_out W_enc_out ((R+1)·S·d·m) and their backward,
    one product each since the MLP weights are frozen (another (R+1)·S·d·m), plus per token
    k²·m forward and 2·k²·m backward (the mixing, R·k·m, is negligible).
    """
    d, m, _, gated, S, k = size
    R = 2 if gated else 1
    sparse = 2 * 4 * T * k * d
    sparsify_pair = 2 * T * d * S + sparse
    plain_pair = sparsify_pair + (R + 1) * T * d * m
    weights = 2 * (R + 1) * S * d * m
    per_token = 3 * T * k * k * m
    return {
        k_: 2.0 * v
        for k_, v in {
            "plain_pair": plain_pair,
            "sparsify_pair": sparsify_pair,
            "jacobian_weights": weights,
            "jacobian_per_token": per_token,
            "jsae": plain_pair + weights + per_token,
        }.items()
    }


# ---- sections -----------------------------------------------------------------------------------
def bench_steps(name: str, size, batch: int, device: torch.device, warmup: int, repeats: int, autocast: Any = None) -> dict[str, Any]:
    """Section 1 / 1b: JSAE step vs the λ = 0 pair vs two sparsify SparseCoder steps."""
    dtype = torch.float32
    x = mlp_like_inputs(batch, size[0], device, dtype)
    sync = _sync(device)
    out: dict[str, Any] = {"sizes": dict(zip(("d_model", "d_mlp", "act_fn", "gated", "d_sae", "k"), size)), "batch": batch}
    times = {}
    # jsae_bf16_jacobian: the same JSAE with `jacobian_dtype="bfloat16"` (bf16 penalty products,
    # float32 pair); skipped under autocast, where the penalty is in bf16 already.
    variants = [("plain_pair", 0.0, None), ("jsae", 1.0, None)] + ([] if autocast else [("jsae_bf16_jacobian", 1.0, "bfloat16")])
    for label, lam, jacobian_dtype in variants:
        sae = make_pair(size, lam, device, jacobian_dtype=jacobian_dtype)
        t = time_steps(jsae_train_step(sae, x, lam, autocast), warmup, repeats, sync)
        times[label] = t
        out[f"{label}_step_s"] = t.median_s
        out[f"{label}_step_samples_s"] = t.samples_s
        if label == "jsae":
            with torch.no_grad():
                y = sae.mlp(x)
        del sae
        gc.collect()
    fl = flops(size, batch)
    jsae_labels = [label for label in times if label.startswith("jsae")]
    for label in jsae_labels:
        suffix = label.removeprefix("jsae")
        out[f"step_ratio_vs_plain_pair{suffix}"] = times[label].median_s / times["plain_pair"].median_s
    out["step_ratio_vs_plain_pair_flop_floor_ratio"] = fl["jsae"] / fl["plain_pair"]
    sp = sparsify_pair_step(size, x, y, autocast)
    if sp is None:
        out["sparsify"] = "not importable (pip install --no-deps eai-sparsify natsort schedulefree)"
    else:
        t = time_steps(sp, warmup, repeats, sync)
        out["sparsify_pair_step_s"] = t.median_s
        out["sparsify_pair_step_samples_s"] = t.samples_s
        for label in jsae_labels:
            out[f"vs_sparsify_pair{label.removeprefix('jsae')}"] = times[label].median_s / t.median_s
        out["vs_sparsify_pair_flop_floor_ratio"] = fl["jsae"] / fl["sparsify_pair"]
        out["plain_pair_vs_sparsify"] = times["plain_pair"].median_s / t.median_s
        out["plain_pair_vs_sparsify_flop_floor_ratio"] = fl["plain_pair"] / fl["sparsify_pair"]
    out["gflop"] = {k_: v / 1e9 for k_, v in fl.items()}
    return out


def post_norm_flop_share(size: tuple[int, int, str, bool, int, int], T: int) -> float:
    """Multiply-adds the post-norm adds to the penalty ÷ the penalty's without it (shapes only).

    Without: weight products and their backward 2·(R+1)·S·d·m, per token 3·k²·m (+ R·k·m mixing,
    twice). Added: q (T·d·m), the rank-one update in the pass and ∂e (2·T·k·m), e and its
    scatter (2·T·k·d). Its share is ≈ T·d / (2·(R+1)·S·d + 3·T·k²): set by tokens/d_sae and d/k².
    """
    d, m, _, gated, S, k = size
    R = 2 if gated else 1
    base = 2 * (R + 1) * S * d * m + T * (3 * k * k * m + 2 * R * k * m)
    extra = T * d * m + 2 * T * k * m + 2 * T * k * d
    return extra / base


def bench_post_norm(size, batch: int, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Section 6: the fused training penalty, forward + backward (weight products included), on
    the same random gated MLP with and without an RMSNorm after it; float32 and bf16 products.
    The two are timed alternately (without, with, without, ...) so load on a shared machine hits
    both alike; medians of `repeats` each."""
    x = mlp_like_inputs(batch, size[0], device, torch.float32)
    sync = _sync(device)
    out: dict[str, Any] = {"sizes": dict(zip(("d_model", "d_mlp", "act_fn", "gated", "d_sae", "k"), size)), "batch": batch}
    for precision, jacobian_dtype in (("float32", None), ("bf16", "bfloat16")):
        steps = {}
        for label, post in (("without", False), ("with", True)):
            sae = make_pair(size, 1.0, device, jacobian_dtype=jacobian_dtype, post_norm=post)
            with torch.no_grad():
                top_in = sae._encode_input_topk(x)
                pre, y = sae.mlp.pre_activations_and_output(x)
                top_out = sae._encode_output_topk(y)

            def step(sae=sae, top_in=top_in, top_out=top_out, pre=pre) -> None:
                sae.zero_grad(set_to_none=True)
                sae._jacobian_penalty(top_in, top_out, x, pre).mean_abs.backward()

            steps[label] = step
        samples: dict[str, list[float]] = {label: [] for label in steps}
        cpu: dict[str, list[float]] = {label: [] for label in steps}
        for r in range(warmup + repeats):
            for label, step in steps.items():
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                sync()
                if r >= warmup:
                    samples[label].append(time.perf_counter() - t0)
                    cpu[label].append(time.process_time() - c0)
        for label in steps:
            out[f"penalty_{label}_post_norm_{precision}_s"] = statistics.median(samples[label])
            out[f"penalty_{label}_post_norm_{precision}_samples_s"] = [round(v, 5) for v in samples[label]]
            out[f"penalty_{label}_post_norm_{precision}_cpu_s"] = statistics.median(cpu[label])
        with_s, without_s = out[f"penalty_with_post_norm_{precision}_s"], out[f"penalty_without_post_norm_{precision}_s"]
        out[f"post_norm_overhead_{precision}"] = with_s / without_s - 1
        # process CPU time: on a shared machine it leaves out the time other processes held the core
        # (exact with one thread; with more it sums the threads)
        with_c, without_c = out[f"penalty_with_post_norm_{precision}_cpu_s"], out[f"penalty_without_post_norm_{precision}_cpu_s"]
        out[f"post_norm_overhead_{precision}_cpu_time"] = with_c / without_c - 1
        del steps
        gc.collect()
    out["post_norm_overhead_flop_estimate"] = post_norm_flop_share(size, batch)
    out["post_norm_overhead_flop_estimate_gemma_2_2b_16k_batch_4096"] = post_norm_flop_share(GEMMA_2_2B, 4096)
    return out


def _jacobian_inputs(size, T: int, device: torch.device, dtype: torch.dtype = torch.float32):
    sae = make_pair(size, 1.0, device, dtype)
    x = mlp_like_inputs(T, size[0], device, dtype)
    with torch.no_grad():
        top_in = sae._encode_input_topk(x)
        pre = sae.mlp.pre_activations(x)
        top_out = sae._encode_output_topk(sae.mlp.output_from_pre_activations(pre))
    return sae, x, top_in, top_out, pre


def bench_jacrev(size, T: int, n_jacrev: int, device: torch.device, repeats: int = 3, n_full_jacrev: int = 2) -> dict[str, Any]:
    """Section 2: the closed form vs `torch.func.jacrev`, same tokens and active sets: of the whole
    latent map (the naive alternative; `jacobian_vs_jacrev`) and of the k×k restriction (the oracle)."""
    sae, x, top_in, top_out, pre = _jacobian_inputs(size, T, device)
    sync = _sync(device)
    with torch.no_grad():
        closed = time_steps(lambda: sae._jacobian(top_in, top_out, x, pre), 1, repeats, sync)
        J = sae._jacobian(top_in, top_out, x, pre).values
    mlp = sae.mlp

    def per_token(t: int) -> torch.Tensor:
        K1, K2 = top_in.indices[t], top_out.indices[t]
        W_k = sae.W_dec.detach()[K1]
        z0 = top_in.values[t]
        offset = x[t] - z0 @ W_k

        def g(z: torch.Tensor) -> torch.Tensor:
            return (mlp(z @ W_k + offset) @ sae.W_enc_out.detach()[:, K2]) + sae.b_enc_out.detach()[K2]

        Jt = torch.func.jacrev(g)(z0)
        return Jt * (top_out.values[t] > 0)[:, None] * (z0 > 0)[None, :]

    def full_map(t: int) -> torch.Tensor:
        """The naive way: jacrev of the whole latent map z ↦ e_out(f(d_in(z))) (d_sae × d_sae,
        TopK held fixed), then the K2 × K1 block."""
        K1, K2 = top_in.indices[t], top_out.indices[t]
        W_dec, W_enc_out, b_enc_out = sae.W_dec.detach(), sae.W_enc_out.detach(), sae.b_enc_out.detach()
        z0 = torch.zeros(W_dec.shape[0], dtype=x.dtype, device=x.device).index_copy(0, K1, top_in.values[t])
        offset = x[t] - z0 @ W_dec

        def g(z: torch.Tensor) -> torch.Tensor:
            return mlp(z @ W_dec + offset) @ W_enc_out + b_enc_out

        Jt = torch.func.jacrev(g)(z0)[K2][:, K1]
        return Jt * (top_out.values[t] > 0)[:, None] * (top_in.values[t] > 0)[None, :]

    def timed(fn: Callable[[int], torch.Tensor], n: int) -> tuple[float, torch.Tensor]:
        fn(0)
        sync()
        t0 = time.perf_counter()
        ref = torch.stack([fn(t) for t in range(n)])
        sync()
        return (time.perf_counter() - t0) / n, ref

    n, n_full = min(n_jacrev, T), min(n_full_jacrev, T)
    restricted_per_token, ref = timed(per_token, n)
    full_per_token, ref_full = timed(full_map, n_full)
    closed_per_token = closed.median_s / T
    return {
        "tokens": T,
        "closed_form_s": closed.median_s,
        "closed_form_per_token_s": closed_per_token,
        "jacrev_per_token_s": full_per_token,
        "jacrev_tokens_timed": n_full,
        "jacrev_note": (
            f"torch.func.jacrev of the whole latent map (d_sae x d_sae per token, TopK held fixed, then the K2 x K1 block), "
            f"timed on {n_full} tokens and scaled per token; the closed form is timed on all {T} tokens"
        ),
        "jacobian_vs_jacrev": full_per_token / closed_per_token,
        "jacrev_restricted_per_token_s": restricted_per_token,
        "jacrev_restricted_tokens_timed": n,
        "jacrev_restricted_note": "jacrev of z_K1 -> s_y[K2] only (k x k per token, the test oracle): already knows the active sets",
        "jacobian_vs_jacrev_restricted": restricted_per_token / closed_per_token,
        "max_abs_diff_float32": float(max((ref - J[:n]).abs().max(), (ref_full - J[:n_full]).abs().max())),
    }


def _peak_cpu_bytes(fn: Callable[[], Any]) -> int:
    """Peak of torch's CPU allocations during `fn` above the level at its start: the running sum
    of the allocator's `[memory]` events (+bytes, -bytes) in the profiler's exported trace."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(f"{tmp}/trace.json")
        trace = json.loads(Path(f"{tmp}/trace.json").read_text())
    return peak_allocated_bytes(trace)


def peak_allocated_bytes(trace: dict[str, Any] | list[dict[str, Any]]) -> int:
    """Peak of the running sum of the `[memory]` events' `Bytes` (in time order) of a Chrome trace."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    memory = sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]")
    level = peak = 0
    for _, nbytes in memory:
        level += nbytes
        peak = max(peak, level)
    return int(peak)


def bench_memory(size, T: int, device: torch.device, chunk_bytes: int = 256 * 2**20) -> dict[str, Any]:
    """Section 3: peak extra memory of the training penalty mean|J| (forward + backward, the
    fused `active_jacobian_l1` pass), chunked (`jacobian_chunk_bytes`) or not (None)."""
    from sae_lens_jsae.jacobian import chunk_tokens

    sae, x, top_in, top_out, pre = _jacobian_inputs(size, T, device)
    chunk = chunk_tokens(chunk_bytes, size[5], size[1], 4)
    out: dict[str, Any] = {"tokens": T, "chunk_tokens": chunk, "chunk_bytes": chunk_bytes}
    for label, budget in (("unchunked", None), ("chunked", chunk_bytes)):

        def term(budget: int | None = budget) -> None:
            sae.zero_grad(set_to_none=True)
            sae.cfg.jacobian_chunk_bytes = budget
            sae._jacobian_penalty(top_in, top_out, x, pre).mean_abs.backward()

        term()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            term()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            out["method"] = "torch.cuda.max_memory_allocated"
        else:
            sae.zero_grad(set_to_none=True)
            peak = _peak_cpu_bytes(term)
            out["method"] = "torch.profiler profile_memory (running sum of CPU allocator events)"
        out[f"peak_jacobian_bytes_{label}"] = peak
    out["chunked_over_unchunked"] = out["peak_jacobian_bytes_chunked"] / max(1, out["peak_jacobian_bytes_unchunked"])
    return out


# ---- offline default: LLM activations, end-to-end training, λ sweep ---------------------------
def _offline(quick: bool, context_size: int):
    """(model, dataset, layer): SmolLM2-135M (GGUF, offline) on State of the Union, or a tiny
    random gated model on random tokens for `--quick`."""
    if quick:
        from datasets import Dataset
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            n_layers=3,
            d_model=32,
            d_head=8,
            n_heads=4,
            d_mlp=48,
            d_vocab=64,
            n_ctx=64,
            act_fn="silu",
            gated_mlp=True,
            normalization_type="RMS",
            model_name="tiny-bench",
            seed=0,
        )
        model = HookedTransformer(cfg).eval()
        gen = torch.Generator().manual_seed(0)
        rows = torch.randint(1, 64, (256, context_size), generator=gen)
        rows[:, 0] = 0
        return model, Dataset.from_dict({"input_ids": rows.tolist()}), 1
    from sae_lens_jsae.sources import load_hooked_model, sotu_token_dataset

    model = load_hooked_model("gguf-smollm2")
    return model, sotu_token_dataset(model.tokenizer, context_size, split="train"), 3


def _runner_cfg(
    model, layer: int, lam: float, d_sae: int, k: int, tokens: int, batch: int, context_size: int, out_dir: Path, jacobian_dtype: str | None = None
):
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    from sae_lens_jsae import JacobianTrainingSAEConfig

    sae = JacobianTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, k=k, jacobian_coefficient=lam, jacobian_dtype=jacobian_dtype)
    return LanguageModelSAERunnerConfig(
        sae=sae,
        model_name=model.cfg.model_name,
        hook_name=f"blocks.{layer}.ln2.hook_normalized",
        dataset_path="",
        is_dataset_tokenized=True,
        context_size=context_size,
        training_tokens=tokens,
        train_batch_size_tokens=batch,
        store_batch_size_prompts=max(1, min(16, batch // context_size)),
        n_batches_in_buffer=4,
        lr=5e-4,
        device="cpu",
        seed=0,
        checkpoint_path=str(out_dir / "ckpt"),
        n_checkpoints=0,
        save_final_checkpoint=False,
        output_path=str(out_dir / "out"),
        logger=LoggingConfig(log_to_wandb=False),
        dtype="float32",
        eval_batch_size_prompts=1,
        n_eval_batches=1,
    )


def _quiet_runner(cfg, model, dataset, log_every: int):
    from sae_lens_jsae.training import JacobianSAETrainingRunner, RunOptions

    return JacobianSAETrainingRunner(cfg, RunOptions(log_every_n_steps=log_every), override_model=model, override_dataset=dataset)


def bench_offline(quick: bool, work: Path, tokens: int, batch: int, d_sae: int, k: int, context_size: int) -> dict[str, Any]:
    """Sections 4 and 5 on the offline default (small runs: `tokens` training tokens each)."""
    from sae_lens_jsae.training import train_sweep

    model, dataset, layer = _offline(quick, context_size)
    out: dict[str, Any] = {
        "model": model.cfg.model_name,
        "layer": layer,
        "d_sae": d_sae,
        "k": k,
        "batch": batch,
        "training_tokens": tokens,
        "context_size": context_size,
    }
    log_every = max(1, tokens // batch)  # one logging step per run (logging steps sync on purpose)

    # 5a. activation collection, and the LLM must stop at the hooked block
    runner = _quiet_runner(_runner_cfg(model, layer, 0.0, d_sae, k, tokens, batch, context_size, work / "act"), model, dataset, log_every)
    store = runner.activations_store
    beyond = {"calls": 0}
    handle = None
    if layer + 1 < model.cfg.n_layers:
        handle = model.blocks[layer + 1].register_forward_hook(lambda *_: beyond.__setitem__("calls", beyond["calls"] + 1))
    n_tok = 0
    store.get_activations(store.get_batch_tokens())  # warm-up
    t0 = time.perf_counter()
    while n_tok < tokens:
        acts = store.get_activations(store.get_batch_tokens())
        n_tok += acts.shape[0] * acts.shape[1]
    dt = time.perf_counter() - t0
    if handle is not None:
        handle.remove()
    out["activation_tokens_per_s"] = n_tok / dt
    out["llm_ran_past_hooked_block"] = beyond["calls"] > 0
    out["stop_at_layer"] = layer + 1
    del runner

    # 5b. end-to-end training tokens/s (LLM activations included): JSAE vs the λ = 0 pair
    wall = {}
    for label, lam, jacobian_dtype in (("plain_pair", 0.0, None), ("jsae", 1.0, None), ("jsae_bf16_jacobian", 1.0, "bfloat16")):
        runner = _quiet_runner(
            _runner_cfg(model, layer, lam, d_sae, k, tokens, batch, context_size, work / label, jacobian_dtype), model, dataset, log_every
        )
        t0 = time.perf_counter()
        runner.run()
        wall[label] = time.perf_counter() - t0
        out[f"end_to_end_tokens_per_s_{label}"] = tokens / wall[label]
    out["end_to_end_ratio"] = wall["jsae"] / wall["plain_pair"]
    out["end_to_end_ratio_bf16_jacobian"] = wall["jsae_bf16_jacobian"] / wall["plain_pair"]

    # 4. a 4-λ sweep from one activation stream vs 4 separate runs
    lams = [0.0, 0.5, 1.0, 2.0]
    separate_runs = []
    for lam in lams:
        t0 = time.perf_counter()
        _quiet_runner(
            _runner_cfg(model, layer, lam, d_sae, k, tokens, batch, context_size, work / f"sep{lam}"), model, dataset, log_every
        ).run()
        separate_runs.append(time.perf_counter() - t0)
    separate = sum(separate_runs)
    t0 = time.perf_counter()
    train_sweep(
        _runner_cfg(model, layer, 1.0, d_sae, k, tokens, batch, context_size, work / "sweep"),
        "jacobian_coefficient",
        lams,
        __import__("sae_lens_jsae.training", fromlist=["RunOptions"]).RunOptions(log_every_n_steps=log_every),
        override_dataset=dataset,
        override_model=model,
    )
    shared = time.perf_counter() - t0
    # The best any sharing can do: the LLM once plus each pair's own training time (a separate
    # run's wall time minus the LLM time for its tokens), read against the 4 separate runs.
    llm_s = tokens / out["activation_tokens_per_s"]
    ideal = llm_s + sum(max(0.0, t - llm_s) for t in separate_runs)
    out.update(
        {
            "sweep_lambdas": lams,
            "sweep_shared_s": shared,
            "sweep_separate_s": separate,
            "sweep_separate_runs_s": separate_runs,
            "sweep_ratio": shared / separate,
            "sweep_ratio_floor": ideal / separate,
            "sweep_floor_note": "LLM once + each pair's training alone (separate run minus LLM time at activation_tokens_per_s) / separate",
        }
    )
    return out


# ---- driver -------------------------------------------------------------------------------------
DATA_PARALLEL_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2-135m-l3-demo.yaml"


def data_parallel_worker(tokens: int, batch: int, work: Path, shard_products: bool = False) -> None:
    """One process or one torchrun rank of section 7: train the offline default, write timings to
    `work/result.<rank>.json`. Step times (`SAETrainer.step`: forward, backward, gradient
    all-reduce, optimizer) exclude fetching the batch, i.e. the LLM, which splits exactly over ranks."""
    from sae_lens_jsae.config import load_run_config
    from sae_lens_jsae.distributed import DistributedTrainingRunner, barrier_and_close, init_from_env
    from sae_lens_jsae.training import JacobianSAETrainingRunner

    torch.set_num_threads(1)
    overrides = [f"runner.training_tokens={tokens}", f"runner.train_batch_size_tokens={batch}", f"runner.output_path={work}/out",
                 f"runner.checkpoint_path={work}/ckpt", "checkpoint_every_tokens=null", "runner.n_checkpoints=0", f"log_path={work}/log.jsonl",
                 f"dist_shard_weight_products={str(shard_products).lower()}"]
    cfg, options = load_run_config(DATA_PARALLEL_CONFIG, overrides)
    context = init_from_env(cfg.device, options.dist_backend, options.dist_timeout_s)
    runner = JacobianSAETrainingRunner(cfg, options) if context is None else DistributedTrainingRunner(cfg, options, context=context)
    step_s: list[float] = []
    make_trainer = runner.make_trainer

    def timed_trainer(**kwargs: Any) -> Any:
        trainer = make_trainer(**kwargs)
        step = trainer.step

        def timed_step(batch: torch.Tensor) -> Any:
            t = time.perf_counter()
            out = step(batch)
            step_s.append(time.perf_counter() - t)
            return out

        trainer.step = timed_step
        return trainer

    runner.make_trainer = timed_trainer  # type: ignore[method-assign]
    t0, cpu0 = time.perf_counter(), time.process_time()
    runner.run()
    run_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    steady = step_s[2:]  # the first steps warm up allocators and (under DDP) build buckets
    result: dict[str, Any] = {"run_s": run_s, "cpu_s": cpu_s, "steps": len(step_s), "tokens_per_s": tokens / run_s,
                              "step_s_median": statistics.median(steady), "step_s_samples": step_s}
    if context is not None:
        result |= {"rank": context.rank, **{f"{k}_per_step": v / len(step_s) for k, v in vars(context.times).items()}}
        result["comm_s_per_step"] = sum(vars(context.times).values()) / len(step_s)
    (work / f"result.{0 if context is None else context.rank}.json").write_text(json.dumps(result))
    barrier_and_close(context)


def _launch_data_parallel(nproc: int, tokens: int, batch: int, work: Path, shard_products: bool = False) -> dict[str, Any]:
    import subprocess
    import sys

    work.mkdir(parents=True, exist_ok=True)
    worker = [str(Path(__file__).resolve()), "--data-parallel-worker", str(tokens), str(batch), str(work), str(int(shard_products))]
    cmd = [sys.executable, *worker] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    load = os.getloadavg()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"data-parallel benchmark ({nproc} process(es)) failed:\n{done.stderr[-3000:]}")
    ranks = [json.loads((work / f"result.{r}.json").read_text()) for r in range(nproc)]
    return {"nproc": nproc, "loadavg_at_start": [round(x, 2) for x in load], "ranks": ranks}


def bench_data_parallel(work: Path, batches: tuple[int, ...] = (2048, 4096), steps: int = 16, nproc: int = 2) -> dict[str, Any]:
    """Section 7: N gloo ranks vs one process, one thread each, at each batch size. `speedup` is
    the ratio of end-to-end tokens/s (LLM included); `step_speedup` that of the median training
    step (LLM excluded); `cpu_time_speedup_bound` the one process's CPU seconds over the busiest
    rank's (what wall time would give with a core per rank on a quiet host): all with the
    default, every rank computing the whole weight products. `sharded_*`: the same N ranks with
    `dist_shard_weight_products` on, the A/B of that option."""
    out: dict[str, Any] = {"config": str(DATA_PARALLEL_CONFIG.name), "steps": steps, "nproc": nproc, "threads_per_process": 1}
    for batch in batches:
        tokens = steps * batch
        single = _launch_data_parallel(1, tokens, batch, work / f"single-{batch}")
        parallel = _launch_data_parallel(nproc, tokens, batch, work / f"parallel-{batch}", shard_products=False)
        sharded = _launch_data_parallel(nproc, tokens, batch, work / f"sharded-{batch}", shard_products=True)
        one, ranks, split = single["ranks"][0], parallel["ranks"], sharded["ranks"]
        out[f"batch_{batch}"] = {
            "speedup": ranks[0]["tokens_per_s"] / one["tokens_per_s"],
            "step_speedup": one["step_s_median"] / max(r["step_s_median"] for r in ranks),
            "cpu_time_speedup_bound": one["cpu_s"] / max(r["cpu_s"] for r in ranks),
            "step_s_single": one["step_s_median"],
            "step_s_parallel": max(r["step_s_median"] for r in ranks),
            "comm_s_per_step": {f"rank{r['rank']}": r["comm_s_per_step"] for r in ranks},
            "sharded_speedup": split[0]["tokens_per_s"] / one["tokens_per_s"],
            "sharded_step_speedup": one["step_s_median"] / max(r["step_s_median"] for r in split),
            "sharded_comm_s_per_step": {f"rank{r['rank']}": r["comm_s_per_step"] for r in split},
            "single": single,
            "parallel": parallel,
            "sharded": sharded,
        }
    return out


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = os.getloadavg()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmark(
    quick: bool = False,
    batch: int | None = None,
    device: str = "cpu",
    bf16: bool = False,
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    skip_offline: bool = False,
    work_dir: str | None = None,
    keep_memory: bool = True,
    profile: bool = False,
    post_norm_only: bool = False,
    data_parallel_only: bool = False,
) -> dict[str, Any]:
    """All sections in this process. `keep_memory`: glibc keeps freed blocks for every contender
    alike (`util.keep_freed_memory`, as the training runner does on CPU)."""
    import tempfile

    from sae_lens_jsae.util import keep_freed_memory

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    kept = keep_memory and dev.type == "cpu" and keep_freed_memory()
    sizes = QUICK_SIZES if quick else SIZES
    pn_size, pn_batch = QUICK_POST_NORM_SIZE if quick else POST_NORM_SIZE
    pn_batch = batch or pn_batch  # section 6 keeps gemma's tokens/d_sae unless --batch is given
    batch = batch or (64 if quick else 4096)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else None
    result: dict[str, Any] = {
        "benchmark": "jsae",
        "quick": quick,
        "precision": "bf16 autocast" if bf16 else "float32",
        "machine": {**machine_info(dev), "glibc_keep_freed_memory": kept},
        "timing": f"median of {repeats} timed steps after {warmup} warm-up step(s), all in this one process",
    }
    t_start = time.perf_counter()
    if data_parallel_only:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            result["data_parallel"] = bench_data_parallel(Path(tmp))
        result["total_s"] = time.perf_counter() - t_start
        return result
    if post_norm_only:
        result["post_norm_overhead"] = bench_post_norm(pn_size, pn_batch, dev, warmup, repeats)
        result["total_s"] = time.perf_counter() - t_start
        return result
    result["steps"] = {name: bench_steps(name, size, batch, dev, warmup, repeats, autocast) for name, size in sizes.items()}
    if profile and dev.type == "cpu":
        result["profile_self_cpu_s_per_step"] = {name: profile_steps(size, batch, dev) for name, size in sizes.items()}
    jac_size = sizes["pythia70m_like"]
    result["jacobian_vs_jacrev"] = bench_jacrev(jac_size, 64 if quick else 1024, 4 if quick else 8, dev)
    result["peak_jacobian_bytes"] = {
        name: bench_memory(size, batch, dev, chunk_bytes=(1 << 16) if quick else 256 * 2**20) for name, size in sizes.items()
    }
    if not skip_offline and dev.type == "cpu" and not bf16:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            if quick:
                result["offline"] = bench_offline(True, Path(tmp), tokens=256, batch=64, d_sae=64, k=4, context_size=16)
            else:
                result["offline"] = bench_offline(False, Path(tmp), tokens=32768, batch=4096, d_sae=4608, k=32, context_size=128)
    result["post_norm_overhead"] = bench_post_norm(pn_size, pn_batch, dev, warmup, repeats)
    if not skip_offline and not quick and dev.type == "cpu":
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            result["data_parallel"] = bench_data_parallel(Path(tmp))
    result["total_s"] = time.perf_counter() - t_start
    return result


def write_result(result: dict[str, Any], out_dir: str | Path = "benchmarks/results") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = (
        ("quick-" if result["quick"] else "")
        + ("data-parallel-" if "steps" not in result and "data_parallel" in result else "")
        + ("post-norm-" if "steps" not in result and "post_norm_overhead" in result else "")
        + result["machine"]["device"].split(":")[0]
        + ("-bf16" if "bf16" in result["precision"] else "")
    )
    path = out / f"bench-{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (~1 min): checks the benchmark runs, numbers mean nothing")
    parser.add_argument("--batch", type=int, default=None, help="tokens per step (default 4096; 64 with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs; written as a separate result file)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median; >= 5)")
    parser.add_argument("--skip-offline", action="store_true", help="skip the offline-model sections (sweep, activations, end-to-end)")
    parser.add_argument("--profile", action="store_true", help="also profile JSAE steps (top ops, self CPU time per step; CPU only)")
    parser.add_argument(
        "--no-keep-freed-memory", action="store_true", help="leave glibc's default (unmap large freed blocks) instead of util.keep_freed_memory"
    )
    parser.add_argument("--post-norm-only", action="store_true", help="run only section 6 (penalty with vs without a post-MLP norm)")
    parser.add_argument("--data-parallel-only", action="store_true",
                        help="run only section 7: torchrun 2 gloo ranks vs 1 process on the offline default (needs 2 idle cores, ≈ 5 min)")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"), help="where the JSON result is written")
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--data-parallel-worker"]:  # section 7's processes (this file, run by torchrun)
        tokens, batch, work, shard = argv[1:5]
        data_parallel_worker(int(tokens), int(batch), Path(work), shard_products=shard == "1")
        return 0
    args = build_parser().parse_args(argv)
    result = run_benchmark(
        quick=args.quick,
        batch=args.batch,
        device=args.device,
        bf16=args.bf16,
        threads=args.threads,
        repeats=max(5, args.repeats),
        skip_offline=args.skip_offline,
        keep_memory=not args.no_keep_freed_memory,
        profile=args.profile,
        post_norm_only=args.post_norm_only,
        data_parallel_only=args.data_parallel_only,
    )
    path = write_result(result, args.out_dir)
    result["result_file"] = str(path)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
