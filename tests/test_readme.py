"""The README is the user's manual: its commands run, its config reference is the code's.

Conventions in README.md (kept deliberately simple):

- Every fenced block tagged ```sh or ```sh test is checked: each `tfwb-agent ...` command in it
  (at a line's start, or after `&&`, `|`, `;`, `$(`) must name an existing command and only
  options that command has, and `tfwb-agent <command> --help` must work.
- Blocks tagged ```sh test are also *run*, in order, as one bash script (`set -euo pipefail`),
  with HOME in a temporary directory and RUNS pointing at a copy of the shared corpus. The demo
  (the README's first command) is tested by tests/test_demo.py and is not run here.
- The first ```toml block under "## Configuration reference" is the complete reference: it must
  parse with `tfwb_agent.config.parse`, show the code's defaults, and name every key that
  `parse` accepts (the accepted keys are read from the "unknown key (known: ...)" errors of the
  validators, so a key added to the code and not to the README fails here).
- The "## Commands" table names every command and subcommand of the CLI.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from tfwb_agent import config as config_mod
from tfwb_agent.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")

FIRST_LINES = [
    "pip install -e '.[trainer]' && tfwb-agent demo",
    "scripts/install-test-deps && python3 -m pytest",
]


# --- extracting ---------------------------------------------------------------------------------

def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m.group(1).strip(), m.group(2)) for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```\s*$", text, re.S | re.M)]


def sh_blocks(text: str = README) -> list[tuple[str, str]]:
    return [(info, body) for info, body in fenced_blocks(text) if info.split()[:1] == ["sh"]]


def section(title: str, text: str = README) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


_SEPARATORS = {"|", "||", "&", "&&", ";", ";;", "(", ")", ">", ">>", "<", "<<", "2>", "&>"}


def split_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, as argv lists (pipes, lists, `$(...)` split apart)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out, cur = [], []
    for tok in lex:
        if tok in _SEPARATORS or set(tok) <= set("|&;()<>"):
            out.append(cur)
            cur = []
        elif tok.endswith("$") and not cur and "=" in tok:  # `X=$(`: the command follows
            continue
        else:
            cur.append(tok)
    out.append(cur)
    return [c for c in out if c]


def readme_commands() -> list[list[str]]:
    """Every `tfwb-agent ...` command shown in an sh block, as argv (comments and pipes removed)."""
    out = []
    for _, body in sh_blocks():
        for line in body.splitlines():
            if "tfwb-agent" not in line or line.lstrip().startswith("#"):
                continue
            out.extend(c for c in split_commands(line) if c[0] == "tfwb-agent")
    return out


def resolve(tokens: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Walk `tfwb-agent` argv to the command it names: (path, command, remaining tokens)."""
    assert tokens and tokens[0] == "tfwb-agent", tokens
    rest = tokens[1:]
    globals_with_value = {"--config"}
    while rest and rest[0].startswith("-"):
        opt = rest.pop(0)
        assert opt.split("=")[0] in {"--config", "--version", "-h", "--help"}, f"unknown global option {opt}"
        if opt in globals_with_value:
            assert rest, f"{opt} needs a value"
            rest.pop(0)
    cmd: click.Command = cli
    path: list[str] = []
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        ctx = click.Context(cmd)  # the top group loads its commands when asked (get_command)
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"`tfwb-agent {' '.join(path + [name])}`: no such command " \
                                f"(has: {', '.join(cmd.list_commands(ctx))})"
        cmd = sub
        path.append(name)
    return path, cmd, rest


def option_names(cmd: click.Command) -> set[str]:
    names = {"-h", "--help"}
    for p in cmd.params:
        if isinstance(p, click.Option):
            names.update(p.opts)
            names.update(p.secondary_opts)
    return names


def leaf_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if isinstance(sub, click.Group):
            out.extend(leaf_paths(sub, prefix + (name,)))
        else:
            out.append(prefix + (name,))
    return out


# --- the two commands --------------------------------------------------------------------------

