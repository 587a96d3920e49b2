#!/usr/bin/env bash
# The comparison run on the offline default (configs/smollm2-135m-l3-reference.yaml: SmolLM2-135M
# layer 3, d_sae 2304, k 32, batch 4096, lr 1e-3): which method makes the MLP's computation
# sparsest at equal faithfulness? Ten models on the same tokens, in three lanes (one process per
# core, one activation stream each, over the same token order), then one evaluation on the same held-out
# tokens (edges for 80% coverage, replacement CE/KL scores, MLP-output EV, intervals, paired Δ)
# and the report led by the comparison plot.
#   lane A: the λ = 0 pair; the paper's loss at the rule (0.889) and 4× (3.556); the
#           MLP-consistency term (c = 1) at 4×
#   lane B: c = 1 at 16× (14.22); the scale-free per-node penalty h = 2 and 8 (with c = 1, λ = 0)
#   lane C (after A, on its core): TopK transcoders k = 32 and 64, a skip transcoder k = 32
#   CMP_OUT      output directory (default: outputs/comparison)
#   CMP_TOKENS   training tokens per model (default: the config's 2M)
#   CMP_SETS     more `jsae train --set` overrides, space-separated
#   CMP_PUBLISH  also copy the results there (docs/results/…)
#   CMP_EVAL     `jsae eval` budget arguments (default below)
#   CMP_MODELS   all (default: the ten models above) or two_hours: the six that fit 2 h at 2M tokens
#                on 2 shared cores, one strength per method (λ = 0; paper rule; c = 1 at 4×; h = 2;
#                transcoder k = 32; skip transcoder k = 32): lane A the three pairs, then B (h = 2)
#                and C (the two transcoders) on the other core
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/frontier.sh"  # install, offline env, one thread per process, publish_frontier
OUT=${CMP_OUT:-outputs/comparison}
CONFIG=configs/smollm2-135m-l3-reference.yaml
SETS=()
if [ -n "${CMP_TOKENS:-}" ]; then SETS+=(--set "runner.training_tokens=$CMP_TOKENS"); fi
for s in ${CMP_SETS:-}; do SETS+=(--set "$s"); done
read -r -a EVAL <<< "${CMP_EVAL:---n-tokens 32768 --n-splice-tokens 8192 --n-linearity-tokens 256 --n-edge-tokens 8192 --n-graphs 1 --seed 42}"
start=$(date +%s)
mkdir -p "$OUT"

lane() {  # lane NAME SWEEP… : one `jsae train` process, its models on one activation stream
  local name=$1; shift
  python -m sae_lens_jsae train "$CONFIG" "${SETS[@]}" --set "runner.output_path=$OUT/$name" \
    --set "runner.checkpoint_path=$OUT/$name/checkpoints" "$@" > "$OUT/train_$name.log" 2>&1
  echo "   lane $name done after $(( $(date +%s) - start )) s" | tee -a "$OUT/train_wall_time.txt"
}
echo "== 1/3 train three lanes, two at a time (logs: $OUT/train_{A,B,C}.log)"
case "${CMP_MODELS:-all}" in
  all)  # A then C on one core, B on the other: B's three penalised pairs take about as long as
        # A's four pairs plus C's three transcoders
    LANE_A=(--sweep "jacobian_coefficient=0,0.8889,3.556" --sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=3.556")
    LANE_B=(--sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=14.22"
            --sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=0;edge_sparsity_coefficient=2,8")
    LANE_C=(--sweep "architecture=topk_transcoder;k=32,64" --sweep "architecture=topk_skip_transcoder;k=32")
    C_AFTER=A ;;
  two_hours)  # A on one core; B (one penalised pair) then C on the other
    LANE_A=(--sweep "jacobian_coefficient=0,0.8889" --sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=3.556")
    LANE_B=(--sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=0;edge_sparsity_coefficient=2")
    LANE_C=(--sweep "architecture=topk_transcoder;k=32" --sweep "architecture=topk_skip_transcoder;k=32")
    C_AFTER=B ;;
  *) echo "CMP_MODELS must be 'all' or 'two_hours', not '$CMP_MODELS'" >&2; exit 2 ;;
esac
if [ "$C_AFTER" = A ]; then
  ( lane A "${LANE_A[@]}"; lane C "${LANE_C[@]}" ) & first=$!
  lane B "${LANE_B[@]}" & second=$!
else
  lane A "${LANE_A[@]}" & first=$!
  ( lane B "${LANE_B[@]}"; lane C "${LANE_C[@]}" ) & second=$!
fi
wait $first || { echo "a lane failed: see $OUT/train_{A,B,C}.log" >&2; exit 1; }
wait $second || { echo "a lane failed: see $OUT/train_{A,B,C}.log" >&2; exit 1; }
echo "   training done after $(( $(date +%s) - start )) s" | tee -a "$OUT/train_wall_time.txt"

echo "== 2/3 evaluate every model on the same held-out tokens, write the report"
OMP_NUM_THREADS=1 python -m sae_lens_jsae eval "$OUT/A" "$OUT/B" "$OUT/C" "${EVAL[@]}" --processes 2 --output-dir "$OUT/eval"

echo "== 3/3 the training trend"
python scripts/training_trend.py "$OUT/A" --out "$OUT/eval" || true
echo "finished in $(( $(date +%s) - start )) s" | tee "$OUT/wall_time.txt"
echo "  report: $OUT/eval/report.md (and report.html)"
if [ -n "${CMP_PUBLISH:-}" ]; then
  mkdir -p "$CMP_PUBLISH/train_logs"
  cp -r "$OUT"/eval/* "$CMP_PUBLISH/"
  rm -rf "$CMP_PUBLISH/graphs"
  for d in "$OUT"/A/* "$OUT"/B/* "$OUT"/C/*; do
    if [ -f "$d/train_log.jsonl" ]; then cp "$d/train_log.jsonl" "$CMP_PUBLISH/train_logs/$(basename "$(dirname "$d")")-$(basename "$d").jsonl"; fi
  done
  cp "$OUT"/wall_time.txt "$OUT"/train_wall_time.txt "$CMP_PUBLISH/"
fi
