"""Evaluations of Jacobian SAEs: Jacobian sparsity, CE-loss/KL splices, linearity, SAEBench.

Pure functions over a TransformerLens model, a JSAE and token batches ((n_seqs, ctx) tensors or
iterables of them); `evaluate_checkpoint` runs them all and writes SAEBench-format JSONs plus a
summary, `compare` renders `report.md` / `report.html` from summaries; `evaluate_sweeps_and_compare`
does whole λ sweeps (the frontier). Intervals: `sae_lens_jsae.evals.intervals`.
"""

# Each metric module registers its summary block with `intervals` when imported (intervals
# imports no metric), so the package imports them all: any summary read through it sees them.
from sae_lens_jsae.evals import edges, error_analysis, intervention  # noqa: F401
from sae_lens_jsae.evals.linearity import (
    LinearityResult,
    classify_curves,
    linearity,
    linearity_of_inputs,
    scan_curves,
)
from sae_lens_jsae.evals.pipeline import (
    check_mlp_matches,
    compare,
    evaluate_and_compare,
    evaluate_checkpoint,
    find_summaries,
    load_checkpoint,
    score_saes,
)
from sae_lens_jsae.evals.saebench import run_core_eval, run_eval, run_linearity_eval
from sae_lens_jsae.evals.sparsity import (
    JacobianSparsityAccumulator,
    JacobianSparsityResult,
    jacobian_sparsity,
    jacobian_sparsity_of_values,
)
from sae_lens_jsae.evals.splice import SpliceResult, SpliceScore, splice_scores, splice_scores_multi
from sae_lens_jsae.evals.sweep import evaluate_sweep, evaluate_sweeps_and_compare, find_pairs

__all__ = [
    "JacobianSparsityAccumulator",
    "JacobianSparsityResult",
    "LinearityResult",
    "SpliceResult",
    "SpliceScore",
    "check_mlp_matches",
    "classify_curves",
    "compare",
    "evaluate_and_compare",
    "evaluate_checkpoint",
    "evaluate_sweep",
    "evaluate_sweeps_and_compare",
    "find_pairs",
    "find_summaries",
    "jacobian_sparsity",
    "jacobian_sparsity_of_values",
    "linearity",
    "linearity_of_inputs",
    "load_checkpoint",
    "run_core_eval",
    "run_eval",
    "run_linearity_eval",
    "scan_curves",
    "score_saes",
    "splice_scores",
    "splice_scores_multi",
]
