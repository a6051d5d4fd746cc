"""The shared volume: where every byte wandb writes must land, checked before training starts."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RUNS_DIR = "/runs"


class RunsDirError(RuntimeError):
    """The shared runs volume is missing or not writable; training must not start."""


@dataclass(frozen=True)
class RunsDir:
    root: Path

    @property
    def data_dir(self) -> Path:  # WANDB_DATA_DIR: artifact staging lives here
        return self.root / "wandb-data"

    @property
    def cache_dir(self) -> Path:
        return self.root / "wandb-cache"

    @property
    def config_dir(self) -> Path:
        return self.root / "wandb-config"

    @property
    def wandb_dir(self) -> Path:  # wandb.init(dir=root) puts runs in root/wandb/
        return self.root / "wandb"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"


def _refuse(root: Path, why: str) -> RunsDirError:
    return RunsDirError(
        f"tfwb: refusing to start training: the runs volume {str(root)!r} {why}. "
        "Mount the shared volume there (e.g. `docker run -v /shared/wandb:/runs …`) and make it "
        "writable by this user, or point TFWB_RUNS_DIR at the mounted volume. Without it the "
        "run would stay inside the container and the agent would never see it."
    )


def resolve_runs_dir(runs_dir: str | os.PathLike | None = None) -> Path:
    return Path(runs_dir or os.environ.get("TFWB_RUNS_DIR") or DEFAULT_RUNS_DIR)


def prepare_runs_dir(runs_dir: str | os.PathLike | None = None) -> RunsDir:
    """Check the volume and create wandb's directories on it; raise RunsDirError if unusable.

    The root itself is never created: a missing mount point usually means the volume was not
    mounted, and creating it would silently write the run into the container's own layer.
    """
    root = resolve_runs_dir(runs_dir)
    if not root.exists():
        raise _refuse(root, "does not exist")
    if not root.is_dir():
        raise _refuse(root, "is not a directory")
    # os.access lies for root and on some network filesystems; a real write is the only proof.
    try:
        fd, probe = tempfile.mkstemp(prefix=".tfwb-probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _refuse(root, f"is not writable ({exc.strerror or exc})") from exc
    rd = RunsDir(root.resolve())
    try:
        for d in (rd.data_dir, rd.cache_dir, rd.config_dir, rd.wandb_dir, rd.checkpoints_dir):
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _refuse(root, f"cannot hold wandb's directories ({exc})") from exc
    return rd


def point_wandb_at(rd: RunsDir) -> None:
    """Set wandb's directory variables so nothing it writes stays inside the container."""
    os.environ["WANDB_DIR"] = str(rd.root)
    os.environ["WANDB_DATA_DIR"] = str(rd.data_dir)
    os.environ["WANDB_CACHE_DIR"] = str(rd.cache_dir)
    os.environ["WANDB_CONFIG_DIR"] = str(rd.config_dir)
    # wandb also writes artifacts' staging copies under the data dir; nothing else to set.
