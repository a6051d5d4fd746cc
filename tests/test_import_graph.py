"""The import graph of ``tfwb_agent``, read statically: no cycle among module-level imports, and
no function-local import except the deliberate lazy imports of heavy modules named in
``LAZY`` (each says why). A cycle hidden by a function-local import is still a cycle: moving
that import to the top makes it show. Also: importing the CLI, and its ``--help``, load
neither wandb nor tensorflow (``--help`` must stay fast; ``status`` is a liveness probe)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"
PACKAGE = "tfwb_agent"

# Imported module (or a prefix of it, at a dot) -> why it may be imported inside a function.
LAZY = {
    "wandb": "about a second to import: the CLI's --help and status, and the agent's own modules, must not pay it",
    "tensorflow": "seconds to import, and only the demo trains a model",
    "numpy": "only the demo's training needs it",
    "sklearn": "only the demo's training needs it (its digits data set)",
    "tfwb_trainer": "the trainer plugin: only the demo's training uses it, and it imports wandb",
    "tfwb_agent.metrics": "imports prometheus_client: loaded only where [metrics] asks for it",
    "prometheus_client": "loaded only where [metrics] asks for it",
    "tfwb_agent.deliver.sweeps": "the sweeps engine imports wandb: loaded only for a sweep run",
    "detect_secrets": "its plugins take long to import: loaded once a policy asks for secret detection",
    "rich": "progress bars: loaded only when sync's output is a terminal",
    "tfwb_agent.sealing": "sealing and redaction: `sync` loads them only where it seals live segments, so a "
                          "delivery (a gateway's always) starts its wandb sync sooner",
    "tfwb_agent.redact.run": "redaction (its redactors, yaml): opening a bundle needs it only to relocate a run "
                             "table's _staging files, not in every delivery",
    "tfwb_agent.deliver.engine": "`sync` starts its wandb sync ahead (deliver/ahead.py) before it loads the "
                                 "engine (crypto, HTTP, ~0.3 s): wandb's start-up is a small delivery's critical path",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (the most specific one that exists, or an outside name)
    line: int
    local: bool  # inside a function


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def imports_of(root: Path) -> tuple[set[str], list[Import]]:
    """Every module under ``root`` (the package's directory) and every import in it."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    found: list[Import] = []
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for node, local in _walk(tree.body, local=False):
            for target in _targets(node, name, is_pkg, files):
                found.append(Import(name, target, node.lineno, local))
    return set(files), found


def _walk(body: list[ast.stmt], local: bool):
    """Import statements with whether they are inside a function; ``if TYPE_CHECKING:``
    blocks are skipped (they never run)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, local
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _walk(node.orelse, local)
        else:
            inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _walk([child], inner)
                elif isinstance(child, ast.ExceptHandler):
                    yield from _walk(child.body, inner)


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_pkg: bool, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` imports pkg.
    subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
    return subs if len(subs) == len(node.names) else [mod, *subs]


def edges(modules: set[str], found: list[Import]) -> dict[str, set[str]]:
    """Module-level imports among the package's modules. Importing a.b.c runs a/__init__ and
    a/b/__init__ first: those count too, except the importer's own packages (already running
    when it runs), unless it takes names from one (``from . import Ledger``: its __init__ must
    have got that far)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in found:
        if imp.local or not imp.target.startswith(PACKAGE):
            continue
        parts = imp.target.split(".")
        own = {".".join(imp.module.split(".")[:i]) for i in range(1, imp.module.count(".") + 2)}
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod in modules and mod != imp.module and (mod not in own or mod == imp.target):
                graph[imp.module].add(mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def unlisted_local_imports(found: list[Import]) -> list[str]:
    def allowed(target: str) -> bool:
        return any(target == k or target.startswith(k + ".") for k in LAZY)

    return [f"{i.module}:{i.line} imports {i.target} inside a function" for i in found
            if i.local and not allowed(i.target)]


def problems(root: Path) -> list[str]:
    modules, found = imports_of(root)
    out = [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges(modules, found))]
    return out + unlisted_local_imports(found)


# --- the checks ---------------------------------------------------------------------------------

