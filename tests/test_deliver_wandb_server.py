"""Issue 16: delivering to the real thing (W&B Server and Cloud), not only OpenWandb.

Every test talks to a real OpenWandb, behind stand-ins for the W&B behaviour OpenWandb lacks
(``tests/wandb_standins.py``, all on 127.0.0.1): ``WandbFrontDoor``, a stand-in for W&B's front
door (401 for a key W&B would not know and on REST paths it does not serve, ``historyLineCount``
reported, ``directUrl`` redirected to object storage on another host, 429 with ``Retry-After``,
aliased errors in a 200 answer, TLS with a private CA); ``RecordingStorage``, a stand-in for
object storage on a second port that records the headers it received; ``RecordingHost``, a
stand-in for an SSO login page on another host. Effects are asserted on what the hosts recorded
and on the server's own database: rows exactly once, nothing sent twice, the key nowhere else.
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from conftest import agent, status
from deliver_helpers import (RestartableServer, corpus_dirs, duplicate_rows, make_deliver_site, metric_rows,
                             seal_dirs, sync)
from wandb_standins import FrontDoorRules, RecordingHost, RecordingStorage, WandbFrontDoor, private_ca

from tfwb_agent.config import ConfigError
from tfwb_agent.deliver import confirm, probe, questions, sync_log, upload
from tfwb_agent.deliver.settings import Target
from tfwb_agent.deliver import server as srv
from tfwb_agent.runlog import find_log
from tfwb_agent.segments import read_facts


@pytest.fixture(scope="module")
def openwandb(tmp_path_factory):
    server = RestartableServer(tmp_path_factory.mktemp("ow")).start()
    yield server
    server.stop()


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"api:{key}".encode()).decode()


def _want(dirs: list[Path]) -> dict[str, int]:
    return {read_facts(find_log(d)).run_id: read_facts(find_log(d)).metric_values for d in dirs}


def _assert_exactly_once(server, want: dict[str, int]) -> None:
    for rid, rows in want.items():
        assert metric_rows(server, rid) == rows, rid
        assert duplicate_rows(server, rid) == 0, rid


def _deliveries(site) -> dict[str, dict]:
    ledger = site.ledger()
    try:
        return {r["run_id"]: dict(r) for r in ledger.db.execute("SELECT * FROM deliveries").fetchall()}
    finally:
        ledger.close()


# --- 1. the probe asks what W&B serves --------------------------------------------------------

def test_probe_asks_graphql_viewer_only_and_a_401_on_rest_paths_does_not_reject_a_good_key(openwandb):
    door = WandbFrontDoor(openwandb.url, openwandb.api_key)  # 401 on /api/..., 401 for unknown keys
    try:
        good = probe.probe(door.url, openwandb.api_key, 10)
        assert good.status == probe.ONLINE, good.detail
        bad = probe.probe(door.url, "wrong" + "1" * 40, 10)
        assert bad.status == probe.KEY_REJECTED and "wrong" not in bad.detail
        assert {s.path for s in door.seen} == {"/graphql"}  # no OpenWandb-only path asked
    finally:
        door.stop()


# --- 2. the key stays at the target's origin ------------------------------------------------------

def test_a_graphql_redirect_to_another_host_is_refused_and_the_key_never_goes_there(openwandb):
    sso = RecordingHost()  # a stand-in for an SSO login page on another host
    door = WandbFrontDoor(openwandb.url, openwandb.api_key, FrontDoorRules(graphql_redirect_to=sso.url + "/login"))
    try:
        res = probe.probe(door.url, openwandb.api_key, 10)
        assert res.status == probe.OFFLINE
        assert "redirected to" in res.detail and "another host" in res.detail and "single sign-on" in res.detail
        assert sso.seen == []  # not followed at all for GraphQL
        # A download may follow a redirect to another host, but never with the key.
        body = srv.download(door.url, openwandb.api_key, sso.url + "/x", 10)
        assert body.startswith(b"<html>")
        assert all("Authorization" not in h for _m, _p, h in sso.seen) and len(sso.seen) == 1
    finally:
        door.stop()
        sso.stop()


def test_no_authorization_header_with_an_empty_key_and_a_bad_direct_url_is_a_clear_error():
    host = RecordingHost()
    try:
        srv.request("GET", host.url + "/a", "", timeout=5)
        assert "Authorization" not in host.seen[-1][2]  # not even "Basic api:"
        srv.request("GET", host.url + "/b", "k" * 40, timeout=5)
        assert host.seen[-1][2]["Authorization"] == _basic("k" * 40)  # the same origin does get it
        for bad in ("http://[::1", "ftp://elsewhere/x"):
            with pytest.raises(srv.ServerError):
                srv.download(host.url, "k" * 40, bad, 5)
        srv.download(host.url, "k" * 40, "/files/relative/wandb-history.jsonl", 5)  # resolved against base_url
        assert host.seen[-1][1] == "/files/relative/wandb-history.jsonl"
    finally:
        host.stop()


# --- 3. per-alias errors ---------------------------------------------------------------------------

def test_an_aliased_error_is_unknown_and_a_permission_error_names_its_run(openwandb, corpus):
    door = WandbFrontDoor(openwandb.url, openwandb.api_key, FrontDoorRules(
        alias_errors={"r-denied": "permission denied", "r-broken": "internal error while resolving run"}))
    try:
        wanted = [confirm.Wanted("admin", "p16", r) for r in ("r-absent", "r-denied", "r-broken")]
        found = confirm.fetch_runs(door.url, openwandb.api_key, wanted, 10)
        assert [f.known for f in found] == [True, False, False]
        assert not found[0].exists
        assert "permission denied" in found[1].detail and "r-denied" in found[1].detail and "admin/p16" in found[1].detail
        facts = read_facts(find_log(corpus_dirs(corpus)[0]))
        assert confirm.assess(facts, found[1]).kind == confirm.UNKNOWN  # never "absent"
        assert confirm.assess(facts, found[0]).kind == confirm.ABSENT
    finally:
        door.stop()


def test_more_rows_than_sent_after_an_upload_is_a_mismatch_not_success(corpus):
    facts = read_facts(find_log(corpus_dirs(corpus)[0]))
    more = confirm.ServerRun(True, "finished", {}, facts.history_rows + 3)
    assert confirm.judge(facts, more).kind == confirm.COMPLETE  # judge itself is unchanged
    j = confirm.assess_sent(facts, more)
    assert j.kind == confirm.MISMATCH and "3 more" in j.detail


# --- 4. back-pressure --------------------------------------------------------------------------------

def test_429_on_the_batch_query_shrinks_the_batch_and_waits_as_told(openwandb):
    door = WandbFrontDoor(openwandb.url, openwandb.api_key,
                          FrontDoorRules(throttle_many_run_queries=2, retry_after="7"))
    waits: list[float] = []
    try:
        wanted = [confirm.Wanted("admin", "p16", f"r{i}", summary_at=5) for i in range(8)]
        found = confirm.fetch_runs(door.url, openwandb.api_key, wanted, 10, sleep=waits.append)
        assert [f.exists for f in found] == [False] * 8 and all(f.known for f in found)
        assert waits == [7.0, 7.0]
        assert door.graphql_runs_asked() == [(8, 429), (4, 429), (2, 200), (2, 200), (2, 200), (2, 200)]
    finally:
        door.stop()


def test_server_wait_hints_are_read_and_capped():
    assert srv.wait_hint({"Retry-After": "3"}) == 3.0
    assert srv.wait_hint({"RateLimit-Reset": "12"}) == 12.0
    assert srv.wait_hint({"Retry-After": "99999"}) == srv.WAIT_CAP
    assert srv.wait_hint({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert srv.wait_hint({}) is None


def test_the_batch_query_leaves_summary_metrics_out():
    assert "summaryMetrics" not in confirm.runs_query(3, confirm.LIGHT_FIELDS)
    assert "historyLineCount" in confirm.LIGHT_FIELDS


# --- 6. private CAs --------------------------------------------------------------------------------

def test_ca_file_must_name_a_file(tmp_path):
    from tfwb_agent.deliver.settings import validate_targets
    base = {"base_url": "https://wandb.example", "api_key_env": "K"}
    with pytest.raises(ConfigError, match="ca_file"):
        validate_targets("cfg", {"t": {**base, "ca_file": "relative.pem"}})
    with pytest.raises(ConfigError, match="not a readable file"):
        validate_targets("cfg", {"t": {**base, "ca_file": str(tmp_path / "missing.pem")}})
    (tmp_path / "ca.pem").write_text("x")
    assert validate_targets("cfg", {"t": {**base, "ca_file": str(tmp_path / "ca.pem")}}).by_name["t"].ca_file


def test_probe_and_confirmation_over_tls_with_a_private_ca(openwandb, tmp_path, monkeypatch):
    ca = private_ca(tmp_path / "ca")
    door = WandbFrontDoor(openwandb.url, openwandb.api_key, tls=ca.server_context)
    try:
        assert door.url.startswith("https://")
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        res = probe.probe(door.url, openwandb.api_key, 10, target="site")
        assert res.status == probe.TLS_FAILED and probe.TLS_FAILED in probe.NEEDS_A_PERSON
        assert res.detail.startswith(f"certificate verify failed for {door.url}") and "targets.site.ca_file" in res.detail
        with pytest.raises(srv.TLSFailure, match="set targets.site.ca_file"):
            confirm.fetch_runs(door.url, openwandb.api_key, [confirm.Wanted("admin", "p", "r")], 10, target="site")
        assert probe.probe(door.url, openwandb.api_key, 10, ca_file=str(ca.ca_pem)).status == probe.ONLINE
        found = confirm.fetch_runs(door.url, openwandb.api_key, [confirm.Wanted("admin", "p", "r")], 10,
                                   ca_file=str(ca.ca_pem))
        assert found[0].known and not found[0].exists
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.ca_pem))  # what wandb's docs point users to
        assert probe.probe(door.url, openwandb.api_key, 10).status == probe.ONLINE
    finally:
        door.stop()


# --- whole deliveries through the stand-ins ---------------------------------------------------------

@pytest.mark.slow(seconds=60)
def test_delivery_behind_a_wandb_front_door_storage_redirects_and_a_429(tmp_path, corpus):
    """OpenWandb gives no row count: the history file is read through a relative directUrl that
    redirects to object storage on another host, which must never see the key; the many-run
    query is answered 429 once."""
    server = RestartableServer(tmp_path / "ow").start()
    storage = RecordingStorage()
    door = WandbFrontDoor(server.url, server.api_key, FrontDoorRules(storage=storage, throttle_many_run_queries=1))
    try:
        dirs = corpus_dirs(corpus)[:2]
        site = make_deliver_site(tmp_path / "site", door.url, server.api_key)
        seal_dirs(site, dirs)
        out = json.loads(sync(site).stdout)
        assert out["status"] == "online", out
        _assert_exactly_once(server, _want(dirs))
        assert {d["state"] for d in _deliveries(site).values()} == {"confirmed"}
        assert storage.seen, "the history file was read from the storage host"
        assert any(s.files_asked for s in door.seen)  # asked for, since the server gave no count
        assert all("Authorization" not in h for _p, h in storage.seen)  # the key never reached it
        assert any(status == 429 for _n, status in door.graphql_runs_asked())
        assert "/api/v2/auth/me" not in {s.path for s in door.seen}
    finally:
        door.stop()
        storage.stop()
        server.stop()


@pytest.mark.slow(seconds=60)
def test_an_aliased_error_never_resends_and_w_and_b_like_counts_need_no_download(tmp_path, corpus):
    """With historyLineCount reported (as W&B does) no history file is downloaded. A second host
    delivering the same runs, whose first answer about one run is an aliased error in a 200,
    does not send that run again: it is asked again and found complete."""
    server = RestartableServer(tmp_path / "ow").start()
    storage = RecordingStorage()
    rules = FrontDoorRules(storage=storage, report_line_count=True)
    door = WandbFrontDoor(server.url, server.api_key, rules)
    try:
        dirs = corpus_dirs(corpus)[:2]
        want = _want(dirs)
        first = make_deliver_site(tmp_path / "first", door.url, server.api_key)
        seal_dirs(first, dirs)
        sync(first)
        _assert_exactly_once(server, want)
        assert storage.seen == []  # the server's row count sufficed: no history download at all
        assert not any(s.files_asked for s in door.seen)  # nor a question about the history file
        errored = sorted(want)[0]
        rules.alias_errors, rules.alias_errors_left = {errored: "internal error while resolving run"}, 1
        second = make_deliver_site(tmp_path / "second", door.url, server.api_key)
        seal_dirs(second, dirs)
        sync(second)
        _assert_exactly_once(server, want)  # nothing arrived twice
        d = _deliveries(second)
        assert {x["state"] for x in d.values()} == {"confirmed"}, d
        assert all(x["rows_sent"] == 0 for x in d.values()), d  # neither run was sent again
        assert all(not x["attempts"] for x in d.values()), d  # no upload was started for either
        assert "already on the server" in d[errored]["reason"]
        assert rules.alias_errors_given == 1  # the errored answer was given, and read as unknown
    finally:
        door.stop()
        storage.stop()
        server.stop()


@pytest.mark.slow(seconds=60)
def test_a_wave_is_asked_about_once_before_it_is_sent(tmp_path, corpus):
    """The server is asked about a whole wave while its bundles are opened, once (a wave of more
    than one upload's runs is not asked again before its later parts go:
    ``test_deliver_ahead.test_a_long_waves_first_part_is_sent_by_the_process_started_ahead``).
    A run the answer says is there is not sent; the others arrive exactly once, in one upload."""
    server = RestartableServer(tmp_path / "ow").start()
    door = WandbFrontDoor(server.url, server.api_key, FrontDoorRules(report_line_count=True))
    try:
        dirs = corpus_dirs(corpus)
        assert len(dirs) == 4
        want = _want(dirs)
        there = read_facts(find_log(dirs[1])).run_id  # in the wave's second part
        first = make_deliver_site(tmp_path / "first", door.url, server.api_key)
        seal_dirs(first, [dirs[1]])
        sync(first)
        _assert_exactly_once(server, {there: want[there]})
        door.seen.clear()
        site = make_deliver_site(tmp_path / "site", door.url, server.api_key)
        seal_dirs(site, dirs)
        sync(site)
        _assert_exactly_once(server, want)
        d = _deliveries(site)
        assert {x["state"] for x in d.values()} == {"confirmed"}, d
        assert d[there]["rows_sent"] == 0 and not d[there]["attempts"], d[there]
        asked = [n for n, status in door.graphql_runs_asked() if status == 200]
        # Before sending, all four at once in the project's run list (``run_lists``: not counted
        # here), and by name only the one it shows; then the summary of that one (its rows match,
        # so the summary decides) and one question after the upload of the other three.
        assert asked == [1, 1, 3], asked
    finally:
        door.stop()
        server.stop()


def _one_run_delivered(tmp_path, corpus, door, server):
    """A corpus run delivered whole through ``door``, and how ``questions.before`` asks about
    it: (run dir, its facts, the target, its key, what is wanted of it)."""
    run_dir = corpus_dirs(corpus)[0]
    facts = read_facts(find_log(run_dir))
    first = make_deliver_site(tmp_path / "first", door.url, server.api_key)
    seal_dirs(first, [run_dir])
    sync(first)
    _assert_exactly_once(server, _want([run_dir]))
    project = facts.project or "uncategorized"
    t = Target("local", door.url, ("file", "unused"), timeout=10)
    key = (facts.run_id, 0, project, "admin")
    return run_dir, facts, t, key, [confirm.Wanted("admin", project, facts.run_id, facts.history_rows)]


@pytest.mark.slow(seconds=40)
def test_an_answer_asked_ahead_is_used_only_for_what_it_was_asked_about(tmp_path, corpus):
    """``questions.before`` takes an answer asked ahead only for the same run, segment, project
    and entity, and never an answer that was an error: given stale or mismatched answers saying
    "absent" about a run the server holds whole, it asks again and finds it complete (sending
    it again would duplicate every row)."""
    server = RestartableServer(tmp_path / "ow").start()
    door = WandbFrontDoor(server.url, server.api_key, FrontDoorRules(report_line_count=True))
    try:
        _run_dir, facts, t, key, wanted = _one_run_delivered(tmp_path, corpus, door, server)
        project = key[2]
        absent, errored = confirm.ServerRun(False), confirm.ServerRun(False, known=False, detail="error")
        for known in ({(facts.run_id, 0, "another-project", "admin"): absent},   # another project
                      {(facts.run_id, 0, project, None): absent},                 # another entity
                      {(facts.run_id, 1, project, "admin"): absent},              # another segment
                      {key: errored}):                                              # an error ahead
            door.seen.clear()
            (j,) = questions.before(t, server.api_key, [key], wanted, [facts], [0], known)
            assert j.kind == confirm.COMPLETE, (known, j)
            assert door.graphql_runs_asked(), "the server was asked again"
        door.seen.clear()
        (j,) = questions.before(t, server.api_key, [key], wanted, [facts], [0], {key: absent})
        assert j.kind == confirm.ABSENT  # the answer for this very key is taken as given ...
        assert [n for n, _ in door.graphql_runs_asked()] == []  # ... without asking again
    finally:
        door.stop()
        server.stop()


@pytest.mark.slow(seconds=30)
def test_a_failed_question_about_the_history_file_is_never_taken_for_absent(tmp_path, corpus):
    """Where the server gives no row count (OpenWandb), the history file is asked for in a
    second request. An error there about a run the server holds whole must leave the run
    unknown (asked again later), never "absent" or "0 rows": that would send every row again.
    Once the error is gone, the same question finds it complete."""
    server = RestartableServer(tmp_path / "ow").start()
    rules = FrontDoorRules(report_line_count=False, alias_errors_on_files_only=True)
    door = WandbFrontDoor(server.url, server.api_key, rules)
    try:
        run_dir, facts, t, key, wanted = _one_run_delivered(tmp_path, corpus, door, server)
        rules.alias_errors, rules.alias_errors_left = {facts.run_id: "internal error while listing files"}, 1
        (j,) = questions.before(t, server.api_key, [key], wanted, [facts], [0], {})
        assert rules.alias_errors_given == 1, "the history-file question was not the one that failed"
        assert j.kind == confirm.UNKNOWN, j
        (j,) = questions.before(t, server.api_key, [key], wanted, [facts], [0], {})
        assert j.kind == confirm.COMPLETE, j
        _assert_exactly_once(server, _want([run_dir]))
    finally:
        door.stop()
        server.stop()


@pytest.mark.slow(seconds=90)
def test_delivery_over_tls_with_a_private_ca_and_the_clear_message_without_it(tmp_path, corpus, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server = RestartableServer(tmp_path / "ow").start()
    ca = private_ca(tmp_path / "ca")
    door = WandbFrontDoor(server.url, server.api_key, tls=ca.server_context)
    try:
        dirs = corpus_dirs(corpus)[:2]
        # Without the CA: `targets check` says what to set; nothing is sent.
        plain = make_deliver_site(tmp_path / "plain", door.url, server.api_key)
        check = agent(plain.cfg, "targets", "check", check=False)
        assert check.returncode == 3, check.stdout + check.stderr
        assert f"certificate verify failed for {door.url}" in check.stdout and "targets.local.ca_file" in check.stdout
        assert "Traceback" not in check.stdout + check.stderr
        # The wandb sync child alone, not told of the CA: it fails on the certificate, and what
        # its log says is turned into the same message.
        home = tmp_path / "child"
        child_run = home / dirs[0].name
        shutil.copytree(dirs[0], child_run, symlinks=True)
        up = upload.start([child_run], door.url, server.api_key, "tls-child", "admin", home / "wandb-home",
                          tmp_path / "child.log", 1)
        up.proc.wait(timeout=300)
        upload.finished(up)
        said = sync_log.diagnose((tmp_path / "child.log").read_text(errors="replace"), door.url, "local")
        assert said and "certificate verify failed" in said and "targets.local.ca_file" in said
        assert metric_rows(server, read_facts(find_log(dirs[0])).run_id) == 0  # nothing arrived
        # With ca_file: the probe, the confirmation and the wandb sync child all trust it.
        site = make_deliver_site(tmp_path / "site", door.url, server.api_key,
                                 extra_targets=f'ca_file = "{ca.ca_pem}"\n')
        seal_dirs(site, dirs)
        out = json.loads(sync(site).stdout)
        assert out["status"] == "online", out
        _assert_exactly_once(server, _want(dirs))
        assert {d["state"] for d in _deliveries(site).values()} == {"confirmed"}
    finally:
        door.stop()
        server.stop()


def test_a_wrong_key_is_rejected_by_the_front_door_and_nothing_is_sent(tmp_path, corpus, openwandb):
    """W&B answers /graphql with 401 for a key it does not know (OpenWandb answers any key): the
    agent's verdict comes from that answer alone."""
    door = WandbFrontDoor(openwandb.url, openwandb.api_key)
    try:
        wrong = "wrong" + "1" * 40
        site = make_deliver_site(tmp_path / "site", door.url, wrong)
        want = _want(corpus_dirs(corpus)[:1])
        seal_dirs(site, corpus_dirs(corpus)[:1])
        proc = sync(site, check=False)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        out = json.loads(proc.stdout)
        assert out["status"] == "key_rejected" and wrong not in proc.stdout + proc.stderr
        assert all(metric_rows(openwandb, rid) == 0 for rid in want)
        assert status(site.cfg)["targets"][0]["status"] == "key_rejected"
        assert {s.path for s in door.seen} == {"/graphql"} and not any(s.authorized for s in door.seen)
    finally:
        door.stop()


