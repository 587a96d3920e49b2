"""`jsae bench` / `scripts/bench.py`: a reproducible performance benchmark of the JSAE.

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
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

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
def random_mlp(d: int, d_mlp: int, act_fn: str, gated: bool, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from sae_lens_jsae.mlp import FrozenMLP

    gen = torch.Generator().manual_seed(seed)
    mlp = FrozenMLP(d, d_mlp, act_fn, gated, dtype=torch.float32)
    with torch.no_grad():
        for name, buf in mlp.named_buffers():
            fan_in = buf.shape[0] if buf.ndim == 2 else 1
            scale = 1 / math.sqrt(fan_in) if buf.ndim == 2 else 0.02
            buf.copy_(torch.randn(buf.shape, generator=gen) * scale)
    return mlp.to(device=device, dtype=dtype)


def make_pair(size: tuple[int, int, str, bool, int, int], lam: float, device: torch.device, dtype: torch.dtype = torch.float32, chunk_bytes: int | None = 256 * 2**20, seed: int = 0):
    from sae_lens_jsae import JacobianTrainingSAE, JacobianTrainingSAEConfig

    d, d_mlp, act_fn, gated, d_sae, k = size
    torch.manual_seed(seed)
    cfg = JacobianTrainingSAEConfig(
        d_in=d, d_sae=d_sae, k=k, d_mlp=d_mlp, mlp_act_fn=act_fn, gated_mlp=gated,
        jacobian_coefficient=lam, jacobian_chunk_bytes=chunk_bytes, device=str(device), dtype=str(dtype).removeprefix("torch."),
    )
    sae = JacobianTrainingSAE(cfg).to(device)
    sae.attach_mlp(random_mlp(d, d_mlp, act_fn, gated, device, dtype, seed))
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
                TrainStepInput(sae_in=x, coefficients={"jacobian_coefficient": lam}, dead_neuron_mask=None, n_training_steps=state["step"], is_logging_step=False)
            )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1

    return step


def sparsify_pair_step(size: tuple[int, int, str, bool, int, int], x: torch.Tensor, y: torch.Tensor, autocast: Any = None) -> Callable[[], None] | None:
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
