"""A run's id, project, entity and sweep id route it on the server, so redaction never rewrites
them; the strings are not dropped either. A site that names projects after patients, or a script
that puts a key into `entity=`, must not have the strings leave as they are: such a run is refused
(quarantined, the field and the rule named, the value in no message), the runs beside it are
sealed, and `keep_strings = ["identifiers"]` is the one way to let them leave unscrubbed.

The runs are written by real wandb (offline) in one process; the agent runs as its CLI.
"""
from __future__ import annotations

import json
import secrets
import string
import subprocess
import sys
from pathlib import Path

from conftest import agent
from seal_helpers import corpus_run_dirs, make_site
from tfwb_agent.redact.errors import RedactError
from tfwb_agent.redact.meta import refuse_secret_routing
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.redaction import Redaction
from tfwb_agent.runlog import find_log
from tfwb_agent.wandb_log import LogReader, parse_record

WRITER = r'''
import json, os, sys
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
root = sys.argv[1]
for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
    os.environ[k] = os.path.join(root, k.lower())
import wandb
for name, kw in json.loads(sys.argv[2]).items():
    run = wandb.init(dir=os.path.join(root, name), config={"lr": 0.1}, **kw)
    for s in range(5):
        run.log({"loss": 1.0 / (s + 1)})
    print("RUN", name, run.id, os.path.dirname(run.dir), flush=True)
    run.finish()
'''


