"""Delivery vs plain `wandb sync`, same benchmark run; and a run grown by 10%.

    python benchmarks/bench_sync.py [--runs N] [--steps S] [--parallel P] [--repeat-many R] [--history-line-count] [--server-dir DIR] [--before REV] [--out FILE]
    python benchmarks/bench_sync.py --history-line-count --grow-only [--repeat R] [--before REV]

1. N runs of S steps written by real wandb (offline). Each is sealed into a bundle as the daemon
   seals one, its log's facts in the manifest (outside the timing); `tfwb-agent sync --to bench`
   (verify, decrypt, ask the server, wandb sync, confirm) is timed against `wandb sync -n P` of plain copies of the same runs. Each side gets its own
   fresh OpenWandb, started before either is timed: a server whose database already holds the
   other side's rows is slower, which would favour whichever side goes first. ``--repeat-many R``
   rounds (fresh servers and site each time, the order alternating) give the median ratio. The plain copies
   carry the same records under another run id (re-framed with the agent's own writer: same
   bytes per record otherwise).
   ``--server-dir /dev/shm`` keeps both servers' data in memory: on a shared disk the server's
   database writes set much of the pace and most of the round-to-round spread. ``--before REV``
   adds a third side to each round, the agent as it was at git revision REV with a server and
   site of its own (see part 2 for how it is run).
2. One delivered run that then grows by 10%: the second delivery's rows and bytes sent (the
   agent sends only the new part) beside a plain re-sync of the whole grown run. With
   ``--grow-only --repeat R``: only this part, R times (a fresh site each time, the agent and
   plain `wandb sync` one after the other), each pair and the median ratio reported: on a
   shared machine one pair says little. ``--before REV`` also times the agent as it was at git
   revision REV (a temporary worktree put first on PYTHONPATH) in each of the same rounds, after
   the pair: before and after compared under the same load.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from openwandb_server import HISTORY_LINE_COUNT_ENV  # noqa: E402
from deliver_helpers import RestartableServer, make_deliver_site, metric_rows, write_runs  # noqa: E402

from tfwb_agent.runlog import find_log  # noqa: E402
from tfwb_agent.segments import read_facts  # noqa: E402
from tfwb_agent.wandb_log import LogReader, LogWriter  # noqa: E402


def renamed_copy(src: Path, dst_root: Path, suffix: str) -> tuple[Path, str]:
    """A copy of run dir ``src`` whose run id is ``<id><suffix>`` (records otherwise unchanged)."""
    from wandb.proto import wandb_internal_pb2 as pb
    log = find_log(src)
    rid = src.name.rsplit("-", 1)[1]
    new_id = rid + suffix
    dst = dst_root / (src.name[: -len(rid)] + new_id)
    shutil.copytree(src, dst, symlinks=True)
    (dst / log.name).unlink()
    with open(log, "rb") as fin, open(dst / f"run-{new_id}.wandb", "wb") as fout:
        w = LogWriter(fout)
        for _off, payload in LogReader(fin):
            rec = pb.Record()
            rec.ParseFromString(payload)
            if rec.WhichOneof("record_type") == "run":
                rec.run.run_id = new_id
                payload = rec.SerializeToString()
            w.write(payload)
    return dst, new_id


def truncated_copy(src: Path, dst_root: Path, rows: int) -> Path:
    """A copy of ``src`` whose log stops after its first ``rows`` history rows (as it was before it grew)."""
    dst = dst_root / src.name
    shutil.copytree(src, dst, symlinks=True)
    log = find_log(dst)
    facts = read_facts(log)
    with open(log, "r+b") as f:
        f.truncate(facts.history_ends[rows - 1])
    return dst


def seal_as_daemon(site, run_dirs: list[Path], segment=0) -> None:
    """Seal each run directory into the site's outbox as the daemon's sealing does
    (``sealing._seal``): with its log's facts in the manifest (``segments.sealed_facts``)."""
    from tfwb_agent import runs
    from tfwb_agent.seal import RunIdentity, keys_config, seal_keys, seal_run
    from tfwb_agent.segments import sealed_facts

    cfg = site.config()
    keys = seal_keys(keys_config(cfg))
    ledger = site.ledger()
    try:
        for d in run_dirs:
            facts = runs.inspect(d)
            seal_run(cfg, keys, ledger, d, RunIdentity(facts.run_id, facts.project, facts.entity, facts.wandb_version),
                     segment, {"note": "bench input, not redacted"}, log_facts=sealed_facts(read_facts(find_log(d))))
    finally:
        ledger.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_env(cfg: Path, pythonpath: Path | None = None) -> dict[str, str]:
    return dict(os.environ, TFWB_AGENT_CONFIG=str(cfg), **({"PYTHONPATH": str(pythonpath)} if pythonpath else {}))


