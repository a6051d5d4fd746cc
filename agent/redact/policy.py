"""The site's redaction policy: the ``[redact]`` section of the agent config.

Rules are tried in order and the first match wins. A media item that no rule matches is
hashed: keeping is always explicit. With no ``[redact]`` section the default policy applies,
which is the safe one (every media item hashed, console scrubbed, metadata redacted, config
values under secret-looking keys redacted).
"""
from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config as config_mod
from .. import config_checks as checks
from .secret_rules import key_secrecy, names_tokenizer_setting

MEDIA_KINDS = ("image", "audio", "video", "html", "table", "object3d", "molecule", "any")
ACTIONS = ("keep", "hash", "drop")
DEFAULT_CONFIG_KEYS = ("*token*", "*secret*", "*password*", "*passwd*", "*api_key*", "*apikey*",
                       "*access_key*", "*private_key*", "*credential*")
# (wandb 0.31 names the upstream patch diff_<commit>.patch, 0.15 upstream_diff_<commit>.patch.)
DEFAULT_DROP_FILES = ("diff.patch", "diff_*.patch", "upstream_diff_*.patch", "code/*")
DEFAULT_SECRET_NAME = "redact.key"
# Where outgoing strings come from (outgoing.Outgoing counts per place). A site may name places
# in ``keep_strings`` to leave their strings unscrubbed: looser, and explicit.
PLACES = ("config", "summary", "history", "key_names", "file_names", "console", "metadata", "artifacts",
          "alerts", "tables", "stats", "telemetry", "run", "files", "other", "identifiers")


@dataclass(frozen=True)
class Rule:
    key: str                               # glob over the history/summary key
    media: tuple[str, ...]                 # kinds this rule covers ("any" = all)
    action: str                            # keep | hash | drop
    columns: tuple[tuple[str, str], ...] = ()  # table column -> keep | hash | drop
    label: str = ""

    def matches(self, key: str, kind: str) -> bool:
        return ("any" in self.media or kind in self.media) and fnmatch.fnmatchcase(key, self.key)


@dataclass(frozen=True)
class Decision:
    """What happens to one media item, and which rule said so (for the report).

    For a table, ``hash`` means "rewrite": ``columns`` name per-column actions and ``rest`` is
    the action for the columns not named."""
    action: str
    rule: str
    columns: tuple[tuple[str, str], ...] = ()
    rest: str = "hash"


