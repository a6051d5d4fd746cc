"""What ships: the training and agent images, the systemd units, the Kubernetes manifests.

No container engine runs on these machines, so the images are checked as far as they can be
here: hadolint on both Dockerfiles, their pins against pyproject.toml, and the training image's
entrypoint script run directly. The systemd units go through `systemd-analyze verify` and
`systemd-analyze security --offline=true`; sysusers.d/tmpfiles.d through systemd-sysusers and
systemd-tmpfiles into a scratch root. The Kubernetes manifests are validated offline against the
Kubernetes JSON schemas bundled with `kubernetes-validate`.

`systemd-analyze verify` fails on a unit whose ExecStart binary does not exist, and the units
name /usr/local/bin/tfwb-agent (where `pip install` puts it on a host). The test therefore
verifies the units as shipped, asserts that the only complaint is that missing binary, and then
verifies copies whose ExecStart path alone is rewritten to the `tfwb-agent` on PATH here, which
must produce no output at all (verify exits 0 even on unknown keys, so silence is the test).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TRAIN_DOCKERFILE = ROOT / "images" / "train" / "Dockerfile"
AGENT_DOCKERFILE = ROOT / "images" / "agent" / "Dockerfile"
ENTRYPOINT = ROOT / "images" / "train" / "entrypoint.sh"
SYSTEMD = ROOT / "systemd"
UNITS = ["tfwb-agent.service", "tfwb-agent-sync.service", "tfwb-agent-sync.timer"]
K8S = ROOT / "images" / "k8s"
CONSTRAINTS = ROOT / "images" / "constraints.txt"
SHIPPED_BIN = "/usr/local/bin/tfwb-agent"
MAX_EXPOSURE = 2.0


def tool(name: str, debian_pkg: str | None = None) -> str:
    path = shutil.which(name)
    if path is None:
        where = f"the Debian package {debian_pkg!r}" if debian_pkg else "the project's `test` extra"
        pytest.fail(f"{name} is not on PATH; install {where} (scripts/install-test-deps does)")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


# --------------------------------------------------------------------------------------------
# Dockerfiles
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", [TRAIN_DOCKERFILE, AGENT_DOCKERFILE], ids=["train", "agent"])
def test_hadolint_clean(dockerfile):
    # Every finding fails, down to "info" and "style" (hadolint's default threshold).
    res = run([tool("hadolint"), "--no-color", "--format", "json", str(dockerfile)])
    findings = json.loads(res.stdout or "[]")
    assert findings == [], f"hadolint findings in {dockerfile}: {json.dumps(findings, indent=1)}"
    assert res.returncode == 0, res.stderr


def test_hadolint_is_live(tmp_path):
    # The linter really lints here: a Dockerfile with the usual mistakes is rejected.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install wandb\nCMD tfwb-agent daemon\n")
    res = run([tool("hadolint"), "--no-color", "--format", "json", str(bad)])
    codes = {f["code"] for f in json.loads(res.stdout)}
    assert {"DL3007", "DL3013", "DL3025"} <= codes and res.returncode != 0, res.stdout


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement(reqs: list[str], name: str) -> SpecifierSet:
    from packaging.requirements import Requirement
    for r in map(Requirement, reqs):
        if r.name == name:
            return r.specifier
    raise AssertionError(f"{name} is not in {reqs}")


def _instructions(dockerfile: Path) -> str:
    """The Dockerfile without its comment lines."""
    return "\n".join(l for l in dockerfile.read_text().splitlines() if not l.lstrip().startswith("#"))


def _from_images(dockerfile: Path) -> list[str]:
    """The images each FROM names, with ARG defaults (``FROM ${BASE_IMAGE}``) filled in."""
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            for image in re.findall(r"^FROM\s+(\S+)", text, flags=re.M)]


def _constraints(python_version: str) -> dict[str, str]:
    """The pins images/constraints.txt gives an image whose Python is ``python_version``."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            r = Requirement(line)
            if r.marker is None or r.marker.evaluate({"python_version": python_version}):
                (spec,) = r.specifier
                pins[canonicalize_name(r.name)] = spec.version if spec.operator == "==" else str(spec)
    return pins


def _pip_pins(dockerfile: Path) -> dict[str, str]:
    """What the Dockerfile's pip installs: every package through the one constraints file."""
    text = _instructions(dockerfile)
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs, f"no pip install in {dockerfile}"
    for line in installs:
        if "--no-deps" not in line:  # the plugin alone goes in without dependencies
            assert re.search(r"-c \S+/constraints\.txt ", line), f"{dockerfile}: not through constraints: {line}"
    assert re.search(r"^COPY images/constraints\.txt ", text, re.M), dockerfile
    assert not re.search(r'"[A-Za-z0-9_.\-]+==', text), f"{dockerfile} pins outside images/constraints.txt"
    return _constraints("3.11" if dockerfile == AGENT_DOCKERFILE else "3.8")


