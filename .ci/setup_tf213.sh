#!/usr/bin/env bash
# Create (idempotently) an interpreter the trainer tests run under besides the agent's own (TF 2.21
# + wandb 0.31): TensorFlow 2.13.1 + wandb 0.15.12 (Keras 2), with the trainer plugin alone (the
# tfwb-trainer distribution, trainer_plugin/pyproject.toml) and its sweeps engine; the agent is
# not installed there.
#   .ci/setup_tf213.sh          the seed image's own pair (tensorflow/tensorflow:2.13.0-gpu):
#                               Python 3.8, in .venv-py38/ (or $TFWB_PY38_VENV)
#   .ci/setup_tf213.sh --py311  the same libraries on Python 3.11 (the pair tested before the
#                               plugin ran on 3.8), in .venv-tf213-py311/ (or $TFWB_PY311_TF213_VENV)
# Prints the venv's python path on its last stdout line (export it as TFWB_PY38_PYTHON or
# TFWB_PY311_TF213_PYTHON to use another place; the tests also find the default ones).
# Everything else goes to stderr. (`--py38` is accepted and means the default.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "--py311" ]]; then
  PYV=3.11; TAG=py311; VENV="${TFWB_PY311_TF213_VENV:-$ROOT/.venv-tf213-py311}"; BASE_PY="${TFWB_PY311_BASE:-}"
else
  PYV=3.8; TAG=py38; VENV="${TFWB_PY38_VENV:-$ROOT/.venv-py38}"; BASE_PY="${TFWB_PY38_BASE:-}"
fi
# The stamp records what was installed; a changed pin list rebuilds the environment.
PINS="$TAG tensorflow-cpu==2.13.1 wandb==0.15.12 numpy<2 scikit-learn pillow pytest sweeps==0.2.0"
INSTALL=(tensorflow-cpu==2.13.1 wandb==0.15.12 'numpy<2' scikit-learn pillow pytest sweeps==0.2.0)
PROJECT="$ROOT/trainer_plugin"
VERSION_CHECK="assert sys.version_info[:2] == (${PYV/./, }), sys.version"
CHECK="import sys, tensorflow, wandb, sweeps, tfwb_trainer; $VERSION_CHECK"
# The base Python: $TFWB_PY38_BASE / $TFWB_PY311_BASE, pyenv's (the development and CI machines
# have them), or PATH's.
if [[ -z "$BASE_PY" ]]; then
  for c in "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/$PYV.*/bin/python$PYV "$(command -v python$PYV || true)"; do
    if [[ -n "$c" && -x "$c" ]]; then BASE_PY="$c"; break; fi
  done
fi
if [[ -z "$BASE_PY" ]]; then
  echo "setup_tf213.sh: no Python $PYV found (pyenv's versions/$PYV.*, python$PYV on PATH);" \
       "install one or set TFWB_${TAG^^}_BASE=/path/to/python$PYV" >&2
  exit 1
fi
PY="$VENV/bin/python"
STAMP="$VENV/.tfwb-ready"

if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" ]]; then
  # Already built: only refresh the editable install (cheap) in case the checkout moved.
  "$PY" -m pip install -q --no-deps -e "$PROJECT" >&2
  echo "$PY"
  exit 0
fi

# The pinned environment without the plugin is built once per machine in a cache, keyed by the
# pins and the base Python, and each checkout gets a copy made of hard links (a second or two
# instead of a TensorFlow install): like pip's wheel cache, one level up. The copy is a venv of
# its own (its pyvenv.cfg, its own directories); only unchanged files are shared, and pip
# replaces a file rather than writing into it. TFWB_VENV_CACHE=off builds in place, as before.
CACHE="${TFWB_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tfwb-agent}"
build() {  # $1: where
  "$BASE_PY" -m venv "$1" >&2
  "$1/bin/python" -m pip install -q --disable-pip-version-check --no-compile "${INSTALL[@]}" >&2
}
rm -rf "$VENV"
if [[ "$CACHE" == "off" ]]; then
  build "$VENV"
else
  KEY="$(printf '%s\n%s\n' "$PINS" "$("$BASE_PY" -c 'import sys; print(sys.version)')" | sha256sum | cut -c1-16)"
  CACHED="$CACHE/venv-$TAG-$KEY"
  if [[ ! -f "$CACHED/.tfwb-cached" ]]; then
    mkdir -p "$CACHE"
    TMP="$CACHED.tmp.$$"
    rm -rf "$TMP"
    build "$TMP"
    "$TMP/bin/python" -c "import tensorflow, wandb, sweeps" >&2  # checked once, where it was built
    # Byte-compiled once here, so that no checkout compiles TensorFlow again on first import.
    "$TMP/bin/python" -m compileall -q -j 0 "$TMP/lib" >/dev/null 2>&1 || true
    # A venv's own path is written in its activate scripts only; the copy runs $VENV/bin/python.
    touch "$TMP/.tfwb-cached"
    rm -rf "$CACHED" && mv "$TMP" "$CACHED"
  fi
  cp -al "$CACHED" "$VENV" 2>/dev/null || cp -a "$CACHED" "$VENV"  # another file system: a real copy
  rm -f "$VENV/.tfwb-cached"
  # TensorFlow, wandb and sweeps were imported where the copy came from; here the plugin is what
  # is new, and the others only need to be found (importing them again is seconds of CPU).
  CHECK="import sys, importlib.util, tfwb_trainer; $VERSION_CHECK; "
  CHECK+="assert all(importlib.util.find_spec(m) for m in ('tensorflow', 'wandb', 'sweeps')), 'copy incomplete'"
fi
"$PY" -m pip install -q --no-deps -e "$PROJECT" >&2
"$PY" -c "$CHECK" >&2
echo "$PINS" > "$STAMP"
echo "$PY"
