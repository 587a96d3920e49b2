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

from sae_lens_jsae.evals.intervals import (
    METHOD,
    map_per_sequence,
    per_sequence_length,
    registered_blocks,
    summary_estimates,
    unpaired_difference,
)

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


# --------------------------------------------------------------------------- one era against another
ERA_METRICS = ("splice.replacement.ce_loss_score", "explained_variance.replacement", "intervention.a=0.1.full", "edges.edges_for_80")
"""What `era_agreement` compares by default: the frontier's axes (docs/metrics.md)."""


def era_speeches(heldout: Mapping[str, Any], n_speeches: int) -> tuple[list[str], list[str]]:
    """The first and the last `n_speeches` speeches of the eval split among a summary's held-out
    rows. The split is chronological, so a speech's place is its first row's index."""
    first_row: dict[str, int] = {}
    for row, speech in zip(heldout["rows"], heldout["speech"]):
        first_row[speech] = min(row, first_row.get(speech, row))
    order = sorted(first_row, key=first_row.__getitem__)
    if n_speeches < 1 or len(order) < 2 * n_speeches:
        raise ValueError(f"the held-out rows cover {len(order)} speeches; the first and last {n_speeches} would overlap")
    return order[:n_speeches], order[-n_speeches:]


def _keep_rows(data: Mapping[str, Any], keep: list[int], digest: str, tag: str) -> dict[str, Any]:
    """A metric block's data limited to the held-out rows `keep` (sorted), renumbered 0.. in that
    order: per-sequence columns (a prefix of the selection, so kept rows below its length) and,
    for per-token data, the tokens of kept sequences."""
    out = dict(data)
    if digest in out:
        out[digest] = f"{out[digest]}|{tag}"  # still paired with other models' same rows
    if "sequence" in data:  # per-token rows: keep those of kept sequences
        position = {row: j for j, row in enumerate(keep)}
        n = len(data["sequence"])
        mask = [int(s) in position for s in data["sequence"]]
        for key, v in data.items():
            if isinstance(v, list) and len(v) == n:
                out[key] = [e for e, m in zip(v, mask) if m]
        out["sequence"] = [position[int(s)] for s in data["sequence"] if int(s) in position]
        return out
    rows = [i for i in keep if i < per_sequence_length(data)]
    return map_per_sequence(out, lambda v: [v[i] for i in rows])


def era_summary(summary: Mapping[str, Any], speeches: Sequence[str], tag: str) -> dict[str, Any]:
    """`summary` limited to its held-out rows of `speeches`: every registered metric block's data
    and the `heldout` record, so `summary_estimates` of it clusters those rows by speech."""
    heldout = summary["heldout"]
    wanted = set(speeches)
    keep = [i for i, s in enumerate(heldout["speech"]) if s in wanted]
    out = dict(summary)
    for name, spec in registered_blocks().items():
        block = summary.get(name)
        if isinstance(block, Mapping) and block.get(spec.data):
            out[name] = {**block, spec.data: _keep_rows(block[spec.data], keep, spec.digest, tag)}
    out["heldout"] = {**heldout, "rows": [heldout["rows"][i] for i in keep], "speech": [heldout["speech"][i] for i in keep],
                      "n_speeches": len({heldout["speech"][i] for i in keep})}
    return out


def _eras(first: Mapping[str, Any], last: Mapping[str, Any], speeches: tuple[list[str], list[str]], level: float) -> dict[str, Any]:
    """The era check's result from each era's estimates (the keys both have)."""
    out: dict[str, Any] = {"first_speeches": speeches[0], "last_speeches": speeches[1], "level": level, "metrics": {}}
    for key in (k for k in first if k in last):
        diff = unpaired_difference(first[key], last[key], level)
        out["metrics"][key] = {"first": first[key].interval().to_dict(), "last": last[key].interval().to_dict(),
                               "difference": diff.to_dict(), "agree": bool(diff.ok and diff.lo <= 0 <= diff.hi)}
    return out


def _check_speeches(summary: Mapping[str, Any]) -> None:
    if not (summary.get("heldout") or {}).get("speech"):
        raise ValueError("the summary records no held-out speeches (evaluated with --first-rows, or before they were recorded)")


def era_agreement(summary: Mapping[str, Any], n_speeches: int = 5, metrics: Sequence[str] = ERA_METRICS,
                  level: float = 0.95) -> dict[str, Any]:
    """Does a model score the same on the eval split's first and last speeches? From one summary's
    own per-sequence data (no model run): each metric on the rows of the first `n_speeches`
    speeches and on those of the last, each with its 95% interval clustered by speech, and their
    difference (independent samples, Welch). A metric `agree`s when the difference's `level`
    interval holds 0 (judging N models at once: 1 − 0.05/N keeps the chance of a false
    disagreement among them ≤ 5%); metrics the summary lacks are left out."""
    _check_speeches(summary)
    speeches = era_speeches(summary["heldout"], n_speeches)
    est = [summary_estimates(era_summary(summary, names, tag)) for names, tag in zip(speeches, ("first", "last"))]
    return _eras(*({k: e[k] for k in metrics if k in e} for e in est), speeches, level)


def era_agreement_of_difference(a: Mapping[str, Any], b: Mapping[str, Any], n_speeches: int = 5,
                                metrics: Sequence[str] = ERA_METRICS, level: float = 0.95) -> dict[str, Any]:
    """Does the comparison a − b (two models scored on the same held-out rows) hold in both eras?
    Per metric: the paired difference a − b on the first `n_speeches` speeches and on the last,
    each with its 95% interval clustered by speech, and how much the two eras' differences differ
    (`agree`: its `level` interval holds 0, as in `era_agreement`)."""
    _check_speeches(a)
    if a["heldout"].get("rows") != (b.get("heldout") or {}).get("rows"):
        raise ValueError("the two summaries were scored on different held-out rows: their differences are not paired")
    speeches = era_speeches(a["heldout"], n_speeches)
    eras = []
    for names, tag in zip(speeches, ("first", "last")):
        ea, eb = summary_estimates(era_summary(a, names, tag)), summary_estimates(era_summary(b, names, tag))
        eras.append({k: ea[k] - eb[k] for k in metrics if k in ea and k in eb})
    return _eras(*eras, speeches, level)
