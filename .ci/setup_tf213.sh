#!/usr/bin/env bash
# Create (idempotently) the second interpreter the trainer tests run under: TensorFlow 2.13 +
# wandb 0.15.12 (Keras 2), the pair pinned by the usual tensorflow/tensorflow:2.13.0-gpu image.
# Prints the venv's python path on its last stdout line; .ci/run exports it as
# TFWB_TF213_PYTHON. Everything else goes to stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TFWB_TF213_VENV:-$ROOT/.venv-tf213}"
PY="$VENV/bin/python"
STAMP="$VENV/.tfwb-ready"
# The stamp records what was installed; a changed pin list rebuilds the environment.
PINS="tensorflow-cpu==2.13.1 wandb==0.15.12 numpy<2 scikit-learn pillow pytest"

if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" ]]; then
  # Already built: only refresh the editable install (cheap) in case the checkout moved.
  "$PY" -m pip install -q --no-deps -e "$ROOT" >&2
  echo "$PY"
  exit 0
fi

BASE_PY="${TFWB_BASE_PYTHON:-python3.11}"
command -v "$BASE_PY" >/dev/null || BASE_PY=python3
"$BASE_PY" -m venv "$VENV" >&2
"$PY" -m pip install -q --upgrade pip >&2
# shellcheck disable=SC2086
"$PY" -m pip install -q tensorflow-cpu==2.13.1 wandb==0.15.12 'numpy<2' scikit-learn pillow pytest >&2
# --no-deps: the agent's own runtime deps (cryptography, watchdog…) are not needed to train, and
# pulling them could upgrade protobuf past what wandb 0.15.12 / TF 2.13 accept.
"$PY" -m pip install -q --no-deps -e "$ROOT" >&2
"$PY" -c "import tensorflow, wandb, tfwb_trainer" >&2
echo "$PINS" > "$STAMP"
echo "$PY"
