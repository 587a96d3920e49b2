"""`evaluate_checkpoint` (all metrics of one JSAE checkpoint + its JSONs) and `compare` (the report)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sae_lens_jsae.evals._batches import TokenSource, iter_token_batches
from sae_lens_jsae.evals._saebench_base import SAE_BENCH_MISSING
from sae_lens_jsae.evals.edges import EdgeMetric
from sae_lens_jsae.evals.error_analysis import MLPErrorMetric
from sae_lens_jsae.evals.heldout import interval_method
from sae_lens_jsae.evals.intervals import summary_intervals
from sae_lens_jsae.evals.intervention import InterventionMetric
from sae_lens_jsae.evals.linearity import LinearityMetric
from sae_lens_jsae.evals.onepass import Metric, run_metrics
from sae_lens_jsae.evals.saebench import (
    JacobianLinearityEvalConfig,
    JacobianSparsityEvalConfig,
    collect_tokens,
    core_summary,
    run_core_eval,
    write_eval_output,
)
from sae_lens_jsae.evals.sparsity import JacobianSparsityMetric
from sae_lens_jsae.evals.splice import SpliceMetric, SpliceResult
from sae_lens_jsae.sae import layer_of_input_hook, saved_jacobian_coefficient

SUMMARY_FORMAT = "sae_lens_jsae.eval/1"


def load_checkpoint(path: str | os.PathLike[str], model: Any = None):
    """A JSAE checkpoint directory (cfg.json + sae_weights.safetensors), its frozen MLP from
    `mlp.safetensors` or else from `model`, checksum-checked (`hub.load_jsae`)."""
    from sae_lens_jsae.hub import load_jsae

    return load_jsae(path, model=model)


def _jacobian_coefficient(sae, checkpoint: Any) -> float:
    if isinstance(checkpoint, (str, os.PathLike)) and (Path(checkpoint) / "cfg.json").exists():
        return saved_jacobian_coefficient(json.loads((Path(checkpoint) / "cfg.json").read_text()))
    return saved_jacobian_coefficient(sae.cfg.to_dict())


@torch.no_grad()
def check_mlp_matches(model, sae, tokens: TokenSource, rtol: float = 1e-3) -> float:
    """Relative error of the JSAE's stored MLP against the model's `hook_mlp_out` on a few tokens.

    Raises a ValueError when it exceeds `rtol` (e.g. a randomized-model JSAE on the pretrained model).
    """
    batch = next(iter(iter_token_batches(tokens, 2, 64)))
    out_hook = sae.output_hook
    _, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=[sae.cfg.metadata.hook_name, out_hook], stop_at_layer=layer_of_input_hook(sae.cfg.metadata.hook_name) + 1)
    x = cache[sae.cfg.metadata.hook_name].reshape(-1, sae.cfg.d_in).to(sae.dtype)
    y = cache[out_hook].reshape(-1, sae.cfg.d_in).to(sae.dtype)
    err = float((sae.require_mlp()(x) - y).norm() / y.norm().clamp_min(1e-12))
    if err > rtol:
        raise ValueError(
            f"The JSAE's frozen MLP does not match block {out_hook.split('.')[1]} of the model (relative error {err:.3g}): "
            "was it trained on another model (e.g. the randomized one)? Pass the model it was trained on."
        )
    return err


def _load_extra_sae(spec: Any, device: str):
    from sae_lens import SAE

    if not isinstance(spec, str):
        return spec  # (release, sae_id, SAE)
    if os.path.isdir(spec):
        sae = SAE.load_from_disk(spec, device=device)
        return "local", Path(spec).name, sae
    release, _, sae_id = spec.partition("/")
    if not sae_id:
        raise ValueError(f"--saes expects 'release/sae_id' or a directory; got {spec!r}")
    return release, sae_id, SAE.from_pretrained(release, sae_id, device=device)


@dataclass(frozen=True)
class EvalBudgets:
    """Held-out tokens each metric reads (a prefix of the rows, whole sequences; 0 drops a metric):
    the one place for the defaults of `pair_metrics`, `evaluate_checkpoint`, `evaluate_and_compare`
    and the sweeps' passes (`jsae eval` sets its own on the command line)."""

    n_tokens: int = 102_400
    """Jacobian sparsity."""
    n_splice_tokens: int = 32_768
    """The CE/KL splices, explained variances and the MLP error analysis."""
    n_linearity_tokens: int = 512
    """Linearity (its tokens sampled from all the rows the others read)."""
    n_edge_tokens: int = 8192
    """The edge measure (tangent)."""
    n_intervention_tokens: int = 8192
    """Intervention faithfulness."""
    n_edge_path_tokens: int = 0
    """The edge measure again with integrated gradients."""
    n_core_reconstruction_tokens: int = 4096
    """SAEBench's core eval: CE/KL."""
    n_core_sparsity_tokens: int = 32_768
    """SAEBench's core eval: variance, L0, dead latents."""

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> EvalBudgets:
        """The budgets among keyword `options` (other keys ignored), the defaults for the rest."""
        return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})

    def max_tokens(self) -> int:
        """Tokens to collect: the most any metric reads."""
        return max(self.n_tokens, self.n_splice_tokens, self.n_edge_tokens, self.n_intervention_tokens, self.n_edge_path_tokens,
                   self.n_core_reconstruction_tokens, self.n_core_sparsity_tokens)


