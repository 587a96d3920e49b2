"""Jacobian Sparse Autoencoders (Farnik et al., ICML 2025) as a SAELens architecture.

Importing this package registers the architecture `"jacobian"` with SAELens (inference and
training classes), after which SAELens' own loaders and runner configs accept it.

The import itself is light (so `jsae --help` answers at once): the public names below load on
first use, and the registration runs as soon as SAELens is imported (at once if it already is).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

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


def _register() -> None:
    sae_module = sys.modules.get("sae_lens_jsae.sae")
    if sae_module is not None and getattr(sae_module.__spec__, "_initializing", False):
        return  # sae.py is mid-import (it imported sae_lens) and registers at its end
    registration = importlib.import_module("sae_lens_jsae.registration")
    registration.register_jacobian_architecture()
    registration.register_transcoder_architectures()


class _RegisterAfterSAELens(importlib.abc.MetaPathFinder):
    """Finds `sae_lens` with the normal finders and makes its loader register "jacobian" after it runs."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "sae_lens":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run_module = spec.loader.exec_module  # a fresh loader object per find_spec: patching it is local

            def exec_module(module: Any) -> None:
                run_module(module)
                _register()

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "sae_lens" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterSAELens) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterSAELens())
