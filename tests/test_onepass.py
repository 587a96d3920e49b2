"""The evaluation as one pass (evals/onepass.py): one model run per batch feeds every metric, each
reads the prefix of rows its budget asks for, and the results equal each metric's own pass."""

import numpy as np
import pytest
import torch
from helpers import make_tiny_model

from sae_lens_jsae import build_jacobian_sae
from sae_lens_jsae.evals import edges as edges_module
from sae_lens_jsae.evals.edges import EdgeMetric, edge_measure
from sae_lens_jsae.evals.error_analysis import MLPErrorMetric, mlp_error_analysis
from sae_lens_jsae.evals.intervention import InterventionMetric, intervention_faithfulness
from sae_lens_jsae.evals.linearity import LinearityMetric, linearity
from sae_lens_jsae.evals.onepass import run_metrics
from sae_lens_jsae.evals.sparsity import JacobianSparsityMetric, jacobian_sparsity
from sae_lens_jsae.evals.splice import SpliceMetric, splice_scores_multi


def _setup(n_rows=12, ctx=8):
    model = make_tiny_model("gated_silu")
    sae = build_jacobian_sae(model, 1, d_sae=48, k=6)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in (sae.b_enc, sae.b_enc_out):
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    tokens = torch.randint(0, model.cfg.d_vocab, (n_rows, ctx), generator=gen)
    return model, sae, tokens


def _metrics(model, sae, tokens):
    return {
        "sparsity": JacobianSparsityMetric(sae, 40),  # 5 rows of 8: ends inside the second batch of 4
        "edges": EdgeMetric(sae, max_tokens=96),  # every row
        "intervention": InterventionMetric(sae, max_tokens=32),
        "mlp_error": MLPErrorMetric(sae, 64),
        "linearity": LinearityMetric(sae, tokens, 12, seed=1),
        "splice": SpliceMetric(model, {"jsae": sae}, max_tokens=48),
    }


def _counting(model, monkeypatch):
    calls = []
    run = model.run_with_cache

    def counted(*args, **kwargs):
        calls.append(kwargs.get("stop_at_layer"))
        return run(*args, **kwargs)

    monkeypatch.setattr(model, "run_with_cache", counted)
    return calls


def test_one_model_run_per_batch_feeds_every_metric(monkeypatch):
    model, sae, tokens = _setup()
    calls = _counting(model, monkeypatch)
    timings = {}
    results = run_metrics(model, tokens, _metrics(model, sae, tokens), batch_size=4, desc=None, timings=timings)
    # 12 rows in batches of 4: three model runs, to the logits while the splice (48 tokens = 6 rows) reads
    assert calls == [None, None, 2]
    assert results["sparsity"].n_tokens == 40 and results["edges"].n_tokens == 96
    assert results["intervention"].n_tokens == 32 and results["mlp_error"].n_tokens == 64
    assert results["splice"]["jsae"].n_tokens == 48
    assert set(timings) == {"sparsity_s", "edges_s", "intervention_s", "mlp_error_s", "linearity_s", "splice_s", "model_s"}