BUDGETS = EvalBudgets()
"""The default budgets."""


class PairMetrics(NamedTuple):
    """Every metric of one JSAE pair for one pass, with the SAEBench configs its two JSONs record."""

    metrics: dict[str, Metric]
    """`evals.onepass.Metric`s by summary name."""
    sparsity_config: JacobianSparsityEvalConfig
    """The Jacobian sparsity eval's settings (SAEBench's `eval_config`)."""
    linearity_config: JacobianLinearityEvalConfig
    """The linearity eval's settings (SAEBench's `eval_config`)."""


def eval_configs(sae, context_size: int, *, n_tokens: int, n_linearity_tokens: int, batch_size: int,
                 sparsity_kwargs: dict[str, Any] | None = None,
                 linearity_kwargs: dict[str, Any] | None = None) -> tuple[JacobianSparsityEvalConfig, JacobianLinearityEvalConfig]:
    """The Jacobian sparsity and linearity evals' settings (SAEBench's `eval_config` of their JSONs)."""
    name = str(sae.cfg.metadata.model_name or "")
    sc = JacobianSparsityEvalConfig(model_name=name, context_size=context_size, n_tokens=n_tokens,
                                    batch_size_prompts=batch_size, **(sparsity_kwargs or {}))
    lc = JacobianLinearityEvalConfig(model_name=name, context_size=context_size, n_tokens=n_linearity_tokens,
                                     batch_size_prompts=batch_size, **(linearity_kwargs or {}))
    return sc, lc


