"""What a JSON value's neighbours say about it: the item before it in a list (a flag, a key of a
pair, a tool's letter flag), its sibling in an entry (``{"name": N, "value": V}``), its column in
a table given as a header row and rows. Pure functions over data; ``Outgoing.value`` asks them."""
from __future__ import annotations

import re
from typing import Any, Callable

from .secret_rules import is_secret_flag, key_secrecy, names_tokenizer_setting

# Tools whose password comes after a letter flag (``-p`` alone is too vague to be read so
# anywhere else), as in ``secret_rules``' flag_value rules.
# flag -> what its value holds when it carries one (curl's ``user:password``, smbclient's
# ``user%password``; "" for a password alone). (7z's password is glued, ``-pX``: a bare ``-p``
# prompts for it.)
_TOOL_FLAGS = {"curl": {"-u": ":", "--user": ":", "--proxy-user": ":"}, "sshpass": {"-p": ""},
               "redis-cli": {"-a": ""}, "docker": {"-p": ""}, "podman": {"-p": ""}, "zip": {"-P": ""},
               "unzip": {"-P": ""}, "sqlcmd": {"-P": ""}, "ldapsearch": {"-w": ""}, "ldapmodify": {"-w": ""},
               "ldapadd": {"-w": ""}, "ssh-keygen": {"-N": ""}, "smbclient": {"-U": "%"}}
# Tools whose password is glued to ``-p`` (``mysqldump -pX``, ``7z x -pX``): that argument goes.
_GLUED_P = frozenset({"mysql", "mysqldump", "mysqladmin", "mariadb", "mariadb-dump", "7z", "7za"})
_PREFIXES = frozenset({"sudo", "env", "nice", "time", "nohup", "exec"})
_COLUMN = re.compile(r"[A-Za-z_][\w .-]{0,100}")     # a header row's names (not commands, not values)
_ENV_OR_HEADER = re.compile(r"[A-Z][A-Z0-9_]*|[A-Z][A-Za-z0-9]*(?:-[A-Z][A-Za-z0-9]*)+"
                            r"|(?i:(?:proxy-)?authorization|(?:set-)?cookie)")
_YACS_KEY = re.compile(r"[A-Z][A-Z0-9_]*(?:\.[A-Z][A-Z0-9_]*)+")
_SPECIAL = re.compile(r"[-+]?\d[\d.,eE+-]*|</?\|?[\w.-]{0,100}\|?>|\[[A-Z][A-Z0-9_]{0,100}\]")


def names_next(item: str, first_of_pair: bool, secret_key: Callable[[str], bool]) -> str:
    """The name under which a list's next item stands, if that names a credential: a flag
    (``--db-password``), a yacs override's key (``DATASETS.DB_PASSWORD``), or the first of a
    pair (``["PGPASSWORD", X]``, ``["X-Api-Key", X]``, ``["HF_TOKEN", X]``). "" for any other
    item: class names, metric names, ``["input_tokens", "attention_mask"]``, ``["train.tokens",
    "train.lr"]``."""
    if item[:2] == "--" or (item[:1] == "-" and len(item) > 2):
        name = item.lstrip("-")
        return name if is_secret_flag(item) and not names_tokenizer_setting(name) else ""
    if _YACS_KEY.fullmatch(item) or (item[:1] in "+~" and "." in item):   # yacs's KEY.NAME, Hydra's +db.password
        return item if is_secret_flag(item) and not item.endswith("TOKENS") else ""
    if first_of_pair:
        # (An environment variable's or a header's name is asked as a config key is, the
        # site's globs too: ``PGPASSWORD``; a lower-case word only by its own words.)
        secrecy = key_secrecy(item)
        if secrecy == "any" or (_ENV_OR_HEADER.fullmatch(item) and (secrecy or secret_key(item))):
            return item
    return ""


def count_or_special(x: Any) -> bool:
    """A number or a tokenizer's special token: what a flag such as ``--max-tokens`` or
    ``--pad-token`` takes, no credential."""
    return not isinstance(x, str) or _SPECIAL.fullmatch(x) is not None


def tool_secret_flags(command: list) -> tuple[dict[str, str], bool]:
    """How ``command``'s tool takes a password: the letter flags after which it does, each with
    what such a value holds (``curl -u``: ``user:password``; docker's ``-p`` only in ``docker
    login``: in ``docker run`` it maps a port), and whether it takes one glued to ``-p``
    (``mysqldump -pX``). One look at the command for both (every list asks, on the hot path)."""
    tool = command_tool(command)
    if not tool:
        return {}, False
    flags = {} if tool in ("docker", "podman") and "login" not in command else _TOOL_FLAGS.get(tool, {})
    return flags, tool in _GLUED_P


