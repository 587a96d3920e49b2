"""A pretrained pair's files: find them (local folder, HF cache, Hub) and check them, then build
the pair. Below `sae.py`: `JacobianSAE.from_pretrained` calls `load_pair` with its own classes, and
`hub.py` (which imports `sae.py`) re-exports these names, so the dependencies run one way
(hub -> sae -> pretrained).

Loading reads JSON and safetensors only; pickled weights (`.pt`, `.bin`, ...) are refused unless
the caller passes `allow_pickle=True`. The module docstring of `hub.py` describes the layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

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

from sae_lens_jsae.cfg_types import check_field_types
from sae_lens_jsae.mlp import MLP_WEIGHTS_FILENAME, load_mlp
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


def read_pair_cfg(path: str | Path, architecture: str, config_classes: tuple[type, ...]) -> dict[str, Any]:
    """An SAE's cfg.json as a dict; a one-line ValueError naming the file when it is not a JSON
    object or (one of `architecture`) a field has the wrong type for `config_classes`."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds a JSON {type(cfg).__name__}, not an SAE config object.")
    if cfg.get("architecture") == architecture:
        check_field_types(cfg, config_classes, path)
    return cfg


def check_architecture(files: SAEFiles, architecture: str, config_classes: tuple[type, ...]) -> dict[str, Any]:
    """`files.cfg` read and checked (`read_pair_cfg`); a ValueError when it is another architecture."""
    cfg = read_pair_cfg(files.cfg, architecture, config_classes)
    found = cfg.get("architecture")
    if found != architecture:
        raise ValueError(
            f"{files.cfg} describes a {found!r} SAE, not a Jacobian SAE pair (architecture "
            f"{architecture!r}). Load it with sae_lens.SAE.from_pretrained / SAE.load_from_disk; for the "
            "authors' reference artifacts use sae_lens_jsae.convert_reference."
        )
    return cfg


def load_pair(
    sae_cls: Any,
    config_classes: tuple[type, ...],
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
) -> Any:
    """Load a pair of class `sae_cls` (its configs `config_classes`, training then inference)
    from a Hub repo, the HF cache or a local directory; `hub.load_jsae` documents the arguments."""
    files = resolve_files(
        source, sae_id, revision=revision, cache_dir=cache_dir, force_download=force_download, allow_pickle=allow_pickle
    )
    check_architecture(files, config_classes[-1].architecture(), config_classes)  # type: ignore[attr-defined]
    if files.cfg.parent != files.weights.parent:
        raise PretrainedNotFoundError(f"{files.cfg} and {files.weights} are not in one folder.")
    if files.weights.suffix == ".safetensors":
        check_safetensors(files.weights)
    converter = sae_lens_disk_loader if files.weights.name == SAE_WEIGHTS_FILENAME else pickle_disk_loader(files.weights)
    dtype_str = dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype
    sae = sae_cls.load_from_disk(
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
