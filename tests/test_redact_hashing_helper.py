"""The hashing helper process (placeholders made on the other core, handed over batch by batch as
their names are made) writes exactly the copy and the report that the redactor writes without
it. The corpus runs hold too few images to start a helper on their own, so the threshold is
lowered here, and batches made tiny so that many are streamed and answered."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from redact_helpers import copy_corpus, corpus_policy, corpus_runs, map_path_for
from tfwb_agent.redact import hashing_helper, media_files
from tfwb_agent.redact.run import redact_run

SECRET = b"helper-test-secret-0123456789abc"


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _redact(run: Path, dst: Path, root: Path) -> tuple[dict[str, bytes], str]:
    report = redact_run(run, dst / run.name, corpus_policy(), SECRET, map_path_for(root))
    tree = _tree(dst / run.name)
    # The staging copies name the destination by absolute path: compare them relative to it.
    return {k: v.replace(str(dst).encode(), b"<dst>") for k, v in tree.items()}, \
        json.dumps(report.to_dict(), sort_keys=True, default=str)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_corpus(tmp_path_factory.mktemp("corpus") / "runs")


def test_the_helper_writes_what_the_redactor_writes_without_it(corpus: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[hashing_helper.HashingHelper] = []
    real = media_files.HashingHelper

    class Counted(real):  # the real helper, counted
        def __init__(self, secret: bytes) -> None:
            super().__init__(secret)
            started.append(self)

    for run in corpus_runs(corpus):
        monkeypatch.setattr(media_files, "HELPER_MIN", 10**9)
        alone = _redact(run, tmp_path / "alone" / run.parent.parent.name, corpus)
        assert not started
        monkeypatch.setattr(media_files, "HELPER_MIN", 1)
        monkeypatch.setattr(media_files, "HashingHelper", Counted)
        monkeypatch.setattr(Counted, "BATCH", 2)
        helped = _redact(run, tmp_path / "helped" / run.parent.parent.name, corpus)
        assert len(started) == 1 and started[0].proc.returncode == 0, run.name
        started.clear()
        monkeypatch.undo()
        hashed = [k for k in alone[0] if k.startswith("files/media/")]
        assert hashed, "the run has media files to hash"
        assert helped[0].keys() == alone[0].keys(), run.name
        for name in alone[0]:
            assert helped[0][name] == alone[0][name], (run.name, name)
        assert helped[1] == alone[1], run.name
