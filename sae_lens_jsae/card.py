"""Model cards and `jsae push`: stage a pair's inference files with a card, upload them."""

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

from sae_lens_jsae.hub import (
    INFERENCE_FILES,
    check_architecture,
    check_safetensors,
    load_jsae,
    local_files,
)
from sae_lens_jsae.sae import (
    INPUT_HOOK_PATTERN,
    resolve_output_hook,
    saved_jacobian_coefficient,
)


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
    mlp_sha256: str | None


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
    files = local_files(sae_dir, allow_pickle=True)
    cfg = check_architecture(files)
    meta = cfg.get("metadata", {})
    lam = saved_jacobian_coefficient(cfg)
    model_name = meta.get("model_name")
    hook = meta.get("hook_name") or ""
    layer = meta.get("hook_layer")
    output_hook = resolve_output_hook(hook, cfg.get("output_hook_name"))
    return CardFacts(
        model_name, _hf_model_id(model_name), hook, output_hook or "", layer, cfg["d_in"], cfg["d_sae"], cfg["k"], float(lam),
        _training_tokens(sae_dir), cfg.get("mlp_sha256"),
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
        "mlp_sha256": facts.mlp_sha256,
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
# or: sae_lens_jsae.JacobianSAE.from_pretrained("{repo}"{sid}, model=model)
```

This repo holds SAE weights only, no LLM weights. The Jacobian needs the frozen MLP of block
{facts.layer} of {facts.model_name or "the model"}: pass `model=` (a TransformerLens `HookedTransformer`
of it) or call `jsae.attach_mlp_from_model(model)`. Its weights must match `mlp_sha256` in
`cfg.json` (another model or a randomized one is refused).

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
    No LLM weights are staged: a local `mlp.safetensors` stays behind, and weights saved with the
    MLP inside (older files) are re-saved without it, cfg.json then gaining its `mlp_sha256`.
    """
    src = Path(checkpoint_dir)
    sae = load_jsae(src)
    sae_id = (sae_id or default_sae_id(src)).strip("/")
    dest = Path(staging_dir) / sae_id
    dest.mkdir(parents=True, exist_ok=True)
    carries_mlp = any(key.startswith("mlp.") for key in check_safetensors(src / SAE_WEIGHTS_FILENAME))
    if carries_mlp:
        sae.save_model(dest)  # SAE weights only (the MLP is not in a pair's state dict)
    copied = []
    for name in INFERENCE_FILES:
        if carries_mlp and name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
            copied.append(f"{sae_id}/{name}")
        elif (src / name).is_file():
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
