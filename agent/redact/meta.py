"""Config and run metadata: secrets, identity and local paths out, the rest as it was.

Pure functions over protobuf records and plain data; ``records.py`` feeds them records. Every
string they leave in place still passes ``Outgoing`` afterwards: these functions do what needs
knowing the field (a host name becomes a tag, a path field goes whole, the value after
``--password`` goes), not the general scrub.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from .errors import RedactError
from .policy import Policy, is_sensitive
from .report import RedactionReport
from .json_neighbours import ENTRY_VALUE_KEYS, entry_label
from .secret_rules import key_secrecy
from .string_fields import COMMIT

if TYPE_CHECKING:
    from .outgoing import Outgoing
    from .secrets import Scrubber

# Metadata fields (wandb-metadata.json / the `e` entries in config `_wandb`) that name the
# machine, the person or the places on disk.
_META_IDENTITY = ("host", "hostname", "username", "email", "colab")
_META_PATHS = ("program", "codePath", "codePathLocal", "code_path", "code_path_local", "root",
               "executable", "root_dir", "python_executable")
_META_DROP = ("slurm", "docker_image_local")


def redact_config_value(key: str, value: Any, policy: Policy, scrub: "Outgoing",
                        tag: Callable[[str, str], str], report: RedactionReport,
                        sensitive: tuple[str, ...]) -> tuple[Any, bool]:
    """One top-level config entry. Returns (value, changed)."""
    if key == "_wandb":
        return _redact_wandb_internal(value, policy, scrub, tag, report)
    if key.startswith("_wandb.visualize."):   # wandb 0.31 writes each chart as a key of its own
        new = _chart(key.split(".", 2)[2], value, policy, tag)
        return new, new is not value
    if policy.config_value_redacted(key, value) or is_sensitive(key, sensitive):
        report.config_keys.add(key)
        return f"[redacted:config:{tag('config', json.dumps(value, sort_keys=True))}]", True
    return _scrub_strings(value, key, policy, scrub, tag, report, sensitive)


def _goes_whole(path: str, parent: str, leaf: str, value: Any, policy: Policy, sensitive: tuple[str, ...]) -> bool:
    """A nested config entry goes whole when its key names a credential, when a lone ``key``
    does with its parent's name (``wandb.key``, ``encryption.key``; not ``sort.key``), or when
    the training code declared it sensitive (``case.patient_id``, or ``case/patient_id``)."""
    if policy.config_value_redacted(leaf, value):
        return True
    if leaf.lower() in ("key", "keys") and key_secrecy(f"{parent}_{leaf}") == "any":
        return True
    return bool(sensitive) and (is_sensitive(path, sensitive) or is_sensitive(path.replace(".", "/"), sensitive))


def _scrub_strings(value: Any, key: str, policy: Policy, scrub: "Outgoing", tag: Callable[[str, str], str],
                   report: RedactionReport, sensitive: tuple[str, ...] = ()) -> tuple[Any, bool]:
    if isinstance(value, str):
        new = scrub.text(value, "config")
        if new != value:
            report.config_keys.add(key)
            return new, True
        return value, False
    if isinstance(value, dict):
        changed, out = False, {}
        parent = key.rsplit(".", 1)[-1]
        # ``{"key": "DB_PASSWORD", "value": X}``: the value goes as if under its label (read
        # here, before the label itself may be replaced).
        label = entry_label(value)
        for k, v in value.items():
            sub = f"{key}.{k}"
            if _goes_whole(sub, parent, str(k), v, policy, sensitive) or \
                    (label and k in ENTRY_VALUE_KEYS and policy.config_value_redacted(label, v)):
                report.config_keys.add(sub)
                out[k], changed = f"[redacted:config:{tag('config', json.dumps(v, sort_keys=True))}]", True
                continue
            out[k], c = _scrub_strings(v, sub, policy, scrub, tag, report, sensitive)
            changed |= c
        return (out if changed else value), changed
    if isinstance(value, list):
        changed, out = False, []
        for v in value:
            nv, c = _scrub_strings(v, key, policy, scrub, tag, report, sensitive)
            out.append(nv)
            changed |= c
        return (out if changed else value), changed
    return value, False


def _redact_wandb_internal(value: Any, policy: Policy, scrub: "Outgoing", tag: Callable[[str, str], str],
                           report: RedactionReport) -> tuple[Any, bool]:
    # `_wandb` holds wandb's own bookkeeping; its `e` entries repeat the run metadata.
    if not isinstance(value, dict):
        return value, False
    out = dict(value)
    for name in _CLASS_LABELS:
        if isinstance(value.get(name), dict):
            out[name] = _class_labels(value[name], policy, tag)
    if isinstance(value.get("visualize"), dict):
        out["visualize"] = {k: _chart(k, v, policy, tag) for k, v in value["visualize"].items()}
    changed = out != value
    if policy.metadata == "keep":
        return (out if changed else value), changed
    if isinstance(value.get("e"), dict):
        out["e"] = {k: redact_metadata(v, scrub, tag, report)[0] if isinstance(v, dict) else v
                    for k, v in value["e"].items()}
        changed |= out["e"] != value["e"]
    for k in ("code_path", "root_dir"):
        if isinstance(value.get(k), str) and value[k]:
            out[k] = scrub_path(value[k], scrub, tag)
            changed |= out[k] != value[k]
    if isinstance(value.get("m"), list):
        # Metric definitions name history keys: as names, so they match the keys' new names.
        out["m"] = [{mk: scrub.name(mv) if isinstance(mv, str) else mv for mk, mv in m.items()}
                    if isinstance(m, dict) else m for m in value["m"]]
        changed |= out["m"] != value["m"]
    return (out if changed else value), changed


# Where wandb keeps the class names of a logged image's boxes and masks, per
# "<media key>_wandb_delimeter_<group>": text about the image, as its caption is.
_CLASS_LABELS = ("bounding_box/class_labels", "mask/class_labels")


def _hashed_texts(d: dict[str, Any], tag: Callable[[str, str], str]) -> dict[str, Any]:
    return {k: f"hash:{tag('caption', v)}" if isinstance(v, str) else v for k, v in d.items()}


def _class_labels(entries: dict[str, Any], policy: Policy, tag: Callable[[str, str], str]) -> dict[str, Any]:
    """Each image's class names, hashed as its caption is, unless a rule keeps the image."""
    out = {}
    for name, e in entries.items():
        media_key = str(name).split("_wandb_delimeter_")[0]
        if isinstance(e, dict) and isinstance(e.get("value"), dict) and policy.decide(media_key, "image").action != "keep":
            e = dict(e, value=_hashed_texts(e["value"], tag))
        out[name] = e
    return out


