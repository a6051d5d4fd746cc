"""Issue 12: the redactor fails closed.

1. Property: a secret in one of several forms (40-hex W&B key, ghp_, sk-, AWS key id, Slack,
   Bearer, `password: X`, a PEM block, a site pattern) planted at a random place of a run's
   records — history values at any depth, summary, config, key names, console pieces cut at
   random points, alert text, artifact fields, run fields, metric names — never survives in any
   byte of ``redact_run``'s output, and the run's numbers still do. The `.wandb` log is written
   with the agent's ``LogWriter`` over wandb's own ``Record`` protobufs.
2. A real wandb run (the 0.31 canary run) given records wandb's ``Record`` does not define (a
   record with only field 9999; an unknown field on a history record, inside a history item,
   inside the run record, inside a config item): the unknown parts never leave, the report says
   which record types it dropped, and every history row is still there.
3. Files under ``files/`` the redactor does not know (text, a binary blob, a saved config dump,
   TensorBoard event files, a file whose name holds a secret) are not in the output under the
   default policy: only wandb's own files and media leave.
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from wandb.proto import wandb_internal_pb2 as pb

from canary_helpers import SITE_PATTERNS, Canaries, Canary, describe, scan_tree, session_runs
from redact_helpers import protobuf_field
from trainer_helpers import interpreters, require_python

from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.run import redact_run
from tfwb_agent.wandb_log import LogWriter, read_records

SECRET = b"fail-closed-test-secret-0123456789abcdef"
SITE_POLICY = dataclasses.replace(DEFAULT_POLICY, patterns=tuple(SITE_PATTERNS))
KEEP_ARTIFACTS = dataclasses.replace(DEFAULT_POLICY, artifacts="keep")
ALNUM = string.ascii_letters + string.digits


def _identity(p: str) -> Path:
    return Path(p)


# --------------------------------------------------------------------------------------------
# 1. the property
# --------------------------------------------------------------------------------------------

FORMS = ["hex40", "ghp", "sk", "akia", "xoxb", "bearer", "password", "url", "pem", "site"]
PLACES = ["history_value", "history_key", "history_nested_key", "summary_value", "summary_key",
          "config_value", "config_key", "run_config", "run_field", "console", "alert", "artifact_metadata",
          "artifact_description", "artifact_alias", "artifact_reference", "metric_name"]
# Realistic delimiters around a secret: the scrubber may rely on a token ending somewhere.
SEPARATORS = [" ", "\n", "\t", "=", ": ", '"', "'", ",", ";", "(", ")", "[", "]", "/", "\u00a0"]
context = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


def make_secret(form: str, rng: random.Random) -> tuple[str, list[str]]:
    """(text to plant, needles that must not survive)."""
    def r(n: int, alphabet: str = ALNUM) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    if form == "hex40":
        v = r(40, "0123456789abcdef")
        return v, [v]
    if form == "ghp":
        v = "ghp_" + r(36)
        return v, [v]
    if form == "sk":
        v = "sk-" + r(20) + "T3BlbkFJ" + r(20)
        return v, [v]
    if form == "akia":
        v = "AKIA" + r(16, string.ascii_uppercase + string.digits)
        return v, [v]
    if form == "xoxb":
        v = "xoxb-" + r(11, string.digits) + "-" + r(13, string.digits) + "-" + r(24)
        return v, [v]
    if form == "bearer":
        t = r(40)
        return "Authorization: Bearer " + t, [t]
    if form == "password":
        pw = r(18)
        return rng.choice(["password: ", "password=", "db_password = ", "PASSWORD:"]) + pw, [pw]
    if form == "url":
        pw = r(20)
        return f"https://{r(6, string.ascii_lowercase)}:{pw}@data.example.com/scans.csv", [pw]
    if form == "pem":
        body = [r(64, ALNUM + "+/") for _ in range(3)] + [r(20, ALNUM + "+/") + "=="]
        return "-----BEGIN PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END PRIVATE KEY-----", body
    if form == "site":
        v = "P%04d" % rng.randrange(1000, 10000)
        return v, [v]
    raise ValueError(form)


@st.composite
def plantings(draw):
    form = draw(st.sampled_from(FORMS))
    secret, needles = make_secret(form, random.Random(draw(st.integers(0, 2**32))))
    text = draw(context) + draw(st.sampled_from(SEPARATORS)) + secret + draw(st.sampled_from(SEPARATORS)) + draw(context)
    place = draw(st.sampled_from(PLACES))
    depth = draw(st.integers(0, 4))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    return {"form": form, "needles": needles, "text": text, "secret": secret, "place": place, "depth": depth,
            "cuts": cuts, "stream": draw(st.sampled_from([0, 1])), "interleave": draw(st.booleans()),
            "row": draw(st.integers(0, 2)), "in_list": draw(st.booleans())}


def _nest(value, depth: int, in_list: bool):
    for i in range(depth):
        value = {f"n{i}": [value] if in_list and i == 0 else value}
    return value


def _history(step: int, extra: list[pb.HistoryItem] = ()) -> pb.Record:
    rec = pb.Record()
    rec.history.item.add(key="loss", value_json=json.dumps(1.0 / (step + 1)))
    rec.history.item.add(key="acc", value_json=json.dumps(step / 10))
    rec.history.item.add(key="_step", value_json=str(step))
    rec.history.item.extend(extra)
    rec.history.step.num = step
    return rec


def build_log(path: Path, p: dict) -> None:
    """A small run of wandb Records with the secret planted where ``p`` says."""
    text, place = p["text"], p["place"]
    recs: list[pb.Record] = []
    run = pb.Record()
    run.run.run_id, run.run.project, run.run.entity = "failcl01", "fail-closed", "team"
    run.run.config.update.add(key="lr", value_json="0.01")
    if place == "run_config":
        run.run.config.update.add(key="data", value_json=json.dumps(_nest(text, p["depth"], p["in_list"])))
    if place == "run_field":
        [lambda: setattr(run.run, "notes", text), lambda: setattr(run.run, "display_name", text),
         lambda: run.run.tags.append(text), lambda: setattr(run.run, "run_group", text),
         lambda: setattr(run.run, "job_type", text)][p["depth"]]()
    recs.append(run)
    for step in range(3):
        extra = []
        if step == p["row"]:
            if place == "history_value":
                extra.append(pb.HistoryItem(key="status", value_json=json.dumps(_nest(text, p["depth"], p["in_list"]))))
            elif place == "history_key":
                extra.append(pb.HistoryItem(key=f"val/{text}/dice", value_json="0.5"))
            elif place == "history_nested_key":
                extra.append(pb.HistoryItem(nested_key=["per", text], value_json="0.5"))
        recs.append(_history(step, extra))
        if step == p["row"] and place == "console":
            line = text + "\n"
            bounds = [0, *p["cuts"], len(line)]
            pieces = [line[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
            for i, piece in enumerate(pieces):
                c = pb.Record()
                c.output_raw.output_type = p["stream"]
                c.output_raw.line = piece
                recs.append(c)
                if p["interleave"] and i == 0 and len(pieces) > 1:
                    recs.append(_summary("probe", 1))   # another record between the pieces
    summary = pb.Record()
    summary.summary.update.add(key="loss", value_json=json.dumps(1.0 / 3))
    if place == "summary_value":
        summary.summary.update.add(key="note", value_json=json.dumps(_nest(text, p["depth"], p["in_list"])))
    elif place == "summary_key":
        summary.summary.update.add(key=f"best/{text}", value_json="0.9")
    recs.append(summary)
    if place in ("config_value", "config_key"):
        c = pb.Record()
        if place == "config_value":
            c.config.update.add(key="extra", value_json=json.dumps(_nest(text, p["depth"], p["in_list"])))
        else:
            c.config.update.add(key=text, value_json="1")
        recs.append(c)
    if place == "alert":
        a = pb.Record()
        a.alert.title, a.alert.text = ("job failed", text) if p["stream"] else (text, "see logs")
        a.alert.level = "WARN"
        recs.append(a)
    if place.startswith("artifact_"):
        a = pb.Record()
        art = a.artifact
        art.run_id, art.project, art.type, art.name = "failcl01", "fail-closed", "dataset", "scans"
        art.digest = "0" * 32
        art.description = text if place == "artifact_description" else "a dataset"
        art.metadata = json.dumps({"source": _nest(text, p["depth"], p["in_list"])} if place == "artifact_metadata" else {})
        art.aliases.append("latest")
        if place == "artifact_alias":
            art.aliases.append(text)
        art.manifest.version = 1
        art.manifest.storage_policy = "wandb-storage-policy-v1"
        e = art.manifest.contents.add()
        e.path = "remote.csv"
        if place == "artifact_reference":
            # wandb's reference without checksum: the URI is also the entry's digest
            e.ref = e.digest = p["secret"] if p["form"] == "url" else "https://data.example.com/scans.csv?" + text
        else:
            e.ref, e.digest = "https://data.example.com/scans.csv", "d41d8cd98f00b204e9800998ecf8427e"
        recs.append(a)
    if place == "metric_name":
        m = pb.Record()
        m.metric.name = f"val/{text}"
        recs.append(m)
    ex = pb.Record()
    ex.exit.exit_code = 0
    recs.append(ex)
    with open(path, "wb") as f:
        w = LogWriter(f)
        for rec in recs:
            w.write(rec)


def _key(item) -> str:
    """wandb 0.31 writes even a plain key as a one-element nested_key."""
    return item.key or "/".join(item.nested_key)


def _summary(key: str, value) -> pb.Record:
    rec = pb.Record()
    rec.summary.update.add(key=key, value_json=json.dumps(value))
    return rec


def _train_rows(log: Path) -> list[tuple[float, float]]:
    out = []
    for _, rec in read_records(log):
        if rec.WhichOneof("record_type") == "history":
            vals = {_key(it): json.loads(it.value_json) for it in rec.history.item if _key(it) in ("loss", "acc")}
            out.append((vals.get("loss"), vals.get("acc")))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plantings())
def test_a_planted_secret_never_survives(p: dict) -> None:
    policy = SITE_POLICY if p["form"] == "site" else KEEP_ARTIFACTS if p["place"].startswith("artifact_") else DEFAULT_POLICY
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "offline-run-20260101_000000-failcl01"
        (src / "files").mkdir(parents=True)
        build_log(src / "run-failcl01.wandb", p)
        dst = Path(tmp) / "out" / src.name
        redact_run(src, dst, policy, SECRET, _identity)
        placement = f"{p['place']}/{p['form']}"
        canary = Canary(placement, "pid" if p["form"] == "site" else p["form"], "prop", "default", p["needles"])
        hits = scan_tree(Canaries([canary]), dst)
        assert not hits, f"planted {p['form']} secret survived at {p['place']}:\n" + describe(hits, [canary])
        assert _train_rows(next(dst.glob("*.wandb"))) == _train_rows(src / "run-failcl01.wandb"), \
            f"{placement}: the run's numbers changed"


# --------------------------------------------------------------------------------------------
# real runs for 2. and 3.
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """label -> a pristine copy of that canary run's directory (shared with the e2e tests)."""
    pythons = [(label, require_python(label, py)) for label, py in interpreters()]
    runs, base = session_runs(tmp_path_factory, pythons)
    return {r.label: base / r.label / r.root.name / r.run_dir.relative_to(r.root) for r in runs}


