"""The W&B side of a delivered sweep: the UpsertSweep mutation that creates it and attaches the
trials, checked against the mutation wandb's own client sends (read from the installed wandb's
source), and the variables it needs.

Not testable here: W&B's GraphQL schema is not public (wandb's repository fetches it at build
time and ignores it in git), and no W&B server is reachable, so whether W&B accepts this request
is known only from wandb's client sending the same text. OpenWandb, the test server, has no
sweeps: its schema is checked to lack upsertSweep, the case where trials stay a group.
"""
from __future__ import annotations

import ast
import inspect
import json

import yaml
from graphql import parse, print_ast

from tfwb_trainer.sweep_wandb import (HAS_SWEEPS_QUERY, UPSERT_SWEEP, server_has_sweeps, sweeps_of,
                                      upsert_sweep_variables)


def _wandb_mutation() -> str:
    """wandb's own UpsertSweep as its client sends it without a launch scheduler."""
    import wandb.apis.public.sweeps as mod

    strings = {}
    for node in ast.walk(ast.parse(inspect.getsource(mod))):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in ("mutation_str", "project_query") and "UpsertSweep" in node.value.value \
                        or isinstance(t, ast.Name) and t.id == "project_query":
                    strings.setdefault(t.id, node.value.value)
    return strings["mutation_str"].replace("_PROJECT_QUERY_", strings["project_query"])


def _variables(doc) -> dict[str, str]:
    (op,) = doc.definitions
    return {v.variable.name.value: print_ast(v.type) for v in op.variable_definitions}


def test_upsert_sweep_is_the_mutation_wandb_sends() -> None:
    ours, theirs = parse(UPSERT_SWEEP), parse(_wandb_mutation())
    assert print_ast(ours) == print_ast(theirs)
    assert _variables(ours)["priorRunsFilters"] == "JSONString" and _variables(ours)["config"] == "String"


def test_variables_cover_the_mutation_and_carry_the_sweep() -> None:
    cfg = {"method": "random", "metric": {"name": "epoch/val_loss", "goal": "minimize"},
           "parameters": {"lr": {"min": 0.001, "max": 0.1}, "batch_size": {"values": [16, 32]}}}
    runs = [{"run_id": f"s-000{i}", "project": "p", "config": {"lr": {"value": 0.01}, "tfwb": {"value": {
        "sweep": {"id": "s", "name": "s", "config": cfg, "trial": i}}}}} for i in range(3)]
    runs.append({"run_id": "plain", "project": "p", "config": {"tfwb": {"value": {}}}})
    found = sweeps_of(runs)
    assert list(found) == ["s"] and found["s"]["run_ids"] == ["s-0000", "s-0001", "s-0002"]
    v = upsert_sweep_variables(found["s"], "team", "p")
    declared = set(_variables(parse(UPSERT_SWEEP)))
    assert set(v) == declared - {"state"}  # state: only to change an existing sweep's
    assert yaml.safe_load(v["config"]) == {**cfg, "name": "s"}
    assert json.loads(v["priorRunsFilters"]) == {"$or": [{"name": f"s-000{i}"} for i in range(3)]}
    assert v["entityName"] == "team" and v["projectName"] == "p" and v["displayName"] == "s"


def test_has_sweeps_from_the_schema() -> None:
    assert server_has_sweeps({"__type": {"fields": [{"name": "upsertBucket"}, {"name": "upsertSweep"}]}})
    assert not server_has_sweeps({"__type": {"fields": [{"name": "upsertBucket"}]}})
    assert not server_has_sweeps({"__type": None}) and "__type" in HAS_SWEEPS_QUERY
