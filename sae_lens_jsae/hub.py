"""Pretrained JSAEs: load (Hub, HF cache offline, local dirs) and export to plain SAELens.

Pushing with a model card is in `card.py`, the reference converter in `reference.py`.

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

import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from sae_lens.constants import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINER_STATE_FILENAME,
)
from sae_lens.loading.pretrained_sae_loaders import (
    get_sae_lens_config_from_disk,
    sae_lens_disk_loader,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from sae_lens_jsae.mlp import MLP_WEIGHTS_FILENAME, load_mlp
from sae_lens_jsae.sae import ARCHITECTURE, JacobianSAE, JacobianSAEConfig, JacobianTrainingSAEConfig
from sae_lens_jsae.util import dtype_name

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
PICKLE_WEIGHT_NAMES = ("sae_weights.pt", "sae_weights.pth", "sae_weights.bin", "pytorch_model.bin")
"""Pickled weight files looked for (to refuse, or to load with allow_pickle) when no safetensors."""
INFERENCE_FILES = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME)


class PretrainedNotFoundError(FileNotFoundError):
    """A pretrained JSAE's file could not be found (locally, in the HF cache or on the Hub)."""


class PickleRefusedError(ValueError):
    """Only pickled weights were found and `allow_pickle=True` was not given."""


class SAEFiles(NamedTuple):
    """Where one pair's files are on disk (a local folder or an HF cache snapshot folder)."""

    cfg: Path
    weights: Path
    sparsity: Path | None


# ---- loading --------------------------------------------------------------------------------
def _is_local(source: str | Path) -> bool:
    path = Path(source).expanduser()
    if path.exists():
        return True
    text = str(source)
    # "org/name" is a repo id; anything else path-like (./x, /x, a/b/c, x\y) is a missing path.
    return isinstance(source, Path) or text.startswith((".", "/", "~")) or text.count("/") != 1 or "\\" in text


def refuse_pickle(where: str, found: str) -> PickleRefusedError:
    return PickleRefusedError(
        f"{where} has no {SAE_WEIGHTS_FILENAME}, only the pickled weights file {found!r}. Loading "
        "reads safetensors and JSON only, since unpickling can run arbitrary code. If you trust the "
        "file, pass allow_pickle=True (CLI: --allow-pickle), or re-save it with safetensors."
    )


def local_files(directory: Path, allow_pickle: bool) -> SAEFiles:
    if not directory.is_dir():
        raise PretrainedNotFoundError(f"No such directory: {directory}")
    cfg = directory / SAE_CFG_FILENAME
    if not cfg.is_file():
        sae_ids = sorted(p.parent.name for p in directory.glob(f"*/{SAE_CFG_FILENAME}"))
        hint = f" It holds these sae_ids: {', '.join(sae_ids)}; pass one as sae_id." if sae_ids else ""
        raise PretrainedNotFoundError(f"{directory} has no {SAE_CFG_FILENAME}.{hint}")
    weights = directory / SAE_WEIGHTS_FILENAME
    if not weights.is_file():
        pickles = sorted(
            p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.name != TRAINER_STATE_FILENAME
        )
        if not pickles:
            raise PretrainedNotFoundError(f"{directory} has no {SAE_WEIGHTS_FILENAME}.")
        if not allow_pickle:
            raise refuse_pickle(str(directory), pickles[0].name)
        weights = pickles[0]
    sparsity = directory / SPARSITY_FILENAME
    return SAEFiles(cfg, weights, sparsity if sparsity.is_file() else None)


