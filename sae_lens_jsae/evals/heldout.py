"""Held-out tokens that represent the whole eval corpus, and intervals clustered by speech.

The eval split's rows are packed speech after speech in chronological order, so its first rows are
its earliest speeches (1792–1824): scoring them alone scores one era. `spread_rows` draws rows
across every speech instead — a seeded random order within each speech, then round-robin over the
speeches in a seeded order — so every prefix of the selection (a metric that uses fewer tokens
reads a prefix) is spread too. The selection is recorded in every summary (`HeldOut.record`).

Intervals then treat speeches, not sequences, as the independent units: sequences of one speech
share its topic, era and speaker, so per-sequence sums are summed per speech before the
cluster-robust interval (`intervals.cluster_block`; docs/metrics.md). With ~25 eval speeches the t quantile
has ~24 degrees of freedom.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sae_lens_jsae.evals.intervals import METHOD

CLUSTERED_METHOD = ("delta-method standard error clustered by speech (each eval speech's per-sequence sums summed), "
                    "95% = ±t(0.975, n−1)·SE, n = speeches (`n_sequences` in each interval counts them)")
"""How every interval of a summary with a `heldout` record is computed (written into it)."""


def interval_method(heldout: Mapping[str, Any] | None) -> str:
    """The summary's `interval_method`: by speech when the held-out rows are recorded, else by sequence."""
    return CLUSTERED_METHOD if heldout and heldout.get("speech") else METHOD


def spread_rows(groups: Sequence[str], n_rows: int, seed: int = 0) -> list[int]:
    """`n_rows` indices into `groups` (each row's group, e.g. its speech), spread over every group:
    round-robin over the groups (seeded order), each group's rows in a seeded random order."""
    if n_rows < 1:
        raise ValueError(f"n_rows={n_rows} must be >= 1.")
    rng = random.Random(seed)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    order = sorted(by_group)
    rng.shuffle(order)
    for g in order:
        rng.shuffle(by_group[g])
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n_rows, len(groups)):
        for g in order:
            if depth < len(by_group[g]) and len(picked) < n_rows:
                picked.append(by_group[g][depth])
        depth += 1
    return picked


@dataclass
class HeldOut:
    """Held-out token rows and where they come from."""

    tokens: torch.Tensor
    """(n_rows, ctx) token ids, in the order every metric reads them."""
    rows: list[int]
    """Each row's index in the eval split."""
    speech: list[str]
    """Each row's speech: the cluster of the intervals."""
    seed: int

    def record(self) -> dict[str, Any]:
        """What a summary stores: enough to rebuild the selection and to cluster its intervals."""
        return {"source": "sotu eval split, rows spread over every speech (evals.heldout.spread_rows)", "seed": self.seed,
                "n_speeches": len(set(self.speech)), "rows": self.rows, "speech": self.speech, "clusters": "speech"}


def sotu_heldout(tokenizer: Any, context_size: int, n_tokens: int, seed: int = 0) -> HeldOut:
    """`n_tokens` (whole rows) of the sotu eval split, spread over every eval speech."""
    from sae_lens_jsae.sources import sotu_row_speeches, sotu_token_dataset

    ds = sotu_token_dataset(tokenizer, context_size, split="eval")
    speeches = sotu_row_speeches(tokenizer, context_size, split="eval")
    if len(speeches) != len(ds):
        raise RuntimeError(f"the eval split has {len(ds)} rows but {len(speeches)} speech labels: remove the cached dataset and rerun")
    rows = spread_rows(speeches, -(-n_tokens // context_size), seed)
    tokens = torch.tensor([ds[i]["input_ids"] for i in rows])
    return HeldOut(tokens, rows, [speeches[i] for i in rows], seed)