def test_constraints_pin_the_agents_whole_dependency_closure():
    """Every distribution tfwb-agent needs, as installed here (where the tests pass), is pinned for
    the agent image at that version: the image installs what was tested, nothing floats."""
    import importlib.metadata as md
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = default_environment()
    needed: dict[str, str] = {}
    todo = ["tfwb-agent"]
    while todo:
        dist = md.distribution(todo.pop())
        for r in map(Requirement, dist.requires or []):
            if r.marker and not r.marker.evaluate(dict(env, extra="")):
                continue
            name = canonicalize_name(r.name)
            if name not in needed:
                needed[name] = md.version(r.name)
                todo.append(r.name)
    pins = _constraints("3.11")
    assert {n: pins.get(n) for n in needed} == needed, sorted(set(needed) - set(pins))
    for dockerfile in (AGENT_DOCKERFILE, TRAIN_DOCKERFILE):
        ignore = dockerfile.with_name("Dockerfile.dockerignore").read_text().splitlines()
        assert "!images/constraints.txt" in ignore, f"{dockerfile}: the build context leaves the constraints out"


_TRAIN_CLOSURE = """
import json, sys
import importlib.metadata as md
def closure(roots):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    seen = {}
    todo = list(roots)
    while todo:
        dist = md.distribution(todo.pop())
        for r in map(Requirement, dist.requires or []):
            if r.marker and not r.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(r.name)
            if name not in seen:
                seen[name] = md.version(r.name)
                todo.append(r.name)
    return seen
mine = closure(["wandb", "scikit-learn", "pillow", "sweeps"])
mine.update({n: md.version(n) for n in ("wandb", "scikit-learn", "pillow", "sweeps")})
tf = closure(["tensorflow-cpu"])
print(json.dumps({"mine": mine, "tf": sorted(tf)}))
"""