def pair_metrics(
    model,
    sae,
    toks: torch.Tensor,
    *,
    splice: bool = True,
    n_tokens: int = BUDGETS.n_tokens,
    n_splice_tokens: int = BUDGETS.n_splice_tokens,
    n_linearity_tokens: int = BUDGETS.n_linearity_tokens,
    n_edge_tokens: int = BUDGETS.n_edge_tokens,
    n_intervention_tokens: int = BUDGETS.n_intervention_tokens,
    n_edge_path_tokens: int = BUDGETS.n_edge_path_tokens,
    edge_path_steps: int = 8,
    batch_size: int = 16,
    linearity_kwargs: dict[str, Any] | None = None,
    sparsity_kwargs: dict[str, Any] | None = None,
    **_: Any,
) -> PairMetrics:
    """Every metric of one JSAE pair over the held-out rows `toks` (`evaluate_checkpoint`'s budgets;
    other options are ignored): Jacobian sparsity on `n_tokens`, linearity on `n_linearity_tokens`
    sampled from all rows, the splices (unless `splice=False`: computed for several pairs at once)
    and the MLP error analysis on `n_splice_tokens`, the edge measure (tangent; integrated gradients
    on `n_edge_path_tokens`) and intervention faithfulness; a budget of 0 drops that metric."""
    sc, lc = eval_configs(sae, toks.shape[1], n_tokens=n_tokens, n_linearity_tokens=n_linearity_tokens, batch_size=batch_size,
                          sparsity_kwargs=sparsity_kwargs, linearity_kwargs=linearity_kwargs)
    metrics: dict[str, Metric] = {
        "jacobian_sparsity": JacobianSparsityMetric(sae, sc.n_tokens, thresholds=sc.thresholds, hist_bins=sc.hist_bins, hist_max=sc.hist_max),
        "linearity": LinearityMetric(sae, toks, lc.n_tokens, n_grid=lc.n_grid, max_factor=lc.max_factor, tol=lc.tol,
                                     ablation_tol=lc.ablation_tol, around=lc.around, seed=lc.random_seed),
        "mlp_error": MLPErrorMetric(sae, n_splice_tokens),
    }
    if splice:
        metrics["splice"] = SpliceMetric(model, {"jsae": sae}, max_tokens=n_splice_tokens)
    if n_edge_tokens > 0:  # edges per downstream node (evals/edges.py): the measure shared with transcoders
        metrics["edges"] = EdgeMetric(sae, max_tokens=n_edge_tokens)
    if n_edge_path_tokens > 0:  # the tangent's edges against integrated gradients' (docs/metrics.md)
        metrics["edges_path"] = EdgeMetric(sae, max_tokens=n_edge_path_tokens, path_steps=edge_path_steps)
    if n_intervention_tokens > 0:
        metrics["intervention"] = InterventionMetric(sae, max_tokens=n_intervention_tokens)
    return PairMetrics(metrics, sc, lc)


