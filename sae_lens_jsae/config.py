"""YAML run configs: `runner:` (SAELens' LanguageModelSAERunnerConfig), `sae:`
(JacobianTrainingSAEConfig, or a transcoder's training config when `sae.architecture` is
"topk_transcoder" / "topk_skip_transcoder") and top-level `RunOptions` fields. Every default lives in those
dataclasses; a YAML file and `--set` only override."""

from __future__ import annotations

import difflib
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
    check_key(parts, source=f"--set {assignment}")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(raw)


def check_key(parts: list[str], source: str | None = None) -> None:
    """Raise a ValueError naming `source` (the YAML file or the `--set`) and the closest valid key
    when `parts` is not a config key."""
    top = _field_names(RunOptions) | set(SECTIONS)
    if parts[0] not in top:
        raise _unknown_key(parts, sorted(top), "top-level keys", source)
    if parts[0] in SECTIONS:
        if len(parts) < 2:
            raise ValueError(f"{_at(source)}{parts[0]!r} is a section; set one of its fields, e.g. {parts[0]}.<field>=...")
        cls = LoggingConfig if parts[1] == "logger" and parts[0] == "runner" and len(parts) > 2 else SECTIONS[parts[0]]
        name = parts[2] if cls is LoggingConfig else parts[1]
        if parts[0] == "sae" and name == "architecture":
            return  # picks the config class; its value is checked in build_run_config
        if name not in _field_names(cls) and not (parts[0] == "sae" and _is_transcoder_field(name)):
            prefix = "runner.logger." if cls is LoggingConfig else f"{parts[0]}."
            names = _field_names(cls) | (_transcoder_fields() if parts[0] == "sae" else set())
            raise _unknown_key(parts, [prefix + n for n in sorted(names)], f"{cls.__name__} fields", source)


def _at(source: str | None) -> str:
    return f"{source}: " if source else ""


def all_keys() -> list[str]:
    """Every dotted key a run config accepts (top-level options, runner.*, runner.logger.*, sae.*)."""
    keys = set(_field_names(RunOptions))
    keys |= {f"runner.{n}" for n in _field_names(LanguageModelSAERunnerConfig)}
    keys |= {f"runner.logger.{n}" for n in _field_names(LoggingConfig)}
    keys |= {f"sae.{n}" for n in _field_names(JacobianTrainingSAEConfig) | _transcoder_fields() | {"architecture"}}
    return sorted(keys)


def closest_key(key: str, candidates: list[str]) -> str | None:
    """The valid key a mistyped `key` most likely meant: a close spelling among `candidates` (its
    own section's keys), else the same field name in another section (`sae.lr` -> `runner.lr`),
    else a close spelling among all keys."""
    name = key.rsplit(".", 1)[-1]
    by_name = {c.rsplit(".", 1)[-1]: c for c in candidates}
    close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.6)
    if close:
        return by_name[close[0]]
    everywhere = all_keys()
    same_name = [k for k in everywhere if k.rsplit(".", 1)[-1] == name and k != key]
    if same_name:
        return same_name[0]
    close = difflib.get_close_matches(key, everywhere, n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown_key(parts: list[str], candidates: list[str], what: str, source: str | None) -> ValueError:
    key = ".".join(parts)
    guess = closest_key(key, candidates)
    hint = f"did you mean {guess!r}?" if guess else f"{what} are {candidates}"
    return ValueError(f"{_at(source)}Unknown config key {key!r}; {hint}")


def _transcoder_fields() -> set[str]:
    from sae_lens_jsae.transcoder import TRANSCODER_CLASSES

    return {name for classes in TRANSCODER_CLASSES.values() for name in _field_names(classes[3])}


def _is_transcoder_field(name: str) -> bool:
    return name in _transcoder_fields()


def _check_tree(tree: Any, source: str | None = None) -> None:
    if not isinstance(tree, dict):
        raise ValueError(f"{_at(source)}a run config is a mapping (runner:, sae: and top-level options), not a {type(tree).__name__}")
    for key, value in tree.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{_at(source)}{key!r} must be a mapping of fields")
            for sub, subvalue in value.items():
                if sub == "logger" and key == "runner" and isinstance(subvalue, dict):
                    for name in subvalue:
                        check_key([key, sub, name], source)
                else:
                    check_key([key, sub], source)
        else:
            check_key([str(key)], source)


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


def build_run_config(tree: dict[str, Any], source: str | None = None) -> tuple[LanguageModelSAERunnerConfig[JacobianTrainingSAEConfig], RunOptions]:
    """Turn a config tree into SAELens' runner config (with a Jacobian SAE) and our options.
    `source` (the YAML file) starts every error message."""
    from sae_lens_jsae.hub import check_cfg_types

    _check_tree(tree, source)
    tree = _numbers(tree)
    runner = dict(tree.get("runner", {}))
    if isinstance(runner.get("logger"), dict):
        runner["logger"] = LoggingConfig(**runner["logger"])
    sae_tree = dict(tree.get("sae", {}))
    architecture = sae_tree.pop("architecture", "jacobian")
    try:
        cls = training_config_class(architecture)
    except ValueError as e:
        raise ValueError(f"{_at(source)}sae.{e}") from None
    if cls is not JacobianTrainingSAEConfig:
        sae_tree = _drop_unset_pair_keys(sae_tree, cls)
    unknown = sorted(set(sae_tree) - _field_names(cls))
    if unknown:
        raise ValueError(f"{_at(source)}sae.{unknown[0]} is not a field of {cls.__name__} (sae.architecture={architecture!r}); its fields are {sorted(_field_names(cls))}.")
    check_cfg_types(sae_tree, source or "run config", key_prefix="sae.")
    sae = cls(**sae_tree)
    options = RunOptions(**{k: v for k, v in tree.items() if k not in SECTIONS})
    return LanguageModelSAERunnerConfig(sae=sae, **runner), options


def load_run_config(path: str | Path, overrides: list[str] = ()) -> tuple[LanguageModelSAERunnerConfig[JacobianTrainingSAEConfig], RunOptions]:  # type: ignore[assignment]
    """Read a YAML run config, apply `key=value` overrides, validate and build it. Errors name
    the file (or the `--set` they come from)."""
    tree = yaml.safe_load(Path(path).read_text()) or {}
    _check_tree(tree, str(path))  # the file's own keys, before the overrides
    for assignment in overrides:
        apply_override(tree, assignment)
    return build_run_config(tree, f"{path} with --set {' '.join(overrides)}" if overrides else str(path))
