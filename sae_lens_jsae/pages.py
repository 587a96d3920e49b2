"""Where a latent's page lives: the numbering shared by the graph files and the latent pages.

A graph node and its latent page (`jsae graph`, `jsae latents`) meet through a scan name (the
folder under `features/`) and circuit-tracer's Cantor pairing of (layer, index) (the file name).
Both `sae_lens_jsae.graph` and `sae_lens_jsae.latents` import this module; it imports neither.
"""

from __future__ import annotations

import re
from typing import Any

import torch

LAYERS = {"input": 0, "output": 1}
"""A pair's two sets of latents in the Cantor numbering: input SAE 0, output SAE 1."""
TRANSCODER_LAYERS = {"transcoder": 0}
"""A transcoder's one set of latents, numbered as a pair's input latents."""


def cantor(layer: int, index: int) -> int:
    """The `feature` number of a latent (circuit-tracer's Cantor pairing of layer and index)."""
    return (layer + index) * (layer + index + 1) // 2 + index


def feature_file(scan: str, layer: int, index: int) -> str:
    """Where a latent's page lives, relative to the data folder (the frontend's /features/ path)."""
    return f"features/{scan}/{cantor(layer, index)}.json"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lower()


def scan_name(sae: Any) -> str:
    """A name for the pair (the graph's `scan`): model, layer, width and λ."""
    from sae_lens_jsae.sae import layer_of_input_hook, saved_jacobian_coefficient

    model = (sae.cfg.metadata.model_name or "model").split("/")[-1]
    lam = saved_jacobian_coefficient(sae.cfg.to_dict())
    return _safe(f"{model}-l{layer_of_input_hook(sae.cfg.metadata.hook_name)}-jsae{sae.cfg.d_sae}-lam{lam:g}")


def transcoder_scan_name(sae: Any) -> str:
    """A name for a transcoder's pages: model, layer, architecture, width and k."""
    from sae_lens_jsae.sae import layer_of_input_hook

    model = (sae.cfg.metadata.model_name or "model").split("/")[-1]
    return _safe(f"{model}-l{layer_of_input_hook(sae.cfg.metadata.hook_name)}-{sae.cfg.architecture()}{sae.cfg.d_sae}-k{sae.cfg.k}")


def token_strings(model: Any, tokens: torch.Tensor) -> list[str]:
    """Token ids as strings (`⟨id⟩` for a model without a tokenizer, e.g. a test's tiny model)."""
    if getattr(model, "tokenizer", None) is None:
        return [f"⟨{int(t)}⟩" for t in tokens]
    return [str(s) for s in model.to_str_tokens(tokens)]
