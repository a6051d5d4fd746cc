"""Where a later part of a run begins on the server (``Settler.base_rows``), for every segment of
it: a killed job resumed with the same run id is a second part (its own run directory, its log
from byte 0), and with ``sync.live`` that part is cut live into several segments. Each of them
counts its rows from the rows the segments before the part brought, not from 0.

Found by CI (tests/test_run_end.py, the killed and resumed live run): the resumed part went in
two cuts, 11 rows then all 20; the second was judged with base 0, found the server holding 49
rows (38 of the first part, 11 of the first cut), took itself for already there, and its last
9 rows were never sent. Real ledger and settler; the server is not asked."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from deliver_helpers import make_deliver_site

from tfwb_agent.deliver import confirm
from tfwb_agent.deliver.outcomes import set_state
from tfwb_agent.deliver.settings import sync_settings, targets
from tfwb_agent.deliver.settle import Settler
from tfwb_agent.deliver.work import Unit

# segment -> byte_start: the first part (0, then a live cut), the resumed part (its log from 0,
# then a live cut), and a third part of one segment.
SEGMENTS = {0: None, 1: 4096, 2: 0, 3: 2048, 4: 0}


def _units(site) -> dict[int, Unit]:
    led = site.ledger()
    try:
        units = {}
        for seg, start in SEGMENTS.items():
            path = site.cfg.parent / f"run1-{seg}.tar.zst.age"
            led.record_sealed(bundle_id=f"b{seg}", run_key=None, run_id="run1", segment=seg, name=path.name,
                              path=str(path), content_id=f"c{seg}", byte_start=start, byte_end=start or 0 + 10,
                              project="p", entity="e", audit={"kind": "sealed", "bundle_id": f"b{seg}"})
            units[seg] = Unit("run1", seg, f"c{seg}", f"b{seg}", "outbox", path, 0, "p", "e", start or 0)
        return units
    finally:
        led.close()


def test_every_segment_of_a_later_part_counts_from_the_parts_base(tmp_path: Path) -> None:
    site = make_deliver_site(tmp_path / "site", "http://127.0.0.1:9", "k" * 40)
    units = _units(site)
    cfg = site.config()
    led = site.ledger()
    try:
        settler = Settler(led, cfg, targets(cfg)["local"], "k" * 40, sync_settings(cfg), lambda *a, **k: None)
        # Delivered in order: through segment 1 the server holds 38 rows, through 2 (a cut of
        # the resumed part's first 11 rows) 49, through 3 (all 20 of that part) 58.
        for seg, through in ((0, 20), (1, 38), (2, 49), (3, 58)):
            set_state(led, units[seg], "local", "confirmed", server_rows=through)
        assert [settler.base_rows(units[s]) for s in SEGMENTS] == [0, 0, 38, 38, 58]
        # What that base decides: the resumed part's second cut (20 rows) against a server that
        # holds 49 rows of the run is partial (11 of 20 there), not complete.
        cut = SimpleNamespace(history_rows=20, summary={})
        server = confirm.ServerRun(True, "running", {}, 49)
        assert confirm.judge(cut, server, settler.base_rows(units[3])).kind == confirm.PARTIAL
        assert confirm.judge(cut, server, 0).kind == confirm.COMPLETE  # what base 0 said
    finally:
        led.close()
