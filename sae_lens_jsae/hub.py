"""Pretrained JSAEs: load (Hub, HF cache offline, local dirs), push, export, convert.

A published pair is a folder `<sae_id>/` holding `cfg.json` (architecture `"jacobian"`),
`sae_weights.safetensors` and optionally `sparsity.safetensors` -- the layout SAELens' own
`SAE.from_pretrained("org/name", sae_id)` reads, so that call works too once this package is
imported. Loading reads JSON and safetensors only; pickled weights (`.pt`, `.bin`, ...) are
refused unless the caller passes `allow_pickle=True`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, TRAINER_STATE_FILENAME
from sae_lens.loading.pretrained_sae_loaders import get_sae_lens_config_from_disk, sae_lens_disk_loader
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file

from sae_lens_jsae.mlp import FrozenMLP
from sae_lens_jsae.sae import ARCHITECTURE, INPUT_HOOK_PATTERN, JacobianSAE, JacobianSAEConfig, resolve_output_hook, saved_jacobian_coefficient
from sae_lens_jsae.util import dtype_name

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
PICKLE_WEIGHT_NAMES = ("sae_weights.pt", "sae_weights.pth", "sae_weights.bin", "pytorch_model.bin")
"""Pickled weight files looked for (to refuse, or to load with allow_pickle) when no safetensors."""
INFERENCE_FILES = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME)
REFERENCE_SAE_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
REFERENCE_MLP_KEYS = ("W_in", "b_in", "W_out", "b_out")


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


def _refuse_pickle(where: str, found: str) -> PickleRefusedError:
    return PickleRefusedError(
        f"{where} has no {SAE_WEIGHTS_FILENAME}, only the pickled weights file {found!r}. Loading "
        "reads safetensors and JSON only, since unpickling can run arbitrary code. If you trust the "
        "file, pass allow_pickle=True (CLI: --allow-pickle), or re-save it with safetensors."
    )


def _local_files(directory: Path, allow_pickle: bool) -> SAEFiles:
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
            raise _refuse_pickle(str(directory), pickles[0].name)
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
            raise _refuse_pickle(where, name)
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
        return _local_files(directory, allow_pickle)
    return _hub_files(str(source), sae_id, revision, cache_dir, force_download, allow_pickle)


def _pickle_disk_loader(weights: Path) -> Any:
    def loader(path: str | Path, device: str, cfg_overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        cfg = get_sae_lens_config_from_disk(path, device, cfg_overrides)
        state = torch.load(weights, map_location=device, weights_only=True)  # allow_pickle=True was given
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{weights} does not hold a flat state dict of tensors.")
        return cfg, dict(state)

    return loader


def _check_architecture(files: SAEFiles) -> dict[str, Any]:
    cfg = json.loads(files.cfg.read_text())
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
) -> JacobianSAE:
    """Load a `JacobianSAE` from a Hub repo, the HF cache or a local directory.

    Positional arguments follow SAELens' `SAE.from_pretrained(release, sae_id, device, dtype,
    force_download)`; `dtype=None` keeps the saved dtype.
    """
    files = resolve_files(
        source, sae_id, revision=revision, cache_dir=cache_dir, force_download=force_download, allow_pickle=allow_pickle
    )
    _check_architecture(files)
    if files.cfg.parent != files.weights.parent:
        raise PretrainedNotFoundError(f"{files.cfg} and {files.weights} are not in one folder.")
    converter = sae_lens_disk_loader if files.weights.name == SAE_WEIGHTS_FILENAME else _pickle_disk_loader(files.weights)
    dtype_str = dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype
    sae = JacobianSAE.load_from_disk(
        files.cfg.parent, device=device, dtype=dtype_str, converter=converter, fold_W_dec_norm=fold_W_dec_norm
    )
    return sae


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


# ---- model card and push --------------------------------------------------------------------
class CardFacts(NamedTuple):
    """What a model card states about one pair, read from its folder."""

    model_name: str | None
    base_model: str | None
    input_hook: str
    output_hook: str
    layer: int | None
    d_in: int
    d_sae: int
    k: int
    jacobian_coefficient: float
    training_tokens: int | None


def _training_tokens(sae_dir: Path) -> int | None:
    for folder in (sae_dir, sae_dir.parent):
        runner = folder / "runner_cfg.json"
        if runner.is_file():
            tokens = json.loads(runner.read_text()).get("training_tokens")
            return int(tokens) if tokens is not None else None
    return None


def card_facts(sae_dir: str | Path) -> CardFacts:
    """Read the facts of a card from a pair's `cfg.json` (and `runner_cfg.json` when present)."""
    sae_dir = Path(sae_dir)
    files = _local_files(sae_dir, allow_pickle=True)
    cfg = _check_architecture(files)
    meta = cfg.get("metadata", {})
    lam = saved_jacobian_coefficient(cfg)
    model_name = meta.get("model_name")
    hook = meta.get("hook_name") or ""
    layer = meta.get("hook_layer")
    output_hook = resolve_output_hook(hook, cfg.get("output_hook_name"))
    return CardFacts(
        model_name, _hf_model_id(model_name), hook, output_hook or "", layer, cfg["d_in"], cfg["d_sae"], cfg["k"], float(lam), _training_tokens(sae_dir)
    )


def _hf_model_id(model_name: str | None) -> str | None:
    """The Hub id of a TransformerLens model name ("pythia-70m" -> "EleutherAI/pythia-70m")."""
    if not model_name:
        return None
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return get_official_model_name(model_name)
    except (ValueError, KeyError, ImportError):
        return model_name if "/" in model_name else None


EVAL_SUMMARY_FORMAT = "sae_lens_jsae.eval/"
"""`format` prefix of the summary JSON that `sae_lens_jsae.evals` writes (`{label}_summary.json`)."""


def _summary_headline(summary: Mapping[str, Any]) -> dict[str, float]:
    """The paper's headline numbers out of an evals summary JSON."""
    out: dict[str, float] = {}
    sparsity = summary.get("jacobian_sparsity") or {}
    for tau, count in zip(sparsity.get("thresholds", []), sparsity.get("mean_count_above", [])):
        out[f"jacobian_count_above_{tau:g}"] = count  # per token, out of k²
    picks = {
        "jacobian_l1_l2_ratio": ("jacobian_sparsity", "l1_l2_ratio"),
        "linear_fraction": ("linearity", "linear"),
        "jumprelu_fraction": ("linearity", "jumprelu"),
        "average_ce_loss_score": ("splice", "average_ce_loss_score"),
        **{f"{w}_ce_loss_score": ("splice", w, "ce_loss_score") for w in ("input", "output", "replacement")},
        **{f"{w}_{m}": ("core", w, m) for w in ("input", "output") for m in ("explained_variance", "l0")},
    }
    for name, path in picks.items():
        value: Any = summary
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return {k: float(v) for k, v in out.items()}


def headline_metrics(eval_json: str | Path | Mapping[str, Any], limit: int = 20) -> dict[str, float]:
    """Headline metrics of an eval JSON. For the summary `sae_lens_jsae.evals` writes: Jacobian
    counts per threshold, L1/L2 ratio, linearity, CE-loss scores, explained variance and L0.
    Otherwise the numeric leaves, as dotted keys, of its `headline` (or `metrics`) block if it
    has one, else of the whole file; at most `limit` of them."""
    data: Any = eval_json if isinstance(eval_json, Mapping) else json.loads(Path(eval_json).read_text())
    if isinstance(data, Mapping) and str(data.get("format", "")).startswith(EVAL_SUMMARY_FORMAT):
        return _summary_headline(data)
    block = data.get("headline", data.get("metrics", data)) if isinstance(data, Mapping) else data
    flat: dict[str, float] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            flat[key] = float(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))

    walk(block, "")
    return dict(list(flat.items())[:limit])


def model_card(sae_dir: str | Path, eval_json: str | Path | None = None, repo_id: str | None = None, sae_id: str | None = None) -> str:
    """README.md for a pushed pair: YAML front matter (`library_name: sae-lens`, tags, base
    model, hooks, d_sae, k, λ, training tokens, headline metrics) and how to load it.

    `eval_json` defaults to a `*summary.json` (from `jsae eval`) or `*eval*.json` file inside
    `sae_dir`, if there is one.
    """
    from huggingface_hub import ModelCardData

    facts = card_facts(sae_dir)
    if eval_json is None:  # an eval JSON saved beside the checkpoint counts too
        found = sorted(Path(sae_dir).glob("*summary.json")) + sorted(Path(sae_dir).glob("*eval*.json"))
        eval_json = found[0] if found else None
    metrics = headline_metrics(eval_json) if eval_json is not None else {}
    jsae: dict[str, Any] = {
        "model_name": facts.model_name,
        "layer": facts.layer,
        "input_hook_name": facts.input_hook,
        "output_hook_name": facts.output_hook,
        "d_in": facts.d_in,
        "d_sae": facts.d_sae,
        "k": facts.k,
        "jacobian_coefficient": facts.jacobian_coefficient,
        "training_tokens": facts.training_tokens,
    }
    if metrics:
        jsae["metrics"] = metrics
    data = ModelCardData(
        library_name="sae-lens",
        tags=["sae-lens", "jacobian-sae", "sparse-autoencoder", "interpretability"],
        base_model=facts.base_model,
        jsae=jsae,
    )
    repo = repo_id or "<org>/<repo>"
    sid = f', "{sae_id}"' if sae_id else ""
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in metrics.items())
    table = f"\n## Evaluation\n\n| metric | value |\n|---|---|\n{rows}\n" if metrics else ""
    return f"""---
{data.to_yaml()}
---

# Jacobian SAE pair: {facts.model_name or "model"} block {facts.layer} MLP

A Jacobian sparse autoencoder (Farnik et al., ICML 2025): a TopK SAE on `{facts.input_hook}`
(MLP input) and one on `{facts.output_hook}` (MLP output), trained so that the Jacobian between
their latents through the frozen MLP is sparse. d_sae = {facts.d_sae}, k = {facts.k},
λ = {facts.jacobian_coefficient:g}, training tokens = {facts.training_tokens if facts.training_tokens is not None else "unknown"}.
{table}
## Usage

```python
import sae_lens_jsae  # registers the "jacobian" SAELens architecture
from sae_lens import SAE