def _hub_error(repo_id: str, filename: str, revision: str | None, cache_dir: Path, error: Exception) -> PretrainedNotFoundError:
    where = f"{filename!r} of Hugging Face repo {repo_id!r} (revision {revision or 'main'})"
    if isinstance(error, RepositoryNotFoundError):
        return PretrainedNotFoundError(f"Repo {repo_id!r} was not found on the Hub (or is private: log in with `hf auth login`).")
    if isinstance(error, LocalEntryNotFoundError):
        cached = (cache_dir / f"models--{repo_id.replace('/', '--')}").is_dir()
        state = f"is not in the Hugging Face cache at {cache_dir}" + ("" if cached else " (no file of this repo is)")
        if hf_constants.is_offline_mode():
            return PretrainedNotFoundError(
                f"{where} {state}, and this machine is offline "
                "(HF_HUB_OFFLINE=1), so it cannot be downloaded. Download it where there is network "
                f"(`hf download {repo_id}`) and copy the cache here or point HF_HUB_CACHE at it, or unset HF_HUB_OFFLINE."
            )
        return PretrainedNotFoundError(
            f"{where} {state}, and the Hub could not be reached "
            f"({error.__class__.__name__}). Check the network, or set HF_HUB_OFFLINE=1 to use the cache only."
        )
    return PretrainedNotFoundError(f"{where} does not exist ({error.__class__.__name__}).")


def _hub_files(
    repo_id: str, sae_id: str | None, revision: str | None, cache_dir: str | Path | None, force_download: bool, allow_pickle: bool
) -> SAEFiles:
    cache = Path(cache_dir or hf_constants.HF_HUB_CACHE).expanduser()
    prefix = f"{sae_id.strip('/')}/" if sae_id else ""

    def download(name: str) -> Path:
        return Path(
            hf_hub_download(repo_id, prefix + name, revision=revision, cache_dir=cache, force_download=force_download)
        )

    def fetch(name: str) -> Path:
        try:
            return download(name)
        except (EntryNotFoundError, RepositoryNotFoundError) as error:
            raise _hub_error(repo_id, prefix + name, revision, cache, error) from None

    cfg = fetch(SAE_CFG_FILENAME)
    try:
        weights = download(SAE_WEIGHTS_FILENAME)
    except EntryNotFoundError as error:
        weights = _hub_pickle_fallback(download, allow_pickle, f"{repo_id}/{prefix}")
        if weights is None:
            raise _hub_error(repo_id, prefix + SAE_WEIGHTS_FILENAME, revision, cache, error) from None
    try:
        sparsity: Path | None = download(SPARSITY_FILENAME)
    except EntryNotFoundError:
        sparsity = None  # optional
    return SAEFiles(cfg, weights, sparsity)


def _hub_pickle_fallback(download: Any, allow_pickle: bool, where: str) -> Path | None:
    """Download (never load) a pickled weights file if the repo has one; refuse it unless allowed."""
    for name in PICKLE_WEIGHT_NAMES:
        try:
            path = download(name)
        except EntryNotFoundError:
            continue
        if not allow_pickle:
            raise refuse_pickle(where, name)
        return path
    return None


def resolve_files(
    source: str | Path,
    sae_id: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    allow_pickle: bool = False,
) -> SAEFiles:
    """Find a pair's files: `source` is a local directory or a Hub repo id ("org/name").

    `sae_id` is the sub-folder (None: the files are at the top). A local path wins over a repo
    id of the same spelling. Hub files come through `hf_hub_download`, so the HF cache is used
    and `HF_HUB_OFFLINE=1` works with no network access.
    """
    if _is_local(source):
        directory = Path(source).expanduser() / (sae_id or "")
        return local_files(directory, allow_pickle)
    return _hub_files(str(source), sae_id, revision, cache_dir, force_download, allow_pickle)


