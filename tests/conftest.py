"""Shared fixtures: tiny random TransformerLens models, seeding."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers import make_tiny_model
from transformer_lens import HookedTransformer


@pytest.fixture
def reproducibility() -> None:
    """Seed every RNG the tests touch (SAELens' tests use a fixture of the same name)."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


@pytest.fixture
def tiny_model() -> Callable[..., HookedTransformer]:
    """Factory fixture: `tiny_model(kind, dtype=..., **cfg_overrides)`."""
    return make_tiny_model
