"""Small helpers shared by the adapters."""

import torch
from sae_lens.util import dtype_to_str


def dtype_name(dtype: torch.dtype) -> str:
    """SAELens' short dtype name ("float32", "bfloat16", ...)."""
    return dtype_to_str(dtype)