def _write_runs(root: Path, runs: dict[str, dict]) -> dict[str, Path]:
    out = subprocess.run([sys.executable, "-c", WRITER, str(root), json.dumps(runs)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return {line.split()[1]: Path(line.split()[3]) for line in out.stdout.splitlines() if line.startswith("RUN ")}


def test_a_run_whose_identifiers_hold_site_data_or_a_key_is_refused_and_the_rest_sealed(tmp_path):
    digits = "".join(secrets.choice(string.digits) for _ in range(4))
    patient = f"pt{digits}"                                     # the site's pattern: pt + 4 digits
    run_id = f"pt{(int(digits) + 1) % 10000:04d}ab"
    aws_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    sweep = "".join(secrets.choice("0123456789abcdef") for _ in range(40))   # a bare W&B key's shape
    volume = tmp_path / "volume"
    dirs = _write_runs(volume, {
        "project": {"project": f"seg-{patient}"},
        "run_id": {"project": "ct-routing", "id": run_id},
        "entity": {"project": "ct-routing", "entity": aws_id},
        "plain": {"project": "ct-routing"},
    })
    site = make_site(tmp_path / "site")
    with open(site.node_cfg, "a") as f:
        f.write(f'[watch]\nroots = ["{volume}"]\nquiet_seconds = 1\n[redact]\npatterns = ["pt\\\\d{{4}}"]\n')

    seal = agent(site.node_cfg, "scan", "--seal", check=False)
    status = json.loads(agent(site.node_cfg, "status", "--json").stdout)
    by_dir = {Path(r["path"]).name: r for r in status["runs"]}
    states = {name: by_dir[d.name]["state"] for name, d in dirs.items()}
    assert states == {"project": "quarantined", "run_id": "quarantined", "entity": "quarantined",
                      "plain": "sealed"}, (states, seal.stdout, seal.stderr)
    reasons = {name: by_dir[d.name]["last_error"] for name, d in dirs.items() if name != "plain"}
    assert "run's project matches [redact] patterns[0]" in reasons["project"], reasons
    assert "run's run id matches [redact] patterns[0]" in reasons["run_id"], reasons
    assert "run's entity matches the aws_access_key_id rule" in reasons["entity"], reasons
    assert all('keep_strings = ["identifiers"]' in r for r in reasons.values()), reasons
    # The effect: one bundle in the outbox, the plain run's; no value in any message or name.
    bundles = sorted(p.name for p in site.outbox.glob("*.age"))
    assert len(bundles) == 1 and bundles[0].startswith(by_dir[dirs["plain"].name]["run_id"]), bundles
    said = json.dumps(reasons) + seal.stdout + seal.stderr + " ".join(bundles)
    said += (site.root / "node-state" / "audit.log").read_text()
    assert not [c for c in (patient, aws_id) if c in said]
    # Nor does `status` show the project or entity a run was refused for (its fields say so).
    shown = agent(site.node_cfg, "status").stdout + json.dumps(status["runs"])
    assert not [c for c in (patient, aws_id) if c in shown], shown
    assert by_dir[dirs["project"].name]["project"] == by_dir[dirs["entity"].name]["entity"] == "(withheld: see the note)"
    assert by_dir[dirs["plain"].name]["project"] == "ct-routing"

    # A sweep id of a secret's shape is refused the same way (written into the run record, as
    # `wandb agent` fills it in; offline wandb has no sweep to join).
    from wandb.proto import wandb_internal_pb2 as pb
    rec = pb.RunRecord(run_id="a1b2c3d4", project="ct-routing", sweep_id=sweep)
    r = Redaction(dirs["plain"], None, DEFAULT_POLICY, b"s" * 32, Path)
    try:
        refuse_secret_routing(rec, r.scrubber.routing_rules, "run")
        raise AssertionError("a sweep id shaped like a W&B key was let through")
    except RedactError as exc:
        assert "sweep id matches the wandb_api_key rule" in str(exc) and sweep not in str(exc)

    # The one way to let them leave as they are, by name; the CLI says why when it refuses.
    refused = agent(site.node_cfg, "redact", str(dirs["project"]), "--dry-run", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "project matches [redact] patterns[0]" in refused.stderr and patient not in refused.stderr
    loose = tmp_path / "loose.toml"
    loose.write_text(site.node_cfg.read_text().replace('[redact]\n', '[redact]\nkeep_strings = ["identifiers"]\n'))
    out = tmp_path / "out"
    agent(loose, "redact", str(dirs["project"]), "--out", str(out))
    log = find_log(out / dirs["project"].name)
    with open(log, "rb") as f:
        projects = {parse_record(p, o, pb).run.project for o, p in LogReader(f)} - {""}
    assert projects == {f"seg-{patient}"}


def test_ordinary_identifiers_are_never_refused(corpus):
    """No false refusal: 5,000 run ids from wandb's own generator, and every corpus run's id,
    project and entity (wandb 0.15 and 0.31) pass the default policy."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.lib.runid import generate_id
    some_dir = next(iter(corpus_run_dirs(corpus).values()))
    r = Redaction(some_dir, None, DEFAULT_POLICY, b"s" * 32, Path)
    for _ in range(5000):
        refuse_secret_routing(pb.RunRecord(run_id=generate_id(), project="ct-routing"), r.scrubber.routing_rules, "run")
    seen = 0
    for d in corpus_run_dirs(corpus).values():
        with open(find_log(d), "rb") as f:
            for off, payload in LogReader(f):
                rec = parse_record(payload, off, pb)
                if rec.WhichOneof("record_type") == "run":
                    refuse_secret_routing(rec.run, r.scrubber.routing_rules, "run")
                    seen += 1
    assert seen >= len(corpus_run_dirs(corpus))


def test_an_artifacts_own_project_or_entity_is_refused_only_when_the_artifact_would_leave():
    """An artifact may be logged to another project than its run's. Kept (``artifacts = "keep"``),
    its project and entity leave as they are, so one a rule matches refuses the run; dropped (the
    default), nothing of it leaves and nothing is refused."""
    from wandb.proto import wandb_internal_pb2 as pb

    from tfwb_agent.redact.console_records import Console
    from tfwb_agent.redact.policy import parse_policy
    from tfwb_agent.redact.records import rewrite

    patient = "pt" + "".join(secrets.choice(string.digits) for _ in range(4))
    aws_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    for field, value, rule in (("project", f"scans-{patient}", "[redact] patterns[0]"),
                               ("entity", aws_id, "the aws_access_key_id rule")):
        rec = pb.Record()
        rec.artifact.run_id, rec.artifact.project, rec.artifact.entity = "a1b2c3d4", "ct-routing", "team"
        rec.artifact.type, rec.artifact.name = "dataset", "scans"
        setattr(rec.artifact, field, value)
        for artifacts, refused in (("keep", True), ("drop", False)):
            policy = parse_policy("t", {"patterns": [r"pt\d{4}"], "artifacts": artifacts})
            r = Redaction(Path("/nonexistent"), None, policy, b"s" * 32, Path)
            try:
                out = rewrite(r, pb.Record.FromString(rec.SerializeToString()), Console(r))
            except RedactError as exc:
                assert refused, (field, artifacts, str(exc))
                assert f"artifact's {field} matches {rule}" in str(exc) and value not in str(exc), str(exc)
                continue
            assert not refused, f"an artifact kept with {field} {value!r} was let through: {out}"
            assert out == [] and r.report.artifacts["dropped"] == 1
    # ... and the one way to let them leave: identifiers kept as they are.
    policy = parse_policy("t", {"patterns": [r"pt\d{4}"], "artifacts": "keep", "keep_strings": ["identifiers"]})
    r = Redaction(Path("/nonexistent"), None, policy, b"s" * 32, Path)
    rec = pb.Record()
    rec.artifact.run_id, rec.artifact.project, rec.artifact.type, rec.artifact.name = "a1b2c3d4", f"x-{patient}", "dataset", "scans"
    entry = rec.artifact.manifest.contents.add()      # a reference: what makes an artifact worth sending
    entry.path, entry.ref = "remote.csv", "https://data.example.com/scans.csv"
    entry.digest = entry.ref
    (kept,) = rewrite(r, rec, Console(r))
    assert kept.artifact.project == f"x-{patient}"


def test_the_runs_own_host_or_user_in_its_identifiers_refuses_it(corpus):
    """The run's own host, user and e-mail are site data too: a project named after the host, a
    run id or entity that is the user's name (a digit beside it or not) would leave as they are."""
    from wandb.proto import wandb_internal_pb2 as pb
    host, user = "icu-gpu-" + secrets.token_hex(3), "u" + secrets.token_hex(4)
    r = Redaction(next(iter(corpus_run_dirs(corpus).values())), None, DEFAULT_POLICY, b"s" * 32, Path)
    r.add_identity({host, user})
    for field, value in (("project", f"exp-{host}"), ("run_id", f"{user}1"), ("entity", user),
                         ("project", f"{host.upper()}_ct")):
        try:
            refuse_secret_routing(pb.RunRecord(**{"run_id": "a1b2c3d4", "project": "ct", field: value}),
                                  r.scrubber.routing_rules, "run")
            raise AssertionError(f"{field} {value!r} holding the run's own host or user was let through")
        except RedactError as exc:
            assert "the identity rule" in str(exc) and host not in str(exc) and user not in str(exc), exc
    refuse_secret_routing(pb.RunRecord(run_id="a1b2c3d4", project="ct-routing", entity="radiology"),
                          r.scrubber.routing_rules, "run")


def test_a_real_run_in_a_project_named_after_its_host_is_refused(tmp_path):
    """wandb records the host it ran on; the run's project holds it."""
    from canary_helpers import _can_set_hostname
    from tfwb_agent.redact.run import redact_run

    assert _can_set_hostname(), "this test needs root and unshare(1) to give the run a host name of its own"
    host = "icu-gpu-" + secrets.token_hex(3)
    code = WRITER.replace("import wandb\n", "import wandb, socket\n")
    p = subprocess.run(["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" "$@"', sys.executable, "-c",
                        code, str(tmp_path), json.dumps({"hosted": {"project": f"exp-{host}"}})],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next(Path(line.split()[3]) for line in p.stdout.splitlines() if line.startswith("RUN "))
    assert host.encode() in find_log(run_dir).read_bytes(), "wandb did not record the run's host"
    try:
        redact_run(run_dir, tmp_path / "out" / run_dir.name, DEFAULT_POLICY, b"s" * 32, lambda q: Path(q))
        raise AssertionError("a run whose project holds its own host name was redacted for sealing")
    except RedactError as exc:
        assert "project matches the identity rule" in str(exc) and host not in str(exc), exc
    out = tmp_path / "out"
    assert not [f for f in out.rglob("*") if f.is_file() and host.encode() in f.read_bytes()]
