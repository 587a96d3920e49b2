"""Every private SAELens name this package relies on, in one place.

SAELens has no public API for these; a SAELens release may rename or change any of them, so
`pyproject.toml` pins SAELens to the range tested (`TESTED_SAELENS_VERSIONS`; the commands are in
docs/development.md, "SAELens versions"), and importing this module checks that each name below
still exists with the parameters we pass: a SAELens without one raises `SAELensPrivateAPIError`,
one line naming the installed SAELens version and every missing or changed name, instead of an
AttributeError in the middle of a training run. tests/test_saelens_coupling.py runs the same check.
What each is for:

Called (the functions below; call sites use them, not the private names):
- `ActivationsStore._iterate_filtered_activations()`: LLM activation batches with SAELens' epoch
  and special-token handling, as the stream `training.ResumableActivationStream` shuffles itself
  (SAELens' `mixing_buffer` generator cannot be checkpointed).
- `LanguageModelSAETrainingRunner._set_sae_metadata()`: the SAE's metadata from the runner config
  (our runner extends it for transcoders and calls it before training a sweep).
- `SAETrainer._checkpoint_if_needed()`, `SAETrainer._log_train_step(output)`,
  `SAETrainer._train_step(sae, sae_in)`: SAELens' own behaviour, called from our overrides.

Overridden (SAELens calls these on our subclasses; `OVERRIDDEN` lists them):
- `SAETrainer._checkpoint_if_needed`: a stop request (SIGINT/SIGTERM) saves a checkpoint there.
- `SAETrainer._is_logging_step`: logging every `log_every_n_steps`.
- `SAETrainer._log_train_step`: W&B only when enabled; under torchrun, rank-averaged losses.
- `SAETrainer._train_step`: under torchrun, each rank's slice of the batch through DDP.
- `SAETrainer._update_pbar`, `MultiSAETrainer._update_pbar`: a bar that moves every step.
- `LanguageModelSAETrainingRunner._set_sae_metadata`: a transcoder's output hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

TESTED_SAELENS_VERSIONS = ("6.54.0", "6.54.12")
"""SAELens releases the test suite passed with: the oldest and the newest the `sae-lens` pin in
pyproject.toml admits (6.54.12 was the newest on the package index when tested; before 6.54.0,
`SAE.load_from_disk` has no `fold_W_dec_norm`, and before 6.44.0 there is no `MultiSAETrainer`)."""

SAELENS_REQUIREMENT = "sae-lens>=6.54,<6.55"
"""The pin in pyproject.toml (a test keeps the two equal)."""


class SAELensPrivateAPIError(ImportError):
    """The installed SAELens lacks (or changed) a private name this package relies on."""


def _saelens_version() -> str:
    try:
        return version("sae-lens")
    except PackageNotFoundError:  # a source checkout on sys.path
        import sae_lens

        return str(getattr(sae_lens, "__version__", "unknown"))


def _incompatible(problems: list[str]) -> SAELensPrivateAPIError:
    tested = ", ".join(TESTED_SAELENS_VERSIONS)
    return SAELensPrivateAPIError(
        f"sae-lens-jsae does not work with SAELens {_saelens_version()}: {'; '.join(problems)}. "
        f"It relies on these private SAELens names (sae_lens_jsae/saelens_private.py); tested with SAELens {tested}: "
        f"pip install '{SAELENS_REQUIREMENT}'"
    )


try:
    from sae_lens.training.activations_store import ActivationsStore
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer
    from sae_lens.training.sae_trainer import SAETrainer
except ImportError as _err:  # a module moved or a class was renamed
    raise _incompatible([f"cannot import {_err.name}" if _err.name else str(_err)]) from _err


def _runner_class() -> type:
    from sae_lens import LanguageModelSAETrainingRunner

    return LanguageModelSAETrainingRunner


def iterate_filtered_activations(store: ActivationsStore) -> Iterator[torch.Tensor]:
    """SAELens' stream of LLM activation batches (epochs, special tokens removed), unshuffled."""
    return store._iterate_filtered_activations()


def set_sae_metadata(runner: Any) -> None:
    """SAELens' `_set_sae_metadata` on `runner` (a `LanguageModelSAETrainingRunner`)."""
    _runner_class()._set_sae_metadata(runner)


def checkpoint_if_needed(trainer: SAETrainer[Any, Any]) -> None:
    """SAELens' scheduled checkpoint after a step."""
    SAETrainer._checkpoint_if_needed(trainer)


def log_train_step(trainer: SAETrainer[Any, Any], output: Any) -> None:
    """SAELens' W&B logging of one step."""
    SAETrainer._log_train_step(trainer, output)


def train_step(trainer: SAETrainer[Any, Any], sae: Any, sae_in: torch.Tensor) -> Any:
    """SAELens' forward, backward and optimizer step on one batch."""
    return SAETrainer._train_step(trainer, sae, sae_in)


OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "SAETrainer": ("_checkpoint_if_needed", "_is_logging_step", "_log_train_step", "_train_step", "_update_pbar"),
    "MultiSAETrainer": ("_update_pbar",),
    "LanguageModelSAETrainingRunner": ("_set_sae_metadata",),
}
"""SAELens methods our subclasses override, by SAELens class."""

CALLED: dict[str, dict[str, tuple[str, ...]]] = {
    "ActivationsStore": {"_iterate_filtered_activations": ("self",)},
    "LanguageModelSAETrainingRunner": {"_set_sae_metadata": ("self",)},
    "SAETrainer": {
        "_checkpoint_if_needed": ("self",),
        "_log_train_step": ("self", "step_output"),
        "_train_step": ("self", "sae", "sae_in"),
        "_update_pbar": ("self", "step_output", "pbar", "update_interval"),
        "_is_logging_step": ("self",),
    },
    "MultiSAETrainer": {"_update_pbar": ("self", "step_outputs", "pbar", "update_interval")},
}
"""The parameters (names, in order) we rely on for each private method, by SAELens class."""


def missing_private_api() -> list[str]:
    """Private SAELens methods we use or override that the installed SAELens lacks or whose
    parameters changed (empty when all match)."""
    classes = {
        "ActivationsStore": ActivationsStore,
        "SAETrainer": SAETrainer,
        "MultiSAETrainer": MultiSAETrainer,
        "LanguageModelSAETrainingRunner": _runner_class(),
    }
    problems: list[str] = []
    for cls_name, methods in CALLED.items():
        for method, params in methods.items():
            fn = getattr(classes[cls_name], method, None)
            if fn is None:
                problems.append(f"{cls_name}.{method}: missing")
            elif tuple(inspect.signature(fn).parameters) != params:
                problems.append(f"{cls_name}.{method}{inspect.signature(fn)}: expected parameters {params}")
    for cls_name, methods in OVERRIDDEN.items():
        problems += [
            f"{cls_name}.{m}: missing (our override would never be called)"
            for m in methods
            if not hasattr(classes[cls_name], m) and f"{cls_name}.{m}: missing" not in problems
        ]
    return problems



def check_private_api() -> None:
    """Raise `SAELensPrivateAPIError` (one message: the SAELens version and each missing or
    changed name) unless the installed SAELens has every private name listed here."""
    problems = missing_private_api()
    if problems:
        raise _incompatible(problems)


check_private_api()
