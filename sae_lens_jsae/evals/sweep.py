"""Evaluate whole sweeps (`jsae train --sweep jacobian_coefficient=…`) on the same tokens: frontiers.

A sweep directory holds one JSAE pair per subfolder (`jacobian_coefficient=0`, `…=auto`,
`jacobian_coefficient=0.89,mlp_reconstruction_coefficient=1`, …; each with a cfg.json). Every pair
of every sweep is evaluated on the same tokens; the CE/KL splices of all pairs on one model run in
one pass (`splice_scores_multi`), so paired differences (JSAE − λ=0, same sequences) are exact.

Labels come from each pair's cfg.json, not the folder name: λ (resolved, `auto` → the rule of
thumb) and the *series* — the cfg fields other than λ whose values differ between the pairs
(e.g. `mlp_reconstruction_coefficient`); a field a cfg lacks takes the config class's default, and
a pair whose series fields are all at their defaults is the paper's loss.

`processes=N` splits a sweep's pairs over N worker processes with one thread each (each loads its
own copy of the model and runs its own splice pass over the same tokens). On a CPU with few
cores, processes scale better than torch's intra-op threads (one splice pass: 1.64× faster with
2 threads than with 1 on the 2-core VM; docs/performance.md, "Threads"); per pair, the numbers
match those of one process (tests compare every interval).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from sae_lens_jsae.evals.pipeline import BUDGETS
from sae_lens_jsae.evals.splice import SPLICES
from sae_lens_jsae.sae import saved_jacobian_coefficient

ModelFactory = Callable[[], Any]
"""A picklable callable that builds the model afresh (e.g. a `functools.partial` of
`sources.load_hooked_model`): worker processes of `evaluate_sweeps_and_compare(processes=N)` call it."""

NOT_SERIES = {"jacobian_coefficient", "device", "dtype", "jacobian_chunk_bytes", "metadata", "architecture", "mlp_sha256"}
"""cfg fields that never distinguish a series (λ is the frontier's own axis)."""
PAPER_LOSS = "paper loss"
"""Series label of pairs trained with the paper's loss (all series fields at their defaults)."""


@dataclass
class SweepPair:
    """One pair of a sweep, with its labels."""

    path: Path
    """The checkpoint directory (cfg.json + weights)."""
    jacobian_coefficient: float
    """λ it was trained with (resolved)."""
    randomized: bool
    """Trained on the randomized model (evaluated on it too)."""
    cfg: dict[str, Any]
    """Flattened cfg: top-level fields and metadata.training_architecture_details."""
    series: dict[str, Any]
    """The loss-variant fields (differing between pairs) and their values; filled in by `label_pairs`."""
    series_label: str = PAPER_LOSS
    """'paper loss' or 'field=value, …' (non-default series values)."""
    prefix: str = ""
    """The sweep folder's name, prepended to `file_label` when two sweeps share a pair folder name."""

    @property
    def name(self) -> str:
        """Readable name: 'λ=0.89 (paper loss)', prefixed 'randomized ' for the control."""
        return f"{'randomized ' if self.randomized else ''}λ={self.jacobian_coefficient:.3g} ({self.series_label})"

    @property
    def file_label(self) -> str:
        """File-name-safe label (used for the summary and SAEBench JSON names)."""
        base = ("randomized_" if self.randomized else "") + (f"{self.prefix}__" if self.prefix else "") + self.path.name
        return re.sub(r"[^A-Za-z0-9._-]+", "_", base)


def find_pairs(sweep_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint directories of a sweep: `sweep_dir` itself if it has a cfg.json, else its subfolders that do."""
    root = Path(sweep_dir)
    if (root / "cfg.json").exists():
        return [root]
    pairs = sorted(p for p in root.iterdir() if (p / "cfg.json").exists()) if root.is_dir() else []
    if not pairs:
        raise ValueError(f"{root} is neither a JSAE checkpoint (cfg.json) nor a sweep directory with checkpoint subfolders; "
                         "pass what `jsae train --sweep` wrote (its runner.output_path).")
    return pairs


def _flat_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    details = (cfg.get("metadata") or {}).get("training_architecture_details") or {}
    return {**details, **{k: v for k, v in cfg.items() if k != "metadata"}}


def _defaults() -> dict[str, Any]:
    from sae_lens_jsae.sae import JacobianTrainingSAEConfig

    out = {}
    for f in fields(JacobianTrainingSAEConfig):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def load_pair(path: Path, randomized: bool = False) -> SweepPair:
    cfg = json.loads((path / "cfg.json").read_text())
    return SweepPair(path, saved_jacobian_coefficient(cfg), randomized, _flat_cfg(cfg), {})


def label_pairs(pairs: Sequence[SweepPair]) -> list[SweepPair]:
    """Fill in each pair's series (fields differing between all `pairs`, λ excluded) and label."""
    defaults = _defaults()
    keys = set().union(*(p.cfg for p in pairs)) - NOT_SERIES if pairs else set()

    def value(p: SweepPair, k: str) -> Any:
        return p.cfg.get(k, defaults.get(k))

    varying = sorted(k for k in keys if len({json.dumps(value(p, k), sort_keys=True, default=str) for p in pairs}) > 1)
    for p in pairs:
        p.series = {k: value(p, k) for k in varying}
        shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.series.items() if v != defaults.get(k)]
        p.series_label = ", ".join(shown) or PAPER_LOSS
    labels = [p.file_label for p in pairs]
    for p, label in zip(pairs, labels):  # e.g. two sweeps that both have a `jacobian_coefficient=0` folder
        if labels.count(label) > 1:
            p.prefix = p.path.parent.name
    return list(pairs)


def evaluate_sweep(
    pairs: Sequence[SweepPair],
    model,
    tokens: torch.Tensor,
    output_dir: str | os.PathLike[str],
    *,
    n_splice_tokens: int = BUDGETS.n_splice_tokens,
    splices: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    **kwargs: Any,
) -> list[Path]:
    """Evaluate `pairs` (all on `model`: all trained or all randomized) on the same `tokens`.

    One pass over the tokens (`evals.onepass`) feeds every metric of every pair, the splices of all
    pairs sharing each batch's clean and zero-ablated runs; then `evaluate_checkpoint` writes each
    pair's summary (optional core eval) with its labels. `splices`: which of `evals.splice.SPLICES`
    (default all; a frontier needs only `replacement`, a third of the pairs' model runs). Returns
    the summary paths."""
    from sae_lens_jsae.evals.onepass import run_metrics
    from sae_lens_jsae.evals.pipeline import check_mlp_matches, evaluate_checkpoint, load_checkpoint, pair_metrics
    from sae_lens_jsae.evals.splice import SpliceMetric

    if len({p.randomized for p in pairs}) > 1:
        raise ValueError("evaluate_sweep: trained and randomized pairs need different models; evaluate them in two calls.")
    saes = {p.file_label: load_checkpoint(p.path, model).to(model.cfg.device) for p in pairs}
    if len(saes) != len(pairs):
        raise ValueError(f"two pairs share a folder name: {[str(p.path) for p in pairs]}; give the sweeps distinct folder names.")
    if kwargs.get("check_mlp", True):  # before any work: a pair trained on another model (e.g. a wrong --seed)
        for sae in saes.values():
            check_mlp_matches(model, sae, tokens)
    metrics: dict[str, Any] = {"splice": SpliceMetric(model, saes, splices=splices or SPLICES, max_tokens=n_splice_tokens)}
    for label, sae in saes.items():
        own = pair_metrics(model, sae, tokens, splice=False, n_splice_tokens=n_splice_tokens, batch_size=batch_size, **kwargs).metrics
        metrics |= {f"{label}/{name}": m for name, m in own.items()}
    timings: dict[str, float] = {}
    results = run_metrics(model, tokens, metrics, batch_size=batch_size, timings=timings,
                          desc=f"held-out pass ({len(saes)} pairs)" if progress else None)
    shared = {"pairs": list(saes), "model_s": timings["model_s"], "splice_s": timings["splice_s"]}
    paths = []
    for p in pairs:
        prefix = f"{p.file_label}/"
        own_results = {k.removeprefix(prefix): v for k, v in results.items() if k.startswith(prefix)}
        own_timings = {k.removeprefix(prefix): v for k, v in timings.items() if k.startswith(prefix)}
        extra = {"pair_name": p.name, "series": p.series, "series_label": p.series_label, "sweep_dir": str(p.path.parent),
                 "held_out_pass": shared}
        paths.append(evaluate_checkpoint(p.path, model, tokens, output_dir, label=p.file_label, randomized=p.randomized,
                                         jacobian_coefficient=p.jacobian_coefficient, n_splice_tokens=n_splice_tokens,
                                         batch_size=batch_size, progress=progress, splice=results["splice"][p.file_label],
                                         precomputed=own_results, precomputed_timings=own_timings, extra=extra, **kwargs))
    return paths


def evaluate_sweeps_and_compare(
    sweep_dirs: Sequence[str | os.PathLike[str]],
    model,
    tokens: torch.Tensor,
    output_dir: str | os.PathLike[str],
    *,
    randomized_dirs: Sequence[str | os.PathLike[str]] = (),
    randomized_model=None,
    randomized: bool = False,
    also: Sequence[str | os.PathLike[str]] = (),
    processes: int = 1,
    model_factory: ModelFactory | None = None,
    **kwargs: Any,
) -> Path:
    """`jsae eval SWEEP_DIR … [--randomized-sweep DIR …]`: every pair on the same tokens, then the report.

    `sweep_dirs` hold pairs trained on `model` (on the randomized model when `randomized`);
    `randomized_dirs` pairs trained on `randomized_model`. Summaries go to `output_dir` (randomized
    ones to `output_dir/randomized`); returns report.md (led by the frontier). `processes` > 1:
    the pairs of `sweep_dirs` are evaluated in that many worker processes, one thread each, each
    building its model with `model_factory` (the randomized pairs stay in this process)."""
    from sae_lens_jsae.evals.pipeline import compare

    found = [p for d in sweep_dirs for p in find_pairs(d)]
    transcoder_dirs = [p for p in found if is_transcoder_dir(p)]
    main = [load_pair(p, randomized) for p in found if not is_transcoder_dir(p)]
    rand = [load_pair(p, True) for d in randomized_dirs for p in find_pairs(d)]
    if rand and randomized_model is None:
        raise ValueError("randomized sweep pairs need the randomized model (randomized_model=…).")
    label_pairs([*main, *rand])  # one series labelling across both, so the same loss gets the same label
    if transcoder_dirs and not main and not rand:
        raise ValueError("jsae eval: the report needs at least one JSAE pair (e.g. the λ = 0 pair) beside transcoders.")
    transcoders: list[Path] = []
    if processes > 1 and len(main) + bool(transcoder_dirs) > 1:
        if model_factory is None:
            raise ValueError("processes > 1 needs model_factory: a picklable callable that loads the model in each worker.")
        summaries, transcoders = _evaluate_sweep_in_processes(main, model_factory, tokens, output_dir, processes,
                                                              transcoder_dirs=transcoder_dirs, **kwargs)
    else:
        summaries = evaluate_sweep(main, model, tokens, output_dir, **kwargs) if main else []
        if transcoder_dirs:
            transcoders = evaluate_transcoders(transcoder_dirs, model, tokens, Path(output_dir) / "transcoders",
                                               upstreams=edge_upstreams(main, model), **kwargs)
    if rand:
        summaries += evaluate_sweep(rand, randomized_model, tokens, Path(output_dir) / "randomized", **kwargs)
    title = "Jacobian SAE evaluation: JSAEs beside transcoders" if transcoders else "Jacobian SAE evaluation: λ frontier"
    return compare([*summaries, *also], output_dir, title=title, transcoders=transcoders)


def is_transcoder_dir(path: Path) -> bool:
    """Whether a checkpoint directory holds a transcoder (its cfg.json's architecture)."""
    from sae_lens_jsae.transcoder import TRANSCODER_ARCHITECTURES

    return json.loads((Path(path) / "cfg.json").read_text()).get("architecture") in TRANSCODER_ARCHITECTURES


def evaluate_transcoders(
    dirs: Sequence[Path],
    model,
    tokens: torch.Tensor,
    output_dir: str | os.PathLike[str],
    *,
    n_splice_tokens: int = BUDGETS.n_splice_tokens,
    n_edge_tokens: int = BUDGETS.n_edge_tokens,
    n_intervention_tokens: int = BUDGETS.n_intervention_tokens,
    batch_size: int = 16,
    progress: bool = True,
    upstreams: dict[str, Any] | None = None,
    heldout: dict[str, Any] | None = None,
    **_: Any,
) -> list[Path]:
    """Score transcoders on the same tokens as the pairs (one splice pass for all of them): the
    replacement CE-loss / KL scores, MLP-output explained variance, L0 and dead latents, with
    intervals; one summary each in `output_dir`. Returns the summary paths.

    `upstreams` ({label: pair}, from `edge_upstreams`): the input SAEs the edge measure reads the
    transcoder's input with; the first (the λ = 0 pair's) gives the headline `edges`, every one
    an entry of `edges_by_upstream`, so the basis is not what decides; intervention faithfulness
    (`n_intervention_tokens`) the same way (`intervention`, `intervention_by_upstream`)."""
    from sae_lens import SAE

    from sae_lens_jsae.evals.edges import EdgeMetric
    from sae_lens_jsae.evals.intervention import InterventionMetric, transcoder_mlp
    from sae_lens_jsae.evals.onepass import run_metrics
    from sae_lens_jsae.evals.pipeline import write_transcoder_summary
    from sae_lens_jsae.evals.splice import SpliceMetric

    saes = {re.sub(r"[^A-Za-z0-9._-]+", "_", p.name): SAE.load_from_disk(str(p), device=str(model.cfg.device)) for p in dirs}
    if len(saes) != len(dirs):
        raise ValueError(f"two transcoders share a folder name: {[str(p) for p in dirs]}")
    # one pass: the splices of all transcoders, and each one's edges and intervention faithfulness in every upstream basis
    metrics: dict[str, Any] = {"splice": SpliceMetric(model, saes, splices=("replacement",), max_tokens=n_splice_tokens)}
    for label, sae in saes.items():
        for up_label, pair in (upstreams or {}).items():
            if n_edge_tokens > 0:
                metrics[f"{label}/edges/{up_label}"] = EdgeMetric(sae, pair, max_tokens=n_edge_tokens)
            if n_intervention_tokens > 0:
                metrics[f"{label}/intervention/{up_label}"] = InterventionMetric(
                    sae, pair, max_tokens=n_intervention_tokens, mlp=transcoder_mlp(model, sae, pair))
    results = run_metrics(model, tokens, metrics, batch_size=batch_size, desc=f"held-out pass ({len(saes)} transcoders)" if progress else None)
    paths = []
    for (label, sae), path in zip(saes.items(), dirs):
        by_upstream = {up: results[f"{label}/edges/{up}"].to_dict() for up in (upstreams or {}) if f"{label}/edges/{up}" in results}
        faithful = {up: results[f"{label}/intervention/{up}"].to_dict() for up in (upstreams or {}) if f"{label}/intervention/{up}" in results}
        headline = next(iter(by_upstream.values()), None)
        paths.append(write_transcoder_summary(sae, results["splice"][label], output_dir, label=label, checkpoint=path, edges=headline,
                                              edges_by_upstream=by_upstream, intervention=next(iter(faithful.values()), None),
                                              intervention_by_upstream=faithful, heldout=heldout,
                                              extra={"pair_name": path.name, "series": _transcoder_series(path)}))
    return paths


def _transcoder_series(path: Path) -> dict[str, Any]:
    """The opt-in loss terms a transcoder was trained with (non-zero), from its cfg.json."""
    flat = _flat_cfg(json.loads((path / "cfg.json").read_text()))
    return {k: flat[k] for k in ("intervention_consistency_coefficient",) if flat.get(k)}


def edge_upstreams(pairs: Sequence[SweepPair], model) -> dict[str, Any]:
    """The input SAEs a transcoder's edges are measured against: the λ = 0 pair's (circuit-tracer's
    role for upstream features; the headline), then the JSAE's (the paper loss at the rule's λ,
    else its smallest λ > 0), each loaded with its MLP. Keyed by the pair's file label."""
    from sae_lens_jsae.evals.pipeline import load_checkpoint

    trained = [p for p in pairs if not p.randomized]
    plain = [p for p in trained if p.series_label == "paper loss"] or trained
    zero = next((p for p in plain if p.jacobian_coefficient == 0), None)
    jsae = next((p for p in plain if p.path.name.endswith("=auto")), None) or min(
        (p for p in plain if (p.jacobian_coefficient or 0) > 0), key=lambda p: p.jacobian_coefficient, default=None)
    out = {}
    for p in (zero, jsae):
        if p is not None:
            pair = load_checkpoint(p.path, model)
            if pair.mlp is None:
                pair.attach_mlp_from_model(model)
            out[p.file_label] = pair.to(model.cfg.device)
    return out


def _evaluate_sweep_worker(pairs: list[SweepPair], model_factory: ModelFactory, tokens: torch.Tensor, output_dir: str, kwargs: dict[str, Any]) -> list[Path]:
    from sae_lens_jsae.log_noise import known_false_warnings

    torch.set_num_threads(1)  # a spawned worker process of its own: its thread count is this process's only
    with known_false_warnings(model_loaded_here=_ours(model_factory)):
        return evaluate_sweep(pairs, model_factory(), tokens, output_dir, **kwargs)


def _ours(model_factory: ModelFactory) -> bool:
    """Whether a worker's model is this package's unprocessed load (`sources.load_hooked_model`).
    A spawned worker starts with Python's default warning filters (the parent's scope does not
    reach it), so it opens `known_false_warnings` itself, with this."""
    import functools

    from sae_lens_jsae.sources import load_hooked_model

    return isinstance(model_factory, functools.partial) and model_factory.func is load_hooked_model


def _evaluate_transcoders_worker(dirs: list[Path], pairs: list[SweepPair], model_factory: ModelFactory, tokens: torch.Tensor,
                                 output_dir: str, kwargs: dict[str, Any]) -> list[Path]:
    from sae_lens_jsae.log_noise import known_false_warnings

    torch.set_num_threads(1)  # a spawned worker process of its own
    with known_false_warnings(model_loaded_here=_ours(model_factory)):
        model = model_factory()
        return evaluate_transcoders(dirs, model, tokens, Path(output_dir) / "transcoders", upstreams=edge_upstreams(pairs, model), **kwargs)


def _cost(n_pairs: int, n_transcoders: int, splices: Sequence[str] = SPLICES) -> int:
    """Model runs per held-out batch of one pass: the clean run, the zero-ablation of the MLP output
    (and of its input when the input splice is scored), each pair's `splices`, one splice per
    transcoder (what a pass's time goes to)."""
    scored = splices if n_pairs else ("replacement",)
    return 2 + ("input" in scored) + len(scored) * n_pairs + n_transcoders


def _evaluate_sweep_in_processes(pairs: Sequence[SweepPair], model_factory: ModelFactory, tokens: torch.Tensor,
                                 output_dir: str | os.PathLike[str], processes: int, *, transcoder_dirs: Sequence[Path] = (),
                                 **kwargs: Any) -> tuple[list[Path], list[Path]]:
    """`evaluate_sweep` of contiguous chunks of `pairs` in `processes` spawned workers, and the
    transcoders' pass (`evaluate_transcoders`) as one more job in the same pool, so it runs beside
    the pairs; the pairs are split into as many chunks as leaves the jobs' costs (`_cost`) most even.
    Returns (pair summaries in pair order, transcoder summaries)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def chunked(n: int) -> list[list[SweepPair]]:
        return [list(pairs[i * len(pairs) // n:(i + 1) * len(pairs) // n]) for i in range(n)] if n else []

    def wall(chunks: list[list[SweepPair]]) -> float:  # longest-first onto `processes` workers
        loads = [0.0] * processes
        jobs = [_cost(len(c), 0, kwargs.get("splices") or SPLICES) for c in chunks] + ([_cost(0, len(transcoder_dirs))] if transcoder_dirs else [])
        for job in sorted(jobs, reverse=True):
            loads[loads.index(min(loads))] += job
        return max(loads)

    options = [n for n in range(1 if pairs else 0, min(processes, len(pairs)) + 1)]
    chunks = chunked(min(options, key=lambda n: (wall(chunked(n)), -n)))
    # spawn, not fork: a forked child of a process that already ran torch's thread pool can hang
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_sweep_worker, chunk, model_factory, tokens, str(output_dir), kwargs) for chunk in chunks]
        tc_future = (pool.submit(_evaluate_transcoders_worker, list(transcoder_dirs), list(pairs), model_factory, tokens, str(output_dir), kwargs)
                     if transcoder_dirs else None)
        summaries = [path for f in futures for path in f.result()]
        return summaries, (tc_future.result() if tc_future is not None else [])
