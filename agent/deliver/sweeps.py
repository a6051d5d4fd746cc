"""Delivered sweep trials as one W&B sweep, on a server that has sweeps.

A trial (``tfwb_trainer.sweep``) is an ordinary run whose config holds ``tfwb.sweep`` (the
sweep's id, name and W&B sweep config), with the sweep's name as its group and a
``sweep:<id>`` tag. Delivered as it is, that is what a server without sweeps (OpenWandb) shows:
the trials grouped and tagged, the sweep config in each run's config.

On a server that has sweeps (W&B: its schema's Mutation type has ``upsertSweep``), before a
trial's log goes to ``wandb sync``:
 1. the sweep is created once per target, project and entity with ``UpsertSweep`` (the mutation
    wandb's own client sends; ``tfwb_trainer.sweep_wandb``), and the name W&B gave it is kept in
    ``<state>/deliver/<target>.sweeps.json`` so it is never created twice;
 2. the run record of the log to send gets that name as its ``sweep_id``, which ``wandb sync``
    sends as ``sweep`` in the run's ``upsertBucket``: the run is attached to the sweep.
The sweep config sent is the one in the trial's (sealed, so redacted) log: redaction applies
to it as to the rest of the run. A server that cannot be asked means the segment is retried
later (nothing sent); a server that refuses the sweep itself (a GraphQL error on the mutation)
gets the trials grouped and tagged, as OpenWandb does, and the refusal is remembered.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from .. import statedir
from ..wandb_log import LogReader, parse_record
from . import server as srv

log = logging.getLogger("tfwb_agent.deliver")

def _documents() -> Any:
    """The trainer plugin's GraphQL documents for sweeps (``tfwb_trainer.sweep_wandb``), or None
    where the agent is installed without the plugin. Loaded only once a trial is met: the
    plugin's package loads its training helpers too (~25 ms, before a delivery could start its
    ``wandb sync``), and most deliveries carry no trial."""
    try:
        from tfwb_trainer import sweep_wandb  # lazy: see above
    except ImportError:  # pragma: no cover - the plugin is installed beside the agent in this repo
        return None
    return sweep_wandb


def _unwrap(v: Any) -> Any:
    return v["value"] if isinstance(v, dict) and "value" in v and set(v) <= {"value", "desc"} else v


def sweep_in_log(log_path: Path) -> dict[str, Any] | None:
    """The ``tfwb.sweep`` a trial's log records in its config (run record or config records
    before the first history row), or None for a run that is not a trial."""
    from wandb.proto import wandb_internal_pb2 as pb  # lazy: wandb's protobuf modules are heavy (~0.5 s)

    found: dict[str, Any] | None = None
    with open(log_path, "rb") as f:
        for _off, payload in LogReader(f):
            rec = parse_record(payload, _off, pb)
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                break
            items = rec.run.config.update if kind == "run" else rec.config.update if kind == "config" else ()
            for it in items:
                if (it.key or "/".join(it.nested_key)) != "tfwb":
                    continue
                try:
                    tfwb = _unwrap(json.loads(it.value_json))
                except ValueError:
                    continue
                sw = tfwb.get("sweep") if isinstance(tfwb, dict) else None
                if isinstance(sw, dict) and sw.get("id") and isinstance(sw.get("config"), dict):
                    found = sw
    return found


class Sweeps:
    """One target's sweeps during one delivery round (shared by the round's threads)."""

    REFUSED = ""  # the state file's mark for a sweep the server refused

    def __init__(self, cfg: Any, target: Any, key: str) -> None:
        self.cfg, self.t, self.key = cfg, target, key
        self.has: bool | None = None
        self.lock = threading.Lock()
        self.state_path = statedir.deliver_root(cfg) / f"{target.name}.sweeps.json"

    def _gql(self, query: str, variables: dict[str, Any] | None = None) -> srv.Answer:
        return srv.graphql_answer(self.t.base_url, self.key, query, variables, self.t.timeout,
                                  ca_file=self.t.ca_file, target=self.t.name)

    def server_has_sweeps(self) -> bool:
        """Asked once a round; raises srv.ServerError when the server cannot be asked."""
        if self.has is None:
            docs = _documents()
            if docs is None:
                self.has = False
            else:
                ans = self._gql(docs.HAS_SWEEPS_QUERY)
                self.has = docs.server_has_sweeps(ans.data)
        return self.has

    def _state(self) -> dict[str, str]:
        try:
            data = json.loads(self.state_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, str]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.state_path.with_name(self.state_path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    def sweep_name(self, sweep: dict[str, Any], project: str, entity: str | None) -> str | None:
        """The W&B sweep's name for this trial's sweep on this target, created the first time;
        None if the server refused it."""
        where = f"{entity or ''}/{project}/{sweep['id']}"
        state = self._state()
        if where in state:
            return state[where] or None
        docs = _documents()  # there: the server was found to have sweeps (``server_has_sweeps``)
        variables = docs.upsert_sweep_variables({"id": sweep["id"], "name": sweep.get("name") or sweep["id"],
                                            "config": sweep["config"]}, entity, project, run_ids=[])
        ans = self._gql(docs.UPSERT_SWEEP, variables)  # network trouble raises: retried later
        got = ((ans.data.get("upsertSweep") or {}).get("sweep") or {}).get("name")
        if not got:
            why = ans.errors[0].message if ans.errors else "no sweep in the answer"
            log.warning("%s refused sweep %s in %s: %s; its trials arrive grouped and tagged",
                        self.t.name, sweep["id"], project, why)
            state[where] = self.REFUSED
        else:
            log.info("%s: sweep %s created in %s as %s", self.t.name, sweep["id"], project, got)
            state[where] = str(got)
        self._save(state)
        return state[where] or None

    def sweep_id_for(self, log_path: Path, project: str, entity: str | None) -> str:
        """The W&B sweep a trial's log attaches to on this target (created the first time), for
        its cut's ``sweep_id``; "" for a run that is no trial, or a server without sweeps."""
        sweep = sweep_in_log(log_path)
        if sweep is None:
            return ""
        with self.lock:
            if not self.server_has_sweeps():
                return ""  # OpenWandb: grouped and tagged, the sweep config in the run's config
            return self.sweep_name(sweep, project, entity) or ""
