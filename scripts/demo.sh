#!/usr/bin/env bash
# The offline demo: install if needed, train a JSAE and its λ=0 baseline (one activation
# stream) and a randomized-LLM control on SmolLM2-135M-Instruct layer 3 with the State of the
# Union corpus, evaluate them, and write a report. CPU only, no network.
#   JSAE_DEMO_TOKENS   training tokens per run (default: the config's runner.training_tokens)
#   JSAE_DEMO_OUT      output directory (default: outputs/demo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
CONFIG=configs/smollm2-135m-l3-demo.yaml
OUT="${JSAE_DEMO_OUT:-outputs/demo}"
SETS=(--set "runner.output_path=$OUT" --set "runner.checkpoint_path=$OUT/checkpoints")
if [ -n "${JSAE_DEMO_TOKENS:-}" ]; then SETS+=(--set "runner.training_tokens=$JSAE_DEMO_TOKENS"); fi
start=$(date +%s)

echo "== 1/4 train the JSAE (λ from the rule 0.5·k²/d_model) and the λ=0 pair from one activation stream"
python -m sae_lens_jsae train "$CONFIG" "${SETS[@]}" --sweep jacobian_coefficient=0,null

echo "== 2/4 train the randomized-LLM control (same config, re-initialised model)"
python -m sae_lens_jsae train "$CONFIG" "${SETS[@]}" --set randomize_model=true \
  --set "runner.output_path=$OUT/randomized" --set "runner.checkpoint_path=$OUT/randomized/checkpoints"

echo "== 3/4 evaluate the randomized control on the randomized model"
EVAL_BUDGET=(--n-tokens 102400 --n-splice-tokens 2048 --n-core-reconstruction-tokens 2048 --n-core-sparsity-tokens 16384 --n-linearity-tokens 256)
python -m sae_lens_jsae eval "$OUT/randomized" --randomized --seed 42 --no-core "${EVAL_BUDGET[@]}" --output-dir "$OUT/eval_randomized"

echo "== 4/4 evaluate the JSAE against the λ=0 pair and write the report"
python -m sae_lens_jsae eval "$OUT/jacobian_coefficient=auto" --baseline "$OUT/jacobian_coefficient=0" \
  --also "$OUT"/eval_randomized/*_summary.json "${EVAL_BUDGET[@]}" --output-dir "$OUT/eval"

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  trained pairs:  $OUT/jacobian_coefficient=auto  $OUT/jacobian_coefficient=0  $OUT/randomized"
echo "  training logs:  $OUT/*/train_log.jsonl"
echo "  report:         $OUT/eval/report.md  (and report.html)"
