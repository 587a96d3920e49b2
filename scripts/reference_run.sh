#!/usr/bin/env bash
# The reference run on the offline default (configs/smollm2-135m-l3-reference.yaml): a λ sweep
# of the paper's loss (0, ¼, 1, 4, 16 × the rule 0.5·k²/d_model) and of the opt-in
# MLP-reconstruction term (1 and 4 × the rule, mlp_reconstruction_coefficient=1), each pair on
# 2M tokens from ONE activation stream, the randomized-LLM control sweep (0, 1, 4 × the rule),
# then evaluation with intervals and the frontier report. CPU only, no network.
#   REF_OUT      output directory (default: outputs/reference)
#   REF_TOKENS   training tokens per pair (default: the config's 2M)
# Two single-threaded processes run side by side (one per core; docs/performance.md, Threads).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CONFIG=configs/smollm2-135m-l3-reference.yaml
OUT="${REF_OUT:-outputs/reference}"
SETS=()
if [ -n "${REF_TOKENS:-}" ]; then SETS+=(--set "runner.training_tokens=$REF_TOKENS"); fi
EVAL=(--n-tokens 102400 --n-splice-tokens 8192 --n-linearity-tokens 512 --seed 42)
RULE=0.8889; QUARTER=0.2222; X4=3.556; X16=14.22
start=$(date +%s)
mkdir -p "$OUT"

echo "== 1/3 train (two processes): the trained-model sweep | the randomized-LLM sweep, then its evaluation"
python -m sae_lens_jsae train "$CONFIG" "${SETS[@]}" \
  --set "runner.output_path=$OUT/trained" --set "runner.checkpoint_path=$OUT/trained/checkpoints" \
  --sweep "jacobian_coefficient=0,$QUARTER,$RULE,$X4,$X16" \
  --sweep "jacobian_coefficient=$RULE,$X4;mlp_reconstruction_coefficient=1" > "$OUT/trained.log" 2>&1 &
trained=$!
(
  python -m sae_lens_jsae train "$CONFIG" "${SETS[@]}" --set randomize_model=true \
    --set "runner.output_path=$OUT/randomized" --set "runner.checkpoint_path=$OUT/randomized/checkpoints" \
    --sweep "jacobian_coefficient=0,$RULE,$X4"
  python -m sae_lens_jsae eval "$OUT/randomized" --randomized "${EVAL[@]}" --output-dir "$OUT/eval_randomized"
) > "$OUT/randomized.log" 2>&1 &
randomized=$!
wait $trained || { echo "trained sweep failed: see $OUT/trained.log" >&2; exit 1; }
wait $randomized || { echo "randomized sweep failed: see $OUT/randomized.log" >&2; exit 1; }
echo "   trained in $(( $(date +%s) - start )) s"

echo "== 2/3 evaluate the trained sweep on the same tokens (intervals, paired differences) and write the report"
OMP_NUM_THREADS=2 python -m sae_lens_jsae eval "$OUT/trained" "${EVAL[@]}" \
  --also "$OUT"/eval_randomized/*_summary.json --output-dir "$OUT/eval"

echo "== 3/3 paper checks"
python scripts/reproduce_paper.py offline --demo-dir "$OUT" || true
echo "reference run finished in $(( $(date +%s) - start )) s; report: $OUT/eval/report.md"
