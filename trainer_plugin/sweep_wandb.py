"""What delivery needs to turn delivered trials into a W&B sweep (for the agent's deliver step).

Each trial is an ordinary run whose config holds ``tfwb.sweep`` (id, name, the sweep config);
delivered as they are, the trials arrive grouped (``group`` = sweep name) and tagged
(``sweep:<id>``), which is all a server without sweeps (OpenWandb) shows. On a server with
sweeps (W&B), the agent (agent/deliver/sweeps.py) sends one ``UpsertSweep`` — the mutation
wandb's own client sends — per target, project and entity before the first trial goes, and sets
the name W&B gives the sweep as ``sweep_id`` in each trial's run record, which ``wandb sync``
sends as ``sweep`` in the run's upsertBucket: the trials show as one W&B sweep. Pure functions: the
agent owns the request, the target and the record of what it created.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional

# wandb's own text (wandb/apis/public/sweeps.py upsert_sweep, "mutation_3": the form sent when
# no launch scheduler is given, and by wandb 0.15.12), with its project selection.
UPSERT_SWEEP = """
mutation UpsertSweep(
    $id: ID,
    $config: String,
    $description: String,
    $entityName: String,
    $projectName: String,
    $controller: JSONString,
    $scheduler: JSONString,
    $state: String,
    $priorRunsFilters: JSONString,
    $displayName: String,
) {
    upsertSweep(input: {
        id: $id,
        config: $config,
        description: $description,
        entityName: $entityName,
        projectName: $projectName,
        controller: $controller,
        scheduler: $scheduler,
        state: $state,
        priorRunsFilters: $priorRunsFilters,
        displayName: $displayName,
    }) {
        sweep {
            name
            project {
                id
                name
                entity {
                    id
                    name
                }
            }
        }
        configValidationWarnings
    }
}
"""

# Whether a server has sweeps: its schema's mutation type has upsertSweep.
HAS_SWEEPS_QUERY = "query TfwbHasSweeps { __type(name: \"Mutation\") { fields { name } } }"


def server_has_sweeps(introspection: Mapping[str, Any]) -> bool:
    """From the answer to HAS_SWEEPS_QUERY (its ``data``)."""
    t = (introspection or {}).get("__type") or {}
    return any(f.get("name") == "upsertSweep" for f in t.get("fields") or ())


def _unwrap(v: Any) -> Any:
    return v["value"] if isinstance(v, dict) and set(v) >= {"value"} and set(v) <= {"value", "desc"} else v


def sweeps_of(runs: Iterable[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Group delivered runs by sweep: ``runs`` are {"run_id", "project", "config"} (config as in
    the run's config.yaml or the run record: values possibly wrapped in {"value": …})."""
    out: Dict[str, Dict[str, Any]] = {}
    for r in runs:
        tfwb = _unwrap((r.get("config") or {}).get("tfwb")) or {}
        sw = tfwb.get("sweep") if isinstance(tfwb, dict) else None
        if not sw:
            continue
        entry = out.setdefault(sw["id"], {"id": sw["id"], "name": sw["name"], "config": sw["config"],
                                          "project": r.get("project"), "run_ids": []})
        if r["run_id"] not in entry["run_ids"]:
            entry["run_ids"].append(r["run_id"])
    return out


def upsert_sweep_variables(sweep: Mapping[str, Any], entity: str, project: str,
                           run_ids: Optional[List[str]] = None) -> Dict[str, Any]:
    """Variables for UPSERT_SWEEP, as wandb's client builds them: the config as YAML, the
    trials attached by name through priorRunsFilters."""
    import yaml

    config = dict(sweep["config"])
    config.setdefault("name", sweep["name"])
    ids = list(run_ids if run_ids is not None else sweep.get("run_ids") or [])
    return {
        "id": None,
        "config": yaml.safe_dump(json.loads(json.dumps(config))),
        "description": config.get("description"),
        "entityName": entity,
        "projectName": project,
        "controller": None,
        "scheduler": None,
        "priorRunsFilters": json.dumps({"$or": [{"name": r} for r in ids]}) if ids else None,
        "displayName": sweep["name"],
    }