@dataclass(frozen=True)
class Policy:
    secret_ref: tuple[str, str] | None = None   # ("file", path) | ("env", NAME); None: default file
    console: str = "scrub"                      # keep | scrub | drop
    metadata: str = "redact"                    # keep | redact
    config_keys: tuple[str, ...] = DEFAULT_CONFIG_KEYS
    patterns: tuple[str, ...] = ()              # site patterns, added to the built-in ones
    scrub_paths: bool = True                    # local paths in config values and console
    rules: tuple[Rule, ...] = ()
    artifacts: str = "drop"                     # non-table artifacts: keep | drop
    drop_files: tuple[str, ...] = DEFAULT_DROP_FILES
    mode: str = "strict"                        # the only mode: what is not understood stays
    keep_strings: tuple[str, ...] = ()          # places whose strings are not scrubbed
    keep_files: tuple[str, ...] = ()            # globs under files/ copied as they are
    scrub_files: bool = False                   # other text files: scrubbed (true) or dropped

    def decide(self, key: str, kind: str, sensitive: tuple[str, ...] = ()) -> Decision:
        """First matching rule; no match hashes. Keys the training code declared sensitive
        are never kept, whatever the rule says (drop stays drop: it is stricter)."""
        decision = Decision("hash", "default")
        for rule in self.rules:
            if rule.matches(key, kind):
                decision = Decision(rule.action, rule.label, (), rule.action)
                if kind == "table" and rule.columns and rule.action != "drop":
                    rewrite = rule.action == "hash" or any(a != "keep" for _, a in rule.columns)
                    decision = Decision("hash" if rewrite else "keep", rule.label, rule.columns, rule.action)
                break
        if is_sensitive(key, sensitive) and "keep" in (decision.action, decision.rest):
            return Decision("hash", "sensitive", tuple((c, "hash" if a == "keep" else a) for c, a in decision.columns), "hash")
        return decision

    def config_value_redacted(self, key: str, value: Any) -> bool:
        """A config entry's value goes whole: a key the site's globs name exactly, whatever it is;
        a key a glob with a wildcard matches, unless it is a number, true/false or null
        (``*token*`` names ``num_tokens: 512``, a setting, not a credential); a key whose words
        name a credential, whatever it is; a key whose words may name one, unless it is a number."""
        # (A number or a literal written as a string is one too: a Kubernetes env entry's value
        # always is, ``{"name": "MAX_TOKENS", "value": "4096"}``; ``{"auth": "none"}``.)
        plain = value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and is_plain_text(value))
        globs = _lowered(self.config_keys)
        lowered = key.lower()
        if _key_matches(lowered, globs) and (not plain or lowered in globs):
            # (Not the default ``*token*`` alone on a tokenizer's setting: ``tokenizer:
            # bert-base-uncased``, ``pad_token: <pad>``; a site's own glob still takes it.)
            if lowered in globs or not names_tokenizer_setting(key) \
                    or _key_matches(lowered, tuple(g for g in globs if g not in _DEFAULT_KEYS)):
                return True
        secrecy = key_secrecy(key)
        return secrecy == "any" or (secrecy == "text" and not plain)

    def describe(self) -> dict[str, Any]:
        return {
            "secret": "default <state_dir>/redact.key" if self.secret_ref is None
            else f"{self.secret_ref[0]}: {self.secret_ref[1]}",
            "console": self.console, "metadata": self.metadata,
            "config_keys": list(self.config_keys), "patterns": list(self.patterns),
            "scrub_paths": self.scrub_paths, "artifacts": self.artifacts,
            "drop_files": list(self.drop_files), "mode": self.mode,
            "keep_strings": list(self.keep_strings), "keep_files": list(self.keep_files),
            "scrub_files": self.scrub_files,
            "rules": [{"key": r.key, "media": list(r.media), "action": r.action,
                       **({"columns": dict(r.columns)} if r.columns else {})} for r in self.rules],
        }


@functools.lru_cache(maxsize=64)
def _lowered(globs: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(g.lower() for g in globs)


_DEFAULT_KEYS = frozenset(_lowered(DEFAULT_CONFIG_KEYS))
_NUMBER_TEXT = re.compile(r"[-+]?[0-9]{1,30}(?:\.[0-9]{1,30})?(?:[eE][-+]?[0-9]{1,3})?")   # (not "١٢٣")


def is_plain_text(text: str) -> bool:
    """``"4096"``, ``"0.9"``, ``"1e-3"``, ``"none"``: a number or a literal written as a string."""
    return _NUMBER_TEXT.fullmatch(text) is not None or text.lower() in ("none", "null", "true", "false")


@functools.lru_cache(maxsize=65536)
def _key_matches(key: str, globs: tuple[str, ...]) -> bool:
    # Asked for every key of every JSON value that leaves: the same few keys, over and over.
    return any(fnmatch.fnmatchcase(key, g) for g in globs)


def is_sensitive(key: str, sensitive: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, g) for g in sensitive)


DEFAULT_POLICY = Policy()


_str_list, _choice = checks.strings, checks.one_of


def _bool(source: str, key: str, value: Any) -> bool:
    return checks.boolean(source, f"redact.{key}", value)


def _rule(source: str, i: int, raw: Any) -> Rule:
    where = f"redact.rule[{i}]"
    if not isinstance(raw, dict):
        raise config_mod.ConfigError(source, where, "must be a table")
    checks.known_keys(source, where, raw, ("key", "media", "action", "columns"))
    if not isinstance(raw.get("key"), str) or not raw["key"]:
        raise config_mod.ConfigError(source, f"{where}.key", "must be a non-empty key glob")
    media = _str_list(source, f"{where}.media", raw.get("media", ["any"]))
    for m in media:
        _choice(source, f"{where}.media", m, MEDIA_KINDS)
    cols_raw = raw.get("columns", {})
    if not isinstance(cols_raw, dict):
        raise config_mod.ConfigError(source, f"{where}.columns", "must be a table of column = keep|hash|drop")
    columns = tuple((str(c), _choice(source, f"{where}.columns.{c}", a, ACTIONS)) for c, a in cols_raw.items())
    # A rule that lists columns is the explicit statement about its table: columns it does not
    # name are kept unless it says otherwise. Without columns, the action must be given.
    if "action" in raw:
        action = _choice(source, f"{where}.action", raw["action"], ACTIONS)
    elif columns:
        action = "keep"
    else:
        raise config_mod.ConfigError(source, f"{where}.action", "missing: say keep, hash or drop")
    label = f"rule[{i}] {raw['key']} {'/'.join(media)} -> {action}" + (" + columns" if columns else "")
    return Rule(raw["key"], media, action, columns, label)