def _chart(name: str, panel: Any, policy: Policy, tag: Callable[[str, str], str]) -> Any:
    """A custom chart (``wandb.plot.*``): its titles are text about its table
    (``<name>_table``), hashed unless a rule keeps the table."""
    cfg = panel.get("panel_config") if isinstance(panel, dict) else None
    settings = cfg.get("stringSettings") if isinstance(cfg, dict) else None
    if not isinstance(settings, dict) or policy.decide(f"{name}_table", "table").action == "keep":
        return panel
    return dict(panel, panel_config=dict(cfg, stringSettings=_hashed_texts(settings, tag)))


def redact_metadata(meta: dict[str, Any], scrub: "Outgoing", tag: Callable[[str, str], str],
                    report: RedactionReport) -> tuple[dict[str, Any], bool]:
    """wandb-metadata.json as a dict (also the `e` entries of config `_wandb`)."""
    out = dict(meta)
    for k in list(out):
        v = out[k]
        if k in _META_DROP:
            del out[k]
            report.metadata_fields.add(k)
        elif k in _META_IDENTITY and isinstance(v, str) and v:
            out[k] = f"{'host' if 'host' in k else k}-{tag(k, v)[:12]}"
            report.metadata_fields.add(k)
        elif k in _META_PATHS and isinstance(v, str) and v:
            out[k] = scrub_path(v, scrub, tag)
            if out[k] != v:
                report.metadata_fields.add(k)
        elif k == "args" and isinstance(v, list) and all(isinstance(a, str) for a in v):
            new = scrub_args(v, scrub, tag)
            if new != v:
                out[k] = new
                report.metadata_fields.add(k)
        elif k == "git" and isinstance(v, dict):
            g = dict(v)
            for gk in ("remote", "remote_url"):
                if isinstance(g.get(gk), str) and g[gk]:
                    g[gk] = f"remote-{tag('git', g[gk])[:12]}"
                    report.metadata_fields.add(f"git.{gk}")
            # A commit leaves only as a commit id (as the run record's: ``string_fields.SHAPED``);
            # anything else (a CI job's token exported as WANDB_GIT_COMMIT) is replaced whole.
            if "commit" in g and not (isinstance(g["commit"], str) and COMMIT.fullmatch(g["commit"])):
                g["commit"] = ""
                report.metadata_fields.add("git.commit")
            out[k] = g
        elif k == "disk" and isinstance(v, dict):
            out[k] = {(key if key == "/" else scrub_path(key, scrub, tag)): dv for key, dv in v.items()}
    return out, out != meta


