#!/usr/bin/env python
"""The Jacobian backward's row scatter, before/after: one thread toggled around `index_add_`
(the old `_scatter_rows`) vs `scatter_add_` on an expanded index (the current one), in ONE run.

Pythia-70m-like sizes (d=512, d_mlp=2048, dense GELU, d_sae=16384, k=32), CPU, at torch's
thread count (or `--threads`). Timed, alternating old and new so both see the same machine load:
- `scatter`: one chunk's scatter (16 tokens · k rows of d_mlp floats into a d_sae × d_mlp table);
- `penalty`: the fused training penalty `active_jacobian_l1` forward + backward (all its scatters);
- `encoder`: `topk_encode` backward (the sparse ∂W_enc, `_column_outer_sum`).
Each ratio is old / new seconds (> 1: the new code is faster). Also checks that both give
bit-identical gradients. Prints one JSON object (`--out FILE` writes it too).

    python benchmarks/bench_scatter.py [--tokens 1024] [--repeats 5] [--threads N] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sae_lens_jsae import jacobian
from sae_lens_jsae.jacobian import active_jacobian_l1, chunk_tokens, topk_encode


def old_scatter_rows(out: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """The previous `_scatter_rows`: `index_add_` on one thread when the pool has <= 4 threads."""
    if out.device.type != "cpu" or torch.get_num_threads() > 4:
        out.index_add_(0, index, src)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out.index_add_(0, index, src)
    finally:
        torch.set_num_threads(threads)


NEW_SCATTER_ROWS = jacobian._scatter_rows


def with_scatter(impl: Callable[..., None], fn: Callable[[], object]) -> object:
    """Run `fn` with `jacobian._scatter_rows` set to `impl` (this script only; restored after)."""
    saved = jacobian._scatter_rows
    jacobian._scatter_rows = impl
    try:
        return fn()
    finally:
        jacobian._scatter_rows = saved


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median seconds of `fn` under the old and the new scatter, interleaved (old, new, old, ...)."""
    with_scatter(old_scatter_rows, fn), with_scatter(NEW_SCATTER_ROWS, fn)  # warm-up
    old, new = [], []
    for _ in range(repeats):
        old.append(timed(lambda: with_scatter(old_scatter_rows, fn)))
        new.append(timed(lambda: with_scatter(NEW_SCATTER_ROWS, fn)))
    o, n = statistics.median(old), statistics.median(new)
    return {f"{name}_old_s": o, f"{name}_new_s": n, f"{name}_old_over_new": o / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    d, m, d_sae, k, T = (32, 64, 256, 8, 64) if args.quick else (512, 2048, 16384, 32, args.tokens)
    gen = torch.Generator().manual_seed(0)

    # one chunk's scatter, as in the penalty's backward (16-token chunks at these sizes)
    table = torch.zeros(d_sae, m)
    rows = torch.randn(16 * k, m, generator=gen)
    index = torch.randint(0, d_sae, (16 * k,), generator=gen)
    result: dict[str, object] = {
        "sizes": {"d_model": d, "d_mlp": m, "d_sae": d_sae, "k": k, "tokens": T},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_at_start": os.getloadavg(),
        },
        "repeats": args.repeats,
        "method": "median of interleaved repeats, old and new in the same process",
    }
    result.update(compare("scatter", lambda: [jacobian._scatter_rows(table, index, rows) for _ in range(20)], args.repeats))

    # the fused penalty, forward + backward, chunked as in training
    A = (0.02 * torch.randn(d_sae, m, generator=gen)).requires_grad_()
    B = (0.02 * torch.randn(m, d_sae, generator=gen)).requires_grad_()
    slopes = [torch.rand(T, m, generator=gen)]
    K1 = torch.randint(0, d_sae, (T, k), generator=gen)
    K2 = torch.randint(0, d_sae, (T, k), generator=gen)
    v1, v2 = torch.rand(T, k, generator=gen), torch.rand(T, k, generator=gen)
    chunk = chunk_tokens(256 * 2**20, k, m, 4)

    def penalty() -> tuple[torch.Tensor, torch.Tensor]:
        A.grad = B.grad = None
        active_jacobian_l1([A], B, slopes, K1, K2, v1, v2, chunk_size=chunk).mean_abs.backward()
        return A.grad, B.grad

    result.update(compare("penalty", penalty, args.repeats))
    old_grads = with_scatter(old_scatter_rows, penalty)
    old_grads = tuple(g.clone() for g in old_grads)  # type: ignore[union-attr]
    new_grads = with_scatter(NEW_SCATTER_ROWS, penalty)
    result["penalty_gradients_bit_identical"] = all(torch.equal(a, b) for a, b in zip(old_grads, new_grads))  # type: ignore[arg-type]

    # the sparse encoder's ∂W_enc
    x = torch.randn(T, d, generator=gen)
    W_enc = (0.05 * torch.randn(d, d_sae, generator=gen)).requires_grad_()
    b_enc = torch.zeros(d_sae, requires_grad=True)

    def encoder() -> torch.Tensor:
        W_enc.grad = b_enc.grad = None
        values, _, _ = topk_encode(x, W_enc, b_enc, k)
        values.sum().backward()
        return W_enc.grad

    result.update(compare("encoder", encoder, args.repeats))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
