"""The copy of ``files/``: after the records, the files no record named, each decided by
``files.file_action`` (wandb's own files rewritten, media decided by the policy, text scrubbed
where the policy says so, anything else dropped and listed in the report)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import yaml

from . import files as files_mod
from . import items, media, meta
from .console import TextStream
from .redaction import Redaction


def copy_files_dir(r: Redaction, complete: bool = True) -> None:
    """``complete=False``: a live snapshot (``files.scrub_text_file``)."""
    base = r.src / "files"
    if not base.is_dir() or base.is_symlink():
        return
    prefix = len(str(base)) + 1
    done = r.media.done
    for dirpath, dirnames, filenames in os.walk(base):   # os.walk does not follow symlinks
        dirnames.sort()
        # (The directory's part of each name made once: 10,000s of media files share one.)
        rel_dir = os.path.join(dirpath, "")[prefix:].replace(os.sep, "/")
        for name in sorted(filenames):
            rel = rel_dir + name
            if rel in done:
                continue       # a media file the records named: already written
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                r.report.dropped_paths["symlinks" if p.is_symlink() else "special files"] += 1
                continue
            _one_file(r, rel, p, complete)


def _one_file(r: Redaction, rel: str, p: Path, complete: bool) -> None:
    action = files_mod.file_action(rel, r.policy)
    if action == "media":
        r.media.file_outcome(rel)
    elif action.startswith("drop"):
        why = action.split(":", 1)[1]
        r.report.files["dropped" if why != "unknown" else "dropped_unknown"] += 1
        r.report.file_list.append((_unread_name(r, rel) if why == "unknown" else r.out.path(rel), f"dropped: {why}"))
    elif action == "keep":
        sink = files_mod.Sink(r.out_path("files/" + r.out.path(rel)))
        try:
            n = files_mod.copy_stream(str(p), sink)
        finally:
            sink.close()
        r.report.bytes_in += n
        r.report.bytes_out += n
        r.report.files["kept_by_policy"] += 1
    elif action == "metadata":
        _json_file(r, rel, p, lambda d: r.out.value(
            meta.redact_metadata(d, r.out, r.text_tag, r.report)[0] if r.policy.metadata == "redact"
            and isinstance(d, dict) else d, "metadata"))
    elif action == "summary":
        _json_file(r, rel, p, lambda d: _summary_dict(r, d))
    elif action == "config":
        _config_yaml(r, rel, p)
    elif action == "console" and r.policy.console == "drop":
        r.report.files["dropped"] += 1
        r.report.file_list.append((rel, "dropped: console policy"))
    elif action == "console" and r.policy.console != "keep" and (not complete or r.console_cut):
        # wandb keeps the line a run is printing in place in output.log, stderr's lines after
        # it: a snapshot's file, or the file of a run that ended inside a line, holds an
        # unfinished line no one can find, maybe a secret's first part. The console records
        # carry the same text, joined and scrubbed; the run's last segment has the file.
        r.report.files["dropped"] += 1
        r.report.file_list.append((rel, "held back: the console ended inside a line" if complete
                                   else "held back: a live snapshot (the run's last segment has it)"))
    elif action in ("console", "text") or (action == "scrub" and files_mod.is_text(str(p))):
        place = "console" if action == "console" else "files"
        new_rel = r.out.path(rel)
        sink = files_mod.Sink(r.out_path("files/" + new_rel))
        try:
            scrub = (lambda s: r.out.seen_elsewhere(r.out.text(s, place))) if place == "console" \
                else (lambda s: r.out.text(s, place))
            n = files_mod.scrub_text_file(str(p), sink, TextStream(scrub, file=True),
                                          complete)
        finally:
            sink.close()
        r.report.bytes_in += n
        r.report.bytes_out += sink.size
        r.report.files["scrubbed_text"] += 1
        r.report.file_list.append((new_rel, "scrubbed"))
    else:
        r.report.files["dropped_not_text"] += 1
        r.report.file_list.append((_unread_name(r, rel), "dropped: not text"))


def _read_counted(r: Redaction, p: Path) -> bytes:
    data = p.read_bytes()
    r.report.bytes_in += len(data)
    return data


def _unparsable(r: Redaction, rel: str, what: str) -> None:
    r.report.files["dropped_unparsable"] += 1
    r.report.file_list.append((rel, f"dropped: not valid {what}"))


def _json_file(r: Redaction, rel: str, p: Path, fn: Callable[[Any], Any]) -> None:
    data = _read_counted(r, p)
    try:
        value = json.loads(data)
    except ValueError:
        return _unparsable(r, rel, "JSON")
    r.write("files/" + rel, json.dumps(fn(value), indent=2).encode())


def _summary_dict(r: Redaction, d: Any) -> Any:
    if not isinstance(d, dict):
        return r.out.value(d, "summary")
    out = {}
    for k, v in d.items():
        nv, _ = media.transform_value(v, k, r.decide, r.media.resolve, r.text_tag, lambda *a: None)
        if (not k.startswith("_") and nv is v and media.media_kind(v) is None
                and (r.is_sensitive(k) or items.sensitive_inside((k,), v, r.is_sensitive))):
            nv = f"hash:{r.text_tag('value', json.dumps(v))}"
        out[r.out.name(k)] = r.out.value(nv, "summary", k)
    return out


def _config_yaml(r: Redaction, rel: str, p: Path) -> None:
    data = _read_counted(r, p)
    try:
        cfg = yaml.safe_load(data)
    except yaml.YAMLError:
        return _unparsable(r, rel, "YAML")
    if isinstance(cfg, dict):
        for k, v in list(cfg.items()):
            inner = v.get("value") if isinstance(v, dict) and "value" in v else v
            nv, changed = meta.redact_config_value(str(k), inner, r.policy, r.out, r.text_tag, r.report, r.sensitive)
            if changed:
                cfg[k] = {**v, "value": nv} if isinstance(v, dict) and "value" in v else nv
    r.write("files/" + rel, yaml.safe_dump(r.out.value(cfg, "config"), sort_keys=False).encode())


_EXT = re.compile(r"\.[A-Za-z0-9]{1,8}")


def _unread_name(r: Redaction, rel: str) -> str:
    """How the report names a file of the user's that does not leave: by a keyed tag and its
    extension. Its name is the training code's (``P1234_notes.txt``, ``report_for_jdoe.txt``),
    and no rule understood it any more than its contents; the report leaves in the manifest."""
    ext = PurePosixPath(rel).suffix
    return f"[file:{r.text_tag('file', rel)}]" + (ext if _EXT.fullmatch(ext) else "")