def command_tool(command: list) -> str:
    """The tool a command list runs (``["sudo", "/usr/bin/curl", ...]``: ``curl``), or ""."""
    for item in command[:4]:
        if not isinstance(item, str):
            return ""
        name = item.rsplit("/", 1)[-1]
        if name not in _PREFIXES and "=" not in name:
            return name
    return ""


# A flag's name, in one case (``--lr``, ``--max-tokens=4``, ``--TRAIN.LR``): a value that starts
# with "--" (``--6eNas8CsYZx…``, ``--K4ynsZg5…``: 1 in 4,096 urlsafe tokens) is no flag.
_FLAG_NAME = re.compile(r"--(?:[a-z][a-z0-9_.-]*|[A-Z][A-Z0-9_.-]*)(?:=|$)")


def secret_positions(items: list, secret_key: Callable[[str], bool] = lambda k: False) -> list[bool]:
    """For each item of a list (a command line, a list in a config): whether what stands before
    it makes it a credential. The one reading of a command line, for a run's argv and for a
    list in any JSON: after a secret-looking flag (``--db-password X``; a flag that takes no
    value keeps the next flag), a tool's letter flag (``curl -u ml:X``, holding what that
    tool's value holds), a glued ``-pX`` (``mysqldump``), the second of a pair whose first names
    a credential (``["PGPASSWORD", X]``, asked of ``secret_key`` too). A number or a special
    token after a flag that only may name one (``--max-tokens 4096``) is none."""
    tool_flags, glued_p = tool_secret_flags(items)
    out: list[bool] = []
    after = ""      # the flag or key the item after names, if it names a credential
    holds = ""      # what a tool's flag's value holds when it carries a password
    for i, x in enumerate(items):
        if after and isinstance(x, str) and _FLAG_NAME.match(x):
            after = ""   # the flag took no value: another flag follows it
        scalar = isinstance(x, (str, int, float)) and not isinstance(x, bool) and x != ""
        goes = bool(after) and scalar and (key_secrecy(after) == "any" or not count_or_special(x)) and holds in str(x)
        out.append(goes or (glued_p and isinstance(x, str) and x.startswith("-p") and len(x) > 2))
        holds = tool_flags.get(x, "") if isinstance(x, str) else ""
        after = "password" if isinstance(x, str) and x in tool_flags else \
            names_next(x, i == 0 and len(items) == 2, secret_key) if isinstance(x, str) else ""
    return out


def is_table(v: list, secret_key: Callable[[str], bool]) -> bool:
    """A header row of names, then rows as long (``[["user", "password"], ["ml", X]]``), and not
    a list of pairs whose first names a credential (``[["X-Api-Key", X], ...]``)."""
    if not (len(v) > 1 and isinstance(v[0], list) and v[0]):
        return False
    # (An index's column may be blank or a number; a row may be short or empty, as
    # ``csv.reader`` gives a last blank line.)
    header = v[0]
    return (all(c == "" or isinstance(c, int) or (isinstance(c, str) and _COLUMN.fullmatch(c)) for c in header)
            and any(isinstance(c, str) and c for c in header)
            and all(isinstance(row, list) and len(row) <= len(header) for row in v)
            and not (len(header) == 2 and isinstance(header[0], str) and names_next(header[0], True, secret_key)))


# A setting given as an entry of its own: ``{"name": "DB_PASSWORD", "value": X}`` (a Kubernetes
# env entry), ``{"Key": …, "Value": …}`` (a tag), ``{"ParameterKey" or "ParameterName": …,
# "ParameterValue": …}`` (CloudFormation, RDS), ``{"key": …, "val": …}``.
_ENTRY_LABEL_KEYS = ("name", "Name", "NAME", "key", "Key", "KEY", "ParameterKey", "ParameterName")
ENTRY_VALUE_KEYS = frozenset({"value", "Value", "VALUE", "val", "Val", "ParameterValue"})


def entry_label(d: dict) -> str:
    """What such an entry names its value by ("" if ``d`` is none)."""
    if not any(k in d for k in ENTRY_VALUE_KEYS):
        return ""
    return next((d[k] for k in _ENTRY_LABEL_KEYS if isinstance(d.get(k), str)), "")
