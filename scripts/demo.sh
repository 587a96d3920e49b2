#!/usr/bin/env bash
# The offline demo: install if needed, then on SmolLM2-135M-Instruct layer 3 with the State of
# the Union corpus train a 3-point λ frontier (λ = 0, the rule 0.5·k²/d_model, 4 × the rule)
# from one activation stream and, side by side, the randomized-LLM control (the rule's λ);
# evaluate them with 95% intervals and write a report led by the frontier. CPU only, no network.
#   JSAE_DEMO_TOKENS   training tokens per pair (default: the config's runner.training_tokens)
#   JSAE_DEMO_OUT      output directory (default: outputs/demo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/frontier.sh"
SETS=()
if [ -n "${JSAE_DEMO_TOKENS:-}" ]; then SETS+=(--set "runner.training_tokens=$JSAE_DEMO_TOKENS"); fi
TRAINED=(--sweep "jacobian_coefficient=0,null,3.556")
RANDOMIZED=(--sweep "jacobian_coefficient=null")
EVAL=(--n-tokens 32768 --n-splice-tokens 2048 --n-linearity-tokens 256 --n-edge-tokens 8192 --n-intervention-tokens 2048 --seed 42)
run_frontier "${JSAE_DEMO_OUT:-outputs/demo}" configs/smollm2-135m-l3-demo.yaml SETS TRAINED RANDOMIZED EVAL