def test_constraints_pin_the_training_images_closure_as_tested_on_python_3_8():
    """The training image's packages and all of theirs are pinned at the versions the seed pair's
    tests run with (.venv-py38: Python 3.8, TF 2.13, wandb 0.15.12), except what TensorFlow itself
    depends on (the base image brings it, built against it: a pin would replace it)."""
    from trainer_helpers import PY38_LABEL, interpreters, require_python

    py = require_python(PY38_LABEL, dict(interpreters())[PY38_LABEL])
    out = subprocess.run([py, "-c", _TRAIN_CLOSURE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    pins = _constraints("3.8")
    wanted = {n: v for n, v in got["mine"].items() if n not in got["tf"]}
    assert len(wanted) > 10 and {n: pins.get(n) for n in wanted} == wanted, sorted(set(wanted) - set(pins))
    assert pins.get("numpy") == "<2" and not set(pins) & (set(got["tf"]) - {"numpy"}), "TensorFlow's own deps float"


def test_train_image_pins_agree_with_pyproject():
    py = _pyproject()
    trainer = py["project"]["optional-dependencies"]["trainer"]
    (image,) = _from_images(TRAIN_DOCKERFILE)
    m = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", image)
    assert m, f"the training image must start from a pinned tensorflow/tensorflow:X.Y.Z-gpu, not {image}"
    tf_version = Version(m.group(1))
    assert tf_version in _requirement(trainer, "tensorflow-cpu"), (tf_version, trainer)
    # Keras 2 (TF < 2.16) is what wandb 0.15.12's Keras integration and the plugin's TF 2.13 tests use.
    assert tf_version < Version("2.16"), tf_version

    pins = _pip_pins(TRAIN_DOCKERFILE)
    # The image installs the plugin alone (the tfwb-trainer distribution): its wandb range is
    # the plugin's, not the agent's (which is what it syncs with, beside the agent).
    import tomllib

    plugin_deps = tomllib.loads((ROOT / "trainer_plugin" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert Version(pins["wandb"]) in _requirement(plugin_deps, "wandb"), (pins["wandb"], plugin_deps)
    assert Version(pins["scikit-learn"]) in _requirement(trainer, "scikit-learn"), (pins, trainer)
    # The same wandb as the TF 2.13 / Keras 2 pair the trainer tests run under.
    tf213 = (ROOT / ".ci" / "setup_tf213.sh").read_text()
    assert f"wandb=={pins['wandb']}" in tf213, "image wandb pin differs from .ci/setup_tf213.sh"
    # Only the plugin, not the trainer extra: that would install tensorflow-cpu over the GPU build.
    text = _instructions(TRAIN_DOCKERFILE)
    assert "[trainer" not in text and "tensorflow-cpu" not in text
    assert re.search(r"pip install [^\n]*--no-deps /opt/tfwb-src", text)
    for line in ("WANDB_MODE=offline", "TFWB_RUNS_DIR=/runs", 'VOLUME ["/runs"]', "USER 1000:1000"):
        assert line in text, line


def test_agent_image_pins_agree_with_pyproject():
    py = _pyproject()
    images = _from_images(AGENT_DOCKERFILE)
    assert images, "no FROM"
    for image in images:
        m = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-bookworm", image)
        assert m, f"the agent image must start from a pinned python:X.Y.Z-slim-bookworm, not {image}"
        assert Version(m.group(1)) in SpecifierSet(py["project"]["requires-python"]), image
    pins = _pip_pins(AGENT_DOCKERFILE)
    assert Version(pins["wandb"]) in _requirement(py["project"]["dependencies"], "wandb"), pins
    # The wandb release the agent's tests (wandb sync, the reader) run against here.
    from importlib.metadata import version
    assert pins["wandb"] == version("wandb"), (pins["wandb"], version("wandb"))
    text = _instructions(AGENT_DOCKERFILE)
    assert "tensorflow" not in text.replace("find_spec('tensorflow')", "")
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"tfwb-agent\", \"health\"\]", text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M)


def test_k8s_images_carry_the_project_version():
    version = _pyproject()["project"]["version"]
    images = set()
    for f in K8S.glob("*.yaml"):
        images |= set(re.findall(r"image:\s*(\S+)", f.read_text()))
    assert images, "no images in the manifests"
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name.endswith(("/tfwb-agent", "/tfwb-train")) and tag == version, image


# --------------------------------------------------------------------------------------------
# The training image's entrypoint, run directly
# --------------------------------------------------------------------------------------------

def _entry_env(runs_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TFWB_"))}
    env["TFWB_RUNS_DIR"] = str(runs_dir)
    # `python` in the entrypoint must be this interpreter (the image has only one).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_entrypoint_runs_the_script_on_a_writable_volume(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    script = tmp_path / "train.py"
    script.write_text(
        "import json, os, sys\n"
        "open(os.path.join(os.environ['TFWB_RUNS_DIR'], 'out.txt'), 'w').write('trained')\n"
        "print(json.dumps({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items()"
        " if k.startswith(('WANDB_', 'TFWB_'))}}))\n"
    )
    res = run(["bash", str(ENTRYPOINT), str(script), "--epochs", "3"], env=_entry_env(runs))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["argv"] == ["--epochs", "3"]
    assert out["env"]["WANDB_MODE"] == "offline"
    assert out["env"]["WANDB_DIR"] == str(runs)
    assert out["env"]["WANDB_DATA_DIR"] == str(runs / "wandb-data")
    made = runs / "out.txt"
    assert made.read_text() == "trained"
    # Written with umask 022: the agent (another uid) can read what training writes.
    assert made.stat().st_mode & 0o777 == 0o644
    assert not list(runs.glob(".tfwb-probe-*")), "the write probe was left behind"


def test_entrypoint_exit_code_is_the_scripts(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.exit(7)\n")
    res = run(["bash", str(ENTRYPOINT), str(script)], env=_entry_env(tmp_path))
    assert res.returncode == 7


def test_entrypoint_refuses_an_unwritable_volume(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import pathlib; pathlib.Path('/tmp/tfwb-should-not-run').touch()\n")
    runs = tmp_path / "ro-runs"
    runs.mkdir()
    if os.geteuid() == 0:
        # Root writes through any mode bits: make the directory a read-only mount instead.
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec bash "$@"',
               "sh", str(runs), str(ENTRYPOINT), str(script)]
    else:
        runs.chmod(0o555)
        cmd = ["bash", str(ENTRYPOINT), str(script)]
    res = run(cmd, env=_entry_env(runs))
    assert res.returncode == 73, (res.returncode, res.stderr)
    assert f"the runs volume '{runs}' is not writable" in res.stderr, res.stderr
    assert "docker run -v" in res.stderr and "TFWB_RUNS_DIR" in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("case", ["missing", "file"])
def test_entrypoint_refuses_a_missing_volume(tmp_path, case):
    runs = tmp_path / "runs"
    if case == "file":
        runs.write_text("not a directory")
    res = run(["bash", str(ENTRYPOINT), str(tmp_path / "x.py")], env=_entry_env(runs))
    assert res.returncode == 73
    why = "does not exist" if case == "missing" else "is not a directory"
    assert f"the runs volume '{runs}' {why}" in res.stderr, res.stderr
    assert not runs.is_dir(), "the entrypoint must not create the mount point itself"


def test_entrypoint_is_executable_in_the_repository():
    # The Dockerfile copies it without --chmod: the mode in git is the mode in the image.
    staged = run(["git", "ls-files", "-s", str(ENTRYPOINT.relative_to(ROOT))], cwd=ROOT).stdout
    assert staged.startswith("100755 "), staged
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")


def test_entrypoint_without_a_script_prints_usage(tmp_path):
    res = run(["bash", str(ENTRYPOINT)], env=_entry_env(tmp_path))
    assert res.returncode == 64 and "usage: tfwb-train-entrypoint SCRIPT.py" in res.stderr


def test_entrypoint_puts_a_real_wandb_run_where_the_agent_finds_it(tmp_path):
    """A plain wandb script (no plugin) run through the entrypoint lands on the volume; the
    agent, configured with that volume as its root, finds the run and sees it finished."""
    runs = tmp_path / "runs"
    runs.mkdir()
    script = tmp_path / "train.py"
    script.write_text(
        "import wandb\n"
        "run = wandb.init(project='ship-test')\n"
        "for step in range(5):\n"
        "    run.log({'loss': 1.0 / (step + 1)}, step=step)\n"
        "run.finish()\n"
        "print(run.id)\n"
    )
    res = run(["bash", str(ENTRYPOINT), str(script)], env=_entry_env(runs), timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    run_id = res.stdout.strip().splitlines()[-1]
    found = list(runs.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(found) == 1, sorted(p.relative_to(runs) for p in runs.rglob("*"))[:50]

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[watch]\nroots = ["{runs}"]\nmode = "poll"\n')
    env = {k: v for k, v in os.environ.items() if k != "TFWB_AGENT_CONFIG"}
    scan = run([tool("tfwb-agent"), "--config", str(cfg), "scan"], env=env)
    assert scan.returncode == 0, scan.stderr
    status = run([tool("tfwb-agent"), "--config", str(cfg), "status", "--json"], env=env)
    assert status.returncode == 0, status.stderr
    views = {r["run_id"]: r for r in json.loads(status.stdout)["runs"]}
    assert views[run_id]["ended"] == "finished" and views[run_id]["project"] == "ship-test", views


# --------------------------------------------------------------------------------------------
# systemd
# --------------------------------------------------------------------------------------------

def _verify(unit_dir: Path) -> subprocess.CompletedProcess:
    return run([tool("systemd-analyze", "systemd"), "verify", *UNITS], cwd=unit_dir)


def test_units_as_shipped_only_lack_the_binary(tmp_path):
    for u in UNITS:
        shutil.copy(SYSTEMD / u, tmp_path / u)
    res = _verify(tmp_path)
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert complaints, "verify found the shipped ExecStart binary; the rewrite below is not needed"
    for line in complaints:
        assert re.fullmatch(rf"tfwb-agent(-sync)?\.service: Command {re.escape(SHIPPED_BIN)} is not "
                            r"executable: No such file or directory", line), line


def test_units_verify_clean(tmp_path):
    exe = tool("tfwb-agent")
    for u in UNITS:
        text = (SYSTEMD / u).read_text()
        if u.endswith(".service"):
            assert re.search(rf"^ExecStart={re.escape(SHIPPED_BIN)} ", text, re.M), u
        # Only the ExecStart binary changes: every other line is verified as shipped.
        (tmp_path / u).write_text(text.replace(f"ExecStart={SHIPPED_BIN} ", f"ExecStart={exe} "))
    res = _verify(tmp_path)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_verify_is_strict_about_unknown_keys(tmp_path):
    # Control: the silence demanded above is meaningful (a misspelt directive speaks).
    exe = tool("tfwb-agent")
    for u in UNITS:
        text = (SYSTEMD / u).read_text().replace(f"ExecStart={SHIPPED_BIN} ", f"ExecStart={exe} ")
        if u == "tfwb-agent.service":
            text = text.replace("ProtectSystem=strict", "ProtectSystm=strict")
        (tmp_path / u).write_text(text)
    res = _verify(tmp_path)
    assert "Unknown key 'ProtectSystm'" in res.stdout + res.stderr


def _exposure(unit: Path) -> float:
    res = run([tool("systemd-analyze", "systemd"), "security", "--offline=true", "--no-pager", str(unit)])
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


def test_daemon_unit_exposure_at_most_2(tmp_path):
    level = _exposure(SYSTEMD / "tfwb-agent.service")
    print(f"tfwb-agent.service exposure: {level}")
    assert level <= MAX_EXPOSURE, level
    # The sync job runs the same sandbox.
    assert _exposure(SYSTEMD / "tfwb-agent-sync.service") <= MAX_EXPOSURE
    # Control: the same analyser rates an unhardened service far worse.
    plain = tmp_path / "plain.service"
    plain.write_text("[Service]\nExecStart=/bin/true\n")
    assert _exposure(plain) > 9.0


def _directives(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_daemon_unit_contract():
    d = _directives(SYSTEMD / "tfwb-agent.service")
    one = {k: v[-1] for k, v in d.items()}
    assert one["ExecStart"] == f"{SHIPPED_BIN} daemon"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure" and one["KillSignal"] == "SIGTERM"
    assert one["TimeoutStopSec"] == "10" and one["User"] == "tfwb-agent"
    assert one["StateDirectory"] == "tfwb-agent" and one["CapabilityBoundingSet"] == ""
    assert one["ProtectSystem"] == "strict" and one["NoNewPrivileges"] == "yes"
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "TFWB_AGENT_CONFIG=/etc/tfwb-agent/agent.toml" in d["Environment"]
    # The whole credstore, whichever files a host holds (a missing file cannot fail the start).
    assert d["LoadCredential"] == ["tfwb:/etc/tfwb-agent/credstore"]
    # Writable: the state directory and the claims directory, nothing else; runs read-only.
    assert one["ReadWritePaths"].split() == ["/var/lib/tfwb-agent", "-/srv/shared/runs/.tfwb-agent"]
    assert one["ReadOnlyPaths"] == "-/srv/shared/runs"
    sync = {k: v[-1] for k, v in _directives(SYSTEMD / "tfwb-agent-sync.service").items()}
    assert sync["Type"] == "oneshot"
    assert sync["ExecStart"] == f"{SHIPPED_BIN} sync --to local-server --once"
    timer = {k: v[-1] for k, v in _directives(SYSTEMD / "tfwb-agent-sync.timer").items()}
    assert timer["Unit"] == "tfwb-agent-sync.service" and timer["Persistent"] == "true"


def test_sysusers_and_tmpfiles(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    res = run([tool("systemd-sysusers", "systemd"), f"--root={root}",
               str(SYSTEMD / "sysusers.d" / "tfwb-agent.conf")])
    assert res.returncode == 0 and "not a valid" not in res.stderr, res.stderr
    pw = {l.split(":")[0]: l.split(":") for l in (root / "etc" / "passwd").read_text().splitlines()}
    user = pw["tfwb-agent"]
    uid, gid = int(user[2]), int(user[3])
    assert uid < 1000 and user[5] == "/var/lib/tfwb-agent" and user[6] == "/usr/sbin/nologin", user

    res = run([tool("systemd-tmpfiles", "systemd"), "--create", f"--root={root}",
               str(SYSTEMD / "tmpfiles.d" / "tfwb-agent.conf")])
    assert res.returncode == 0, res.stderr
    expect = {
        "etc/tfwb-agent": (0o750, 0, gid),
        "etc/tfwb-agent/credstore": (0o700, 0, 0),
        "var/lib/tfwb-agent": (0o700, uid, gid),
        "srv/shared/runs/.tfwb-agent": (0o770, uid, gid),
        "srv/shared/runs/.tfwb-agent/claims": (0o770, uid, gid),
    }
    for rel, (mode, u, g) in expect.items():
        st = (root / rel).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, u, g), rel


# MemoryDenyWriteExecute= in the units: the agent must run without writable+executable memory.
# Linux >= 6.3 offers the same rule per process (PR_SET_MDWE), inherited across fork and exec.
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
MDWE_WRAPPER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE failed: ' + os.strerror(ctypes.get_errno()))\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def _under_mdwe(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", MDWE_WRAPPER, *cmd], **kw)


def test_mdwe_is_enforced_here():
    probe = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    assert run([sys.executable, "-c", probe]).returncode == 0
    res = _under_mdwe([sys.executable, "-c", probe])
    assert "PR_SET_MDWE failed" not in res.stderr, f"kernel without PR_SET_MDWE (needs >= 6.3): {res.stderr}"
    assert res.returncode != 0 and "PermissionError" in res.stderr, res.stderr


def test_agent_works_under_memory_deny_write_execute(tmp_path, corpus):
    """Keys (Ed25519, age), redaction, sealing (zstd + age + minisign), the ledger (SQLite)
    and the reader (protobuf), each in a process that may not map writable+executable memory."""
    exe = tool("tfwb-agent")
    keys = tmp_path / "keys"
    keys.mkdir()
    cfg = tmp_path / "agent.toml"
    src = sorted(corpus.glob("wandb-0.31.0/wandb/offline-run-*"))[0]
    runs = tmp_path / "watched"
    shutil.copytree(src, runs / src.name)
    base = (f'state_dir = "{tmp_path / "state"}"\n[watch]\nroots = ["{runs}"]\nmode = "poll"\n'
            f'[keys]\nnode_key = "{keys / "node.key"}"\nidentity = "{keys / "gateway.agekey"}"\n')
    cfg.write_text(base)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "redact.key").write_text(os.urandom(32).hex())
    (tmp_path / "state" / "redact.key").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "TFWB_AGENT_CONFIG"}

    def agent(*args: str) -> subprocess.CompletedProcess:
        res = _under_mdwe([exe, "--config", str(cfg), *args], env=env, timeout=300)
        assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-3000:])
        return res

    agent("keys", "init", "--node")
    gw = agent("keys", "init", "--gateway")
    recipient = re.search(r"age1[0-9a-z]+", gw.stdout + gw.stderr).group(0)
    cfg.write_text(base + f'recipients = ["{recipient}"]\n')
    run_dir = next(runs.iterdir())
    agent("redact", "--out", str(tmp_path / "red"), str(run_dir))
    agent("seal", str(tmp_path / "red" / run_dir.name))
    bundles = [p for p in (tmp_path / "state").rglob("*") if p.is_file() and "outbox" in p.parts]
    assert bundles, sorted(str(p) for p in (tmp_path / "state").rglob("*"))
    agent("scan")
    status = json.loads(agent("status", "--json").stdout)
    assert len(status["runs"]) == 1 and status["runs"][0]["ended"] in ("finished", "crashed"), status


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime)
            for p in root.rglob("*") if ".tfwb-agent" not in p.parts and p.is_file()}


@pytest.mark.slow(seconds=30)
def test_daemon_works_inside_the_units_file_sandbox(tmp_path, corpus):
    """The daemon under what tfwb-agent.service grants it: the runs volume read-only
    (ReadOnlyPaths), only its claims directory writable (ReadWritePaths), /proc reduced to
    processes (ProtectProc=invisible, ProcSubset=pid) and no writable+executable memory
    (MemoryDenyWriteExecute). It must still claim, redact and seal every run there."""
    exe = tool("tfwb-agent")
    runs = tmp_path / "watched"
    for src in sorted(corpus.glob("wandb-*/wandb/offline-run-*")):
        shutil.copytree(src, runs / src.parent.parent.name / src.name)
    (runs / ".tfwb-agent").mkdir()           # the mount point of the writable claims directory
    claims_src = tmp_path / "claims-src"     # what the volume's .tfwb-agent really holds
    claims_src.mkdir()
    before = _tree(runs)
    keys, state = tmp_path / "keys", tmp_path / "state"
    keys.mkdir()
    state.mkdir(mode=0o700)
    (state / "redact.key").write_text(os.urandom(32).hex())
    (state / "redact.key").chmod(0o600)
    cfg = tmp_path / "agent.toml"
    base = (f'state_dir = "{state}"\nnode_name = "sandboxed"\n[watch]\nroots = ["{runs}"]\n'
            f'mode = "poll"\npoll_seconds = 0.5\nquiet_seconds = 2\n'
            f'[keys]\nnode_key = "{keys / "node.key"}"\nidentity = "{keys / "gateway.agekey"}"\n')
    cfg.write_text(base)
    env = {k: v for k, v in os.environ.items() if k != "TFWB_AGENT_CONFIG"}
    assert run([exe, "--config", str(cfg), "keys", "init", "--node"], env=env).returncode == 0
    gw = run([exe, "--config", str(cfg), "keys", "init", "--gateway"], env=env)
    recipient = re.search(r"age1[0-9a-z]+", gw.stdout + gw.stderr).group(0)
    cfg.write_text(base + f'recipients = ["{recipient}"]\n')

    sandbox = (
        'set -e\n'
        'mount -t proc -o subset=pid,hidepid=invisible proc /proc\n'
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1"\n'
        'mount --bind "$2" "$1/.tfwb-agent"\n'
        'if touch "$1/.tfwb-write-probe" 2>/dev/null; then echo "runs volume still writable" >&2; exit 90; fi\n'
        'test ! -e /proc/meminfo || { echo "/proc not reduced to pids" >&2; exit 91; }\n'
        'shift 2\n'
        'exec "$@"\n'
    )
    cmd = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child=SIGTERM",
           "sh", "-c", sandbox, "sh", str(runs), str(claims_src),
           sys.executable, "-c", MDWE_WRAPPER, exe, "--config", str(cfg), "daemon"]
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    want = {p.name.rsplit("-", 1)[-1] for p in runs.glob("*/offline-run-*")}
    views: dict = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            res = run([exe, "--config", str(cfg), "status", "--json"], env=env)
            if res.returncode == 0:
                views = {r["run_id"]: r for r in json.loads(res.stdout)["runs"]}
                if want <= views.keys() and all(views[r]["state"] == "sealed" for r in want):
                    break
            time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    out = (tmp_path / "daemon.log").read_text()
    assert want and want <= views.keys(), (views, out[-3000:])
    assert {r: views[r]["state"] for r in want} == {r: "sealed" for r in want}, (views, out[-3000:])
    assert _tree(runs) == before, "the daemon changed the read-only runs volume"
    assert any(claims_src.rglob("*")), "no claim was written to the claims directory"


# --------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------

MANIFESTS = sorted(K8S.glob("*.yaml"))


@pytest.mark.parametrize("k8s_version", ["1.28.0", None], ids=["k8s-1.28", "k8s-latest"])
def test_k8s_manifests_validate(k8s_version):
    assert {m.name for m in MANIFESTS} >= {"agent-daemonset.yaml", "configmap.yaml", "train-job.yaml"}
    cmd = [tool("kubernetes-validate"), "--strict"]
    if k8s_version:
        cmd += ["-k", k8s_version]
    res = run(cmd + [str(m) for m in MANIFESTS])
    assert res.returncode == 0, res.stdout + res.stderr
    passed = re.findall(r"passed for resource (\S+)", res.stdout + res.stderr)
    assert len(passed) == sum(len(_docs_of(m)) for m in MANIFESTS), res.stdout + res.stderr


def test_k8s_validator_rejects_a_broken_manifest(tmp_path):
    # Control: the validator checks field names and types against the schemas (offline).
    text = (K8S / "agent-daemonset.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("readOnlyRootFilesystem: true", "readOnlyRootFilesytem: true", 1))
    res = run([tool("kubernetes-validate"), "--strict", str(bad)])
    assert res.returncode != 0 and "readOnlyRootFilesytem" in res.stdout + res.stderr


def _docs_of(manifest: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(manifest.read_text()) if d]


def _docs() -> dict[str, dict]:
    """Each resource by kind, and by "Kind/name" (two ConfigMaps, two PVCs, two Secrets)."""
    out = {}
    for m in MANIFESTS:
        for doc in _docs_of(m):
            out.setdefault(doc["kind"], doc)
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def _probes(container: dict) -> tuple[list[str], list[str]]:
    return container["livenessProbe"]["exec"]["command"], container["readinessProbe"]["exec"]["command"]


def test_k8s_daemonset_contract(tmp_path):
    docs = _docs()
    ds = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert ds["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in ds["tolerations"])
    assert ds["securityContext"]["runAsNonRoot"] is True and ds["securityContext"]["runAsUser"] == 10001
    for c in ds["containers"] + ds["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    (agent,) = ds["containers"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/srv/shared/runs"].get("readOnly") is True
    claims = mounts["/srv/shared/runs/.tfwb-agent"]
    assert claims["name"] == mounts["/srv/shared/runs"]["name"] and claims["subPath"] == ".tfwb-agent"
    assert not claims.get("readOnly")
    assert mounts["/run/secrets/tfwb-agent"].get("readOnly") is True
    vols = {v["name"]: v for v in ds["volumes"]}
    assert vols[mounts["/var/lib/tfwb-agent"]["name"]]["hostPath"]["path"] == "/var/lib/tfwb-agent"
    assert "secret" in vols[mounts["/run/secrets/tfwb-agent"]["name"]]
    # The training Job writes to the same volume.
    job = docs["Job"]["spec"]["template"]["spec"]
    job_vols = {v["name"]: v for v in job["volumes"]}
    (train,) = job["containers"]
    runs_mount = next(m for m in train["volumeMounts"] if m["mountPath"] == "/runs")
    assert job_vols[runs_mount["name"]]["persistentVolumeClaim"] == \
        vols[mounts["/srv/shared/runs"]["name"]]["persistentVolumeClaim"]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == 1

    # Probes on `health`: liveness on the loop alone (a restart cures a hang, not a key), readiness all.
    assert _probes(agent) == (["tfwb-agent", "health", "--only", "daemon"], ["tfwb-agent", "health"])
    # A key per node: made on the node's state volume at first start, kept after.
    inits = {c["name"]: c for c in ds["initContainers"]}
    assert inits["node-key"]["args"] == ["keys", "init", "--node", "--if-missing"]
    assert {m["mountPath"] for m in inits["node-key"]["volumeMounts"]} >= {"/var/lib/tfwb-agent", "/etc/tfwb-agent"}
    assert [c["name"] for c in ds["initContainers"]] == ["config", "node-key"]  # the config first

    # The ConfigMap's agent.toml, with the node_name the init container prepends: the shipped
    # recipient placeholder is refused (nothing is sealed to nobody); with the gateway's
    # recipient and the node's key made as the init container makes it, `config check` passes.
    toml_text = docs["ConfigMap/tfwb-agent-config"]["data"]["agent.toml"]
    parsed = tomllib.loads(toml_text)
    assert parsed["watch"]["roots"] == ["/srv/shared/runs"] and parsed["watch"]["mode"] == "poll"
    assert parsed["state_dir"] == "/var/lib/tfwb-agent"
    assert parsed["keys"]["node_key"] == "/var/lib/tfwb-agent/keys/node.key"
    assert parsed["retention"]["min_free_mb"] > 0
    cfg = tmp_path / "agent.toml"
    here = toml_text.replace("/var/lib/tfwb-agent", str(tmp_path / "state"))
    cfg.write_text("node_name = 'gpu-node-1'\n" + here)
    res = run([tool("tfwb-agent"), "--config", str(cfg), "config", "check"])
    assert res.returncode == 1 and "keys.recipients[0]" in res.stderr, res.stdout + res.stderr
    ident = run(["age-keygen"]).stdout
    recipient = re.search(r"age1[0-9a-z]+", ident).group(0)
    cfg.write_text("node_name = 'gpu-node-1'\n" + here.replace("age1-REPLACE-WITH-THE-GATEWAY-RECIPIENT", recipient))
    res = run([tool("tfwb-agent"), "--config", str(cfg), *inits["node-key"]["args"]])
    assert res.returncode == 0 and res.stdout.startswith("key id "), res.stdout + res.stderr
    res = run([tool("tfwb-agent"), "--config", str(cfg), "config", "check"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_k8s_gateway_contract(tmp_path):
    docs = _docs()
    dep = docs["Deployment/tfwb-gateway"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (gw,) = pod["containers"]
    assert gw["args"] == ["daemon"]
    assert gw["securityContext"]["readOnlyRootFilesystem"] is True
    assert _probes(gw) == (["tfwb-agent", "health", "--only", "daemon"], ["tfwb-agent", "health"])
    mounts = {m["mountPath"]: m["name"] for m in gw["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/var/lib/tfwb-agent"]]["persistentVolumeClaim"]["claimName"] == \
        docs["PersistentVolumeClaim/tfwb-gateway-state"]["metadata"]["name"]
    secret = vols[mounts["/run/secrets/tfwb-gateway"]]["secret"]
    assert secret["secretName"] == docs["Secret/tfwb-gateway-keys"]["metadata"]["name"]
    assert secret["defaultMode"] & 0o007 == 0  # the agent refuses keys others may read
    assert vols[mounts["/etc/tfwb-agent"]]["configMap"]["name"] == "tfwb-gateway-config"
    # Its config passes `config check` once the Secret's files exist (here, at a scratch path).
    toml_text = docs["ConfigMap/tfwb-gateway-config"]["data"]["agent.toml"]
    keys = tmp_path / "keys"
    keys.mkdir()
    assert run(["age-keygen", "-o", str(keys / "gateway.agekey")]).returncode == 0
    (keys / "wandb-api-key").write_text("x" * 40)
    os.chmod(keys / "wandb-api-key", 0o600)
    node_cfg = tmp_path / "node.toml"
    node_cfg.write_text(f'state_dir = "{tmp_path}/n"\n[keys]\nnode_key = "{tmp_path}/n.key"\n')
    assert run([tool("tfwb-agent"), "--config", str(node_cfg), "keys", "init", "--node"]).returncode == 0
    shutil.copy(tmp_path / "n.key.pub", keys / "gpu-node-1.pub")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(toml_text.replace("/run/secrets/tfwb-gateway", str(keys))
                   .replace("/var/lib/tfwb-agent", str(tmp_path / "gw-state")))
    res = run([tool("tfwb-agent"), "--config", str(cfg), "config", "check"])
    assert res.returncode == 0, res.stdout + res.stderr
