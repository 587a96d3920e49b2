#!/usr/bin/env bash
# The faithfulness frontiers at 1M tokens per model (issue 26): every method at three strengths,
# ALL 17 models trained in one `jsae train` process on ONE activation stream (each batch of
# SmolLM2-135M layer-3 activations is computed once and feeds every model), then one `jsae eval`
# on the same corpus-spread held-out tokens (32 768 splice and edge tokens, intervals by speech):
#   the λ = 0 pair (the baseline, and the transcoders' upstream basis)
#   the paper's loss λ = 0.2222, 0.8889 (its rule of thumb), 3.556
#   MLP consistency c = 1 at λ = 0.8889, 3.556, 14.22
#   the per-node edge penalty h = 0.5, 2, 8 (c = 1, λ = 0)
#   h = 2 + intervention consistency w = 1 (what the README offers for graphs read as interventions)
#   TopK and skip transcoders at k = 16, 32, 64
# Same config as faithfulness_run.sh (configs/smollm2-135m-l3-reference.yaml, the stream shuffled
# across speeches; `jacobian_dtype: auto`, so bf16 penalty products only where the CPU has native
# bf16). 2 threads in the training process; the eval over 2 one-thread processes, scoring the
# replacement splice only (what the frontiers read; the input/output splices would triple the
# pairs' model runs). Then the era check (scripts/era_agreement.py) from the summaries.
#   FR_MODELS  17 (default: the above) | 8 (the faithfulness-0.5m run: λ = 0, the edge penalty, h = 2 + w = 1 and
#              the skip transcoders, with float32 penalty products and all three splices)
#   FR_OUT     output directory (default: outputs/faithfulness-1m)
#   FR_TOKENS  training tokens per model (default 1024000 = 250 steps of 4096)
#   FR_EVAL    `jsae eval` arguments (default below)
#   FR_STAGE   all (default) | train | eval
#   FR_PUBLISH also copy the results there (docs/results/…)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/frontier.sh"  # install, offline env
OUT=${FR_OUT:-outputs/faithfulness-1m}
CONFIG=configs/smollm2-135m-l3-reference.yaml
TOKENS=${FR_TOKENS:-1024000}
STEPS=$(( TOKENS / 4096 ))
STAGE=${FR_STAGE:-all}
REC="mlp_reconstruction_coefficient=1;jacobian_coefficient=0;edge_sparsity_coefficient=2"
BUDGETS="--n-tokens 8192 --n-splice-tokens 32768 --n-linearity-tokens 128 --n-edge-tokens 32768 --n-intervention-tokens 8192 --n-edge-path-tokens 2048 --no-core --n-graphs 0 --seed 42"
case ${FR_MODELS:-17} in
  17) SWEEPS=(--sweep "jacobian_coefficient=0,0.2222,0.8889,3.556" --sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=0.8889,3.556,14.22"
              --sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=0;edge_sparsity_coefficient=0.5,2,8"
              --sweep "$REC;intervention_consistency_coefficient=1"
              --sweep "architecture=topk_transcoder;k=16,32,64" --sweep "architecture=topk_skip_transcoder;k=16,32,64")
      SETS=(); BUDGETS="--splices replacement $BUDGETS" ;;
  8) SWEEPS=(--sweep "jacobian_coefficient=0" --sweep "mlp_reconstruction_coefficient=1;jacobian_coefficient=0;edge_sparsity_coefficient=0.5,2,8"
             --sweep "$REC;intervention_consistency_coefficient=1" --sweep "architecture=topk_skip_transcoder;k=16,32,64")
     SETS=(--set sae.jacobian_dtype=null) ;;
  *) echo "FR_MODELS must be 17 or 8" >&2; exit 2 ;;
esac
N_MODELS=${FR_MODELS:-17}
read -r -a EVAL <<< "${FR_EVAL:-$BUDGETS}"
mkdir -p "$OUT"
if [ "$STAGE" != eval ]; then
  start=$(date +%s)
  echo "== train $N_MODELS models on one activation stream, $TOKENS tokens each (log: $OUT/train.log)"
  OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 python -m sae_lens_jsae train "$CONFIG" \
    --set "runner.training_tokens=$TOKENS" --set "runner.lr_decay_steps=$(( STEPS / 5 ))" "${SETS[@]}" \
    --set "runner.output_path=$OUT/models" --set "runner.checkpoint_path=$OUT/models/checkpoints" "${SWEEPS[@]}" \
    > "$OUT/train.log" 2>&1 || { echo "training failed: see $OUT/train.log" >&2; exit 1; }
  echo "training ($N_MODELS models, one stream) finished in $(( $(date +%s) - start )) s" | tee "$OUT/train_wall_time.txt"
fi
if [ "$STAGE" != train ]; then
  start=$(date +%s)
  echo "== evaluate every model on the same corpus-spread held-out tokens, write the report"
  OMP_NUM_THREADS=1 python -m sae_lens_jsae eval "$OUT/models" "${EVAL[@]}" --processes 2 --output-dir "$OUT/eval"
  echo "eval finished in $(( $(date +%s) - start )) s" | tee "$OUT/eval_wall_time.txt"
  python scripts/era_agreement.py "$OUT/eval" --out "$OUT/eval/era_agreement.json"
  echo "  report: $OUT/eval/report.md (and report.html)"
fi
if [ -n "${FR_PUBLISH:-}" ]; then
  mkdir -p "$FR_PUBLISH/train_logs"
  cp -r "$OUT"/eval/* "$FR_PUBLISH/"
  for d in "$OUT"/models/*; do
    if [ -f "$d/train_log.jsonl" ]; then cp "$d/train_log.jsonl" "$FR_PUBLISH/train_logs/$(basename "$d").jsonl"; fi
  done
  cp "$OUT"/*wall_time.txt "$FR_PUBLISH/"
fi
