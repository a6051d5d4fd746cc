"""The ledger owns every table: no SQL is written anywhere in the agent outside agent/ledger/.

Every string literal of every module (docstrings and comments aside: ast never sees comments,
apart, and a docstring is a string that stands alone as a statement) is matched against what
SQL looks like (upper-case keywords, as this code base writes SQL; prose in lower case passes).
A planted example proves the check finds what it is meant to find.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"

SQL = re.compile(
    r"\b(SELECT\s+.+?\s+FROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)"
    r"|ALTER\s+TABLE|PRAGMA\s+\w+)\b", re.S)

# Modules still allowed to hold SQL while it moves behind the ledger (so this list only shrinks;
# each entry must still hold SQL). Empty: the ledger owns every statement.
PENDING: dict[str, str] = {}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def sql_in(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal in ``source`` that reads as SQL (f-strings too)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        if SQL.search(text):
            found.append((node.lineno, text.strip()[:80]))
    # Adjacent literals ("SELECT a " "FROM b") are one Constant to ast already.
    return found


def offenders(root: Path) -> dict[str, list[tuple[int, str]]]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("ledger/"):
            continue
        hits = sql_in(path.read_text())
        if hits:
            out[rel] = hits
    return out


def test_no_sql_outside_the_ledger() -> None:
    found = offenders(AGENT)
    unexpected = {k: v for k, v in found.items() if k not in PENDING}
    assert not unexpected, "SQL outside agent/ledger/ (call a named ledger method instead): " + "; ".join(
        f"agent/{k}:{line}: {text!r}" for k, hits in unexpected.items() for line, text in hits)
    stale = [k for k in PENDING if k not in found]
    assert not stale, f"no SQL left in {stale}: take them off PENDING"


def test_the_check_finds_planted_sql_and_ignores_words(tmp_path: Path) -> None:
    pkg = tmp_path / "agent"
    (pkg / "ledger").mkdir(parents=True)
    (pkg / "ledger" / "runs.py").write_text('Q = "SELECT * FROM runs"\n')  # the ledger's own: fine
    (pkg / "planted.py").write_text(
        '"""Select a run from the list; update the table set by hand (a docstring: prose)."""\n'
        "# SELECT * FROM runs  (a comment)\n"
        "def f(db, t):\n"
        '    """SELECT key FROM runs, in a docstring."""\n'
        '    msg = "select the run you want from the list"\n'
        '    db.execute("UPDATE runs SET state = ? "\n'
        '               "WHERE key = ?", ("x", "k"))\n'
        '    return db.execute(f"SELECT {t} FROM bundles").fetchall()\n')
    (pkg / "clean.py").write_text('"""Nothing here."""\nX = "delete from the medium what was exported"\n')
    found = offenders(pkg)
    assert list(found) == ["planted.py"]
    assert [line for line, _ in found["planted.py"]] == [6, 8]