def parse_policy(source: str, raw: Any) -> Policy:
    """Validate a ``[redact]`` table (registered as the config's section validator)."""
    if not isinstance(raw, dict):
        raise config_mod.ConfigError(source, "redact", "must be a table")
    known = {"secret_file", "secret_env", "secret", "console", "metadata", "config_keys", "patterns",
             "scrub_paths", "rule", "artifacts", "drop_files", "mode", "keep_strings", "keep_files",
             "scrub_files"}
    checks.known_keys(source, "redact", raw, known)
    secret_ref = None
    if any(k in raw for k in ("secret", "secret_file", "secret_env")):
        secret_ref = config_mod.secret_source(raw, source, "redact", "secret")
    patterns = _str_list(source, "redact.patterns", raw.get("patterns", []))
    for i, p in enumerate(patterns):
        try:
            re.compile(p)
        except re.error as exc:
            raise config_mod.ConfigError(source, f"redact.patterns[{i}]", f"not a valid regular expression: {exc}") from None
    rules_raw = raw.get("rule", [])
    if not isinstance(rules_raw, list):
        raise config_mod.ConfigError(source, "redact.rule", "must be an array of tables ([[redact.rule]])")
    scrub_paths, scrub_files = (_bool(source, k, raw.get(k, d)) for k, d in (("scrub_paths", True), ("scrub_files", False)))
    keep_strings = _str_list(source, "redact.keep_strings", raw.get("keep_strings", []))
    for place in keep_strings:
        _choice(source, "redact.keep_strings", place, PLACES)
    console = _choice(source, "redact.console", raw.get("console", "scrub"), ("keep", "scrub", "drop"))
    if console == "keep" and "console" not in keep_strings:
        keep_strings += ("console",)
    return Policy(
        secret_ref=secret_ref,
        console=console,
        metadata=_choice(source, "redact.metadata", raw.get("metadata", "redact"), ("keep", "redact")),
        config_keys=_str_list(source, "redact.config_keys", raw.get("config_keys", list(DEFAULT_CONFIG_KEYS))),
        patterns=patterns,
        scrub_paths=scrub_paths,
        rules=tuple(_rule(source, i, r) for i, r in enumerate(rules_raw)),
        artifacts=_choice(source, "redact.artifacts", raw.get("artifacts", "drop"), ("keep", "drop")),
        drop_files=_str_list(source, "redact.drop_files", raw.get("drop_files", list(DEFAULT_DROP_FILES))),
        mode=_choice(source, "redact.mode", raw.get("mode", "strict"), ("strict",)),
        keep_strings=keep_strings,
        keep_files=_str_list(source, "redact.keep_files", raw.get("keep_files", [])),
        scrub_files=scrub_files,
    )


config_mod.SECTION_VALIDATORS["redact"] = parse_policy


def policy_from_config(cfg: config_mod.Config) -> Policy:
    return cfg.sections.get("redact") or DEFAULT_POLICY


def load_secret(policy: Policy, cfg: config_mod.Config) -> bytes:
    """The site secret for keyed tags. Never print it."""
    ref = policy.secret_ref or ("file", str(Path(cfg.state_dir) / DEFAULT_SECRET_NAME))
    if ref[0] == "file" and not config_mod.credential_path(ref[1]).exists():
        raise config_mod.ConfigError(cfg.source, "redact.secret_file",
                                     f"{ref[1]} does not exist; create it once with "
                                     f"`(umask 077 && head -c 32 /dev/urandom > {ref[1]})` and keep it: "
                                     "tags only match across runs under the same secret")
    secret = config_mod.read_secret(ref)
    if len(secret) < 16:
        raise config_mod.ConfigError(cfg.source, "redact.secret", "the redaction secret must be at least 16 bytes")
    return secret
