#!/usr/bin/env bash
# The faithfulness frontier run (issues 26 and 27) on the offline default
# (configs/smollm2-135m-l3-reference.yaml: SmolLM2-135M layer 3, d_sae 2304, k 32, batch 4096,
# lr 1e-3, the training stream shuffled across speeches): every method at three or more strengths,
# trained in four lanes (one `jsae train` process each, one activation stream per lane, the same
# token order in all), then one `jsae eval` on the same corpus-spread held-out tokens: edges for
# 80%, replacement CE/KL scores, error share and intervention faithfulness, with intervals.
#   lane A: the λ = 0 pair; the paper's loss at λ = 0.222, 0.889 (the rule), 3.556; the
#           MLP-consistency term c = 1 at λ = 0.889, 3.556, 14.22
#   lane B: the per-node edge penalty h = 0.5, 2, 8 (c = 1, λ = 0); the intervention-consistency
#           term w = 1, 4, 16 on top of the recommended loss (c = 1, λ = 0, h = 2)
#   lane C: TopK transcoders k = 16, 32, 64; skip transcoders k = 16, 32, 64; skip k = 32 with the
#           consistency term w = 1, 4
#   lane D: the end-to-end replacement term r = 0.25, 1, 4 on top of the recommended loss
#   FR_OUT     output directory (default: outputs/faithfulness)
#   FR_TOKENS  training tokens per model (default 204800 = 50 steps of 4096)
#   FR_EVAL    `jsae eval` budget arguments (default below)
#   FR_PUBLISH also copy the results there (docs/results/…)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/frontier.sh"  # install, offline env, one thread per process
OUT=${FR_OUT:-outputs/faithfulness}
CONFIG=configs/smollm2-135m-l3-reference.yaml
TOKENS=${FR_TOKENS:-204800}
STEPS=$(( TOKENS / 4096 ))
SETS=(--set "runner.training_tokens=$TOKENS" --set "runner.lr_decay_steps=$(( STEPS / 5 ))")
read -r -a EVAL <<< "${FR_EVAL:---n-tokens 8192 --n-splice-tokens 32768 --n-linearity-tokens 128 --n-edge-tokens 32768 --n-intervention-tokens 8192 --n-edge-path-tokens 2048 --no-core --n-graphs 0 --seed 42}"
start=$(date +%s)
mkdir -p "$OUT"
REC="mlp_reconstruction_coefficient=1;jacobian_coefficient=0;edge_sparsity_coefficient=2"

lane() {  # lane NAME SWEEP… : one `jsae train` process, its models on one activation stream
  local name=$1; shift
  python -m sae_lens_jsae train "$CONFIG" "${SETS[@]}" --set "runner.output_path=$OUT/$name" \
    --set "runner.checkpoint_path=$OUT/$name/checkpoints" "$@" > "$OUT/train_$name.log" 2>&1
  echo "   lane $name done after $(( $(date +%s) - start )) s" | tee -a "$OUT/train_wall_time.txt"
}
echo "== 1/2 train four lanes, two at a time (logs: $OUT/train_{A,B,C,D}.log)"
( lane A --sweep "jacobian_coefficient=0,0.2222,0.8889,3.556" --sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=0.8889,3.556,14.22"
  lane C --sweep "architecture=topk_transcoder;k=16,32,64" --sweep "architecture=topk_skip_transcoder;k=16,32,64" \
         --sweep "architecture=topk_skip_transcoder;k=32;intervention_consistency_coefficient=1,4" ) & first=$!
( lane B --sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=0;edge_sparsity_coefficient=0.5,2,8" \
         --sweep "$REC;intervention_consistency_coefficient=1,4,16"
  lane D --sweep "$REC;replacement_coefficient=0.25,1,4" ) & second=$!
wait $first || { echo "a lane failed: see $OUT/train_{A,C}.log" >&2; exit 1; }
wait $second || { echo "a lane failed: see $OUT/train_{B,D}.log" >&2; exit 1; }
echo "   training done after $(( $(date +%s) - start )) s" | tee -a "$OUT/train_wall_time.txt"

echo "== 2/2 evaluate every model on the same corpus-spread held-out tokens, write the report"
OMP_NUM_THREADS=1 python -m sae_lens_jsae eval "$OUT/A" "$OUT/B" "$OUT/C" "$OUT/D" "${EVAL[@]}" --processes 2 --output-dir "$OUT/eval"
echo "finished in $(( $(date +%s) - start )) s" | tee "$OUT/wall_time.txt"
echo "  report: $OUT/eval/report.md (and report.html)"
if [ -n "${FR_PUBLISH:-}" ]; then
  mkdir -p "$FR_PUBLISH/train_logs"
  cp -r "$OUT"/eval/* "$FR_PUBLISH/"
  for d in "$OUT"/A/* "$OUT"/B/* "$OUT"/C/* "$OUT"/D/*; do
    if [ -f "$d/train_log.jsonl" ]; then cp "$d/train_log.jsonl" "$FR_PUBLISH/train_logs/$(basename "$(dirname "$d")")-$(basename "$d").jsonl"; fi
  done
  cp "$OUT"/wall_time.txt "$OUT"/train_wall_time.txt "$FR_PUBLISH/"
fi
