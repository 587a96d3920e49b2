#!/usr/bin/env bash
# Install if needed, then run the test-suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
python -m pytest -q -rs "$@"  # -rs: every skipped test with its reason
