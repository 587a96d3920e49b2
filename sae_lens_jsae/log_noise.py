"""SAELens warnings that are false for this package's runs, silenced only where they are false.

`known_false_warnings` is a scope: Python's warning filters (`warnings.catch_warnings`) and the
`sae_lens` logger's filters are restored on exit, so nothing outside the run changes. Each
message is matched exactly (with the run's own numbers and names), so the same warning in any
situation where it could be true still shows.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_SAELENS_LOGGER = "sae_lens"


class _DropMessages(logging.Filter):
    def __init__(self, messages: set[str]):
        super().__init__()
        self.messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages


def _override_message(kind: str, name: str) -> str:
    # llm_sae_training_runner.LanguageModelSAETrainingRunner.__init__ (SAELens 6.54)
    return (f"You just passed in a {kind} which will override the one specified in your configuration: {name}. "
            "As a consequence this run will not be reproducible via configuration alone.")


@contextmanager
def known_false_warnings(cfg: Any = None, *, dataset_rows: int | None = None, model_loaded_here: bool = False) -> Iterator[None]:
    """Silence, inside the scope, the SAELens warnings that say nothing a user should act on.

    `cfg` (the runner config) and `dataset_rows` (rows of the pretokenised dataset the runner
    passes) make the size and override checks exact; `model_loaded_here`: this package loaded
    the LLM itself (`sources.load_hooked_model`: `cfg.model_name`, without weight processing),
    not the caller.
    """
    dropped: set[str] = set()
    if cfg is not None and not cfg.dataset_path:
        # False: the config names no dataset (`dataset_path: ""`, the offline corpus comes from
        # `RunOptions.dataset`), so the dataset the runner passes overrides nothing.
        dropped.add(_override_message("dataset", cfg.dataset_path))
    if cfg is not None and model_loaded_here:
        # False: the runner loaded exactly the model the config names (sources.load_hooked_model)
        # and hands it over; nothing is overridden and the config alone reproduces the run.
        dropped.add(_override_message("model", cfg.model_name))
    log_filter = _DropMessages(dropped)
    saelens_logger = logging.getLogger(_SAELENS_LOGGER)
    saelens_logger.addFilter(log_filter)
    try:
        with warnings.catch_warnings():
            # False: the pretokenised rows are already tensors and SAELens' activation store
            # copies each with `torch.tensor(row[:context_size])` on purpose (a fresh tensor per
            # sequence); torch's advice to use clone() changes nothing a user controls.
            warnings.filterwarnings("ignore", message=r"To copy construct from a tensor, it is recommended", category=UserWarning,
                                    module=r"sae_lens\.training\.activations_store")
            if model_loaded_here:
                # False: the advice is to load the LLM with `from_pretrained_no_processing(**kwargs)`,
                # which is how this package loaded it (no LN folding, no centering). A model the
                # caller loaded may be processed: then the warning stays.
                warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from_pretrained_kwargs", category=UserWarning,
                                        module=r"sae_lens\.saes\.sae")
            if cfg is not None and dataset_rows is not None and dataset_rows * cfg.context_size >= cfg.training_tokens:
                # False when rows x context_size tokens cover the run: SAELens compares the number
                # of rows (sequences) with the number of training *tokens* (e.g. 17590 rows of 128
                # tokens "fewer than" 163840). With fewer tokens than that it stays (a true repeat).
                warnings.filterwarnings("ignore", category=UserWarning, module=r"sae_lens\.training\.activations_store",
                                        message=re.escape(f"The training dataset contains fewer samples ({dataset_rows}) than the number of samples "
                                                          f"required by your training configuration ({cfg.training_tokens})."))
            yield
    finally:
        saelens_logger.removeFilter(log_filter)


@contextmanager
def no_implicit_root_handler() -> Iterator[None]:
    """Leave the root logger's handlers as they were before a TransformerLens call (a model or
    config load: `sources.load_hooked_model`, `families.full_config`, SAEBench's model load).

    TransformerLens logs through the module-level `logging.info`/`logging.warning`, which call
    `logging.basicConfig()` when the root logger has no handler: a StreamHandler would stay on
    the root for the rest of the process (the user's own `basicConfig` then does nothing, and
    every library's records print once they lower the level). Its warnings during the load
    still print; the handler it added is removed afterwards.
    """
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