def test_the_pass_gives_each_metrics_own_results():
    """Bugs this catches: a metric fed rows past its budget, or the wrong rows (a slice off by a
    batch), or a shared attribution computed for one pair and reused for another."""
    model, sae, tokens = _setup()
    together = run_metrics(model, tokens, _metrics(model, sae, tokens), batch_size=4, desc=None)
    alone = {
        "sparsity": jacobian_sparsity(model, sae, tokens, batch_size=3, max_tokens=40, progress=False),
        "edges": edge_measure(model, sae, tokens, batch_size=5, max_tokens=96, progress=False),
        "intervention": intervention_faithfulness(model, sae, tokens, batch_size=2, max_tokens=32, progress=False),
        "mlp_error": mlp_error_analysis(model, sae, tokens, batch_size=8, max_tokens=64, progress=False),
        "linearity": linearity(model, sae, tokens, n_tokens=12, seed=1, batch_size=6, progress=False),
        "splice": splice_scores_multi(model, {"jsae": sae}, tokens, batch_size=3, max_tokens=48, progress=False),
    }
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)  # noqa: E731
    close(together["sparsity"].mean_count_above, alone["sparsity"].mean_count_above)
    assert together["sparsity"].per_sequence["tokens_digest"] == alone["sparsity"].per_sequence["tokens_digest"]
    close(together["edges"].edges_for_coverage, alone["edges"].edges_for_coverage)
    close(together["edges"].error_share, alone["edges"].error_share)
    assert together["intervention"].faithfulness.keys() == alone["intervention"].faithfulness.keys()
    close(list(together["intervention"].faithfulness.values()), list(alone["intervention"].faithfulness.values()))
    close(together["mlp_error"].error_sensitivity, alone["mlp_error"].error_sensitivity)
    assert together["linearity"].per_token["sample_digest"] == alone["linearity"].per_token["sample_digest"]
    close(together["linearity"].per_token["on_line"], alone["linearity"].per_token["on_line"])
    close(together["splice"]["jsae"].replacement.ce_loss_score, alone["splice"]["jsae"].replacement.ce_loss_score)
    close(together["splice"]["jsae"].input.kl_score, alone["splice"]["jsae"].input.kl_score)


def test_edges_and_intervention_share_one_attribution_per_batch(monkeypatch):
    model, sae, tokens = _setup()
    seen = []
    attribute = edges_module.pair_attributions

    def counted(pair, x, path_steps=0):
        seen.append((x.shape[0], path_steps))
        return attribute(pair, x, path_steps)

    monkeypatch.setattr(edges_module, "pair_attributions", counted)
    metrics = {"edges": EdgeMetric(sae, max_tokens=96), "intervention": InterventionMetric(sae, max_tokens=64),
               "edges_path": EdgeMetric(sae, max_tokens=32, path_steps=2)}
    run_metrics(model, tokens, metrics, batch_size=4, desc=None)
    # per batch of 32 tokens: one tangent attribution shared by both metrics, plus the path one while it reads
    assert seen == [(32, 0), (32, 2), (32, 0), (32, 0)]


def test_bad_input_fails_before_the_model_runs(monkeypatch):
    model, sae, tokens = _setup()
    calls = _counting(model, monkeypatch)
    with pytest.raises(ValueError, match="at least one metric"):
        run_metrics(model, tokens, {}, desc=None)
    with pytest.raises(ValueError, match="path_steps"):
        EdgeMetric(sae, path_steps=-1)
    with pytest.raises(ValueError, match="tokens_per_sequence"):
        LinearityMetric(sae, tokens, 0)
    assert calls == []


def test_the_documented_custom_metric_runs(capsys):
    """docs/evaluation.md's own-metric example, as written: a metric is any object with the interface."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class MeanNorm" in b]
    exec(compile(block, "docs/evaluation.md", "exec"), {})
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) > 0


def test_the_budget_defaults_live_in_one_place():
    """`pair_metrics`, `evaluate_checkpoint` and the transcoders' pass take their token budgets'
    defaults from `EvalBudgets` (a default changed in one signature alone fails here)."""
    import inspect
    from dataclasses import fields

    from sae_lens_jsae.evals.pipeline import BUDGETS, EvalBudgets, evaluate_checkpoint, pair_metrics
    from sae_lens_jsae.evals.sweep import evaluate_sweep, evaluate_transcoders

    for fn in (pair_metrics, evaluate_checkpoint, evaluate_transcoders, evaluate_sweep):
        params = inspect.signature(fn).parameters
        for f in fields(EvalBudgets):
            if f.name in params:
                assert params[f.name].default == getattr(BUDGETS, f.name), (fn.__name__, f.name)
    assert EvalBudgets.of({"n_edge_tokens": 99, "batch_size": 4}) == EvalBudgets(n_edge_tokens=99)  # other options ignored
    assert EvalBudgets(n_tokens=10, n_splice_tokens=20, n_edge_tokens=0, n_intervention_tokens=30, n_core_reconstruction_tokens=5,
                       n_core_sparsity_tokens=25).max_tokens() == 30
