"""The evaluation as one pass over the held-out tokens.

`run_metrics` draws the held-out batches once (`iter_token_batches`), runs the model once per
batch and hands every metric still reading the same `HeldOutBatch`. The model runs to the
logits while a metric re-runs it from a block (the CE/KL splices), else only up to the deepest
hook a metric reads (`stop_at_layer`). Every metric (Jacobian sparsity, splices, linearity, the
edge measure, intervention faithfulness, the MLP error analysis) is an accumulator with one
interface, `Metric`: the hooks it reads, how many tokens it takes (a prefix of the rows, whole
sequences, as each metric's own loop took before), `update(batch)` per batch and `result()` at
the end. So n metrics of m models cost one model run per batch instead of one per metric and
model, and all of them read the same sequences; the metric functions (`edge_measure`,
`jacobian_sparsity`, …) are this pass with one metric. SAEBench's JSON files are written from
the results by `evals.saebench` (an adapter at the edge), not computed there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from sae_lens_jsae.evals._batches import TokenSource, iter_token_batches


@dataclass
class HeldOutBatch:
    """One batch of held-out sequences with the model's activations on them."""

    tokens: torch.Tensor
    """(b, ctx) token ids."""
    row_start: int
    """Index of the first row among all held-out rows of the pass."""
    cache: Mapping[str, torch.Tensor]
    """The activations the metrics read, by hook name, each (b, ctx, d)."""
    logits: torch.Tensor | None
    """(b, ctx, d_vocab) clean logits, when a metric asked for them (else None)."""
    model: Any
    """The model (metrics that re-run it from a block use it)."""
    memo: dict[Any, Any] = field(default_factory=dict)
    """Per-batch results several metrics share (e.g. a pair's edge attributions), by key."""

    def activation(self, hook: str) -> torch.Tensor:
        """(b, ctx, d) activations at `hook`."""
        return self.cache[hook]

    def shared(self, key: Any, compute: Callable[[], Any]) -> Any:
        """`compute()` once per batch for `key`; later metrics asking for the same key reuse it."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def first_rows(self, n: int) -> HeldOutBatch:
        """The batch's first `n` rows (a metric whose token budget ends inside this batch)."""
        if n >= self.tokens.shape[0]:
            return self
        return self.shared(("first_rows", n), lambda: HeldOutBatch(
            self.tokens[:n], self.row_start, {k: v[:n] for k, v in self.cache.items()},
            None if self.logits is None else self.logits[:n], self.model))


class Metric(Protocol):
    """An accumulator over held-out batches (see the module docstring)."""

    max_tokens: int | None
    """Tokens it reads: the first ⌈max_tokens / ctx⌉ rows of the pass (None: every row)."""
    needs_logits: bool
    """Whether it needs the clean logits (then the model runs to the end)."""

    def hooks(self) -> set[str]:
        """The activations it reads."""
        ...

    def update(self, batch: HeldOutBatch) -> None:
        """Add one batch."""
        ...

    def result(self) -> Any:
        """The metric's result over every batch added."""
        ...


def _layer(hook: str) -> int:
    parts = hook.split(".")
    if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"one-pass evaluation reads hooks of the form blocks.L.…; got {hook!r}")
    return int(parts[1])


def _rows_for(metric: Metric, seen: int, n_rows: int, ctx: int) -> int:
    if metric.max_tokens is None:
        return n_rows
    return max(0, min(n_rows, -(-(metric.max_tokens - seen) // ctx)))


@torch.no_grad()
def run_metrics(
    model: Any,
    tokens: TokenSource,
    metrics: Mapping[str, Metric],
    *,
    batch_size: int = 16,
    desc: str | None = "held-out pass",
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Feed every metric the held-out batches of `tokens` in one pass; {name: metric.result()}.

    `desc`: the progress bar's label (None: no bar). `timings`: filled with seconds per metric
    (`{name}_s`, its updates and result) and for the model runs (`model_s`)."""
    if not metrics:
        raise ValueError("run_metrics needs at least one metric.")
    budgets = [m.max_tokens for m in metrics.values()]
    total = None if any(b is None for b in budgets) else max(b for b in budgets if b is not None)
    seen = dict.fromkeys(metrics, 0)
    spent = {name: 0.0 for name in (*metrics, "model")}
    row = 0
    device = getattr(getattr(model, "cfg", None), "device", "cpu")
    for batch in iter_token_batches(tokens, batch_size, total, desc=desc):
        b, ctx = batch.shape
        rows = {name: _rows_for(m, seen[name], b, ctx) for name, m in metrics.items()}
        live = {name: m for name, m in metrics.items() if rows[name] > 0}
        if not live:
            break
        batch = batch.to(device)
        hooks = sorted(set().union(*(m.hooks() for m in live.values())))
        logits_needed = any(m.needs_logits for m in live.values())
        t0 = time.perf_counter()
        if logits_needed:
            logits, cache = model.run_with_cache(batch, return_type="logits", names_filter=hooks)
        else:
            logits = None
            _, cache = model.run_with_cache(batch, return_type=None, names_filter=hooks,
                                            stop_at_layer=max(_layer(h) for h in hooks) + 1)
        spent["model"] += time.perf_counter() - t0
        held = HeldOutBatch(batch, row, {h: cache[h] for h in hooks}, logits, model)
        del cache
        for name, m in live.items():
            t0 = time.perf_counter()
            m.update(held.first_rows(rows[name]))
            spent[name] += time.perf_counter() - t0
            seen[name] += rows[name] * ctx
        row += b
        del held, logits
    results = {}
    for name, m in metrics.items():
        t0 = time.perf_counter()
        results[name] = m.result()
        spent[name] += time.perf_counter() - t0
    if timings is not None:
        timings.update({f"{name}_s": s for name, s in spent.items()})
    return results


def run_on_inputs(metric: Metric, hook: str, inputs: Any) -> Any:
    """`metric.result()` over batches of activations handed over directly (each (n_seqs, ctx, d)
    at `hook`), without a model or token ids (so no tokens digest to pair on)."""
    for x in inputs:
        if x.ndim != 3:
            raise ValueError(f"each batch of MLP inputs must be (n_seqs, ctx, d_in); got {tuple(x.shape)}")
        metric.update(HeldOutBatch(torch.zeros(x.shape[:2], dtype=torch.long), 0, {hook: x}, None, None))
    result = metric.result()
    result.per_sequence["tokens_digest"] = None
    return result
