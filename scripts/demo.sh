#!/usr/bin/env bash
# The offline demo: install if needed, then on SmolLM2-135M-Instruct layer 3 with the State of
# the Union corpus train a 3-point λ frontier (λ = 0, the rule 0.5·k²/d_model, 4 × the rule)
# from one activation stream and, side by side, the randomized-LLM control (the rule's λ);
# evaluate them with 95% intervals and write a report led by the frontier. CPU only, no network.
#   JSAE_DEMO_TOKENS   training tokens per pair (default: the config's runner.training_tokens)
#   JSAE_DEMO_OUT      output directory (default: outputs/demo)
# Training runs as two single-threaded processes, one per core (docs/performance.md, Threads).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CONFIG=configs/smollm2-135m-l3-demo.yaml
OUT="${JSAE_DEMO_OUT:-outputs/demo}"
SETS=()
if [ -n "${JSAE_DEMO_TOKENS:-}" ]; then SETS+=(--set "runner.training_tokens=$JSAE_DEMO_TOKENS"); fi
EVAL_BUDGET=(--n-tokens 32768 --n-splice-tokens 2048 --n-linearity-tokens 256 --seed 42)
start=$(date +%s)
mkdir -p "$OUT"

echo "== 1/3 train, side by side: the λ frontier (0, rule, 4×rule) | the randomized-LLM control (rule), then its evaluation"
python -m sae_lens_jsae train "$CONFIG" "${SETS[@]}" --set "runner.output_path=$OUT/trained" \
  --set "runner.checkpoint_path=$OUT/trained/checkpoints" --sweep "jacobian_coefficient=0,null,3.556" &
trained=$!
(
  python -m sae_lens_jsae train "$CONFIG" "${SETS[@]}" --set randomize_model=true --set "runner.output_path=$OUT/randomized" \
    --set "runner.checkpoint_path=$OUT/randomized/checkpoints" --sweep "jacobian_coefficient=null"
  python -m sae_lens_jsae eval "$OUT/randomized" --randomized "${EVAL_BUDGET[@]}" --output-dir "$OUT/eval_randomized"
) > "$OUT/randomized.log" 2>&1 &
randomized=$!
wait $trained || { echo "training the frontier failed" >&2; exit 1; }
wait $randomized || { echo "the randomized control failed: see $OUT/randomized.log" >&2; exit 1; }

echo "== 2/3 evaluate the frontier on the same tokens (paired intervals) with the control, write the report"
OMP_NUM_THREADS=2 python -m sae_lens_jsae eval "$OUT/trained" "${EVAL_BUDGET[@]}" \
  --also "$OUT"/eval_randomized/*_summary.json --output-dir "$OUT/eval"

echo "== 3/3 the paper's checks, by interval"
python scripts/reproduce_paper.py offline --demo-dir "$OUT" || true

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  trained pairs:  $OUT/trained/*  (randomized control: $OUT/randomized/*)"
echo "  training logs:  $OUT/*/*/train_log.jsonl"
echo "  report:         $OUT/eval/report.md  (and report.html)"