def scrub_path(value: str, scrub: "Outgoing", tag: Callable[[str, str], str]) -> str:
    """A path field: absolute or home-relative paths go whole; relative names are scrubbed."""
    if value.startswith(("/", "~")):
        return f"[redacted:path:{tag('path', value)}]"
    return scrub.text(value, "metadata")


def scrub_args(args: list[str], scrub: "Outgoing", tag: Callable[[str, str], str]) -> list[str]:
    """A command line: paths go whole, and the argument after ``--password`` goes whole."""
    return scrub.args([f"[redacted:path:{tag('path', a)}]" if a.startswith(("/", "~")) else a for a in args],
                      "metadata")


def redact_environment(env: Any, scrub: "Outgoing", tag: Callable[[str, str], str], report: RedactionReport) -> None:
    """In place on an ``EnvironmentRecord`` (wandb 0.31 keeps the metadata there)."""
    for f in ("host", "username", "email", "colab"):
        v = getattr(env, f)
        if v:
            setattr(env, f, f"{'host' if f == 'host' else f}-{tag(f if f != 'host' else 'host', v)[:12]}")
            report.metadata_fields.add(f)
    for f in ("program", "code_path", "code_path_local", "root", "executable"):
        v = getattr(env, f)
        if v:
            nv = scrub_path(v, scrub, tag)
            if nv != v:
                setattr(env, f, nv)
                report.metadata_fields.add(f)
    if len(env.args):
        new = scrub_args(list(env.args), scrub, tag)
        if new != list(env.args):
            del env.args[:]
            env.args.extend(new)
            report.metadata_fields.add("args")
    if env.git.remote_url:
        env.git.remote_url = f"remote-{tag('git', env.git.remote_url)[:12]}"
        report.metadata_fields.add("git.remote_url")
    if len(env.slurm):
        env.ClearField("slurm")
        report.metadata_fields.add("slurm")
    for k in [k for k in env.disk if k != "/"]:
        v = env.disk[k]
        env.disk[scrub_path(k, scrub, tag)].CopyFrom(v)
        del env.disk[k]


def redact_run_identity(run: Any, tag: Callable[[str, str], str], report: RedactionReport) -> None:
    """In place on a ``RunRecord``: host, git remote."""
    if run.host:
        run.host = f"host-{tag('host', run.host)[:12]}"
        report.metadata_fields.add("host")
    if run.git.remote_url:
        run.git.remote_url = f"remote-{tag('git', run.git.remote_url)[:12]}"
        report.metadata_fields.add("git.remote_url")


# The strings that route a run to its place on the server (and name its directory, its log and
# its bundles): never rewritten, so a run whose own identifiers hold a secret or site data is
# refused instead. A record type without one of them (an artifact has no sweep id, a run no
# type) skips it. An artifact's type and distributed id join it on the server the same way.
_ROUTING = (("run_id", "run id"), ("project", "project"), ("entity", "entity"), ("sweep_id", "sweep id"),
            ("type", "type"), ("distributed_id", "distributed id"))


def refuse_secret_routing(msg: Any, scrubber: "Scrubber", what: str) -> None:
    """Raise ``RedactError`` if a token rule, a site pattern or the run's own host, user or
    e-mail (``Scrubber.routing_rules``) matches the run id, project, entity or sweep id of
    ``msg`` (a RunRecord, an ArtifactRecord; an artifact's type and distributed id too). The message names the
    field and the rule, never the value (it goes to logs and ``status``)."""
    for field, label in _ROUTING:
        value = getattr(msg, field, "")
        spans = scrubber.spans(value) if value else None
        if spans:
            rules = ", ".join(sorted({_rule_label(rule) for _, _, rule in spans}))
            raise RedactError(
                f"the {what}'s {label} matches {rules}; the identifiers that route and join a run on the server "
                f"(its id, project, entity and sweep id, an artifact's type and distributed id) are never "
                f"rewritten, so this run does not leave. Rename it, or let identifiers "
                f'leave unscrubbed with [redact] keep_strings = ["identifiers"]')


def _rule_label(rule: str) -> str:
    if rule.startswith("site_") and rule[5:].isdigit():
        return f"[redact] patterns[{rule[5:]}]"
    return f"the {rule} rule"
