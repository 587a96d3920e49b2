"""Pretrained JSAEs: load (Hub, HF cache offline, local dirs) and export to plain SAELens.

Pushing with a model card is in `card.py`, the reference converter in `reference.py`; finding
and checking a pair's files (re-exported here) in `pretrained.py`, below `sae.py`, so that
`JacobianSAE.from_pretrained` loads without importing this module (hub -> sae, one way).

A published pair is a folder `<sae_id>/` holding `cfg.json` (architecture `"jacobian"`),
`sae_weights.safetensors` and optionally `sparsity.safetensors` -- the layout SAELens' own
`SAE.from_pretrained("org/name", sae_id)` reads, so that call works too once this package is
imported. Loading reads JSON and safetensors only; pickled weights (`.pt`, `.bin`, ...) are
refused unless the caller passes `allow_pickle=True`.

The frozen MLP is the LLM's, so a pair's files do not carry it: `cfg.json` names the model
(`metadata.model_name`), the block (`metadata.hook_name`), the MLP's kind and `mlp_sha256`.
`load_jsae` re-attaches it from a local `mlp.safetensors` (what `jsae train` leaves beside its
output, never pushed) or from `model=`, refusing an MLP with another checksum. Files saved
with `mlp.*` inside `sae_weights.safetensors` still load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens.constants import SAE_CFG_FILENAME
from safetensors.torch import load_file

from sae_lens_jsae import pretrained
from sae_lens_jsae.cfg_types import check_field_types
from sae_lens_jsae.pretrained import (  # re-exported: the loading helpers live below sae.py
    INFERENCE_FILES,
    PICKLE_SUFFIXES,
    PICKLE_WEIGHT_NAMES,
    PickleRefusedError,
    PretrainedNotFoundError,
    SAEFiles,
    attach_saved_mlp,
    check_safetensors,
    local_files,
    pickle_disk_loader,
    refuse_pickle,
    resolve_files,
)
from sae_lens_jsae.sae import ARCHITECTURE, JacobianSAE, JacobianSAEConfig, JacobianTrainingSAEConfig

__all__ = [
    "INFERENCE_FILES",
    "PICKLE_SUFFIXES",
    "PICKLE_WEIGHT_NAMES",
    "ExportedSAEs",
    "PickleRefusedError",
    "PretrainedNotFoundError",
    "SAEFiles",
    "attach_saved_mlp",
    "check_architecture",
    "check_cfg_types",
    "check_pair_files",
    "check_safetensors",
    "export_saelens",
    "load_jsae",
    "load_sparsity",
    "local_files",
    "pickle_disk_loader",
    "read_pair_cfg",
    "refuse_pickle",
    "resolve_files",
]

PAIR_CONFIGS = (JacobianTrainingSAEConfig, JacobianSAEConfig)
"""The pair's config classes, whose field types a cfg.json (or a YAML `sae:` section) must have."""


# ---- loading --------------------------------------------------------------------------------
def check_cfg_types(cfg: Mapping[str, Any], path: str | Path, key_prefix: str = "") -> None:
    """A one-line ValueError naming `path` and the field when a scalar field of a pair's cfg.json
    has the wrong JSON type (`"k": "32"`), before any config class sees it. `key_prefix` names
    where the fields sit in `path` (`"sae."` in a YAML run config)."""
    check_field_types(cfg, PAIR_CONFIGS, path, key_prefix)


def read_pair_cfg(path: str | Path) -> dict[str, Any]:
    """An SAE's cfg.json as a dict; a one-line ValueError naming the file when it is not a JSON
    object or (a Jacobian pair's) a field has the wrong type."""
    return pretrained.read_pair_cfg(path, ARCHITECTURE, PAIR_CONFIGS)


def check_pair_files(folder: str | Path) -> dict[str, Any]:
    """Check a local SAE folder's files without loading weights (cheap: JSON and safetensors
    headers): cfg.json (a Jacobian pair's field types) and every safetensors file there
    (`sae_weights`, `mlp`, `sparsity`). A one-line error naming the bad file; returns the cfg."""
    folder = Path(folder)
    if not (folder / SAE_CFG_FILENAME).is_file():
        raise PretrainedNotFoundError(f"{folder} has no {SAE_CFG_FILENAME}.")
    cfg = read_pair_cfg(folder / SAE_CFG_FILENAME)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)
    return cfg


def check_architecture(files: SAEFiles) -> dict[str, Any]:
    """`files.cfg` read and checked; a ValueError when it is not a Jacobian pair's."""
    return pretrained.check_architecture(files, ARCHITECTURE, PAIR_CONFIGS)


def load_jsae(
    source: str | Path,
    sae_id: str | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    force_download: bool = False,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    allow_pickle: bool = False,
    fold_W_dec_norm: bool = False,
    model: Any = None,
) -> JacobianSAE:
    """Load a `JacobianSAE` from a Hub repo, the HF cache or a local directory.

    Positional arguments follow SAELens' `SAE.from_pretrained(release, sae_id, device, dtype,
    force_download)`; `dtype=None` keeps the saved dtype. The frozen MLP comes from
    `mlp.safetensors` beside the weights when there is one, else from `model` (the
    TransformerLens model the pair was trained on), and must match the saved checksum; with
    neither the pair loads without it (`sae.mlp is None`; `sae.attach_mlp_from_model(model)`).
    """
    return JacobianSAE.from_pretrained(
        source,
        sae_id,
        device,
        dtype,  # type: ignore[arg-type]
        force_download,
        revision=revision,
        cache_dir=cache_dir,
        allow_pickle=allow_pickle,
        fold_W_dec_norm=fold_W_dec_norm,
        model=model,
    )


def load_sparsity(files: SAEFiles) -> dict[str, torch.Tensor] | None:
    """The tensors of `sparsity.safetensors` (SAELens stores log10 feature sparsity), if any."""
    return None if files.sparsity is None else load_file(files.sparsity)


# ---- export to plain SAELens ----------------------------------------------------------------
class ExportedSAEs(NamedTuple):
    """The two standard SAELens TopK SAE folders written by `export_saelens`."""

    input_sae: Path
    output_sae: Path


def export_saelens(source: str | Path | JacobianSAE, out_dir: str | Path, sae_id: str | None = None, **load_kwargs: Any) -> ExportedSAEs:
    """Write `out_dir/input_sae` and `out_dir/output_sae` as standard SAELens TopK SAE folders.

    Each is `architecture: "topk"` with its own hook name (`ln2.hook_normalized` /
    `hook_mlp_out`) and gives the same latents and reconstructions as the pair; they load with
    SAELens alone (`SAE.load_from_disk`), e.g. in SAEBench. The frozen MLP is not exported.
    """
    sae = source if isinstance(source, JacobianSAE) else load_jsae(source, sae_id, **load_kwargs)
    out = Path(out_dir)
    paths = ExportedSAEs(out / "input_sae", out / "output_sae")
    for plain, path in ((sae.input_sae, paths.input_sae), (sae.output_sae, paths.output_sae)):
        metadata = plain.cfg.metadata
        # A plain TopK SAE: drop the pair's training details, keep a pointer to where it came from.
        for key in ("training_architecture", "training_architecture_details"):
            metadata.__dict__.pop(key, None)
        metadata.jsae_role = "input" if path == paths.input_sae else "output"  # type: ignore[attr-defined]
        plain.save_model(path)
    return paths