def _copy(run_dir: Path, dst: Path) -> Path:
    out = dst / run_dir.name
    shutil.copytree(run_dir, out, symlinks=True)
    return out


def _rnd(n: int, alphabet: str = ALNUM) -> str:
    rng = random.SystemRandom()
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_only_string_fields_skip_the_scrubber() -> None:
    """What skips the scrubber is named field by field, never a whole message: a message listed
    as structural would let every string a later wandb adds to it leave unread (``_info`` and
    ``control`` once were). Every message that can hold a string is walked."""
    from google.protobuf.descriptor import FieldDescriptor

    from tfwb_agent.redact.string_fields import MSG, SKIP, STRUCTURAL, field_plan

    seen: set[str] = set()
    found: set[tuple[str, str]] = set()

    def walk(d) -> None:
        if d.full_name in seen:
            return
        seen.add(d.full_name)
        for f in d.fields:
            if (d.name, f.name) in STRUCTURAL:
                found.add((d.name, f.name))
                assert f.type == FieldDescriptor.TYPE_STRING, f"{d.name}.{f.name} is not a string field"
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                walk(f.message_type)
    walk(pb.Record.DESCRIPTOR)
    assert {("_RecordInfo", "stream_id"), ("Control", "relay_id"), ("Record", "uuid")} <= found
    plan = field_plan(pb.Record.DESCRIPTOR)
    for name in ("_info", "control"):
        assert plan[pb.Record.DESCRIPTOR.fields_by_name[name]] is MSG, name
    assert plan[pb.Record.DESCRIPTOR.fields_by_name["uuid"]] is SKIP


