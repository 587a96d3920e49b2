"""A run's log shows what a user should act on: SAELens' known-false warnings are silenced only
where they are false, inside a scope that restores the warning filters and loggers; a mixed
sweep says what it trained."""

import contextlib
import logging
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers import make_tiny_model, tiny_runner_cfg, tiny_token_dataset

from sae_lens_jsae.cli.train import describe_trained
from sae_lens_jsae.log_noise import known_false_warnings
from sae_lens_jsae.training import RunOptions, train_variants

STORE = "sae_lens.training.activations_store"
COPY = "To copy construct from a tensor, it is recommended to use sourceTensor.detach().clone()"
KWARGS = "\nThis SAE has non-empty model_from_pretrained_kwargs. \nFor optimal performance, load the model like so:"


def _fewer(rows, tokens):
    return (f"The training dataset contains fewer samples ({rows}) than the number of samples required by your training "
            f"configuration ({tokens}). This will result in multiple training epochs and some samples being used more than once.")


def _override(kind, name):
    return (f"You just passed in a {kind} which will override the one specified in your configuration: {name}. "
            "As a consequence this run will not be reproducible via configuration alone.")


def _emit(scope, caplog):
    """Raise each SAELens warning as SAELens does (attributed to its module) inside `scope`;
    returns the messages that got through."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with scope:
            for message, module in ((COPY, STORE), (COPY, "someone_else"), (KWARGS, "sae_lens.saes.sae"),
                                    (_fewer(64, 192), STORE), (_fewer(10, 192), STORE)):
                warnings.warn_explicit(message, UserWarning, "x.py", 1, module=module)
            for kind, name in (("dataset", ""), ("dataset", "org/corpus"), ("model", "tiny"), ("model", "other")):
                logging.getLogger("sae_lens").warning(_override(kind, name))
    return [(str(w.message), w.filename) for w in shown], [r.getMessage() for r in caplog.records]


def test_only_the_false_ones_are_silenced_and_everything_is_restored(caplog):
    cfg = SimpleNamespace(dataset_path="", model_name="tiny", context_size=16, training_tokens=192)
    filters, log_filters = list(warnings.filters), list(logging.getLogger("sae_lens").filters)
    caplog.set_level(logging.WARNING, logger="sae_lens")
    shown, logged = _emit(known_false_warnings(cfg, dataset_rows=64, model_loaded_here=True), caplog)
    assert [m for m, _ in shown] == [COPY, _fewer(10, 192)]  # torch's advice from elsewhere; 10 rows x 16 < 192 tokens is true
    assert logged == [_override("dataset", "org/corpus"), _override("model", "other")]
    assert warnings.filters == filters and logging.getLogger("sae_lens").filters == log_filters
    # a model the caller loaded may be weight-processed: SAELens' advice then stays, and so does "override"
    shown, logged = _emit(known_false_warnings(cfg, dataset_rows=64), caplog)
    assert KWARGS in [m for m, _ in shown] and _override("model", "tiny") in logged
    # outside the scope nothing is silenced
    shown, logged = _emit(contextlib.nullcontext(), caplog)
    assert len(shown) == 5 and len(logged) == 4


def test_a_mixed_sweep_logs_no_false_warning_and_says_what_it_trained(tmp_path, caplog):
    cfg = tiny_runner_cfg(tmp_path, training_tokens=64 * 3)  # 64 rows x 16 tokens cover 192 tokens
    caplog.set_level(logging.WARNING, logger="sae_lens")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        saes = train_variants(cfg, [{"jacobian_coefficient": 0.0}, {"jacobian_coefficient": 1.0}, {"architecture": "topk_transcoder"}],
                              RunOptions(log_every_n_steps=1), override_dataset=tiny_token_dataset(),
                              override_model=make_tiny_model("gated_silu", dtype=torch.float32))
    messages = [str(w.message) for w in shown] + [r.getMessage() for r in caplog.records]
    for false in ("fewer samples (64)", "To copy construct from a tensor", "configuration: . As a consequence"):
        assert not [m for m in messages if false in m], (false, messages)
    # the caller passed the model: SAELens' two model warnings are right to show
    assert any("override the one specified in your configuration: tiny." in m for m in messages)
    assert describe_trained(saes) == "2 JSAEs and 1 transcoder"


@pytest.mark.parametrize("architectures, words", [(["jacobian"] * 3, "3 JSAEs"), (["topk_transcoder"], "1 transcoder"),
                                                  (["topk_transcoder", "jacobian", "topk_skip_transcoder"], "1 JSAE and 2 transcoders")])
def test_describe_trained(architectures, words):
    saes = {str(i): SimpleNamespace(cfg=SimpleNamespace(architecture=lambda a=a: a)) for i, a in enumerate(architectures)}
    assert describe_trained(saes) == words


def test_spawned_eval_workers_silence_the_kwargs_advice_for_models_this_package_loaded(monkeypatch):
    """`jsae eval --processes N`: a spawned worker starts with default warning filters, so it opens
    the scope itself; only when its model comes from `sources.load_hooked_model` (unprocessed)."""
    import functools

    from sae_lens_jsae import sources
    from sae_lens_jsae.evals import sweep

    def fake_evaluate_sweep(pairs, model, tokens, output_dir, **kwargs):
        with warnings.catch_warnings(record=True) as shown:  # the filters in force, recorded
            warnings.warn_explicit(KWARGS, UserWarning, "sae.py", 1, module="sae_lens.saes.sae")
        return [str(w.message) for w in shown]

    monkeypatch.setattr(sweep, "evaluate_sweep", fake_evaluate_sweep)
    monkeypatch.setattr(sources, "load_hooked_model", lambda *a, **k: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the worker's own process setting; not this one's
    ours = sweep._evaluate_sweep_worker([], functools.partial(sources.load_hooked_model, "gguf-smollm2"), None, "out", {})
    theirs = sweep._evaluate_sweep_worker([], lambda: None, None, "out", {})
    assert ours == [] and theirs == [KWARGS]
