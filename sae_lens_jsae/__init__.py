"""Jacobian Sparse Autoencoders (Farnik et al., ICML 2025) as a SAELens architecture.

Importing this package registers the architecture `"jacobian"` with SAELens (inference and
training classes), after which SAELens' own loaders and runner configs accept it.
"""

from sae_lens_jsae.build import build_jacobian_sae
from sae_lens_jsae.card import model_card, push_to_hub
from sae_lens_jsae.hub import export_saelens, load_jsae
from sae_lens_jsae.jacobian import ActiveJacobian
from sae_lens_jsae.mlp import FrozenMLP
from sae_lens_jsae.reference import convert_reference
from sae_lens_jsae.registration import register_jacobian_architecture
from sae_lens_jsae.sae import (
    JacobianSAE,
    JacobianSAEConfig,
    JacobianSAEOutput,
    JacobianTrainingSAE,
    JacobianTrainingSAEConfig,
    NonFiniteLossError,
)

register_jacobian_architecture()

__all__ = [
    "ActiveJacobian",
    "FrozenMLP",
    "JacobianSAE",
    "JacobianSAEConfig",
    "JacobianSAEOutput",
    "JacobianTrainingSAE",
    "JacobianTrainingSAEConfig",
    "NonFiniteLossError",
    "build_jacobian_sae",
    "register_jacobian_architecture",
    "convert_reference",
    "export_saelens",
    "load_jsae",
    "model_card",
    "push_to_hub",
]