def test_unknown_record_types_and_fields_never_leave(pristine, tmp_path: Path) -> None:
    src = _copy(pristine["tf221-wandb031"], tmp_path / "src")
    (log,) = src.glob("run-*.wandb")
    canaries = {name: "ghp_" + _rnd(36) for name in
                ("unknown_record_type", "unknown_field_on_history_record", "unknown_field_in_history_item",
                 "unknown_field_in_run_record", "unknown_field_in_config_item")}
    originals = [payload for _, payload in _raw_records(log)]
    out = []
    done_history = done_item = False
    for payload in originals:
        rec = pb.Record()
        rec.ParseFromString(payload)
        t = rec.WhichOneof("record_type")
        if t == "run":
            rec.run.config.update[0].MergeFromString(protobuf_field(9001, canaries["unknown_field_in_config_item"].encode()))
            rec.run.MergeFromString(protobuf_field(9000, canaries["unknown_field_in_run_record"].encode()))
            out.append(rec.SerializeToString())
            # a record of a type wandb's Record does not have: only field 9999
            out.append(protobuf_field(9999, canaries["unknown_record_type"].encode()))
            continue
        if t == "history" and not done_history:
            done_history = True
            out.append(payload + protobuf_field(9999, canaries["unknown_field_on_history_record"].encode()))
            continue
        if t == "history" and not done_item and any(_key(it) == "loss" for it in rec.history.item):
            done_item = True
            loss = next(it for it in rec.history.item if _key(it) == "loss")
            loss.MergeFromString(protobuf_field(9002, canaries["unknown_field_in_history_item"].encode()))
            out.append(rec.SerializeToString())
            continue
        out.append(payload)
    assert done_history and done_item
    with open(log, "wb") as f:
        w = LogWriter(f)
        for payload in out:
            w.write(payload)
    written = log.read_bytes()
    assert all(v.encode() in written for v in canaries.values()), "the crafted log lost a planted field"

    dst = tmp_path / "out" / src.name
    report = redact_run(src, dst, DEFAULT_POLICY, SECRET, _identity).to_dict()
    cs = [Canary(name, "ghp", "unknown", "default", [v]) for name, v in canaries.items()]
    hits = scan_tree(Canaries(cs), dst)
    assert not hits, "unknown records or fields left the node:\n" + describe(hits, cs)
    records = report["records"]
    dropped = {k: v for k, v in records.items() if "dropped" in k}
    assert dropped, f"the report does not say which records it dropped: {records}"
    assert "unknown:9999" in json.dumps(dropped), f"the unknown record type is not counted as unknown:9999: {dropped}"
    # The rest of the run is whole: the same history rows, the same numbers.
    want = _history_rows(log)
    assert sum("loss" in row for row in want) == 5, want
    assert _history_rows(next(dst.glob("run-*.wandb"))) == want