def test_readme_starts_with_the_two_commands():
    lines = README.splitlines()
    assert lines[0].startswith("# "), lines[0]
    first_block = sh_blocks()[0][1].splitlines()
    assert [ln.split("  #")[0].rstrip() for ln in first_block[:2]] == FIRST_LINES
    assert README.index(first_block[0]) < README.index("\n## "), "the two commands come before any section"
    ci = (ROOT / ".ci" / "run").read_text()
    assert FIRST_LINES[1] in ci, ".ci/run must run the README's test command"


# --- every command shown exists, with the options shown -----------------------------------------

def test_every_command_shown_exists_with_its_options():
    commands = readme_commands()
    assert len(commands) >= 20, f"expected the README to show many commands, found {len(commands)}"
    problems = []
    for tokens in commands:
        text = " ".join(tokens)
        try:
            path, cmd, rest = resolve(list(tokens))
        except (AssertionError, ValueError) as exc:
            problems.append(f"{text}: {exc}")
            continue
        known = option_names(cmd)
        for tok in rest:
            if tok.startswith("-") and tok != "-" and tok.split("=")[0] not in known:
                problems.append(f"{text}: `tfwb-agent {' '.join(path)}` has no option {tok}")
    assert not problems, "\n".join(problems)


def test_help_of_every_command_shown():
    paths = set()
    for tokens in readme_commands():
        path, _, _ = resolve(list(tokens))
        paths.add(tuple(path))
    assert len(paths) >= 12, sorted(paths)
    runner = CliRunner()
    for path in sorted(paths):
        res = runner.invoke(cli, [*path, "--help"])
        assert res.exit_code == 0, f"tfwb-agent {' '.join(path)} --help: {res.output}"
        assert "Usage: " in res.output and "Show this message and exit" in res.output, res.output
    # The console script itself, once, as a user would run it.
    exe = shutil.which("tfwb-agent")
    assert exe, "the tfwb-agent console script is not on PATH (pip install -e .)"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Commands:" in proc.stdout, proc.stderr


def test_commands_table_names_every_command():
    table = section("Commands")
    rows = re.findall(r"^\| `(tfwb-agent [^`]*)`", table, re.M)
    shown = set()
    for row in rows:
        path, _, _ = resolve(shlex.split(row))  # each row names a real command
        shown.add(tuple(path))
    leaves = leaf_paths(cli)
    assert len(leaves) >= 20, leaves  # the commands were found (they load lazily)
    missing = [" ".join(p) for p in leaves if p not in shown]
    assert not missing, f"the README's Commands table lacks: {', '.join(missing)}"
    for path in leaf_paths(cli):
        assert f"`tfwb-agent {' '.join(path)}" in table


# --- the tour runs -------------------------------------------------------------------------------

def _tree_digest(root: Path, skip: str) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel == skip or rel.startswith(skip + "/"):
            continue
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def tour(tmp_path):
    """Run the README's ```sh test blocks on a copy of the corpus; return (result, home, runs)."""
    script = "\n".join(body for info, body in sh_blocks() if info.split() == ["sh", "test"])
    assert "tfwb-agent import" in script and "tfwb-agent export" in script, "the tour lost its steps"
    assert "tfwb-agent demo" not in script, "the demo is tested by test_demo.py; keep it out of the tour"
    home, runs = tmp_path / "home", tmp_path / "runs"
    home.mkdir()
    shutil.copytree(CORPUS, runs, symlinks=True)  # read-only input: never touch the original
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TFWB_", "WANDB_"))}
    bindir = str(Path(sys.executable).parent)
    env.update(HOME=str(home), RUNS=str(runs), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}")
    before = _tree_digest(runs, ".tfwb-agent")
    # Twice, as a reader trying it again would: the second run keeps the first's keys and
    # starts over, and must succeed too (its results are the ones checked).
    for attempt in ("first", "second"):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"the README's tour failed the {attempt} time (exit {proc.returncode}):\n" \
                                     f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert "already exists; kept" in proc.stderr  # the second run kept the keys it found
    assert _tree_digest(runs, ".tfwb-agent") == before, "the tour changed the runs it only should read"
    return proc, home, runs, env


