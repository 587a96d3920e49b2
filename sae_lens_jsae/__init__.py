"""Jacobian Sparse Autoencoders (Farnik et al., ICML 2025) as a SAELens architecture.

Importing this package registers the architecture `"jacobian"` with SAELens (inference and
training classes), after which SAELens' own loaders and runner configs accept it.

The import itself is light (so `jsae --help` answers at once): the public names below load on
first use, and the registration runs as soon as SAELens is imported (at once if it already is;
`wrapt.register_post_import_hook`, SAELens' own modules and loader are left as they are).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import wrapt

_EXPORTS = {
    "ActiveJacobian": "sae_lens_jsae.jacobian",
    "FrozenMLP": "sae_lens_jsae.mlp",
    "TopKTranscoder": "sae_lens_jsae.transcoder",
    "TopKSkipTranscoder": "sae_lens_jsae.transcoder",
    "TopKTrainingTranscoder": "sae_lens_jsae.transcoder",
    "TopKTrainingSkipTranscoder": "sae_lens_jsae.transcoder",
    "TopKTranscoderTrainingConfig": "sae_lens_jsae.transcoder",
    "TopKSkipTranscoderTrainingConfig": "sae_lens_jsae.transcoder",
    "JacobianSAE": "sae_lens_jsae.sae",
    "JacobianSAEConfig": "sae_lens_jsae.sae",
    "JacobianSAEOutput": "sae_lens_jsae.sae",
    "JacobianTrainingSAE": "sae_lens_jsae.sae",
    "JacobianTrainingSAEConfig": "sae_lens_jsae.sae",
    "NonFiniteLossError": "sae_lens_jsae.sae",
    "build_jacobian_sae": "sae_lens_jsae.build",
    "register_jacobian_architecture": "sae_lens_jsae.registration",
    "convert_reference": "sae_lens_jsae.reference",
    "export_saelens": "sae_lens_jsae.hub",
    "load_jsae": "sae_lens_jsae.hub",
    "model_card": "sae_lens_jsae.card",
    "push_to_hub": "sae_lens_jsae.card",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sae_lens_jsae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


# The modules that define an architecture; registration.py registers each once its import completes.
ARCHITECTURE_MODULES = ("sae_lens_jsae.sae", "sae_lens_jsae.transcoder")


def _register_architectures(_sae_lens: Any = None) -> None:
    """Import the architecture modules not imported yet (each is registered when its import
    completes). One already in `sys.modules` (loaded, or mid-import because it imported SAELens)
    needs nothing: its own hook below registers it."""
    for name in ARCHITECTURE_MODULES:
        if name not in sys.modules:
            importlib.import_module(name)


def _register_module(module: Any) -> None:
    from sae_lens_jsae.registration import register_module

    register_module(module)


# SAELens takes seconds to import and the `jsae` CLI (which imports this package) must answer
# `--help` at once, so registration waits for SAELens: wrapt's post-import hook runs it right
# after `import sae_lens` completes, or now if SAELens is already imported. The architecture
# modules are registered by hooks on their own import (not by importing registration.py
# themselves, which would make them depend on the module that depends on both).
for _module in ARCHITECTURE_MODULES:
    wrapt.register_post_import_hook(_register_module, _module)
wrapt.register_post_import_hook(_register_architectures, "sae_lens")
