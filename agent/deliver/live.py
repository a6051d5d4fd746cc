"""Live runs (``sync.live = true``): seal what a run still being written holds, as segments.

Every ``sync.live_interval`` seconds a live run that has new history rows is redacted as it
stands (whole records only) and sealed as its next segment; when the run has ended, one last
segment carries how it ended, and the run is marked sealed (so the whole-run sealing stage
leaves it alone). Each segment's bundle holds the redacted log from its start: delivery asks
the server how many rows it holds and sends only the rest (``segments.plan_cut``), so a
segment adds only its new steps, whatever was delivered before.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .. import config as config_mod
from .. import ids, statedir
from ..ledger import Ledger
from ..runs import find_log
from ..segments import end_marker, read_facts
from .settings import sync_settings

log = logging.getLogger("tfwb_agent.deliver.live")


def _due(facts: dict[str, Any], now: float, interval: float) -> bool:
    return now - facts.get("live_cut_at", 0) >= interval


def seal_live_segments(ledger: Ledger, cfg: config_mod.Config, now: float | None = None) -> list[str]:
    """Cut and seal the next segment of every live run that grew; close runs that ended."""
    from ..pipeline import HeldElsewhere, _record_on_volume, ensure_redaction_secret, mark_ended, supersedes_crash
    from ..reconcile import ClaimBook
    from ..redact.policy import load_secret, policy_from_config
    from ..redact.run import redact_run
    from ..seal import RunIdentity, Segment, keys_config, seal_keys, seal_run
    from ..seal.outbox import withdraw

    now = time.time() if now is None else now
    settings = sync_settings(cfg)
    rows = ledger.live_runs()
    if not rows:
        return []
    keys = seal_keys(keys_config(cfg))
    ensure_redaction_secret(cfg)
    policy = policy_from_config(cfg)
    secret = load_secret(policy, cfg)
    done = []
    book = ClaimBook(cfg)
    for row in rows:
        facts = dict(row["facts"])
        ended = row["state"] == "ended"
        if not ended and not _due(facts, now, settings.live_interval):
            continue
        run_dir = Path(row["key"])
        try:
            claims = book.for_run(run_dir)
            if not claims.acquire(run_dir.name):  # another node took it over, or sealed it
                log.info("%s: held by %s; leaving it to that node", row["key"], claims.holder(run_dir.name) or "?")
                ledger.drop_run(row["key"])
                continue
            resume = claims.resume_point(run_dir.name)
        except ids.BadId as exc:
            log.warning("%s: live segment not sealed: %s", row["run_id"], exc)
            continue
        # A run sealed whole as crashed, then revived by growth (runs.classify), goes on from
        # the segment after its sealed ones.
        k = facts.get("live_segments", facts.get("next_segment", 0))
        if resume is not None and resume["segment"] > k:
            # The volume says segments up to resume-1 are sealed (by another node before a
            # takeover, or by this one before its ledger was rebuilt): go on after them, never
            # seal one of them again.
            log.info("%s: live segments 0-%d were sealed by %s; going on from segment %d", row["run_id"],
                     resume["segment"] - 1, resume["by"], resume["segment"])
            k = resume["segment"]
            facts.update(live_segments=k, live_byte_end=resume["byte_start"], live_rows=resume["rows"])
            ledger.set_run_facts(row["key"], facts)
        # What the watcher has read of the log (whole records up to read_offset, `steps` history
        # rows): whether the run grew is known without reading it again.
        rows_now, cut_end = row["steps"], row["read_offset"]
        if not ended and rows_now <= facts.get("live_rows", 0):
            continue
        src_log = find_log(run_dir)
        if src_log is None or not row["run_id"]:
            continue
        try:
            work = statedir.work_for(cfg, f"live-{run_dir.name}")
        except ids.BadId as exc:
            log.warning("%s: live segment %d not sealed: %s", row["run_id"], k, exc)
            continue
        try:
            # A still-growing log: redact a snapshot cut at its last whole record.
            snap = work / "snapshot" / run_dir.name
            shutil.copytree(run_dir, snap, symlinks=True, ignore=shutil.ignore_patterns("*.wandb"))
            with open(src_log, "rb") as fin, open(snap / src_log.name, "wb") as fout:
                fout.write(fin.read(cut_end))
            redacted = work / "out" / run_dir.name
            report = redact_run(snap, redacted, policy, secret, cfg.map_path, complete=ended)
            if ended:
                # The last segment says how the run ended, even when it brings no new row: the
                # server is sent its summary alone then (segments.plan_cut with send_end).
                mark_ended(redacted, end_marker(row["ended"], row["reason"], supersedes_crash(ledger, row)))
            red_log = find_log(redacted)
            red = read_facts(red_log) if red_log else None
            end_state = {}

            def mark(db: Any, sealed: Any) -> None:
                # Inside the ledger's transaction, after the bundle is whole in the outbox: the
                # markers on the volume first (the run's, for the last segment; the segment's);
                # if another node's is there, this transaction and our bundle go.
                if ended:
                    _record_on_volume(claims, run_dir.name, sealed)
                marker = claims.record_segment(run_dir.name, k, bundle=sealed.path.name, bundle_id=sealed.bundle_id,
                                               content_id=sealed.content_id, byte_end=red.end if red else 0,
                                               rows=rows_now)
                if marker.get("node") != claims.node:
                    raise HeldElsewhere(f"live segment {k} sealed by {marker.get('node', '?')} as "
                                        f"{marker.get('bundle', '?')} first", sealed)
                f = dict(facts, live_segments=k + 1, live_rows=rows_now, live_cut_at=now,
                         live_byte_end=red.end if red else 0)
                if ended:
                    ledger.mark_run_sealed(row["key"], facts=f)
                else:
                    ledger.set_run_facts(row["key"], f)
                end_state["ok"] = True

            seal_run(cfg, keys, ledger, redacted,
                     RunIdentity(row["run_id"], row["project"], row["entity"], row["wandb_version"]),
                     Segment(k, facts.get("live_byte_end", facts.get("segment_start", 0)), None), report.to_dict(),
                     run_key=row["key"], on_sealed=mark)
            log.info("%s: sealed live segment %d (%d history rows%s)", row["run_id"], k, rows_now,
                     ", final" if ended else "")
            done.append(f"{row['run_id']}-{k}")
        except HeldElsewhere as exc:
            if exc.sealed is not None and withdraw(exc.sealed, keys.signer.public()):
                log.info("%s: withdrew %s: %s", row["run_id"], exc.sealed.path.name, exc)
            log.info("%s: %s; leaving it to that node", row["key"], exc)
            ledger.drop_run(row["key"])
        except Exception as exc:  # one run's trouble must not stop the others
            log.warning("%s: live segment %d not sealed: %s", row["run_id"], k, exc)
        finally:
            statedir.release_work(work)
    return done
