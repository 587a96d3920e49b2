#!/usr/bin/env bash
# The λ frontier at the demo's budget, d_sae 4608 (the demo's config before it moved to 2304):
# 7 pairs on the trained model (paper loss at 0, ¼, 1, 4, 16 × the rule 0.889; the opt-in
# mlp_reconstruction_coefficient=1 at 1 and 4 × the rule) from one activation stream, 3 on the
# randomized model, 200 704 tokens each; then every pair evaluated on the same tokens.
# Writes runs/frontier-0.2m/ and copies the report and summaries here. Run from the repo root.
set -euo pipefail
source scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=runs/frontier-0.2m
SETS=(--set sae.d_sae=4608 --set runner.training_tokens=200000)
python -m sae_lens_jsae train configs/smollm2-135m-l3-demo.yaml "${SETS[@]}" \
  --set runner.output_path=$OUT/trained --set runner.checkpoint_path=$OUT/trained/checkpoints \
  --sweep "jacobian_coefficient=0,0.2222,null,3.556,14.22" \
  --sweep "jacobian_coefficient=null,3.556;mlp_reconstruction_coefficient=1" > $OUT.trained.log 2>&1 &
python -m sae_lens_jsae train configs/smollm2-135m-l3-demo.yaml "${SETS[@]}" --set randomize_model=true \
  --set runner.output_path=$OUT/randomized --set runner.checkpoint_path=$OUT/randomized/checkpoints \
  --sweep "jacobian_coefficient=0,null,3.556" > $OUT.randomized.log 2>&1 &
wait
python -m sae_lens_jsae eval $OUT/trained --randomized-sweep $OUT/randomized --seed 42 \
  --n-tokens 20480 --n-splice-tokens 4096 --n-linearity-tokens 256 --output-dir $OUT/eval
python scripts/reproduce_paper.py offline --demo-dir $OUT/eval > $OUT/eval/reproduce_paper.txt || true
DEST=docs/results/frontier-0.2m
cp -r $OUT/eval/* $DEST/
mkdir -p $DEST/train_logs
for d in $OUT/trained/* $OUT/randomized/*; do
  [ -f "$d/train_log.jsonl" ] && cp "$d/train_log.jsonl" "$DEST/train_logs/$(basename "$(dirname "$d")")-$(basename "$d").jsonl"
done