def evaluate_checkpoint(
    checkpoint: Any,
    model,
    tokens: TokenSource,
    output_dir: str | os.PathLike[str],
    *,
    label: str = "jsae",
    randomized: bool = False,
    jacobian_coefficient: float | None = None,
    n_tokens: int = BUDGETS.n_tokens,
    n_splice_tokens: int = BUDGETS.n_splice_tokens,
    n_core_reconstruction_tokens: int = BUDGETS.n_core_reconstruction_tokens,
    n_core_sparsity_tokens: int = BUDGETS.n_core_sparsity_tokens,
    n_linearity_tokens: int = BUDGETS.n_linearity_tokens,
    n_edge_tokens: int = BUDGETS.n_edge_tokens,
    n_intervention_tokens: int = BUDGETS.n_intervention_tokens,
    n_edge_path_tokens: int = BUDGETS.n_edge_path_tokens,
    edge_path_steps: int = 8,
    heldout: dict[str, Any] | None = None,
    batch_size: int = 16,
    core: bool = True,
    linearity_kwargs: dict[str, Any] | None = None,
    sparsity_kwargs: dict[str, Any] | None = None,
    check_mlp: bool = True,
    progress: bool = True,
    splice: SpliceResult | None = None,
    precomputed: dict[str, Any] | None = None,
    precomputed_timings: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Evaluate one JSAE (a checkpoint directory or a loaded JSAE) on `model` and `tokens`.

    Writes into `output_dir`:
      * `jacobian_sparsity/{label}_jsae_eval_results.json` and `jacobian_linearity/…` (SAEBench format);
      * `core/{label}_input_sae_eval_results.json`, `core/{label}_output_sae_eval_results.json`
        (SAEBench core eval of the two SAEs; skipped when `core=False`);
      * `{label}_summary.json`: every number the report uses (sparsity incl. histogram, splice
        CE/KL for input/output/replacement, linearity, core headline numbers) with the paths of
        the JSONs they come from, per-sequence sums, and `intervals`: a 95% interval per metric
        (`sae_lens_jsae.evals.intervals`; n/a with the reason where a score means nothing).
    Returns the summary's path. `tokens`: (n_seqs, ctx) tensor or iterable of batches.
    `n_intervention_tokens`: intervention faithfulness (`evals.intervention`) on that many;
    `n_edge_path_tokens`: the edge measure again with integrated gradients (`edge_path_steps`
    midpoints) on that many, beside the tangent's; `heldout`: where the tokens come from
    (`evals.heldout.HeldOut.record()`), whose speeches cluster every interval.
    `splice`: splice scores computed already (by `splice_scores_multi`, several pairs in one pass);
    `precomputed`: this pair's results of a pass already run over `tokens` (`pair_metrics`'
    metrics, e.g. a sweep's one pass over all its pairs; `splice` then given too), with their
    `precomputed_timings`;
    `extra`: fields added to the summary (e.g. sweep labels).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sae = load_checkpoint(checkpoint, model) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if sae.mlp is None:
        sae.attach_mlp_from_model(model)
    sae = sae.to(model.cfg.device)
    # materialise once: every metric sees the same tokens in the same order
    budgets = EvalBudgets(n_tokens=n_tokens, n_splice_tokens=n_splice_tokens, n_linearity_tokens=n_linearity_tokens, n_edge_tokens=n_edge_tokens,
                          n_intervention_tokens=n_intervention_tokens, n_edge_path_tokens=n_edge_path_tokens,
                          n_core_reconstruction_tokens=n_core_reconstruction_tokens, n_core_sparsity_tokens=n_core_sparsity_tokens)
    toks = collect_tokens(tokens, budgets.max_tokens())
    mlp_error = check_mlp_matches(model, sae, toks) if check_mlp else None
    timings: dict[str, float] = dict(precomputed_timings or {})
    if precomputed is None:
        metrics, sp_cfg, lin_cfg = pair_metrics(model, sae, toks, splice=splice is None, edge_path_steps=edge_path_steps, batch_size=batch_size,
                                                linearity_kwargs=linearity_kwargs, sparsity_kwargs=sparsity_kwargs, **asdict(budgets))
        results = run_metrics(model, toks, metrics, batch_size=batch_size, desc=f"[{label}] held-out pass" if progress else None,
                              timings=timings)
    else:  # the pass ran already: only the SAEBench settings its JSONs record
        sp_cfg, lin_cfg = eval_configs(sae, toks.shape[1], n_tokens=n_tokens, n_linearity_tokens=n_linearity_tokens, batch_size=batch_size,
                                       sparsity_kwargs=sparsity_kwargs, linearity_kwargs=linearity_kwargs)
        results = dict(precomputed)
    splice = splice if splice is not None else results["splice"]
    if isinstance(splice, dict):
        splice = splice["jsae"]
    edges = results["edges"].to_dict() if "edges" in results else None
    edges_path = results["edges_path"].to_dict() if "edges_path" in results else None
    intervention = results["intervention"].to_dict() if "intervention" in results else None
    error_analysis = results["mlp_error"]
    sp_file = write_eval_output(sp_cfg, label, sae, results["jacobian_sparsity"], out / "jacobian_sparsity")
    lin_file = write_eval_output(lin_cfg, label, sae, results["linearity"], out / "jacobian_linearity")
    core_files: dict[str, Any] = {}
    core_skipped = f"SAEBench's core eval skipped: {SAE_BENCH_MISSING}" if core and SAE_BENCH_MISSING else None
    if core_skipped:
        print(f"[{label}] {core_skipped}")
    elif core:
        t0 = time.time()
        for which in ("input", "output"):
            path = run_core_eval(
                model, getattr(sae, f"{which}_sae"), toks, out / "core", label, f"{which}_sae", batch_size_prompts=batch_size,
                n_reconstruction_tokens=n_core_reconstruction_tokens, n_sparsity_variance_tokens=n_core_sparsity_tokens,
            )
            core_files[which] = {"file": str(path.relative_to(out)), **core_summary(path)}
        timings["core_s"] = time.time() - t0
    sp_json = json.loads(sp_file.read_text())
    lin_json = json.loads(lin_file.read_text())
    summary = {
        "format": SUMMARY_FORMAT,
        "label": label,
        "checkpoint": str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else None,
        "model_name": sae.cfg.metadata.model_name,
        "hook_name": sae.cfg.metadata.hook_name,
        "randomized": randomized,
        "jacobian_coefficient": jacobian_coefficient if jacobian_coefficient is not None else _jacobian_coefficient(sae, checkpoint),
        "d_sae": sae.cfg.d_sae,
        "k": sae.cfg.k,
        "n_parameters": sum(p.numel() for p in sae.parameters() if p.requires_grad),  # the two SAEs (the MLP is frozen)
        "dead_latents": splice.dead_latents,
        "mlp_relative_error": mlp_error,
        "jacobian_sparsity": sp_json["eval_result_unstructured"]["result"],
        "linearity": lin_json["eval_result_unstructured"]["result"],
        "splice": splice.to_dict(),
        "explained_variance": splice.explained_variance,
        "mlp_error": error_analysis.to_dict(),
        **({"edges": edges} if edges is not None else {}),
        **({"edges_path": edges_path} if edges_path is not None else {}),
        **({"intervention": intervention} if intervention is not None else {}),
        **({"heldout": heldout} if heldout is not None else {}),
        "core": core_files,
        **({"core_skipped": core_skipped} if core_skipped else {}),
        "files": {"jacobian_sparsity": str(sp_file.relative_to(out)), "jacobian_linearity": str(lin_file.relative_to(out))},
        "timings": timings,
        **(extra or {}),
    }
    summary["interval_method"] = interval_method(summary.get("heldout"))
    summary["intervals"] = summary_intervals(summary)
    path = out / f"{label}_summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def write_transcoder_summary(
    sae,
    splice: SpliceResult,
    output_dir: str | os.PathLike[str],
    *,
    label: str,
    checkpoint: Any = None,
    edges: dict[str, Any] | None = None,
    edges_by_upstream: dict[str, dict[str, Any]] | None = None,
    intervention: dict[str, Any] | None = None,
    intervention_by_upstream: dict[str, dict[str, Any]] | None = None,
    heldout: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `{label}_summary.json` of a transcoder scored by `splice_scores_multi` (its replacement
    splice, explained variance, L0 and dead latents, with 95% intervals) in `output_dir`.
    `edges`: its edge measure (`EdgeMeasureResult.to_dict()`) with the λ = 0 pair's input SAE as
    upstream; `edges_by_upstream`: the same with other upstream SAEs, by the pair's label."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "format": SUMMARY_FORMAT,
        "kind": "transcoder",
        "label": label,
        "architecture": sae.cfg.architecture(),
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "model_name": sae.cfg.metadata.model_name,
        "hook_name": sae.cfg.metadata.hook_name,
        "randomized": False,
        "d_sae": sae.cfg.d_sae,
        "k": sae.cfg.k,
        "active_latents_per_token": sae.cfg.k,
        "n_parameters": sum(p.numel() for p in sae.parameters()),
        "splice": splice.to_dict(),
        "explained_variance": splice.explained_variance,
        "dead_latents": splice.dead_latents,
        **({"edges": edges} if edges is not None else {}),
        **({"edges_by_upstream": edges_by_upstream} if edges_by_upstream else {}),
        **({"intervention": intervention} if intervention is not None else {}),
        **({"intervention_by_upstream": intervention_by_upstream} if intervention_by_upstream else {}),
        **({"heldout": heldout} if heldout is not None else {}),
        **(extra or {}),
    }
    summary["interval_method"] = interval_method(summary.get("heldout"))
    summary["intervals"] = summary_intervals(summary)
    path = out / f"{label}_summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def score_saes(
    model, saes: Sequence[Any], tokens: TokenSource, output_dir: str | os.PathLike[str], *, device: str = "cpu", **core_kwargs: Any
) -> list[Path]:
    """SAEBench core eval of any SAELens SAEs ('release/sae_id', a directory, or (release, id, SAE))."""
    paths = []
    for spec in saes:
        release, sae_id, sae = _load_extra_sae(spec, device)
        paths.append(run_core_eval(model, sae, tokens, Path(output_dir) / "core", release, sae_id, **core_kwargs))
    return paths


