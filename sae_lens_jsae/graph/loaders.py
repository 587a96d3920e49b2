"""What the `jsae graph` / `jsae eval` commands load: saved pairs and transcoders with their
language model (files and layer checked before any weights load), and corpus prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def pair_layer_and_model(source: str | Path) -> tuple[int, str | None]:
    """(block index, model name) from a local pair's cfg.json, without loading weights."""
    from sae_lens_jsae.hub import read_pair_cfg
    from sae_lens_jsae.sae import layer_of_input_hook

    cfg_path = Path(source) / "cfg.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{source} is not a JSAE folder (no cfg.json): pass the folder `jsae train` wrote (cfg.json + sae_weights.safetensors).")
    cfg = read_pair_cfg(cfg_path)
    return layer_of_input_hook((cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")), (cfg.get("metadata") or {}).get("model_name")


def load_pair_and_model(sources: list[str], model_source: str, model_name: str | None, device: str = "cpu") -> tuple[list[Any], Any]:
    """Load JSAE pairs (local folders) and their model; the pairs' files and the layer are
    checked first, then each pair's MLP comes from its `mlp.safetensors` or the model."""
    from sae_lens_jsae.hub import check_pair_files, load_jsae
    from sae_lens_jsae.sources import check_layer, load_hooked_model

    for source in sources:
        check_pair_files(source)
    layer, saved_name = pair_layer_and_model(sources[0])
    name = model_name or saved_name
    if name is None:
        raise ValueError(f"{sources[0]}/cfg.json names no model (metadata.model_name): pass --model-name.")
    check_layer(model_source, name, layer)
    model = load_hooked_model(model_source, name, device=device)
    return [load_jsae(s, device=device, model=model) for s in sources], model


def _folder_layer_and_model(source: str | Path) -> tuple[int, str | None]:
    """`pair_layer_and_model` for a pair or one of our transcoders (checked: files, then cfg)."""
    from sae_lens_jsae.latents import is_transcoder_folder
    from sae_lens_jsae.sae import layer_of_input_hook

    if not is_transcoder_folder(source):
        from sae_lens_jsae.hub import check_pair_files

        check_pair_files(source)
        return pair_layer_and_model(source)
    metadata = json.loads((Path(source) / "cfg.json").read_text()).get("metadata") or {}
    return layer_of_input_hook(metadata.get("hook_name")), metadata.get("model_name")


def load_models(sources: dict[str, str], upstream: str | None, model_source: str, model_name: str | None,
                device: str = "cpu") -> tuple[dict[str, Any], Any, Any]:
    """Load several saved models of one MLP — JSAE pairs and transcoders, by name — plus the
    upstream pair that transcoders are drawn against, and the language model: ({name: model},
    upstream or None, model). Every folder's files and layer are checked before any weights load;
    `upstream` may be one of `sources`' paths (then it is loaded once)."""
    from sae_lens import SAE

    from sae_lens_jsae.hub import load_jsae
    from sae_lens_jsae.latents import is_transcoder_folder
    from sae_lens_jsae.sources import check_layer, load_hooked_model

    folders = list(sources.values()) + ([upstream] if upstream else [])
    found = {str(f): _folder_layer_and_model(f) for f in folders}
    layers = {layer for layer, _ in found.values()}
    if len(layers) != 1:
        raise ValueError(f"the models read different layers ({', '.join(f'{f}: {v[0]}' for f, v in found.items())}): graphs side by side need one MLP.")
    if upstream and is_transcoder_folder(upstream):
        raise ValueError(f"--upstream {upstream} is a transcoder: pass a JSAE pair (its input SAE gives the upstream latents).")
    name = model_name or next((m for _, m in found.values() if m), None)
    if name is None:
        raise ValueError(f"{folders[0]}/cfg.json names no model (metadata.model_name): pass --model-name.")
    check_layer(model_source, name, layers.pop())
    model = load_hooked_model(model_source, name, device=device)
    loaded: dict[str, Any] = {}

    def load(folder: str) -> Any:
        if folder not in loaded:
            loaded[folder] = SAE.load_from_disk(folder, device=device) if is_transcoder_folder(folder) else load_jsae(folder, device=device, model=model)
        return loaded[folder]

    models = {label: load(str(folder)) for label, folder in sources.items()}
    return models, (load(str(upstream)) if upstream else None), model


def sotu_prompts(n: int = 3, min_words: int = 12, max_words: int = 35) -> list[str]:
    """`n` sentences of the sotu eval split (the first ones of 12–35 words, in file order)."""
    from sae_lens_jsae.sources import sotu_split_files

    out: list[str] = []
    for f in sotu_split_files("eval"):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(f.read_text(encoding="utf-8").split())):
            if min_words <= len(sentence.split()) <= max_words:
                out.append(sentence)
                if len(out) == n:
                    return out
    return out