def test_a_value_json_that_is_no_json_and_has_no_quote_is_scrubbed_as_text(corpus, tmp_path: Path) -> None:
    """A value with no '"' was taken for a number (or true/false/null) and left as it was: a
    ``value_json`` of ``[P7126 ghp_…`` (no JSON at all, written by another client or a bug)
    left the node in a summary or a history row. Numbers and lists of numbers still leave as
    they are."""
    src = _copy(_small_run(corpus), tmp_path / "src")
    (log,) = src.glob("run-*.wandb")
    token = "ghp_" + _rnd(36)
    planted = {"summary": f"[{token} x", "history": f"{token}", "config": f"{{{token}}}"}
    numbers = {"hist/list": "[1,2.5,-3e-05,NaN]", "hist/inf": "-Infinity", "hist/flag": "true"}
    done = set()
    out = []
    for _, rec in read_records(log):
        t = rec.WhichOneof("record_type")
        if t == "summary" and "summary" not in done:
            rec.summary.update.add(key="note", value_json=planted["summary"])
            done.add("summary")
        elif t == "history" and "history" not in done:
            rec.history.item.add(key="status", value_json=planted["history"])
            for k, v in numbers.items():
                rec.history.item.add(key=k, value_json=v)
            done.add("history")
        elif t == "run":
            rec.run.config.update.add(key="dsn", value_json=planted["config"])
            done.add("config")
        out.append(rec)
    assert done == set(planted)
    with open(log, "wb") as f:
        w = LogWriter(f)
        for rec in out:
            w.write(rec)
    dst = tmp_path / "out" / src.name
    redact_run(src, dst, DEFAULT_POLICY, SECRET, _identity)
    leaked = [str(f) for f in dst.rglob("*") if f.is_file() and token[4:].encode() in f.read_bytes()]
    assert not leaked, leaked
    rows = [rec.history for _, rec in read_records(next(dst.glob("run-*.wandb"))) if rec.HasField("history")]
    kept = {it.key: it.value_json for h in rows for it in h.item if it.key in numbers}
    assert kept == numbers


