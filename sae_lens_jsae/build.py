"""Build a ready Jacobian SAE pair for one block of a TransformerLens model."""

from __future__ import annotations

from typing import Any

from sae_lens.saes.sae import SAEMetadata
from torch import nn

from sae_lens_jsae.mlp import FrozenMLP
from sae_lens_jsae.sae import (
    JacobianTrainingSAE,
    JacobianTrainingSAEConfig,
    input_hook_name,
)
from sae_lens_jsae.util import dtype_name


def build_jacobian_sae(model: nn.Module, layer: int, d_sae: int, k: int = 32, **cfg: Any) -> JacobianTrainingSAE:
    """A `JacobianTrainingSAE` for block `layer` of a HookedTransformer, its MLP copied in.

    `d_in`, `d_mlp`, the activation function and gated/dense are read from the model; passing
    any of them with a different value is an error. Other keyword arguments are
    `JacobianTrainingSAEConfig` fields (e.g. `jacobian_coefficient=1.0`).
    """
    mlp = FrozenMLP.from_hooked_transformer(model, layer)
    from_model = {"d_in": mlp.d_model, "d_mlp": mlp.d_mlp, "mlp_act_fn": mlp.act_fn_name, "gated_mlp": mlp.gated}
    wrong = {key: (cfg[key], value) for key, value in from_model.items() if key in cfg and cfg[key] != value}
    if wrong:
        detail = ", ".join(f"{key}={given!r} (the model has {actual!r})" for key, (given, actual) in wrong.items())
        raise ValueError(f"build_jacobian_sae: {detail}; leave these out, they are read from the model.")
    cfg.setdefault("dtype", dtype_name(mlp.W_in.dtype))
    cfg.setdefault("device", str(mlp.W_in.device))
    hook = input_hook_name(layer)
    metadata = SAEMetadata(model_name=getattr(model.cfg, "model_name", None), hook_name=hook, hook_layer=layer)
    config = JacobianTrainingSAEConfig(**{**cfg, **from_model}, d_sae=d_sae, k=k, metadata=metadata)
    config.output_hook_name = config.resolved_output_hook_name(hook)  # errors on another block's hook
    sae = JacobianTrainingSAE(config)
    sae.attach_mlp(mlp)
    return sae
