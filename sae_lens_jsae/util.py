"""Small helpers shared by the adapters (no imports of this package's other modules)."""

from typing import Any

import torch


def is_pair(model: Any) -> bool:
    """Whether `model` is a JSAE pair: an input SAE and an output SAE around one frozen MLP, whose
    output latents are attributed to its input latents through `active_jacobian`.

    True for `JacobianSAE` and `JacobianTrainingSAE` (and any object with their `active_jacobian`
    and `W_enc_out`); False for transcoders (one encoder on the MLP input, decoding to its output)
    and plain SAELens SAEs. Duck-typed so the evals and graphs need not import the architecture."""
    return hasattr(model, "active_jacobian") and hasattr(model, "W_enc_out")


def dtype_name(dtype: torch.dtype) -> str:
    """SAELens' short dtype name ("float32", "bfloat16", ...)."""
    from sae_lens.util import dtype_to_str  # here: this module must not import SAELens on load

    return dtype_to_str(dtype)


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of any size for reuse instead of unmapping them (CPU only).

    Process-wide and permanent (`mallopt`), so the library never calls it on its own: the `jsae`
    CLI turns it on for its training runs, and Python users opt in with
    `RunOptions(keep_freed_memory=True)` or by calling this (docs/performance.md).

    Why: every training step frees and reallocates the same large temporaries (weight-product
    gradients, (tokens, d_sae) latents: tens of MB each). glibc hands blocks above its mmap
    threshold back to the OS, so the next step page-faults them in again, which measured
    ≈0.1 s per 28 MB tensor on the 2-core CI VM. jemalloc/tcmalloc (what PyTorch's CPU tuning
    guide suggests preloading) reuse them; `mallopt` does the same without a preload. Returns
    False (doing nothing) where glibc is not the allocator.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    # no mmap-backed blocks (so large frees stay in the heap) and never trim the heap top
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
