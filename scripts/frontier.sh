#!/usr/bin/env bash
# Sourced by demo.sh and reference_run.sh: install if needed, then `run_frontier`.
# Training and evaluation run single-threaded, one process per core (docs/performance.md, Threads),
# so the results do not depend on how busy the machine is.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# run_frontier OUT CONFIG SETS TRAINED RANDOMIZED EVAL  (the last four: names of bash arrays)
#   SETS: `jsae train` overrides for both sweeps; TRAINED / RANDOMIZED: their `--sweep` arguments;
#   EVAL: `jsae eval` budget arguments.
# 1. the trained-model sweep | the randomized-LLM sweep then its evaluation, side by side;
# 2. the trained sweep evaluated on the same tokens with the randomized summaries: OUT/eval/report.md
#    (in one process with 2 threads; FRONTIER_EVAL_PROCESSES=N: its pairs split over N processes);
# 3. the paper's checks by interval (informational: a FAIL does not stop the script).
run_frontier() {
  local out=$1 config=$2
  local -n sets_=$3 trained_=$4 randomized_=$5 eval_=$6
  local start; start=$(date +%s)
  mkdir -p "$out"
  echo "== 1/3 train, side by side: the λ sweep (${trained_[*]}) | the randomized-LLM control (${randomized_[*]}), then its evaluation"
  python -m sae_lens_jsae train "$config" "${sets_[@]}" --set "runner.output_path=$out/trained" \
    --set "runner.checkpoint_path=$out/trained/checkpoints" "${trained_[@]}" &
  local trained=$!
  (
    python -m sae_lens_jsae train "$config" "${sets_[@]}" --set randomize_model=true --set "runner.output_path=$out/randomized" \
      --set "runner.checkpoint_path=$out/randomized/checkpoints" "${randomized_[@]}"
    python -m sae_lens_jsae eval "$out/randomized" --randomized "${eval_[@]}" --output-dir "$out/eval_randomized"
  ) > "$out/randomized.log" 2>&1 &
  local randomized=$!
  wait $trained || { echo "training the λ sweep failed" >&2; return 1; }
  wait $randomized || { echo "the randomized control failed: see $out/randomized.log" >&2; return 1; }
  echo "   training done after $(( $(date +%s) - start )) s"

  echo "== 2/3 evaluate the sweep on the same tokens (paired intervals) with the control, write the report"
  local split=() threads=2  # one process with two threads, or the pairs over N one-thread processes
  if [ "${FRONTIER_EVAL_PROCESSES:-1}" -gt 1 ]; then split=(--processes "$FRONTIER_EVAL_PROCESSES"); threads=1; fi
  OMP_NUM_THREADS=$threads python -m sae_lens_jsae eval "$out/trained" "${eval_[@]}" "${split[@]}" \
    --also "$out"/eval_randomized/*_summary.json --output-dir "$out/eval"

  echo "== 3/3 the paper's checks, by interval; the training trend"
  python scripts/reproduce_paper.py offline --demo-dir "$out" | tee "$out/eval/reproduce_paper.txt" || true
  python scripts/training_trend.py "$out/trained" --out "$out/eval" || true
  echo
  echo "finished in $(( $(date +%s) - start )) s" | tee "$out/wall_time.txt"
  echo "  trained pairs:  $out/trained/*  (randomized control: $out/randomized/*)"
  echo "  training logs:  $out/*/*/train_log.jsonl"
  echo "  report:         $out/eval/report.md  (and report.html)"
}

# publish_frontier OUT DEST: copy a run's report, figures, summaries (the randomized control's
# under DEST/randomized/), training logs and wall time into DEST (e.g. docs/results/…).
publish_frontier() {
  local out=$1 dest=$2
  mkdir -p "$dest/randomized" "$dest/train_logs"
  cp -r "$out"/eval/* "$dest/"
  rm -rf "$dest/graphs"  # large; `jsae eval` rewrites them
  cp "$out"/eval_randomized/*_summary.json "$dest/randomized/"
  for d in "$out"/trained/* "$out"/randomized/*; do
    if [ -f "$d/train_log.jsonl" ]; then cp "$d/train_log.jsonl" "$dest/train_logs/$(basename "$(dirname "$d")")-$(basename "$d").jsonl"; fi
  done
  cp "$out/wall_time.txt" "$dest/" 2>/dev/null || true
}
