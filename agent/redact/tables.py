"""Tables (``*.table.json``, in files/media and in run-table artifacts): cell by cell.

Columns a rule names get that action; the others get the rule's own action (``keep`` for a
rule that lists columns without an action, ``hash`` when no rule matched). Media objects in
kept cells are replaced by their tag too: their files are not carried along. Kept string cells
and every column name still pass the scrubber (``out``): keeping a column keeps its numbers and
words, not a secret or a patient id among them.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .outgoing import Outgoing

from .policy import Decision

_STRING_TYPE = {"params": {"allowed_types": [{"wb_type": "none"}, {"wb_type": "string"}]}, "wb_type": "union"}


def column_actions(columns: list[Any], decision: Decision) -> list[str]:
    named = dict(decision.columns)
    rest = decision.rest if decision.rest in ("keep", "hash") else "hash"
    return [named.get(str(c), rest) for c in columns]


def redact_table(table: dict[str, Any], decision: Decision, text_tag: Callable[[str, str], str],
                 counts: Counter, key: str, out: "Outgoing") -> dict[str, Any]:
    """Return the table with hashed cells and without dropped columns."""
    columns = list(table.get("columns", []))
    actions = column_actions(columns, decision)
    keep_idx = [i for i, a in enumerate(actions) if a != "drop"]

    def cell(value: Any, action: str, col: str) -> Any:
        if value is None:
            return None
        if action == "hash" or isinstance(value, (dict, list)):
            counts[(key, col, "hash")] += 1
            return f"hash:{text_tag('cell', json.dumps(value, sort_keys=True))}"
        counts[(key, col, "keep")] += 1
        return out.text(value, "tables") if isinstance(value, str) else value

    data = []
    for row in table.get("data", []):
        if not isinstance(row, list):
            continue
        for i, a in enumerate(actions):
            if a == "drop" and i < len(row):
                counts[(key, str(columns[i]), "drop")] += 1
        data.append([cell(row[i], actions[i], str(columns[i])) for i in keep_idx if i < len(row)])
    names = {str(c): out.name(str(c)) if isinstance(c, str) else c for c in columns}
    res = {k: out.value(v, "tables") for k, v in table.items() if k not in ("columns", "data", "column_types")}
    res["columns"] = [names[str(columns[i])] for i in keep_idx]
    res["data"] = data
    ct = table.get("column_types")
    if isinstance(ct, dict):
        ct = json.loads(json.dumps(ct))
        type_map = ct.get("params", {}).get("type_map")
        if isinstance(type_map, dict):
            for i, c in enumerate(columns):
                if actions[i] == "drop":
                    type_map.pop(str(c), None)
                elif actions[i] == "hash" and str(c) in type_map:
                    type_map[str(c)] = _STRING_TYPE
            ct["params"]["type_map"] = {names.get(k, k): v for k, v in type_map.items()}
        res["column_types"] = ct
    # Key order as wandb writes it (column_types, columns, data first): cosmetic only.
    order = [k for k in ("_type", "column_types", "columns", "data") if k in res]
    return {k: res[k] for k in order + [k for k in res if k not in order]}