class _EchoingServer:
    """A stand-in for a misconfigured front door (named as such): it answers every request with
    ``answer(key)``, the key being the one the request carried (as a proxy that echoes it)."""

    def __init__(self, answer) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.seen: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.seen.append(self.path)
                auth = self.headers.get("Authorization", "")
                key = base64.b64decode(auth[6:]).decode().split(":", 1)[-1] if auth.startswith("Basic ") else ""
                code, headers, body = answer(key, outer.url)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_key_a_server_puts_into_a_redirect_or_an_error_message_is_never_shown():
    """Found by a tester: a redirect within the target's origin to ``http://api:KEY@host/…`` was
    followed, and its failure printed the URL, key and all (``targets check``, ``status``, the
    ledger); a GraphQL error quoting the key was shown word for word."""
    key = "fa11ba5e" * 5
    door = _EchoingServer(lambda k, url: (307, {"Location": url.replace("//", f"//api:{k}@") + "/x/graphql"}, b""))
    try:
        with pytest.raises(srv.ServerError) as err:
            srv.graphql_answer(door.url, key, "{ viewer { id } }", timeout=5)
        assert key not in str(err.value) and "credentials" in str(err.value)
        assert door.seen == ["/graphql"]        # not followed
    finally:
        door.stop()
    echo = _EchoingServer(lambda k, url: (200, {"Content-Type": "application/json"}, json.dumps(
        {"data": None, "errors": [{"message": f"permission denied: unknown key {k}"}]}).encode()))
    try:
        with pytest.raises(srv.KeyRejected) as err:
            srv.graphql_answer(echo.url, key, "{ viewer { id } }", timeout=5)
        assert key not in str(err.value) and "[the API key]" in str(err.value)
        assert srv._where(f"http://api:{key}@h:1/x?sig=1") == "http://h:1/x"
    finally:
        echo.stop()