def before_tree(rev: str, work: Path) -> Path:
    """A directory to put first on PYTHONPATH so that ``tfwb_agent`` is the code at ``rev``."""
    tree = work / f"before-{rev}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    compileall.compile_dir(str(tree / "agent"), quiet=1)
    shim = work / f"shim-{rev}"
    shim.mkdir()
    (shim / "tfwb_agent").symlink_to(tree / "agent")
    return shim


def second_delivery(root: Path, server, grow_src: Path, pythonpath: Path | None = None) -> tuple[float, dict]:
    """``grow_src`` less its last 10% delivered, then grown: the seconds its second `tfwb-agent
    sync` took (the agent at ``pythonpath``, else this one) and that sync's row for segment 1."""
    from tfwb_agent.seal import Segment

    facts = read_facts(find_log(grow_src))
    before = truncated_copy(grow_src, root / "before", round(facts.history_rows / 1.1))
    site2 = make_deliver_site(root / "site", server.url, server.api_key, target="bench")
    seal_as_daemon(site2, [before])
    env = agent_env(site2.cfg, pythonpath)
    o1 = subprocess.run([sys.executable, "-m", "tfwb_agent", "sync", "--to", "bench", "--json"],
                        env=env, capture_output=True, text=True)
    assert o1.returncode == 0, o1.stderr[-2000:]
    seal_as_daemon(site2, [grow_src], Segment(1, read_facts(find_log(before)).end, None))
    t = time.perf_counter()
    o2 = subprocess.run([sys.executable, "-m", "tfwb_agent", "sync", "--to", "bench", "--json"],
                        env=env, capture_output=True, text=True)
    grow_s = time.perf_counter() - t
    assert o2.returncode == 0, o2.stderr[-2000:]
    return grow_s, next(r for r in json.loads(o2.stdout)["deliveries"]["rows"] if r["segment"] == 1)


def grow_once(root: Path, server, plain_server, grow_src: Path) -> dict:
    """One delivered run grows by 10%: its second delivery (only the new rows) beside a plain
    `wandb sync` of the whole grown run (to a fresh id, so it cannot disturb the run above)."""
    facts = read_facts(find_log(grow_src))
    first_rows = round(facts.history_rows / 1.1)
    grow_s, seg1 = second_delivery(root, server, grow_src)
    grown_rows_ok = metric_rows(server, facts.run_id) == facts.metric_values
    replain, _ = renamed_copy(grow_src, root / "plain", "g")
    t = time.perf_counter()
    subprocess.run(["wandb", "sync", "--project", "ct-bench-plain", "--entity", "admin", str(replain)],
                   env=plain_server.sync_env(), capture_output=True, text=True)
    regrow_plain_s = time.perf_counter() - t
    return {"rows_before": first_rows, "rows_after": facts.history_rows,
            "agent_rows_sent": seg1["rows_sent"], "agent_bytes_sent": seg1["bytes_sent"],
            "agent_s": round(grow_s, 2), "server_rows_exact": grown_rows_ok,
            "plain_rows_sent": facts.history_rows, "plain_bytes_sent": find_log(grow_src).stat().st_size,
            "plain_s": round(regrow_plain_s, 2)}


