"""Reading and writing key files: the I/O edge around ``minisign`` and ``agekeys``.

Private files are created 0600 with O_EXCL (never overwritten by accident) and fsynced; a
private file that others may read is refused. Nothing here prints or logs key material.
"""
from __future__ import annotations

import errno
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pyrage import x25519

from . import agekeys, minisign
from .. import durable
from ..config import credential_path
from ..config_checks import readable_by_others
from .keyconfig import KeysConfig


class KeyFileError(Exception):
    pass


@dataclass(frozen=True)
class TrustedKey:
    name: str  # the .pub file's stem: which node this is
    path: Path
    key: minisign.PublicKey

    @property
    def label(self) -> str:
        return f"{self.name} ({self.key.key_id_hex})"


@dataclass(frozen=True)
class SealKeys:
    """What sealing needs: our signing key and who may open the bundles."""
    signer: minisign.SecretKey
    recipients: tuple[x25519.Recipient, ...]

    def __repr__(self) -> str:
        return f"SealKeys(signer={self.signer!r}, recipients={len(self.recipients)})"


@dataclass(frozen=True)
class OpenKeys:
    """What opening needs: whose signatures we accept and our age identities."""
    trusted: tuple[TrustedKey, ...]
    identities: tuple[x25519.Identity, ...] = ()

    def __repr__(self) -> str:
        return f"OpenKeys(trusted={[t.label for t in self.trusted]}, identities={len(self.identities)})"


def write_file(path: Path, text: str, mode: int, overwrite: bool = False) -> None:
    """Write ``text`` durably with ``mode`` set at creation (no window with looser bits); a key
    is whole under its name or not there at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        durable.write_text(path, text, mode)
    elif not durable.create_exclusive(path, text.encode(), mode):
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key (use --force)")


MAX_LINK_HOPS = 8  # a kubelet Secret volume needs two: node.key -> ..data/node.key, ..data -> ..<time>


def resolve_in_mount(path: Path, what: str) -> Path:
    """Where a key file named ``path`` really is, following symbolic links only while they stay
    in the directory that holds it (its mount).

    A Kubernetes Secret volume links each key into a timestamped directory beside it
    (``node.key -> ..data/node.key``, ``..data -> ..2026_11_29_00_00_00.123456789``) and swaps
    ``..data`` atomically on an update: those links are followed. A link that leaves the
    directory (``node.key -> /tmp/node.key``) is refused: whoever could plant it could choose
    the key this agent signs with."""
    mount = Path(os.path.realpath(path.parent))
    current = Path(os.path.abspath(path))
    for _ in range(MAX_LINK_HOPS):
        try:
            target = os.readlink(current)
        except (FileNotFoundError, NotADirectoryError):
            return current  # the open reports it missing, with the path as named
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a link: the file itself
                break
            raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None
        current = Path(os.path.normpath(current.parent / target))
        real = Path(os.path.realpath(current))
        if real != mount and mount not in real.parents:
            raise KeyFileError(f"{what} {path} is a symbolic link to {target} ({real}), outside {mount}: refused "
                               f"(links are followed only inside the key's own directory, as a Kubernetes Secret "
                               f"volume makes them); put the key file itself in {mount}")
    else:
        raise KeyFileError(f"{what} {path}: more than {MAX_LINK_HOPS} symbolic links in a row; name the key file "
                           "itself in the config")
    return Path(os.path.realpath(current))


def read_private(path: Path, what: str) -> str:
    real = resolve_in_mount(path, what)
    try:
        # O_NOFOLLOW still: the links were checked above, the file opened is the file itself.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        flag = "--node" if what == "node key" else "--gateway"
        raise KeyFileError(f"{what} {path} does not exist (`tfwb-agent keys init {flag}` creates it, or mount "
                           "it there)") from None
    except PermissionError:
        raise KeyFileError(f"{what} {path} exists but this user (uid {os.geteuid()}) may not read it; give the "
                           "agent's user read access (owner or group, never others; in Kubernetes the Secret "
                           "volume's defaultMode and the pod's fsGroup)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        if (problem := readable_by_others(st.st_mode)) is not None:
            shown = path if real == path else f"{path} (really {real})"
            raise KeyFileError(f"{what} {shown} {problem}; "
                               f"run: chmod 600 {real} (in Kubernetes: defaultMode: 0440 on the Secret volume)")
        try:
            return f.read().decode()
        except UnicodeDecodeError:
            raise KeyFileError(f"{what} {path} is not a text key file") from None


def _read_public(path: Path) -> str:
    try:
        return resolve_in_mount(path, "public key").read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None


def load_node_key(path: Path) -> minisign.SecretKey:
    path = credential_path(path)
    try:
        return minisign.parse_secret_key(read_private(path, "node key"))
    except minisign.MinisignError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def load_public_key(path: Path) -> minisign.PublicKey:
    try:
        return minisign.parse_public_key(_read_public(path))
    except minisign.MinisignError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def load_identities(path: Path) -> list[x25519.Identity]:
    path = credential_path(path)
    try:
        return agekeys.parse_identities(read_private(path, "age identity"), str(path))
    except agekeys.AgeKeyError as exc:
        raise KeyFileError(str(exc)) from None


def load_trusted(patterns: Sequence[str]) -> list[TrustedKey]:
    """Every public key matching the ``trusted_nodes`` globs, in a stable order."""
    out: list[TrustedKey] = []
    seen: set[Path] = set()
    for pattern in patterns:
        for p in sorted(glob.glob(pattern)):
            path = Path(p)
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            name = path.name[:-4] if path.name.endswith(".pub") else path.name
            if name.endswith(".key"):
                name = name[:-4]  # node.key.pub -> node
            out.append(TrustedKey(name, path, load_public_key(path)))
    return out


def seal_keys(kc: KeysConfig) -> SealKeys:
    if kc.node_key is None:
        raise KeyFileError("no keys.node_key in the config: this node cannot sign bundles (set it, then "
                           "`tfwb-agent keys init --node`)")
    if not kc.recipients:
        raise KeyFileError("no keys.recipients in the config: nobody could open the bundles (put the gateway's "
                           "age1... recipient there: `tfwb-agent keys init --gateway` on the gateway prints it)")
    recipients = tuple(agekeys.parse_recipient(r) for r in kc.recipients)
    return SealKeys(load_node_key(kc.node_key), recipients)


def open_keys(kc: KeysConfig, need_identity: bool = True) -> OpenKeys:
    trusted = load_trusted(kc.trusted_nodes)
    identities: list[x25519.Identity] = []
    if kc.identity is not None and (need_identity or credential_path(kc.identity).exists()):
        identities = load_identities(kc.identity)
    elif need_identity:
        raise KeyFileError("no keys.identity in the config: this host cannot open bundles")
    return OpenKeys(tuple(trusted), tuple(identities))