def find_summaries(folder: str | os.PathLike[str]) -> list[Path]:
    """The pairs' summary JSONs an evaluated run left in `folder`: `*_summary.json`, then the
    randomized control's under `randomized/` (as `jsae eval` over sweeps and `publish_frontier`
    write them). Transcoders' summaries (under `transcoders/`): `find_transcoder_summaries`."""
    root = Path(folder)
    return sorted(root.glob("*_summary.json")) + sorted(root.glob("randomized/*_summary.json"))


def find_transcoder_summaries(folder: str | os.PathLike[str]) -> list[Path]:
    """The transcoders' summary JSONs of an evaluated run (`transcoders/*_summary.json`)."""
    return sorted(Path(folder).glob("transcoders/*_summary.json"))


def compare(summaries: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str], *, extra_core: Sequence[str | os.PathLike[str]] = (),
            title: str = "Jacobian SAE evaluation", transcoders: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Write `report.md` and `report.html` (with PNG plots) in `output_dir` from summary JSONs.

    The first summary is the main JSAE; summaries with jacobian_coefficient 0 are λ=0 baselines;
    `randomized: true` ones are the randomized-LLM control; all non-randomized ones with a
    coefficient form the λ sweep. `extra_core`: SAEBench core JSONs of other SAEs to tabulate.
    """
    from sae_lens_jsae.report import write_report

    return write_report(summaries, output_dir, extra_core=extra_core, title=title, transcoders=transcoders)


def evaluate_and_compare(
    checkpoint: Any,
    model,
    tokens: TokenSource,
    output_dir: str | os.PathLike[str],
    *,
    baseline: Any = None,
    saes: Sequence[Any] = (),
    also: Sequence[str | os.PathLike[str]] = (),
    randomized: bool = False,
    **kwargs: Any,
) -> Path:
    """`jsae eval` in one call: evaluate the JSAE (and a λ=0 baseline, and other SAEs), then `compare`.

    `also`: summary JSONs from earlier runs (λ sweep, randomized control) to include. Returns report.md.
    """
    if isinstance(baseline, (str, os.PathLike)) and (Path(baseline) / "cfg.json").exists():
        lam = saved_jacobian_coefficient(json.loads((Path(baseline) / "cfg.json").read_text()))
        if lam != 0:  # before any work: the report would call a penalised pair "λ=0"
            raise ValueError(
                f"--baseline {baseline} was trained with jacobian_coefficient={lam}, not 0. The baseline must be a "
                "plain pair (λ=0); to compare two JSAEs, evaluate each and pass the other's summary with --also."
            )
    budgets = EvalBudgets.of(kwargs)
    toks = collect_tokens(tokens, budgets.max_tokens())
    # both pairs' splices in one pass over the same tokens (shared clean and zero-ablated runs)
    from sae_lens_jsae.evals.splice import splice_scores_multi

    pairs = {"jsae": checkpoint, **({"lambda0": baseline} if baseline is not None else {})}
    loaded = {k: (load_checkpoint(v, model) if isinstance(v, (str, os.PathLike)) else v).to(model.cfg.device) for k, v in pairs.items()}
    if kwargs.get("check_mlp", True):
        for sae in loaded.values():
            check_mlp_matches(model, sae, toks)
    splices = splice_scores_multi(model, loaded, toks, batch_size=max(1, kwargs.get("batch_size", 16) // 2),
                                  max_tokens=budgets.n_splice_tokens, progress=kwargs.get("progress", True))
    summaries = [evaluate_checkpoint(checkpoint, model, toks, output_dir, label="randomized_jsae" if randomized else "jsae", randomized=randomized,
                                     splice=splices["jsae"], **kwargs)]
    if baseline is not None:
        summaries.append(evaluate_checkpoint(baseline, model, toks, output_dir, label="randomized_lambda0" if randomized else "lambda0", randomized=randomized,
                                             jacobian_coefficient=0.0, splice=splices["lambda0"], **kwargs))
    core_paths = []
    if saes:
        core_kw = {k: v for k, v in kwargs.items() if k in ("batch_size",)}
        core_paths = score_saes(model, saes, toks, output_dir, device=str(model.cfg.device), batch_size_prompts=core_kw.get("batch_size", 16),
                                n_reconstruction_tokens=kwargs.get("n_core_reconstruction_tokens", 4096), n_sparsity_variance_tokens=kwargs.get("n_core_sparsity_tokens", 32_768))
    return compare([*summaries, *also], output_dir, extra_core=core_paths)