def many_runs_once(a: argparse.Namespace, root: Path, runs: list[Path], round_no: int, shim: Path | None) -> dict:
    """One round of part 1: a fresh server for each side (a server whose database holds rows
    already is slower), the runs sealed into a fresh site, then `tfwb-agent sync` and `wandb sync
    -n P` of plain copies, in an order that turns with ``round_no`` (rounds alternate who goes first).
    With ``shim`` (``--before``), a third side: the agent at that revision, its own server and
    site, so that before and after are compared under the same load."""
    servers = server_root(a, root)
    sides = ["agent", "wandb sync"] + (["before"] if shim else [])
    server = {side: RestartableServer(servers / side.replace(" ", "-")).start() for side in sides}
    try:
        sites = {side: make_deliver_site(root / f"site-{side}", server[side].url, server[side].api_key,
                                         target="bench", sync=f"max_parallel = {a.parallel}\n")
                 for side in sides if side != "wandb sync"}
        for site in sites.values():
            seal_as_daemon(site, runs)
        plain_root = root / "plain" / "wandb"
        plain_root.mkdir(parents=True)
        plain = [renamed_copy(r, plain_root, "p") for r in runs]
        expect = {read_facts(find_log(r)).run_id: read_facts(find_log(r)).metric_values for r in runs}
        timed: dict[str, tuple[float, float, subprocess.CompletedProcess]] = {}

        def run(side: str) -> None:
            if side == "wandb sync":
                argv = ["wandb", "sync", "-n", str(a.parallel), "--project", "ct-bench-plain", "--entity", "admin",
                        *[str(d) for d, _ in plain]]
                env = server[side].sync_env()
            else:
                argv = [sys.executable, "-m", "tfwb_agent", "sync", "--to", "bench", "--json"]
                env = agent_env(sites[side].cfg, shim if side == "before" else None)
            pid = server[side].proc.pid
            cpu0, t = cpu_seconds(pid), time.perf_counter()
            out = subprocess.run(argv, env=env, capture_output=True, text=True)
            timed[side] = (time.perf_counter() - t, cpu_seconds(pid) - cpu0, out)
            assert out.returncode == 0, out.stderr[-3000:]

        turn = round_no % len(sides)
        for side in sides[turn:] + sides[:turn]:
            run(side)
        (agent_s, agent_server_cpu, out), (plain_s, plain_server_cpu, _) = timed["agent"], timed["wandb sync"]
        result = {
            "first": sides[turn],
            "agent_sync_s": round(agent_s, 2), "wandb_sync_s": round(plain_s, 2),
            "ratio_agent_over_wandb": round(agent_s / plain_s, 3),
            # The server's own CPU time while each side ran: OpenWandb is one process on one core,
            # so this is the floor of each side's time; the difference is what confirming on the
            # server costs it.
            "server_cpu_s": {"agent": round(agent_server_cpu, 2), "wandb": round(plain_server_cpu, 2)},
            "agent_counts": json.loads(out.stdout)["deliveries"]["counts"],
            "agent_runs_exact": sum(metric_rows(server["agent"], rid) == n for rid, n in expect.items()),
            "plain_runs_exact": sum(metric_rows(server["wandb sync"], nid) == expect[d.name.rsplit("-", 1)[1][:-1]]
                                    for d, nid in plain),
        }
        if shim:
            before_s = timed["before"][0]
            result.update(before_sync_s=round(before_s, 2), ratio_before_over_wandb=round(before_s / plain_s, 3),
                          before_runs_exact=sum(metric_rows(server["before"], rid) == n for rid, n in expect.items()))
        return result
    finally:
        for srv in server.values():
            srv.stop()
        if servers != root:
            shutil.rmtree(servers, ignore_errors=True)


def server_root(a: argparse.Namespace, root: Path) -> Path:
    """Where a round's servers keep their data: under ``root``, or in ``--server-dir``."""
    if a.server_dir is None:
        return root
    return Path(tempfile.mkdtemp(prefix="bench-sync-servers-", dir=a.server_dir))