def _raw_records(log: Path):
    from tfwb_agent.wandb_log import LogReader
    with open(log, "rb") as f:
        yield from LogReader(f)


def _history_rows(log: Path) -> list[dict[str, float]]:
    rows = []
    for _, rec in read_records(log):
        if rec.WhichOneof("record_type") == "history":
            row = {}
            for it in rec.history.item:
                if _key(it) in ("loss", "acc", "_step", "probe"):
                    row[_key(it)] = json.loads(it.value_json)
            rows.append(row)
    return rows


WANDB_OWN = {"wandb-metadata.json", "wandb-summary.json", "config.yaml", "output.log", "requirements.txt",
             "conda-environment.yaml"}


@pytest.mark.parametrize("label", [label for label, _ in interpreters()])
def test_files_the_redactor_does_not_know_do_not_leave(pristine, tmp_path: Path, label: str) -> None:
    src = _copy(pristine[label], tmp_path / "src")
    files = src / "files"
    made = {"unknown_text_file": "pushed with ghp_" + _rnd(36),
            "unknown_binary_blob": "sk-" + _rnd(20) + "T3BlbkFJ" + _rnd(20),
            "unknown_deep_file": "xoxb-" + _rnd(11, string.digits) + "-" + _rnd(13, string.digits) + "-" + _rnd(24)}
    (files / "run_notes.txt").write_text(made["unknown_text_file"] + "\n")
    (files / "weights.bin").write_bytes(b"\x89\x00\x01" + made["unknown_binary_blob"].encode() + bytes(range(256)))
    (files / "deep" / "er").mkdir(parents=True)
    (files / "deep" / "er" / "settings.ini").write_text("[hub]\ntoken = " + made["unknown_deep_file"] + "\n")
    before = sorted(p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file() or p.is_symlink())

    dst = tmp_path / "out" / src.name
    redact_run(src, dst, DEFAULT_POLICY, SECRET, _identity)
    after = sorted(p.relative_to(dst / "files").as_posix() for p in (dst / "files").rglob("*") if p.is_file())
    unknown_in = [f for f in before if f not in WANDB_OWN and not f.startswith("media/")]
    assert {"run_notes.txt", "weights.bin", "deep/er/settings.ini", "notes.txt", "blob.bin"} <= set(unknown_in)
    left = [f for f in after if f not in WANDB_OWN and not f.startswith("media/")]
    assert not left, f"{label}: files the redactor does not know left the node: {left} (of {unknown_in})"
    # ... nor does what they held, under any name.
    data = json.loads((pristine[label].parents[1] / "canaries.json").read_text())
    file_placements = [Canary(**c, run=label) for c in data["canaries"] if c["placement"].startswith(("file_", "wandb_save_"))]
    cs = file_placements + [Canary(k, "ghp", "2", "default", [v.split()[-1] if " " in v else v]) for k, v in made.items()]
    hits = scan_tree(Canaries(cs), dst)
    assert not hits, f"{label}: what unknown files held left the node:\n" + describe(hits, cs)