@pytest.mark.slow(seconds=25)
def test_tour_runs_node_to_gateway(tour):
    import json

    proc, home, runs, env = tour
    tri = home / "tfwb-try"
    # keys: private files 0600, printed nowhere
    for key in ("node.key", "gateway.agekey"):
        p = tri / "keys" / key
        assert p.is_file() and (p.stat().st_mode & 0o777) == 0o600, key
        secret_lines = [ln for ln in p.read_text().splitlines() if ln and not ln.startswith(("#", "untrusted"))]
        for ln in secret_lines:
            assert ln not in proc.stdout and ln not in proc.stderr, f"{key} material was printed"
    assert "OK" in proc.stdout  # config check
    # scan + status: the corpus's four runs, classified
    status = json.loads((tri / "status.json").read_text())
    ended = sorted(r["ended"] for r in status["runs"])
    assert ended == ["crashed", "crashed", "finished", "finished"], status["runs"]
    # redact --dry-run: a plan, nothing written
    plan = json.loads((tri / "plan.json").read_text())
    assert plan["dry_run"] is True
    assert sum(m["items"] for m in plan["report"]["media_by_key"]) > 0
    # export: one bundle, its signature and the index on the medium
    usb = tri / "usb"
    bundles = sorted(usb.glob("*.tar.zst.age"))
    assert len(bundles) == 1 and (usb / (bundles[0].name + ".minisig")).is_file()
    assert (usb / "tfwb-index.json").is_file()
    # import on the gateway: staged, audited
    staged = list((tri / "gateway-state" / "staging").iterdir())
    assert len(staged) == 1, staged
    assert "imported " in proc.stdout and "chain intact" in proc.stdout
    # the sync dry run on the gateway: the imported run may go, nothing was sent
    plan = json.loads((tri / "sync-plan.json").read_text())
    states = [(o["run_id"], o["state"]) for o in plan["outcomes"]]
    assert states == [(bundles[0].name.split("-")[0], "would_send")], plan
    # the README's claim: a second import of the same medium is refused as a replay
    env = dict(env, TFWB_AGENT_CONFIG=str(tri / "gateway.toml"))
    again = subprocess.run(["tfwb-agent", "import", str(usb)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "replay" in again.stdout, again.stdout + again.stderr
    assert len(list((tri / "gateway-state" / "quarantine").iterdir())) == 1


# --- the config reference ------------------------------------------------------------------------

def reference_block() -> str:
    ref = section("Configuration reference")
    blocks = [body for info, body in fenced_blocks(ref) if info == "toml"]
    assert blocks, "the Configuration reference has no ```toml block"
    return blocks[0]


def _flatten(raw: dict[str, Any]) -> set[str]:
    """Dotted key names as the README's tables write them: targets.NAME.x, policy[].x, redact.rule[].x."""
    out: set[str] = set()
    for k, v in raw.items():
        if k == "path_map":
            out.add("path_map")
        elif k == "targets":
            out.add("targets.NAME")
            for t in v.values():
                out.update(f"targets.NAME.{kk}" for kk in t)
        elif k == "policy":
            out.update(f"policy[].{kk}" for r in v for kk in r)
        elif isinstance(v, dict):
            for kk, vv in v.items():
                if kk == "rule" and k == "redact":
                    out.update(f"redact.rule[].{kkk}" for r in vv for kkk in r)
                else:
                    out.add(f"{k}.{kk}")
        else:
            out.add(k)
    return out


def commented_keys(block: str) -> list[tuple[str, str, str]]:
    """(dotted name, section header, the commented line) for lines like `# key = value`."""
    out, header = [], ""
    for line in block.splitlines():
        h = re.match(r"^\[\[?([^\]]+)\]\]?\s*$", line)
        if h:
            header = h.group(1)
            continue
        m = re.match(r"^#\s*([A-Za-z_][\w-]*)\s*=", line)
        if m:
            key = m.group(1)
            if not header:
                name = key
            elif header.startswith("targets."):
                name = f"targets.NAME.{key}"
            elif header == "policy":
                name = f"policy[].{key}"
            elif header == "redact.rule":
                name = f"redact.rule[].{key}"
            else:
                name = f"{header}.{key}"
            out.append((name, header, line))
    return out


def accepted_keys() -> set[str]:
    """Every key `parse` accepts, read from the validators' own 'unknown key (known: ...)' errors."""
    def known(raw: dict[str, Any], where: str) -> list[str]:
        with pytest.raises(config_mod.ConfigError) as err:
            config_mod.parse(raw, "probe.toml")
        m = re.search(r"unknown key \(known: ([^)]*)\)", str(err.value))
        assert m, f"{where}: expected an unknown-key error, got: {err.value}"
        return [k.strip() for k in m.group(1).split(",")]

    out: set[str] = set()
    top = known({"zz_not_a_key": 1}, "top level")
    assert {"state_dir", "node_name", "watch", "path_map"} <= set(top)
    probes = {
        "watch": ({"watch": {"zz_not_a_key": 1}}, "watch.{}"),
        "keys": ({"keys": {"zz_not_a_key": 1}}, "keys.{}"),
        "redact": ({"redact": {"zz_not_a_key": 1}}, "redact.{}"),
        "targets": ({"targets": {"t": {"zz_not_a_key": 1}}}, "targets.NAME.{}"),
        "sync": ({"sync": {"zz_not_a_key": 1}}, "sync.{}"),
        "policy": ({"policy": [{"zz_not_a_key": 1}]}, "policy[].{}"),
        "retention": ({"retention": {"zz_not_a_key": 1}}, "retention.{}"),
        "metrics": ({"metrics": {"zz_not_a_key": 1}}, "metrics.{}"),
        "health": ({"health": {"zz_not_a_key": 1}}, "health.{}"),
    }
    for name in top:
        if name == "path_map":
            out.add("path_map")
            continue
        if name not in probes:
            out.add(name)
            continue
        raw, fmt = probes[name]
        keys = known(raw, name)
        for k in keys:
            if f"{k}_file" in keys:
                continue  # `secret = "..."`: known only to be refused ("never inline")
            if name == "redact" and k == "rule":
                rule = known({"redact": {"rule": [{"key": "x", "zz_not_a_key": 1}]}}, "redact.rule")
                out.update(f"redact.rule[].{r}" for r in rule)
                continue
            out.add(fmt.format(k))
        if name == "targets":
            out.add("targets.NAME")
    return out


def test_reference_parses_and_shows_the_code_defaults():
    from tfwb_agent.deliver import settings as deliver_settings
    from tfwb_agent.redact.policy import DEFAULT_POLICY

    raw = tomllib.loads(reference_block())
    cfg = config_mod.parse(raw, "README.md")
    bare = config_mod.parse({}, "bare")
    assert cfg.state_dir == bare.state_dir
    default_watch = config_mod.WatchConfig()
    for f in ("mode", "quiet_seconds", "reconcile_seconds", "poll_seconds", "lease_seconds"):
        assert getattr(cfg.watch, f) == getattr(default_watch, f), f"watch.{f}"
    pol = cfg.sections["redact"]
    for f in ("console", "metadata", "config_keys", "patterns", "scrub_paths", "artifacts", "drop_files", "mode",
              "keep_strings", "keep_files", "scrub_files"):
        assert getattr(pol, f) == getattr(DEFAULT_POLICY, f), f"redact.{f}"
    assert cfg.sections["sync"] == deliver_settings.SyncSettings()
    target_defaults = {f.name: f.default for f in dataclasses.fields(deliver_settings.Target)}
    for t in cfg.sections["targets"].by_name.values():
        assert t.timeout == target_defaults["timeout"]
    for r in cfg.sections["policy"].rules:
        assert r.hold is False
    assert deliver_settings.check_references(cfg) == [], "the reference's policy names an unknown target"


def test_reference_commented_keys_are_accepted_one_by_one(tmp_path):
    block = reference_block()
    found = commented_keys(block)
    assert len(found) >= 5, found
    pem = tmp_path / "site-ca.pem"  # ca_file must name a readable file when the config loads
    pem.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    for name, header, line in found:
        text = block.replace(line, line.lstrip("#").lstrip(), 1)
        key = name.rsplit(".", 1)[-1]
        if key == "ca_file":
            text = re.sub(r'(?m)^ca_file\s*=\s*"[^"]*"', f'ca_file = "{pem}"', text)
        if key.endswith("_env"):  # the alternative to <stem>_file: exactly one of the two
            stem = key[: -len("_env")]
            text = re.sub(rf"(?m)^{stem}_file\s*=.*$", "", text)
        config_mod.parse(tomllib.loads(text), f"README.md ({name})")


def test_reference_names_every_accepted_key_and_no_other():
    block = reference_block()
    named = _flatten(tomllib.loads(block)) | {n for n, _, _ in commented_keys(block)}
    accepted = accepted_keys()
    assert len(accepted) >= 40, sorted(accepted)
    assert not accepted - named, f"keys the agent accepts that the README's reference lacks: {sorted(accepted - named)}"
    assert not named - accepted, f"keys in the README's reference that the agent does not accept: {sorted(named - accepted)}"


def _code_defaults() -> dict[str, Any]:
    from tfwb_agent.deliver import settings as deliver_settings
    from tfwb_agent.redact.policy import DEFAULT_POLICY

    w = config_mod.WatchConfig()
    out: dict[str, Any] = {"state_dir": "/var/lib/tfwb-agent", "watch.roots": []}
    out.update({f"watch.{f}": getattr(w, f) for f in ("mode", "quiet_seconds", "reconcile_seconds",
                                                       "poll_seconds", "lease_seconds")})
    out.update({f"redact.{f}": list(v) if isinstance(v, tuple) else v for f, v in (
        (f, getattr(DEFAULT_POLICY, f)) for f in ("console", "metadata", "config_keys", "patterns",
                                                  "scrub_paths", "artifacts", "drop_files"))})
    out.update({f"sync.{k}": v for k, v in dataclasses.asdict(deliver_settings.SyncSettings()).items()})
    tf = {f.name: f.default for f in dataclasses.fields(deliver_settings.Target)}
    out["targets.NAME.timeout"] = tf["timeout"]
    pf = {f.name: f.default for f in dataclasses.fields(deliver_settings.PolicyRule)}
    out["policy[].hold"] = pf["hold"]
    out["policy[].windows"] = list(pf["windows"])
    out["redact.rule[].columns"] = {}
    out["redact.rule[].media"] = ["any"]
    assert config_mod.parse({"redact": {"rule": [{"key": "k", "action": "hash"}]}}).sections["redact"].rules[0].media \
        == ("any",)
    assert config_mod.parse({}).state_dir == Path(out["state_dir"])
    return out


def test_reference_tables_state_the_code_defaults():
    """Each `| `key` | `default` |` row with a literal default must agree with the code."""
    ref = section("Configuration reference")
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([^`]+)` \| ([^|]+) \|", ref, re.M)}
    defaults = _code_defaults()
    missing = [k for k in defaults if k not in rows]
    assert not missing, f"no row in the reference tables for: {missing}"
    checked = 0
    for key, want in defaults.items():
        cell = rows[key]
        lit = re.fullmatch(r"`([^`]+)`(?: \(.*\))?", cell)
        assert lit, f"{key}: the default cell should be a literal in backticks, got {cell!r}"
        got = tomllib.loads(f"v = {lit.group(1)}")["v"]
        assert got == want, f"{key}: README says {got!r}, the code's default is {want!r}"
        checked += 1
    assert checked == len(defaults)
