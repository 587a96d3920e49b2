"""Held-out rows spread over the corpus (evals/heldout.py) and intervals clustered by speech."""

import numpy as np
import pytest

from sae_lens_jsae.evals.heldout import spread_rows
from sae_lens_jsae.evals.intervals import cluster_block, ratio, summary_estimates


def test_every_prefix_is_spread_over_every_group():
    groups = ["a"] * 50 + ["b"] * 5 + ["c"] * 20  # a chronological split: groups in blocks
    rows = spread_rows(groups, 30, seed=1)
    assert len(rows) == len(set(rows)) == 30
    first = [groups[i] for i in rows[:3]]
    assert sorted(first) == ["a", "b", "c"]  # the first round takes one row of each group
    counts = {g: sum(groups[i] == g for i in rows) for g in "abc"}
    assert counts["b"] == 5 and sorted([counts["a"], counts["c"]]) == [12, 13]  # b runs out after 5 rounds; a and c share the rest
    assert rows == spread_rows(groups, 30, seed=1) and rows != spread_rows(groups, 30, seed=2)
    assert sorted(spread_rows(groups, 500)) == list(range(75))  # asking for more: every row once
    with pytest.raises(ValueError, match="n_rows"):
        spread_rows(groups, 0)


def test_cluster_block_sums_per_sequence_columns_per_speech():
    block = {"n_tokens": [1, 2, 3, 4], "abs": [1.0, 1.0, 2.0, 2.0], "edges_sum": [[1, 1, 1, 1], [2, 2, 2, 2]],
             "coverages": [0.8, 0.9], "tokens_digest": "x"}
    clusters = ["s2", "s1", "s2", "s1", "s3"]  # the selection's speeches; the block read its first 4 rows
    out = cluster_block(block, clusters)
    assert out["n_tokens"] == [6.0, 4.0] and out["abs"] == [3.0, 3.0]  # s1, s2 in sorted order
    assert out["edges_sum"] == [[2.0, 2.0], [4.0, 4.0]]
    assert out["coverages"] == [0.8, 0.9] and out["tokens_digest"] == "x"
    per_token = cluster_block({"sequence": [0, 1, 2], "linear": [1, 0, 1]}, clusters)
    assert per_token["sequence"] == ["s2", "s1", "s2"]


def test_summary_intervals_are_clustered_by_speech():
    """Two speeches whose sequences agree within each speech: clustered by sequence the interval
    is narrow (sequences look independent), clustered by speech it is as wide as 2 units allow."""
    rng = np.random.default_rng(0)
    n = 40
    speech = ["x"] * 20 + ["y"] * 20
    var = np.full(n, 10.0)
    err = np.where(np.array(speech) == "x", 2.0, 6.0) + rng.normal(0, 0.01, n)
    block = {"per_sequence": {"n_pred": [1] * n, "n_pos": [1] * n, "ce_clean": [1.0] * n, "sqerr_input": err.tolist(),
                              "var_input": var.tolist(), "tokens_digest": None}}
    plain = summary_estimates({"splice": block})["explained_variance.input"]
    clustered = summary_estimates({"splice": block, "heldout": {"speech": speech}})["explained_variance.input"]
    assert plain.value == pytest.approx(clustered.value) == pytest.approx(1 - err.sum() / var.sum())
    assert plain.n == n and clustered.n == 2
    assert clustered.interval().hi - clustered.interval().lo > 10 * (plain.interval().hi - plain.interval().lo)
    expected = ratio([err[:20].sum(), err[20:].sum()], [200.0, 200.0]).scale(-1.0, 1.0)
    assert clustered.se == pytest.approx(expected.se)