def pickle_disk_loader(weights: Path) -> Any:
    def loader(path: str | Path, device: str, cfg_overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        cfg = get_sae_lens_config_from_disk(path, device, cfg_overrides)
        state = torch.load(weights, map_location=device, weights_only=True)  # allow_pickle=True was given
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{weights} does not hold a flat state dict of tensors.")
        return cfg, dict(state)

    return loader


def check_safetensors(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file (header only); a one-line ValueError naming the
    file when it is truncated or not safetensors."""
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): truncated or corrupt; re-save or re-download it.") from None


def _json_types(annotation: Any) -> tuple[type, ...] | None:
    """The JSON value types a config annotation accepts; None when not a simple scalar type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [_json_types(a) for a in typing.get_args(annotation)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)  # type: ignore[union-attr]
    if typing.get_origin(annotation) is Literal:
        return tuple({type(a) for a in typing.get_args(annotation)})
    return {int: (int,), float: (int, float), bool: (bool,), str: (str,), type(None): (type(None),)}.get(annotation)


def check_cfg_types(cfg: Mapping[str, Any], path: str | Path, key_prefix: str = "") -> None:
    """A one-line ValueError naming `path` and the field when a scalar field of a pair's cfg.json
    has the wrong JSON type (`"k": "32"`), before any config class sees it. `key_prefix` names
    where the fields sit in `path` (`"sae."` in a YAML run config)."""
    hints: dict[str, Any] = {}
    for cls in (JacobianTrainingSAEConfig, JacobianSAEConfig):
        hints.update(typing.get_type_hints(cls))
    for key, value in cfg.items():
        allowed = _json_types(hints.get(key))
        if allowed is None or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)):
            continue
        names = " or ".join(dict.fromkeys("null" if t is type(None) else t.__name__ for t in allowed))
        raise ValueError(f"{path}: {key_prefix + key!r} must be {names}, not {value!r} ({'null' if value is None else type(value).__name__}).")


def read_pair_cfg(path: str | Path) -> dict[str, Any]:
    """An SAE's cfg.json as a dict; a one-line ValueError naming the file when it is not a JSON
    object or (a Jacobian pair's) a field has the wrong type."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds a JSON {type(cfg).__name__}, not an SAE config object.")
    if cfg.get("architecture") == ARCHITECTURE:
        check_cfg_types(cfg, path)
    return cfg


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
    cfg = read_pair_cfg(files.cfg)
    architecture = cfg.get("architecture")
    if architecture != ARCHITECTURE:
        raise ValueError(
            f"{files.cfg} describes a {architecture!r} SAE, not a Jacobian SAE pair (architecture "
            f"{ARCHITECTURE!r}). Load it with sae_lens.SAE.from_pretrained / SAE.load_from_disk; for the "
            "authors' reference artifacts use sae_lens_jsae.convert_reference."
        )
    return cfg


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
    files = resolve_files(
        source, sae_id, revision=revision, cache_dir=cache_dir, force_download=force_download, allow_pickle=allow_pickle
    )
    check_architecture(files)
    if files.cfg.parent != files.weights.parent:
        raise PretrainedNotFoundError(f"{files.cfg} and {files.weights} are not in one folder.")
    if files.weights.suffix == ".safetensors":
        check_safetensors(files.weights)
    converter = sae_lens_disk_loader if files.weights.name == SAE_WEIGHTS_FILENAME else pickle_disk_loader(files.weights)
    dtype_str = dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype
    sae = JacobianSAE.load_from_disk(
        files.cfg.parent, device=device, dtype=dtype_str, converter=converter, fold_W_dec_norm=fold_W_dec_norm
    )
    if sae.mlp is None:  # not inside the weights (files saved before the MLP left them carry it)
        attach_saved_mlp(sae, files.cfg.parent, model)
    return sae


def attach_saved_mlp(sae: Any, folder: str | Path, model: Any = None) -> None:
    """Attach a loaded pair's MLP from `folder/mlp.safetensors` if present, else from `model`
    (if given); either must match `sae.cfg.mlp_sha256`."""
    local = Path(folder) / MLP_WEIGHTS_FILENAME
    if local.is_file():
        check_safetensors(local)
        sae.attach_mlp(load_mlp(local, sae.cfg.mlp_act_fn))
    elif model is not None:
        sae.attach_mlp_from_model(model)


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
