"""A bundle imported on a gateway is delivered from the log facts its manifest carried, which
`import` keeps in the ledger: the gateway neither folds the run's log again nor opens the staged
manifest to learn what it said. An older gateway ledger (before the facts were kept) gets them
from the staged manifests when it is opened, once.

Measured with an audit hook on ``open`` (CPython raises it for ``open()`` and ``os.open``) in
this process, which runs the delivery round: each open of a ``.wandb`` file or a staged
``MANIFEST.json`` is recorded, with whether the log fold (``runlog``, the one reader of a run's
log) made it. A bundle sealed without facts (an older agent's) is delivered beside the others:
its log *is* folded, which shows the hook sees a fold when there is one. The effect that matters
is checked on the server too: every row there once.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import agent
from deliver_helpers import RestartableServer, corpus_dirs, make_deliver_site, metric_rows

from tfwb_agent import config as config_mod
from tfwb_agent import statedir
from tfwb_agent.deliver.engine import deliver_round
from tfwb_agent.ledger import Ledger
from tfwb_agent.runlog import find_log
from tfwb_agent.segments import read_facts, sealed_facts

_opens: list[tuple[str, bool]] = []  # (path, opened by the log fold)
_watching: list[str] = []            # the state directory whose files are watched (empty: none)


def _by_fold() -> bool:
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.endswith(os.sep + "runlog.py"):
            return True
        f = f.f_back
    return False


def _hook(event: str, args: tuple) -> None:
    if event != "open" or not _watching or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    p = os.fsdecode(args[0])
    if p.startswith(_watching[0]) and (p.endswith(".wandb") or p.endswith("MANIFEST.json")):
        _opens.append((p, _by_fold()))


sys.addaudithook(_hook)  # cannot be removed; it does nothing while no test watches


def _pick(corpus: Path) -> tuple[Path, Path]:
    """Two finished runs that need no relocation on delivery (which rewrites the log, so that
    it must be read again): one from wandb 0.31, one from wandb 0.15."""
    found = {}
    for d in corpus_dirs(corpus):
        f = read_facts(find_log(d))
        if f.exit_code == 0 and not (d / "_staging").exists():
            found.setdefault(d.parent.parent.name, d)
    return found["wandb-0.31.0"], found["wandb-0.15.12"]


def _seal(site, run_dir: Path, facts: bool) -> str:
    """Seal on the node as the daemon does (the log's facts in the manifest), or as an older
    agent did (no facts)."""
    from tfwb_agent import runs
    from tfwb_agent.seal import RunIdentity, keys_config, seal_keys, seal_run

    cfg = site.config()
    ledger = site.ledger()
    try:
        f = runs.inspect(run_dir)
        seal_run(cfg, seal_keys(keys_config(cfg)), ledger, run_dir,
                 RunIdentity(f.run_id, f.project, f.entity, f.wandb_version), 0, {"note": "test input"},
                 log_facts=sealed_facts(read_facts(find_log(run_dir))) if facts else None)
        return f.run_id
    finally:
        ledger.close()


def _node_and_gateway(tmp_path: Path, server: RestartableServer, runs: list[tuple[Path, bool]]):
    """A node seals ``runs`` (with or without facts); the gateway beside it is configured to
    deliver to ``server``. Returns (gateway config path, run ids, each run's bundle)."""
    site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
    ids = [_seal(site, d, facts) for d, facts in runs]
    bundles = {rid: next(statedir.outbox(site.config()).glob(f"{rid}-*.tar.zst.age")) for rid in ids}
    gw_cfg = site.root / "gw.toml"
    with open(gw_cfg, "a") as f:
        f.write(f'[targets.local]\nbase_url = "{server.url}"\napi_key_file = "{site.key_file}"\nentity = "admin"\n'
                'timeout = 10\n[sync]\nmax_parallel = 2\n[[policy]]\nprojects = ["*"]\ntargets = ["local"]\n')
    return gw_cfg, ids, bundles


def _carry(gw_cfg: Path, bundles: list[Path], medium: Path) -> None:
    """The bundles carried on a medium and imported by the gateway with the real CLI."""
    medium.mkdir()
    for b in bundles:
        shutil.copy(b, medium / b.name)
        shutil.copy(f"{b}.minisig", medium / f"{b.name}.minisig")
    agent(gw_cfg, "import", str(medium))


class _ledger:
    """The gateway's ledger, closed after use."""

    def __init__(self, gw_cfg: Path) -> None:
        self.led = Ledger(config_mod.load(str(gw_cfg)).ledger_path)

    def __enter__(self) -> Ledger:
        return self.led

    def __exit__(self, *exc) -> None:
        self.led.close()


def _deliver_watched(gw_cfg: Path):
    """One delivery round on the gateway, in this process, with the state directory watched."""
    cfg = config_mod.load(str(gw_cfg))
    ledger = Ledger(cfg.ledger_path)
    _opens.clear()
    _watching[:] = [str(cfg.state_dir)]
    try:
        rr = deliver_round(ledger, cfg, "local", wait_for_others=True)
    finally:
        _watching.clear()
    return rr, ledger


def _fold_reads(run_id: str) -> int:
    return sum(1 for p, fold in _opens if fold and run_id in Path(p).name)


def test_an_imported_bundle_is_delivered_without_folding_its_log(corpus: Path, tmp_path: Path) -> None:
    new, old = _pick(corpus)
    server = RestartableServer(tmp_path / "server").start()
    try:
        gw_cfg, (rid_new, rid_old), bundles = _node_and_gateway(tmp_path, server, [(new, True), (old, False)])
        _carry(gw_cfg, list(bundles.values()), tmp_path / "usb")
        with _ledger(gw_cfg) as led:
            kept = {r["run_id"]: led.import_log_facts(r["bundle_id"], r["content_id"]) for r in led.imports()}
        assert kept[rid_old] is None  # sealed by an older agent: nothing to keep
        assert kept[rid_new] == sealed_facts(read_facts(find_log(new)))

        rr, led = _deliver_watched(gw_cfg)
        try:
            assert sorted((o.run_id, o.state) for o in rr.outcomes) == sorted([(rid_new, "confirmed"),
                                                                                (rid_old, "confirmed")])
            assert {r["run_id"]: r["state"] for r in led.imports()} == {rid_new: "delivered", rid_old: "delivered"}
        finally:
            led.close()
        # The effect: every row on the server once, for both.
        assert metric_rows(server, rid_new) == read_facts(find_log(new)).metric_values
        assert metric_rows(server, rid_old) == read_facts(find_log(old)).metric_values
        # The bundle whose facts the import kept: its log was never folded on the gateway, and
        # no staged manifest was opened to learn anything. (Its copy's head is read once, for a
        # sweep's id: deliver/sweeps.sweep_in_log stops at the first history row.)
        assert _fold_reads(rid_new) == 0, _opens
        assert not [p for p, _ in _opens if p.endswith("MANIFEST.json")], _opens
        # The one without: folded, so a fold shows when there is one.
        assert _fold_reads(rid_old) >= 1, _opens
    finally:
        server.stop()


def _as_before_migration_7(ledger_path: Path) -> None:
    """The gateway ledger as an agent before migration 7 left it: no ``log_facts`` column."""
    db = sqlite3.connect(ledger_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 7
        db.execute("ALTER TABLE imports DROP COLUMN log_facts")
        db.execute("PRAGMA user_version = 6")
        db.commit()
    finally:
        db.close()


def test_an_older_gateway_ledger_migrates_and_its_imports_still_arrive_once(corpus: Path, tmp_path: Path) -> None:
    """A gateway ledger from before migration 7, holding an import not delivered yet: it opens,
    migrated; that import keeps no facts (staging holds the run directory, not the manifest), so
    its log is read at delivery as before, and it arrives whole, once. A bundle imported after
    the migration keeps its facts and is delivered without a fold."""
    first, second = _pick(corpus)
    server = RestartableServer(tmp_path / "server").start()
    try:
        gw_cfg, (rid1, rid2), bundles = _node_and_gateway(tmp_path, server, [(first, True), (second, True)])
        _carry(gw_cfg, [bundles[rid1]], tmp_path / "usb1")
        cfg = config_mod.load(str(gw_cfg))
        _as_before_migration_7(cfg.ledger_path)
        with _ledger(gw_cfg) as led:
            (imp,) = led.imports()
            assert led.schema_version == 7
            assert imp["state"] == "imported" and imp["project"]  # what migration 5 kept is still there
            assert led.import_log_facts(imp["bundle_id"], imp["content_id"]) is None
        _carry(gw_cfg, [bundles[rid2]], tmp_path / "usb2")

        rr, led = _deliver_watched(gw_cfg)
        try:
            assert sorted((o.run_id, o.state) for o in rr.outcomes) == sorted([(rid1, "confirmed"), (rid2, "confirmed")])
            assert {r["run_id"]: r["state"] for r in led.imports()} == {rid1: "delivered", rid2: "delivered"}
        finally:
            led.close()
        assert metric_rows(server, rid1) == read_facts(find_log(first)).metric_values
        assert metric_rows(server, rid2) == read_facts(find_log(second)).metric_values
        assert _fold_reads(rid1) >= 1, _opens  # imported before migration 7: read, as it was
        assert _fold_reads(rid2) == 0, _opens
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _unwatched():
    yield
    _watching.clear()
