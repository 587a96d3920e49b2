"""Test helpers: tiny random TransformerLens models, config builders, MLP inputs."""

from __future__ import annotations

import os
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

import sae_lens_jsae  # noqa: E402,F401  (registers the architecture)
from sae_lens_jsae import JacobianTrainingSAEConfig  # noqa: E402

# (act_fn, gated, normalization) for the MLP kinds the tests cover
MLP_KINDS: dict[str, tuple[str, bool, str]] = {
    "dense_gelu": ("gelu", False, "LN"),
    "dense_relu": ("relu", False, "LN"),
    "dense_gelu_new": ("gelu_new", False, "LN"),
    "gated_silu": ("silu", True, "RMS"),
    "gated_gelu": ("gelu", True, "RMS"),
}


def make_tiny_model(kind: str = "dense_gelu", dtype: torch.dtype = torch.float64, seed: int = 0, **overrides: Any) -> HookedTransformer:
    """A 2-layer random HookedTransformer whose norms have non-trivial weights and biases."""
    act_fn, gated, norm = MLP_KINDS[kind]
    cfg = HookedTransformerConfig(
        **{
            "n_layers": 2,
            "d_model": 16,
            "d_head": 4,
            "n_heads": 4,
            "d_mlp": 24,
            "d_vocab": 64,
            "n_ctx": 32,
            "act_fn": act_fn,
            "gated_mlp": gated,
            "normalization_type": norm,
            "dtype": dtype,
            "seed": seed,
            "model_name": f"tiny-{kind}",
            **overrides,
        }
    )
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            for ln in (getattr(block, "ln1", None), getattr(block, "ln2", None)):
                if hasattr(ln, "w"):
                    ln.w.copy_(1 + 0.5 * torch.randn(ln.w.shape, generator=gen, dtype=dtype))
                if hasattr(ln, "b"):
                    ln.b.copy_(0.3 * torch.randn(ln.b.shape, generator=gen, dtype=dtype))
            mlp = getattr(block, "mlp", None)
            if mlp is None or not hasattr(mlp, "b_in"):
                continue
            mlp.b_in.copy_(0.2 * torch.randn(mlp.b_in.shape, generator=gen, dtype=dtype))
            mlp.b_out.copy_(0.2 * torch.randn(mlp.b_out.shape, generator=gen, dtype=dtype))
    return model.eval()


def build_jsae_cfg(**overrides: Any) -> JacobianTrainingSAEConfig:
    """A small `JacobianTrainingSAEConfig` (in the spirit of SAELens' `build_*_cfg` helpers)."""
    defaults: dict[str, Any] = {"d_in": 16, "d_sae": 48, "k": 6, "d_mlp": 24, "mlp_act_fn": "gelu", "gated_mlp": False}
    return JacobianTrainingSAEConfig(**{**defaults, **overrides})


def mlp_inputs(model: HookedTransformer, layer: int, n_tokens: int = 40, seed: int = 0) -> torch.Tensor:
    """Real `ln2.hook_normalized` activations of the model on random tokens, (n_tokens, d_model)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (n_tokens // 8 + 1, 8), generator=gen)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.ln2.hook_normalized")
    return cache[f"blocks.{layer}.ln2.hook_normalized"].reshape(-1, model.cfg.d_model)[:n_tokens]


def tiny_token_dataset(n_rows: int = 64, context_size: int = 16, d_vocab: int = 64, seed: int = 0):
    """A pretokenized `datasets.Dataset` (column `input_ids`) of random tokens, BOS=0 first."""
    from datasets import Dataset

    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, d_vocab, (n_rows, context_size), generator=gen)
    rows[:, 0] = 0
    return Dataset.from_dict({"input_ids": rows.tolist()})


def tiny_runner_cfg(tmp_path, lam: float | None = 0.5, **overrides: Any):
    """A LanguageModelSAERunnerConfig for a JSAE on block 1 of `make_tiny_model`, CPU, no W&B."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    sae_overrides = overrides.pop("sae", {})
    sae = JacobianTrainingSAEConfig(**{"d_in": 16, "d_sae": 64, "k": 4, "jacobian_coefficient": lam, **sae_overrides})
    defaults: dict[str, Any] = {
        "sae": sae,
        "model_name": "tiny",
        "hook_name": "blocks.1.ln2.hook_normalized",
        "dataset_path": "",
        "is_dataset_tokenized": True,
        "context_size": 16,
        "training_tokens": 64 * 40,
        "train_batch_size_tokens": 64,
        "store_batch_size_prompts": 4,
        "n_batches_in_buffer": 4,
        "lr": 3e-3,
        "device": "cpu",
        "seed": 7,
        "checkpoint_path": str(tmp_path / "checkpoints"),
        "output_path": str(tmp_path / "out"),
        "logger": LoggingConfig(log_to_wandb=False),
        "dtype": "float32",
        "eval_batch_size_prompts": 2,
        "n_eval_batches": 1,
    }
    return LanguageModelSAERunnerConfig(**{**defaults, **overrides})