jsae = SAE.from_pretrained("{repo}"{sid})          # a sae_lens_jsae.JacobianSAE
# or: sae_lens_jsae.JacobianSAE.from_pretrained("{repo}"{sid})
```

Without `sae_lens_jsae`, export the two SAEs as plain SAELens TopK SAEs:
`jsae export-saelens DIR OUT`.
"""


class StagedUpload(NamedTuple):
    """A folder laid out exactly as it will be uploaded, and where."""

    folder: Path
    sae_id: str
    files: list[str]


def default_sae_id(sae_dir: str | Path) -> str:
    """`blocks.L.mlp` for a pair on block L's MLP (its input hook's block)."""
    hook = json.loads((Path(sae_dir) / SAE_CFG_FILENAME).read_text()).get("metadata", {}).get("hook_name", "")
    match = INPUT_HOOK_PATTERN.match(hook)
    return f"blocks.{match.group(1)}.mlp" if match else "jsae"


def stage_for_push(
    checkpoint_dir: str | Path, staging_dir: str | Path, repo_id: str, sae_id: str | None = None, eval_json: str | Path | None = None
) -> StagedUpload:
    """Copy the inference files into `staging_dir/<sae_id>/` and write `staging_dir/README.md`.

    The pair is loaded first (safetensors only), so a broken or pickled checkpoint fails here.
    """
    src = Path(checkpoint_dir)
    load_jsae(src)
    sae_id = (sae_id or default_sae_id(src)).strip("/")
    dest = Path(staging_dir) / sae_id
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in INFERENCE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
            copied.append(f"{sae_id}/{name}")
    (Path(staging_dir) / "README.md").write_text(model_card(src, eval_json, repo_id, sae_id))
    return StagedUpload(Path(staging_dir), sae_id, ["README.md", *copied])


def push_to_hub(
    checkpoint_dir: str | Path,
    repo_id: str,
    sae_id: str | None = None,
    *,
    private: bool = False,
    eval_json: str | Path | None = None,
    token: str | None = None,
) -> str:
    """Upload a pair's inference files and model card to `repo_id`; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        staged = stage_for_push(checkpoint_dir, tmp, repo_id, sae_id, eval_json)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=staged.folder, commit_message=f"Upload Jacobian SAE pair {staged.sae_id}"
        )
    return str(commit)


# ---- the authors' reference artifacts -------------------------------------------------------
class ReferenceArtifact(NamedTuple):
    """A reference (`jacobian_saes`, SAELens 4 fork) pair as read from disk: cfg and state dict."""

    cfg: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def read_reference(directory: str | Path, allow_pickle: bool = False) -> ReferenceArtifact:
    """Read `cfg.json` and the one weights file of a reference artifact folder, keys un-prefixed
    (`_W_enc` -> `W_enc`; keys already without the underscore are accepted too)."""
    directory = Path(directory)
    if not (directory / SAE_CFG_FILENAME).is_file():
        raise PretrainedNotFoundError(f"{directory} has no {SAE_CFG_FILENAME}; is it a reference artifact folder?")
    cfg = json.loads((directory / SAE_CFG_FILENAME).read_text())
    candidates = sorted(p for p in directory.glob("*.safetensors") if p.name != SPARSITY_FILENAME)
    if len(candidates) > 1:
        preferred = directory / SAE_WEIGHTS_FILENAME
        if preferred not in candidates:
            raise ValueError(f"{directory} has several weight files ({', '.join(p.name for p in candidates)}); keep one.")
        candidates = [preferred]
    if candidates:
        raw = load_file(candidates[0])
    else:
        pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickles:
            raise PretrainedNotFoundError(f"{directory} has no weights file (*.safetensors).")
        if not allow_pickle:
            raise _refuse_pickle(str(directory), pickles[0].name)
        raw = _pickle_disk_loader(pickles[0])(directory, "cpu", None)[1]
    state = {(key[1:] if key.startswith("_") else key): value for key, value in raw.items()}
    return ReferenceArtifact(cfg, state)


def _check_reference(ref: ReferenceArtifact, where: str) -> int:
    """Refuse anything that is not a TopK pair with a dense MLP copy; return k."""
    cfg, state = ref.cfg, ref.state_dict

    def refuse(reason: str) -> None:
        raise ValueError(f"Cannot convert {where}: {reason}. Only TopK Jacobian SAE pairs of the reference code convert.")

    activation = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    if activation != "topk":
        refuse(f"activation_fn_str is {activation!r}, not 'topk'")
    if cfg.get("architecture", "standard") != "standard":
        refuse(f"architecture is {cfg['architecture']!r} (the reference pairs are 'standard' + topk)")
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if not isinstance(k, int):
        refuse("activation_fn_kwargs has no integer 'k'")
    missing = [f"_{name}" for name in REFERENCE_SAE_KEYS if name not in state]
    missing += [f"_{name}_out" for name in REFERENCE_SAE_KEYS if f"{name}_out" not in state]
    if missing:
        kind = "a single SAE, not a pair" if "_W_enc_out" in missing and "_W_enc" not in missing else "incomplete"
        refuse(f"the state dict is {kind} (missing {', '.join(missing)})")
    missing_mlp = [f"mlp.{name}" for name in REFERENCE_MLP_KEYS if f"mlp.{name}" not in state]
    if missing_mlp:
        refuse(f"the state dict has no frozen MLP copy (missing {', '.join(missing_mlp)})")
    if "mlp.W_gate" in state:
        refuse("the MLP copy is gated; the reference code only trained on dense MLPs")
    if cfg.get("normalize_activations", "none") not in (None, "none"):
        refuse(f"normalize_activations={cfg['normalize_activations']!r} (a Jacobian SAE reads unscaled activations)")
    if cfg.get("finetuning_scaling_factor") or "finetuning_scaling_factor" in state:
        refuse("it has a finetuning scaling factor")
    hook = cfg.get("hook_name", cfg.get("hook_point"))
    if not INPUT_HOOK_PATTERN.match(hook or ""):
        refuse(f"hook_name {hook!r} is not an MLP input hook 'blocks.L.ln2.hook_normalized'")
    return k  # type: ignore[return-value]


def convert_reference(
    directory: str | Path,
    out_dir: str | Path | None = None,
    *,
    mlp_act_fn: str | None = None,
    ln2_weight: torch.Tensor | None = None,
    ln2_bias: torch.Tensor | None = None,
    model: Any = None,
    allow_pickle: bool = False,
) -> JacobianSAE:
    """Convert an authors' reference artifact folder into a `JacobianSAE` (saved to `out_dir`).

    The MLP copy (`mlp.W_in, b_in, W_out, b_out`, TransformerLens names, unfolded) is mapped AS
    GIVEN, so the converted pair computes exactly what the reference computed: it fed
    `ln2.hook_normalized` into that copy. Our FrozenMLP is meant to hold ln2's affine folded in
    (so that f(hook_normalized) == hook_mlp_out in today's TransformerLens); when the artifact's
    model had a non-trivial ln2 affine, pass that block's `ln2_weight` (and `ln2_bias` for
    LayerNorm) to fold them in here instead, or the unprocessed HookedTransformer as `model`
    (its block's ln2 is used). `mlp_act_fn` defaults to the cfg's `act_fn`/`mlp_act_fn` if present, else "gelu" (Pythia).
    """
    ref = read_reference(directory, allow_pickle)
    k = _check_reference(ref, str(directory))
    cfg, state = ref.cfg, ref.state_dict
    hook = cfg.get("hook_name", cfg.get("hook_point"))
    layer = int(INPUT_HOOK_PATTERN.match(hook).group(1))  # type: ignore[union-attr]
    if cfg.get("hook_layer", layer) != layer:
        raise ValueError(f"Cannot convert {directory}: hook_layer={cfg['hook_layer']} but hook_name is {hook!r}.")
    W_in, b_in = state["mlp.W_in"], state["mlp.b_in"]
    if model is not None:
        ln2 = model.blocks[layer].ln2
        ln2_weight, ln2_bias = getattr(ln2, "w", None), getattr(ln2, "b", None)
        ln2_weight = torch.ones(W_in.shape[0]) if ln2_weight is None else ln2_weight.detach()
        ln2_bias = None if ln2_bias is None else ln2_bias.detach()
    if ln2_weight is not None or ln2_bias is not None:
        w = torch.ones(W_in.shape[0], dtype=W_in.dtype) if ln2_weight is None else ln2_weight.to(W_in.dtype)
        b = torch.zeros(W_in.shape[0], dtype=W_in.dtype) if ln2_bias is None else ln2_bias.to(W_in.dtype)
        W_in, b_in = w[:, None] * W_in, b_in + b @ W_in
    act_fn = mlp_act_fn or cfg.get("mlp_act_fn") or cfg.get("act_fn") or "gelu"
    lam = cfg.get("jacobian_coefficient")
    metadata = SAEMetadata(
        model_name=cfg.get("model_name"),
        hook_name=hook,
        hook_layer=layer,
        context_size=cfg.get("context_size"),
        dataset_path=cfg.get("dataset_path"),
        prepend_bos=cfg.get("prepend_bos", True),
        training_architecture=ARCHITECTURE,
        training_architecture_details={
            "jacobian_coefficient": lam,
            "output_mse_coefficient": cfg.get("mlp_out_mse_coefficient", 1.0),
        },
        converted_from="jacobian_saes reference artifact",
    )
    sae_cfg = JacobianSAEConfig(
        d_in=int(cfg.get("d_in", state["W_enc"].shape[0])),
        d_sae=int(cfg.get("d_sae", state["W_enc"].shape[1])),
        k=k,
        dtype=dtype_name(state["W_enc"].dtype),
        device="cpu",
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
        d_mlp=W_in.shape[1],
        mlp_act_fn=act_fn,
        gated_mlp=False,
        metadata=metadata,
    )
    sae_cfg.output_hook_name = sae_cfg.resolved_output_hook_name(hook)
    sae = JacobianSAE(sae_cfg)
    mlp = FrozenMLP(W_in.shape[0], W_in.shape[1], act_fn, False, W_in.dtype)
    with torch.no_grad():
        for name, value in (("W_in", W_in), ("b_in", b_in), ("W_out", state["mlp.W_out"]), ("b_out", state["mlp.b_out"])):
            getattr(mlp, name).copy_(value)
    sae.attach_mlp(mlp)
    ours = {name: state[name] for name in REFERENCE_SAE_KEYS} | {f"{n}_out": state[f"{n}_out"] for n in REFERENCE_SAE_KEYS}
    sae.load_state_dict({**ours, **{f"mlp.{n}": getattr(mlp, n) for n in REFERENCE_MLP_KEYS}})
    if out_dir is not None:
        sae.save_model(out_dir)
        sparsity = Path(directory) / SPARSITY_FILENAME
        if sparsity.is_file():
            shutil.copyfile(sparsity, Path(out_dir) / SPARSITY_FILENAME)
    return sae
