"""The plan of a redaction, from the one fold of the log (``runlog.Fold``): the one the
classification made as the log grew, or, without one, a fold read first (one more pass over
the log). It names every media file and the key it is logged under, the keys the training code
declared sensitive, and the run's identity (host, user, e-mail)."""
from __future__ import annotations

import json
import pwd
from pathlib import Path
from typing import Any

from .. import runlog
from .redaction import Redaction

PLAN_KINDS = frozenset({"run", "config", "environment"})  # records that change the plan past its media


class PlanOutdated(Exception):
    """The log has records past the fold the plan came from that could change it."""


def changes_plan(rec: Any, fold: runlog.Fold) -> bool:
    """Whether a record the fold has not seen declares sensitive keys or an identity it lacks."""
    kind = rec.WhichOneof("record_type")
    if kind not in PLAN_KINDS:
        return False
    new = runlog.Fold(identity=set(fold.identity), sensitive=list(fold.sensitive))
    runlog.fold_one(new, 0, 0, rec)
    return new.identity != fold.identity or new.sensitive != fold.sensitive


def apply_plan(r: Redaction, fold: runlog.Fold, log: Path) -> None:
    """``log``: the file whose owner wrote the run (its log, ``runlog.find_log``; the log on the
    volume for a snapshot of it)."""
    r.set_plan(fold.planned, fold.sizes, tuple(fold.sensitive))
    if r.policy.metadata == "redact":
        r.add_identity(fold.identity | _metadata_identity(r.src) | _owner_identity(log))


def _metadata_identity(src: Path) -> set[str]:
    """Host, user and e-mail from wandb 0.15's files/wandb-metadata.json."""
    try:
        meta = json.loads((src / "files" / "wandb-metadata.json").read_text())
    except (OSError, ValueError):
        return set()
    return {str(meta[k]) for k in ("host", "username", "email") if isinstance(meta, dict) and meta.get(k)}


# Login users' ids start here on the common distributions (``UID_MIN`` in login.defs); below are
# system accounts (``daemon``, ``www-data``), 65534 is ``nobody``: none of them is a person.
_FIRST_LOGIN_UID, _NOBODY = 1000, 65534


def _owner_identity(log: Path) -> set[str]:
    """The name this host gives the user who wrote the run (its log's owner), when that is a
    login user: wandb 0.31 offline records no user, and training code prints it (a shell
    prompt, ``getpass.getuser()`` in a path or a message)."""
    try:
        uid = log.stat().st_uid
        if not _FIRST_LOGIN_UID <= uid < _NOBODY:
            return set()
        return {pwd.getpwuid(uid).pw_name}
    except (OSError, KeyError):
        return set()
