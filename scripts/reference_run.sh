#!/usr/bin/env bash
# The reference run on the offline default (configs/smollm2-135m-l3-reference.yaml): a λ sweep
# of the paper's loss (0, ¼, 1, 4, 16 × the rule 0.5·k²/d_model = 0.889), each pair on 2M tokens
# from ONE activation stream, beside the randomized-LLM control sweep (0, 1, 4 × the rule); then
# evaluation with intervals, the frontier report and the paper checks. CPU only, no network;
# ≈ 1 h 45 min on 2 cores (docs/results/README.md has the measured times).
#   REF_OUT      output directory (default: outputs/reference)
#   REF_TOKENS   training tokens per pair (default: the config's 2M)
#   REF_PUBLISH  also copy the results there (docs/results/reference-2m was written this way)
#   REF_SETS     more `jsae train --set` overrides, space-separated (docs/results/reference-2m-float32:
#                REF_SETS=sae.jacobian_dtype=null, the float32 penalty)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/frontier.sh"
SETS=()
if [ -n "${REF_TOKENS:-}" ]; then SETS+=(--set "runner.training_tokens=$REF_TOKENS"); fi
for s in ${REF_SETS:-}; do SETS+=(--set "$s"); done
TRAINED=(--sweep "jacobian_coefficient=0,0.2222,0.8889,3.556,14.22")
RANDOMIZED=(--sweep "jacobian_coefficient=0,0.8889,3.556")
EVAL=(--n-tokens 102400 --n-splice-tokens 8192 --n-linearity-tokens 512 --seed 42)
# the 5 pairs' evaluation in 2 processes, one thread each (the randomized lane is done by then)
export FRONTIER_EVAL_PROCESSES=${FRONTIER_EVAL_PROCESSES:-2}
run_frontier "${REF_OUT:-outputs/reference}" configs/smollm2-135m-l3-reference.yaml SETS TRAINED RANDOMIZED EVAL
if [ -n "${REF_PUBLISH:-}" ]; then publish_frontier "${REF_OUT:-outputs/reference}" "$REF_PUBLISH"; fi
