"""Field types of an SAE config read from JSON or YAML: one line naming the file and the field.

A leaf (no imports of this package), so both sides can use it: the loaders (`pretrained.py`,
`hub.py`, `config.py`) check a cfg.json or a YAML `sae:` section before any config class sees it,
and the pair's configs check themselves in `__post_init__` (`sae.py`), so SAELens' own
`SAE.load_from_disk` / `SAE.from_pretrained` give the same error as `jsae` instead of a
`TypeError` from deep inside the config's validation.
"""

from __future__ import annotations

import numbers
import sys
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

CFG_FILENAME = "cfg.json"
"""SAELens' `SAE_CFG_FILENAME` (not imported: this module must not import SAELens)."""

_ACCEPTS: dict[type, type | tuple[type, ...]] = {int: numbers.Integral, float: numbers.Real}
"""What a Python value may be for an annotation: numpy's integers for int, any real for float."""


def _json_types(annotation: Any) -> tuple[type, ...] | None:
    """The JSON value types a config annotation accepts; None when not a simple scalar type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [_json_types(a) for a in typing.get_args(annotation)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)  # type: ignore[union-attr]
    if typing.get_origin(annotation) is Literal:
        return tuple({type(a) for a in typing.get_args(annotation)})
    return {int: (int,), float: (int, float), bool: (bool,), str: (str,), type(None): (type(None),)}.get(annotation)


@cache
def field_hints(classes: tuple[type, ...]) -> dict[str, Any]:
    """The type hints of the config classes' fields (later classes win), cached per tuple."""
    hints: dict[str, Any] = {}
    for cls in classes:
        hints.update(typing.get_type_hints(cls))
    return hints


def _accepted(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in allowed:  # JSON true is not a number here
        return False
    return isinstance(value, tuple(_ACCEPTS.get(t, t) for t in allowed))  # type: ignore[arg-type]


def check_field_types(
    cfg: Mapping[str, Any], classes: tuple[type, ...], where: str | Path | Callable[[], str], key_prefix: str = ""
) -> None:
    """A one-line ValueError naming `where` and the field when a scalar field of `cfg` has the
    wrong type for the config `classes` (`"k": "32"`). `where` may be a callable, called only to
    word an error. `key_prefix` names where the fields sit in `where` (`"sae."` in a YAML run
    config). Fields the classes do not declare, and non-scalar ones (metadata), are left to the
    config classes."""
    hints = field_hints(tuple(classes))
    for key, value in cfg.items():
        allowed = _json_types(hints.get(key))
        if allowed is None or _accepted(value, allowed):
            continue
        names = " or ".join(dict.fromkeys("null" if t is type(None) else t.__name__ for t in allowed))
        found = "null" if value is None else type(value).__name__
        if callable(where):
            where = where()
        raise ValueError(f"{where}: {key_prefix + key!r} must be {names}, not {value!r} ({found}).")


def saelens_cfg_source() -> str | None:
    """The config file SAELens is building a config from right now, found on the call stack:
    `<path>/cfg.json` inside `SAE.load_from_disk(path)`, or the release and sae_id inside
    `SAE.from_pretrained`; None outside SAELens' loaders.

    Why the stack: SAELens hands the config class only the dict (`from_dict(cfg_dict)`), not
    where it came from, and the error should name the file. Read-only; nothing is kept."""
    frame = sys._getframe(1)
    try:
        while frame is not None:
            if frame.f_globals.get("__name__", "").startswith("sae_lens."):
                name, local = frame.f_code.co_name, frame.f_locals
                if name == "load_from_disk" and local.get("path") is not None:
                    return str(Path(local["path"]) / CFG_FILENAME)
                if name == "from_pretrained_with_cfg_and_sparsity" and "release" in local:
                    return f"{CFG_FILENAME} of SAELens release {local['release']!r}, sae_id {local.get('sae_id')!r}"
            frame = frame.f_back  # type: ignore[assignment]
        return None
    finally:
        del frame
