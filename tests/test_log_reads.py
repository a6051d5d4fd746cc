"""How often a run's `.wandb` log is read from the volume between discovery and a sealed bundle.

The log lives on a shared volume (NFS, Lustre): every pass over it is I/O the GPU nodes pay
for. The incremental classification reads what was appended since its last look; sealing an
ended run may then read the log once more, in full (the redaction's rewrite), never more.

Measured with an audit hook on ``open`` (CPython raises it for ``open()`` and ``os.open``):
every open of a run's log path is a read of it, counted per stage. Then the fold itself: a
fold resumed from a saved offset learns exactly what one fold of the whole log learns.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from seal_helpers import make_site, site_redact_secret

from conftest import CORPUS_RUNS

_opens: Counter[str] = Counter()
_watched: set[str] = set()


def _hook(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        p = os.fsdecode(args[0])
        if p in _watched:
            _opens[p] += 1


sys.addaudithook(_hook)  # cannot be removed; it does nothing for a path no test watches


def _site(tmp_path: Path, corpus: Path):
    site = make_site(tmp_path / "site")
    secret = site_redact_secret(tmp_path / "site")
    with open(site.node_cfg, "a") as f:
        f.write(f'[watch]\nroots = ["{corpus}"]\nquiet_seconds = 2\n[path_map]\n"/runs" = "{corpus}"\n'
                f'[redact]\nsecret_file = "{secret}"\nmetadata = "redact"\n')
    return site


def test_sealing_an_ended_run_reads_its_log_once_beyond_classification(tmp_path, corpus):
    from tfwb_agent import config as config_mod
    from tfwb_agent.ledger import Ledger
    from tfwb_agent.pipeline import seal_stage
    from tfwb_agent.reconcile import reconcile

    site = _site(tmp_path, corpus)
    cfg = config_mod.load(str(site.node_cfg))
    logs = sorted(str(p) for p in corpus.rglob("offline-run-*/run-*.wandb"))
    assert len(logs) == len(CORPUS_RUNS)
    _watched.update(logs)
    try:
        _opens.clear()
        ledger = Ledger(cfg.ledger_path)
        reconcile(ledger, cfg)
        classify = dict(_opens)
        _opens.clear()
        while seal_stage(ledger, cfg):
            pass
        sealing = dict(_opens)
    finally:
        _watched.clear()
    states = {Path(r["key"]).name: r["state"] for r in ledger.runs_where("1")}
    assert sorted(states.values()) == ["sealed"] * len(CORPUS_RUNS), states
    bundles = sorted(site.outbox.glob("*.tar.zst.age"))
    assert sorted(b.name.split("-")[0] for b in bundles) == sorted(CORPUS_RUNS)
    assert all(classify.get(p) == 1 for p in logs), classify  # the first look reads each log once
    print(f"\nreads of each run's log: classification {sorted(classify.values())}, sealing {sorted(sealing.values())}")
    over = {Path(p).name: n for p, n in sealing.items() if n > 1}
    assert not over, f"sealing read these logs more than once beyond classification: {over}"


def test_a_fold_resumed_from_an_offset_learns_what_one_whole_fold_learns(tmp_path, corpus):
    """Cut each corpus log at every few records, fold the parts one after another from the
    saved offset (as the incremental classification does), and compare with one fold of the
    whole log: classification facts, redaction plan and segment facts alike."""
    from tfwb_agent import runlog
    from tfwb_agent.wandb_log import LogReader

    for log in sorted(corpus.rglob("offline-run-*/run-*.wandb")):
        whole = runlog.read(log)
        with open(log, "rb") as f:
            offsets = [o for o, _ in LogReader(f)]
        assert len(offsets) > 10
        grown = tmp_path / "grown" / log.parent.name / log.name
        grown.parent.mkdir(parents=True)
        data = log.read_bytes()
        fold = None
        for cut in [*offsets[3::7], len(data)]:
            grown.write_bytes(data[:cut])  # the log as a live run has written it so far
            fold = runlog.read(grown, fold)
            assert fold.end <= cut
        assert fold is not None and fold.start == whole.start
        assert fold.end == whole.end and fold.torn_at == whole.torn_at  # a crashed run's torn tail too
        assert fold.snapshot() == whole.snapshot(), log
        assert fold.records == len(offsets)


def test_one_rule_finds_a_runs_log(tmp_path):
    """The run's own `run-<id>.wandb` wins over another `run-*.wandb`; a symlink, a directory
    or a file not named like a run's log is never taken."""
    from tfwb_agent.runlog import find_log

    d = tmp_path / "offline-run-20240101_000000-abc123"
    d.mkdir()
    assert find_log(d) is None
    (d / "notes.wandb").write_bytes(b"x")
    (d / "run-zzz.wandb").mkdir()
    os.symlink("/etc/hostname", d / "run-aaa.wandb")
    assert find_log(d) is None
    (d / "run-other.wandb").write_bytes(b"x")
    assert find_log(d) == d / "run-other.wandb"
    (d / "run-abc123.wandb").write_bytes(b"x")
    assert find_log(d) == d / "run-abc123.wandb"
    assert find_log(tmp_path / "gone") is None


def test_a_log_that_grew_after_its_fold_is_planned_again(tmp_path, corpus):
    """Adversary: after the classification folded the log, the run appends a config record
    declaring ``train/*`` sensitive. The plan from the old fold lacks it; redaction must see the
    record it did not plan for and plan again, so no value of ``train/*`` leaves as it was."""
    from wandb.proto import wandb_internal_pb2 as pb

    from tfwb_agent import runlog, runs
    from tfwb_agent.redact.policy import DEFAULT_POLICY
    from tfwb_agent.redact.run import redact_run
    from tfwb_agent.wandb_log import LogWriter, read_records

    run_dir = next(corpus.rglob("offline-run-*-3salp52t"))
    facts = runs.inspect(run_dir)
    log = runlog.find_log(run_dir)
    fold = runlog.cached(log, facts.read_offset)
    assert fold is not None and "train/*" not in fold.sensitive
    rec = pb.Record()
    item = rec.config.update.add()
    item.key, item.value_json = "tfwb", '{"sensitive": ["train/*"]}'
    with open(log, "r+b") as f:
        LogWriter(f, append_at=facts.read_offset).write(rec)

    dst = tmp_path / "out" / run_dir.name
    report = redact_run(run_dir, dst, DEFAULT_POLICY, b"log-reads-test-secret-0123456789", Path, fold=fold)
    assert "train/*" in report.sensitive_keys
    sent = [it for _, r in read_records(runlog.find_log(dst)) if r.WhichOneof("record_type") == "history"
            for it in r.history.item if (it.key or "/".join(it.nested_key)).startswith("train/")]
    assert sent, "the history rows are still there"
    plain = [it.value_json for it in sent if not it.value_json.strip('"').startswith("hash:")]
    assert not plain, f"train/* values left as they were: {plain[:3]}"
