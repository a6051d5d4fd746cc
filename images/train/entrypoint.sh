#!/usr/bin/env bash
# Entrypoint of the training image: check the runs volume, then run the given training script.
#
#   tfwb-train-entrypoint SCRIPT.py [ARGS...]   ->  exec python SCRIPT.py ARGS...
#
# The runs volume is $TFWB_RUNS_DIR (default /runs). It must exist and be writable by this user;
# otherwise wandb would write the run into the container's own layer, where the agent never sees
# it and where it is lost with the container. The check is a real write: `test -w` answers from
# the mode bits and is wrong for root-squashed NFS and read-only mounts.
set -euo pipefail

runs_dir="${TFWB_RUNS_DIR:-/runs}"
me="$(id -un 2>/dev/null || echo "?") (uid $(id -u), gid $(id -g))"

fail() {
  echo "tfwb-train: refusing to start: the runs volume '$runs_dir' $1." >&2
  echo "tfwb-train: mount the shared runs volume there and make it writable by $me," >&2
  echo "tfwb-train: e.g. 'docker run -v /srv/shared/runs:/runs ...' (the host directory owned by" >&2
  echo "tfwb-train: uid $(id -u), or run with '--user UID:GID' of its owner), or set TFWB_RUNS_DIR." >&2
  exit 73  # EX_CANTCREAT
}

if [ "$#" -eq 0 ]; then
  echo "usage: tfwb-train-entrypoint SCRIPT.py [ARGS...]   (runs: python SCRIPT.py ARGS...)" >&2
  exit 64  # EX_USAGE
fi
if [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  echo "usage: tfwb-train-entrypoint SCRIPT.py [ARGS...]   (runs: python SCRIPT.py ARGS...)"
  echo "runs volume: $runs_dir (TFWB_RUNS_DIR); wandb mode: ${WANDB_MODE:-offline}"
  exit 0
fi

[ -e "$runs_dir" ] || fail "does not exist"
[ -d "$runs_dir" ] || fail "is not a directory"
probe="$(mktemp -p "$runs_dir" .tfwb-probe-XXXXXX 2>/dev/null)" || fail "is not writable"
rm -f -- "$probe"

# Files must be readable by the agent's user on the host (a different uid): no group/other mask.
umask 0022
export TFWB_RUNS_DIR="$runs_dir"
export WANDB_MODE="${WANDB_MODE:-offline}"
# Scripts that call wandb directly (without the plugin) still write onto the volume.
export WANDB_DIR="${WANDB_DIR:-$runs_dir}"
export WANDB_DATA_DIR="${WANDB_DATA_DIR:-$runs_dir/wandb-data}"
export WANDB_CACHE_DIR="${WANDB_CACHE_DIR:-$runs_dir/wandb-cache}"
export WANDB_CONFIG_DIR="${WANDB_CONFIG_DIR:-$runs_dir/wandb-config}"

exec python "$@"
