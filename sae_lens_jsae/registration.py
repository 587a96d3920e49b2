"""Register this package's architectures with SAELens (SAELens has no plugin entry points).

The one module that knows both architectures: it imports `sae.py` and `transcoder.py`, which
import neither it nor each other. The package's `__init__` calls `register_module` as soon as
either module's import completes (a post-import hook), and imports both when SAELens loads, so
`from sae_lens_jsae.sae import ...` or `import sae_lens` alone registers them.
"""

from __future__ import annotations

from typing import Any


class ArchitectureConflictError(ValueError):
    """An architecture name is already registered with SAELens to other classes."""


def register(name: str, inference_cls: type, inference_cfg: type, training_cls: type, training_cfg: type) -> None:
    """Register `name` in SAELens' inference and training registries.

    A no-op when `name` is already registered to exactly these classes (a module imported or
    registered twice). Raises `ArchitectureConflictError` when another package (or a reloaded
    copy of ours) holds `name` with other classes; both registries are checked before either
    is written, so a conflict leaves SAELens as it was.
    """
    # imported here: registration runs from the architecture modules, which import SAELens first
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    wanted = {
        "inference": (SAE_CLASS_REGISTRY, (inference_cls, inference_cfg)),
        "training": (SAE_TRAINING_CLASS_REGISTRY, (training_cls, training_cfg)),
    }
    for kind, (registry, classes) in wanted.items():
        held = registry.get(name)
        if held is not None and (held[0] is not classes[0] or held[1] is not classes[1]):
            raise ArchitectureConflictError(
                f"SAELens architecture {name!r} is already registered for {kind} to {_names(held)}; "
                f"sae_lens_jsae cannot also register {_names(classes)} under that name."
            )
    if name not in SAE_CLASS_REGISTRY:
        register_sae_class(name, inference_cls, inference_cfg)  # type: ignore[arg-type]
    if name not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(name, training_cls, training_cfg)  # type: ignore[arg-type]


def _names(classes: tuple[Any, ...]) -> str:
    return " / ".join(f"{c.__module__}.{c.__qualname__}" for c in classes)


def register_jacobian_architecture() -> None:
    """Register "jacobian" (`JacobianSAE`, `JacobianTrainingSAE` and their configs)."""
    from sae_lens_jsae.sae import (
        ARCHITECTURE,
        JacobianSAE,
        JacobianSAEConfig,
        JacobianTrainingSAE,
        JacobianTrainingSAEConfig,
    )

    register(ARCHITECTURE, JacobianSAE, JacobianSAEConfig, JacobianTrainingSAE, JacobianTrainingSAEConfig)


def register_transcoder_architectures() -> None:
    """Register "topk_transcoder" and "topk_skip_transcoder" (inference and training classes)."""
    from sae_lens_jsae.transcoder import TRANSCODER_CLASSES

    for name, classes in TRANSCODER_CLASSES.items():
        register(name, *classes)


REGISTERS = {"sae_lens_jsae.sae": register_jacobian_architecture, "sae_lens_jsae.transcoder": register_transcoder_architectures}
"""Architecture module → the function registering what it defines."""


def register_module(module: Any) -> None:
    """Register the architectures of `module` (one of `REGISTERS`, fully imported)."""
    REGISTERS[module.__name__]()