def grow_only(a: argparse.Namespace, tmp: Path, server, plain_server) -> dict:
    """Only the 10% case, ``a.repeat`` times against the same servers (a fresh run id each time)."""
    pairs = []
    (written,) = write_runs(tmp / "written", 1, a.steps, project="ct-bench")
    shim = before_tree(a.before, tmp) if a.before else None
    for i in range(a.repeat):
        src, _ = renamed_copy(written, tmp / f"src-{i}", f"r{i}")  # a run id of its own each time
        g = grow_once(tmp / f"grow-{i}", server, plain_server, src)
        assert g["server_rows_exact"], g
        line = (f"{i + 1}/{a.repeat}: agent {g['agent_s']} s ({g['agent_rows_sent']} rows) vs plain {g['plain_s']} s "
                f"({g['plain_rows_sent']} rows)")
        if shim is not None:
            old, _ = renamed_copy(written, tmp / f"src-{i}-before", f"b{i}")
            g["before_s"] = round(second_delivery(tmp / f"grow-{i}-before", server, old, shim)[0], 2)
            line += f"; the agent at {a.before}: {g['before_s']} s"
        print(line, flush=True)
        pairs.append(g)
    ratios = [g["agent_s"] / g["plain_s"] for g in pairs]
    out = {"steps": a.steps, "repeat": a.repeat, "cpus": os.cpu_count(), "pairs": pairs,
           "ratio_median": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
           "ratio_max": round(max(ratios), 3),
           "agent_s_median": round(statistics.median(g["agent_s"] for g in pairs), 2),
           "plain_s_median": round(statistics.median(g["plain_s"] for g in pairs), 2)}
    if shim is not None:
        out.update(before=a.before, before_s_median=round(statistics.median(g["before_s"] for g in pairs), 2),
                   before_ratio_median=round(statistics.median(g["before_s"] / g["plain_s"] for g in pairs), 3))
    return out | {"load_average": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--history-line-count", action="store_true",
                    help="servers answer historyLineCount as W&B Server does (a shim; stock OpenWandb answers 0)")
    ap.add_argument("--grow-only", action="store_true", help="only the run grown by 10%%, --repeat times")
    ap.add_argument("--repeat", type=int, default=5, help="with --grow-only: how many times")
    ap.add_argument("--repeat-many", type=int, default=3,
                    help="without --grow-only: rounds of the N-run comparison (the median is reported)")
    ap.add_argument("--before", metavar="REV",
                    help="also time the agent at this git revision, in each round (its own server and site)")
    ap.add_argument("--server-dir", type=Path, default=None, metavar="DIR",
                    help="keep the N-run rounds' servers' data in DIR (e.g. /dev/shm, in memory): on a shared "
                         "disk the server's database writes set much of the pace and most of the spread")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: benchmarks/results/sync.json (sync-grow.json with --grow-only)")
    a = ap.parse_args()
    if a.history_line_count:  # the servers started below inherit it (openwandb_server.launch)
        os.environ[HISTORY_LINE_COUNT_ENV] = "1"
    # The agent as installed: pip compiles its bytecode at install (wandb's is compiled too); a
    # source tree run with PYTHONDONTWRITEBYTECODE would otherwise compile ~100 modules per call.
    compileall.compile_dir(str(REPO / "agent"), quiet=1)
    a.out = a.out or REPO / "benchmarks" / "results" / ("sync-grow.json" if a.grow_only else "sync.json")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    server = RestartableServer(tmp).start()
    plain_server = RestartableServer(tmp / "plain-server").start()
    try:
        if a.grow_only:
            result = grow_only(a, tmp, server, plain_server)
            print(json.dumps({k: v for k, v in result.items() if k != "pairs"}, indent=1))
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=1) + "\n")
            return
        t0 = time.perf_counter()
        runs = write_runs(tmp / "written", a.runs + 1, a.steps, project="ct-bench")
        grow_src, runs = runs[-1], runs[:-1]
        print(f"wrote {len(runs) + 1} runs of {a.steps} steps in {time.perf_counter() - t0:.1f}s", flush=True)
        shim = before_tree(a.before, tmp) if a.before else None
        rounds = []
        for i in range(a.repeat_many):
            r = many_runs_once(a, tmp / f"round-{i}", runs, i, shim)
            rounds.append(r)
            print(f"round {i + 1}/{a.repeat_many}: agent {r['agent_sync_s']} s vs wandb sync {r['wandb_sync_s']} s "
                  f"({r['first']} first): {r['ratio_agent_over_wandb']}"
                  + (f"; the agent at {a.before}: {r['before_sync_s']} s, {r['ratio_before_over_wandb']}" if shim else ""),
                  flush=True)

        # 2. A delivered run grows by 10%.
        grow = grow_once(tmp / "grow", server, plain_server, grow_src)
        ratios = [r["ratio_agent_over_wandb"] for r in rounds]
        result = {
            "runs": a.runs, "steps": a.steps, "parallel": a.parallel, "cpus": os.cpu_count(),
            "server": "OpenWandb, historyLineCount as W&B Server answers it (shim)" if a.history_line_count
                      else "OpenWandb, stock (historyLineCount 0)",
            "ratio_median": round(statistics.median(ratios), 3), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "rounds": rounds, "grow": grow, "load_average": os.getloadavg(),
        }
        if shim:
            before_ratios = [r["ratio_before_over_wandb"] for r in rounds]
            result.update(before=a.before, before_ratio_median=round(statistics.median(before_ratios), 3),
                          after_over_before=[round(r["agent_sync_s"] / r["before_sync_s"], 3) for r in rounds])
        print(json.dumps(result, indent=1))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        server.stop()
        plain_server.stop()
        if a.before and (tmp / f"before-{a.before}").exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / f"before-{a.before}")],
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