def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_a_planted_cycle_and_a_planted_local_import_are_found(tmp_path):
    root = _plant(tmp_path / "agent", {
        "__init__.py": "",
        "pipeline.py": "from .deliver import engine\n",
        "deliver/__init__.py": "",
        "deliver/engine.py": "from . import live\n",
        # the cycle closes through a package __init__, as `from ..seal import x` would
        "deliver/live.py": "from ..seal import outbox\n",
        "seal/__init__.py": "from .bundle import x\n",
        "seal/bundle.py": "x = 1\n",
        "seal/outbox.py": "import tfwb_agent.pipeline\n",
        "quiet.py": "def f():\n    from . import pipeline\n    import wandb\n    import json\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pipeline import y\n",
    })
    found = problems(root)
    assert found[0] == ("import cycle: tfwb_agent.deliver.engine <-> tfwb_agent.deliver.live <-> "
                        "tfwb_agent.pipeline <-> tfwb_agent.seal.outbox"), found
    assert found[1:] == ["tfwb_agent.quiet:2 imports tfwb_agent.pipeline inside a function",
                         "tfwb_agent.quiet:4 imports json inside a function"], found


def test_a_cycle_through_a_package_init_is_found_and_a_submodule_importing_its_package_is_not(tmp_path):
    root = _plant(tmp_path / "agent", {
        "__init__.py": "",
        "ledger/__init__.py": "from .rebuild import rebuild\nfrom .core import Ledger\n",
        "ledger/core.py": "from . import states\nclass Ledger: ...\n",
        "ledger/states.py": "",
        "ledger/rebuild.py": "from ..reconcile import reconcile\ndef rebuild(): ...\n",
        "reconcile.py": "from .ledger import Ledger\ndef reconcile(): ...\n",
    })
    assert problems(root) == ["import cycle: tfwb_agent.ledger <-> tfwb_agent.ledger.rebuild <-> tfwb_agent.reconcile"]
    (root / "ledger/rebuild.py").write_text("from . import Ledger\ndef rebuild(): ...\n")  # names from its package
    assert problems(root) == ["import cycle: tfwb_agent.ledger <-> tfwb_agent.ledger.rebuild"]
    (root / "ledger/rebuild.py").write_text("from . import core\ndef rebuild(): ...\n")  # a sibling module
    assert problems(root) == []


def test_the_agent_has_no_import_cycle_and_only_named_lazy_imports():
    assert problems(AGENT) == []


def test_every_lazy_import_in_the_agent_says_why():
    """An allowed function-local import carries a comment saying why it is lazy: on its line,
    or above it (in the comment lines and lazy imports just above it)."""
    _, found = imports_of(AGENT)
    silent = []
    for i in found:
        if not i.local:
            continue
        path = AGENT.joinpath(*i.module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        lines = path.read_text().splitlines()
        k = i.line - 1
        above = []
        while k > 0 and lines[k - 1].strip().startswith(("#", "import ", "from ")):
            k -= 1
            above.append(lines[k])
        if not any("#" in line for line in [lines[i.line - 1], *above]):
            silent.append(f"{i.module}:{i.line} ({i.target})")
    assert not silent, silent


def _loaded_after(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


# wandb's generated record types (wandb.proto.*) are preloaded on their own by the package
# (agent/wandb_proto.py, ~0.1 s); the wandb SDK itself and tensorflow must stay out.
HEAVY = ("json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'tensorflow') "
         "and not m.startswith('wandb.proto')))")


def test_importing_the_cli_loads_neither_wandb_nor_tensorflow():
    assert _loaded_after(f"import json, sys\nimport tfwb_agent.cli.main\nprint({HEAVY})") == []


def test_the_cli_help_loads_every_command_module_but_neither_wandb_nor_tensorflow():
    got = _loaded_after(
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from tfwb_agent.cli.main import COMMANDS, cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "missing = [m for m in COMMANDS.values() if 'tfwb_agent.cli.' + m not in sys.modules]\n"
        "assert not missing, missing  # --help lists every command: each module was imported\n"
        f"print({HEAVY})")
    assert got == []