def test_a_directory_of_the_users_own_beside_files_leaves_not_even_its_name(pristine, tmp_path: Path) -> None:
    """The report in the manifest lists what was not copied; a directory at the top of the run
    (not wandb's) appears there under its scrubbed name, and nothing of it is copied."""
    label = next(iter(pristine))
    src = _copy(pristine[label], tmp_path / "src")
    token = "ghp_" + _rnd(36)
    (src / f"scratch-{token}").mkdir()
    (src / f"scratch-{token}" / "notes.txt").write_text(token + "\n")
    dst = tmp_path / "out" / src.name
    report = redact_run(src, dst, DEFAULT_POLICY, SECRET, _identity).to_dict()
    assert token not in json.dumps(report), report["not_copied"]
    assert any("redacted-github_token-" in k for k in report["not_copied"]), report["not_copied"]
    assert not [p for p in dst.rglob("*") if token in p.name or (p.is_file() and token.encode() in p.read_bytes())]


def _small_run(corpus: Path) -> Path:
    """A small real run of the shared corpus (wandb 0.31): the tests below need records, not size."""
    from seal_helpers import corpus_run_dirs
    return corpus_run_dirs(corpus)["3salp52t"]


def _ended_inside_a_line(corpus: Path, tmp_path: Path, secret_part: str) -> Path:
    """A copy of a real run that ended as a crash does in the middle of a printed line: its
    log's last stdout record has no line feed, a stderr line came after it, and output.log holds
    the unfinished line in place, the stderr line after it (as wandb 0.31 keeps it)."""
    src = _copy(_small_run(corpus), tmp_path / "src")
    (log,) = src.glob("run-*.wandb")
    recs = [rec for _, rec in read_records(log) if rec.WhichOneof("record_type") not in ("exit", "final", "footer")]
    half = f"connecting to postgresql://trainer:{secret_part}"
    for stream, line in ((0, "step 1 ok\n"), (0, half), (1, "UserWarning: falling back to CPU\n")):
        rec = pb.Record()
        rec.output_raw.output_type = stream
        rec.output_raw.line = line
        recs.append(rec)
    with open(log, "wb") as f:
        w = LogWriter(f)
        for rec in recs:
            w.write(rec)
    out_log = src / "files" / "output.log"
    out_log.write_text(out_log.read_text() + f"step 1 ok\n{half}\nUserWarning: falling back to CPU\n")
    return src


def test_a_line_the_run_ended_inside_leaves_neither_its_cut_word_nor_its_file(corpus, tmp_path: Path) -> None:
    """Found by a tester of crashed runs: a password printed in two writes, the run killed
    between them. The records released the held half line (``postgres://trainer:Zq8…``, no
    ``@host`` after it for any rule to know it by), and output.log kept it in place, above a
    stderr line, where no "last line" rule finds it."""
    part = "Zq8" + _rnd(17)
    src = _ended_inside_a_line(corpus, tmp_path, part)
    dst = tmp_path / "out" / src.name
    report = redact_run(src, dst, DEFAULT_POLICY, SECRET, _identity).to_dict()
    leaked = [str(f) for f in dst.rglob("*") if f.is_file() and part.encode() in f.read_bytes()]
    assert not leaked, leaked
    assert not (dst / "files" / "output.log").exists()
    assert any("ended inside a line" in f["action"] for f in report["files_dropped_or_scrubbed"]), report["files_dropped_or_scrubbed"]
    # The records still carry the console: the finished lines as they were.
    lines = "".join(rec.output_raw.line for _, rec in read_records(next(dst.glob("run-*.wandb")))
                    if rec.HasField("output_raw"))
    assert "step 1 ok\n" in lines and "falling back to CPU" in lines


def test_a_live_snapshot_holds_back_output_log(corpus, tmp_path: Path) -> None:
    """A snapshot's output.log may hold the line being printed, not its last one (stderr's lines
    come after it): it waits for the run's last segment. The records carry the console."""
    src = _copy(_small_run(corpus), tmp_path / "src")
    assert (src / "files" / "output.log").exists()
    dst = tmp_path / "out" / src.name
    report = redact_run(src, dst, DEFAULT_POLICY, SECRET, _identity, complete=False).to_dict()
    assert not (dst / "files" / "output.log").exists()
    assert any("live snapshot" in f["action"] for f in report["files_dropped_or_scrubbed"])
    whole = tmp_path / "whole" / src.name
    redact_run(src, whole, DEFAULT_POLICY, SECRET, _identity)
    assert (whole / "files" / "output.log").exists()
