"""Register the `jacobian` architecture with SAELens (SAELens has no plugin entry points)."""


def register_jacobian_architecture() -> None:
    """Register both classes under "jacobian"; a no-op when already registered (safe to repeat)."""
    # imported here, not above: sae.py calls this at its end, and the package's import hook when SAELens loads
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    from sae_lens_jsae.sae import (
        ARCHITECTURE,
        JacobianSAE,
        JacobianSAEConfig,
        JacobianTrainingSAE,
        JacobianTrainingSAEConfig,
    )

    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, JacobianSAE, JacobianSAEConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, JacobianTrainingSAE, JacobianTrainingSAEConfig)


def register_transcoder_architectures() -> None:
    """Register "topk_transcoder" and "topk_skip_transcoder" (inference and training classes)."""
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    from sae_lens_jsae.transcoder import TRANSCODER_CLASSES

    for name, (inference_cls, inference_cfg, training_cls, training_cfg) in TRANSCODER_CLASSES.items():
        if name not in SAE_CLASS_REGISTRY:
            register_sae_class(name, inference_cls, inference_cfg)
        if name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, training_cls, training_cfg)
