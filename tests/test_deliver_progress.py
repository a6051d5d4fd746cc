"""What `tfwb-agent sync` prints where no terminal is attached (journald): for every run, when
it is handed to wandb, when wandb is done with it (runs of one upload finish one by one), and
what the server's answer made of it."""
from __future__ import annotations

from pathlib import Path

from conftest import agent
from deliver_helpers import RestartableServer, make_deliver_site, seal_dirs, write_runs


def test_plain_lines_follow_each_run(tmp_path: Path) -> None:
    server = RestartableServer(tmp_path).start()
    try:
        runs = write_runs(tmp_path / "runs", 3, 300, project="ct-progress")
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        ids = seal_dirs(site, runs)
        out = agent(site.cfg, "sync", "--to", "local", "--once").stdout.splitlines()
        for rid in ids:
            mine = [l for l in out if rid in l]
            kinds = [("sending" if l.startswith("sending ") else "done" if l.startswith("wandb sync is done")
                      else "outcome") for l in mine]
            assert kinds == ["sending", "done", "outcome"], mine
            assert mine[2].endswith(": confirmed: sent and confirmed"), mine[2]
        assert server.api_key not in "\n".join(out)
    finally:
        server.stop()
