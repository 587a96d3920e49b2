"""YAML run configs: `runner:` (SAELens' LanguageModelSAERunnerConfig), `sae:`
(JacobianTrainingSAEConfig, or a transcoder's training config when `sae.architecture` is
"topk_transcoder" / "topk_skip_transcoder") and top-level `RunOptions` fields. Every default lives in those
dataclasses; a YAML file and `--set` only override."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml
from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

from sae_lens_jsae.sae import JacobianTrainingSAEConfig
from sae_lens_jsae.training import RunOptions, training_config_class

SECTIONS = {"sae": JacobianTrainingSAEConfig, "runner": LanguageModelSAERunnerConfig}


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads `5e-4` as a string; read such scientific notation as a float."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, str) and _FLOAT.match(value):
        return float(value)
    return value


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply `key=value` (dotted key, YAML value) to a config tree, refusing unknown keys."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    check_key(parts)
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(raw)


def check_key(parts: list[str]) -> None:
    """Raise a ValueError naming the valid keys when `parts` is not a config key."""
    top = _field_names(RunOptions) | set(SECTIONS)
    if parts[0] not in top:
        raise ValueError(f"Unknown config key {'.'.join(parts)!r}; top-level keys are {sorted(top)}.")
    if parts[0] in SECTIONS:
        if len(parts) < 2:
            raise ValueError(f"{parts[0]!r} is a section; set one of its fields, e.g. {parts[0]}.<field>=...")
        cls = LoggingConfig if parts[1] == "logger" and parts[0] == "runner" and len(parts) > 2 else SECTIONS[parts[0]]
        name = parts[2] if cls is LoggingConfig else parts[1]
        if parts[0] == "sae" and name == "architecture":
            return  # picks the config class; its value is checked in build_run_config
        if name not in _field_names(cls) and not (parts[0] == "sae" and _is_transcoder_field(name)):
            raise ValueError(f"Unknown config key {'.'.join(parts)!r}; {cls.__name__} fields are {sorted(_field_names(cls))}.")


def _is_transcoder_field(name: str) -> bool:
    from sae_lens_jsae.transcoder import TRANSCODER_CLASSES

    return any(name in _field_names(classes[3]) for classes in TRANSCODER_CLASSES.values())


def _check_tree(tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{key!r} must be a mapping of fields")
            for sub, subvalue in value.items():
                if sub == "logger" and key == "runner" and isinstance(subvalue, dict):
                    for name in subvalue:
                        check_key([key, sub, name])
                else:
                    check_key([key, sub])
        else:
            check_key([key])


def _drop_unset_pair_keys(sae_tree: dict[str, Any], cls: type) -> dict[str, Any]:
    """A pair config's `sae:` section with `architecture` switched to a transcoder (e.g.
    `--set sae.architecture=topk_transcoder` on configs/*.yaml): drop the pair-only keys left at
    null or at their `JacobianTrainingSAEConfig` default (`jacobian_coefficient: null`), which say
    nothing to a transcoder; a pair-only key set to anything else stays, and is refused by name."""
    pair_only = {f.name: f for f in fields(JacobianTrainingSAEConfig) if f.name not in _field_names(cls)}

    def unset(name: str, value: Any) -> bool:
        if name not in pair_only:
            return False
        f = pair_only[name]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        return value is None or (default is not MISSING and value == default)

    return {name: value for name, value in sae_tree.items() if not unset(name, value)}


def build_run_config(tree: dict[str, Any]) -> tuple[LanguageModelSAERunnerConfig[JacobianTrainingSAEConfig], RunOptions]:
    """Turn a config tree into SAELens' runner config (with a Jacobian SAE) and our options."""
    _check_tree(tree)
    tree = _numbers(tree)
    runner = dict(tree.get("runner", {}))
    if isinstance(runner.get("logger"), dict):
        runner["logger"] = LoggingConfig(**runner["logger"])
    sae_tree = dict(tree.get("sae", {}))
    architecture = sae_tree.pop("architecture", "jacobian")
    cls = training_config_class(architecture)
    if cls is not JacobianTrainingSAEConfig:
        sae_tree = _drop_unset_pair_keys(sae_tree, cls)
    unknown = sorted(set(sae_tree) - _field_names(cls))
    if unknown:
        raise ValueError(f"sae.{unknown[0]} is not a field of {cls.__name__} (sae.architecture={architecture!r}); its fields are {sorted(_field_names(cls))}.")
    sae = cls(**sae_tree)
    options = RunOptions(**{k: v for k, v in tree.items() if k not in SECTIONS})
    return LanguageModelSAERunnerConfig(sae=sae, **runner), options


def load_run_config(path: str | Path, overrides: list[str] = ()) -> tuple[LanguageModelSAERunnerConfig[JacobianTrainingSAEConfig], RunOptions]:  # type: ignore[assignment]
    """Read a YAML run config, apply `key=value` overrides, validate and build it."""
    tree = yaml.safe_load(Path(path).read_text()) or {}
    for assignment in overrides:
        apply_override(tree, assignment)
    return build_run_config(tree)
