"""Where a later part of a run begins on the server (``Settler.base_rows``), for every segment of
it: a killed job resumed with the same run id is a second part (its own run directory, its log
from byte 0), and with ``sync.live`` that part is cut live into several segments. Each of them
counts its rows from the rows the segments before the part brought, not from 0.

Found by CI (tests/test_run_end.py, the killed and resumed live run): the resumed part went in
two cuts, 11 rows then all 20; the second was judged with base 0, found the server holding 49
rows (38 of the first part, 11 of the first cut), took itself for already there, and its last
9 rows were never sent. Real ledger and settler; the server is not asked."""
from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

from deliver_helpers import make_deliver_site
from hypothesis import HealthCheck, given, settings, strategies as st

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
            units[seg] = Unit("run1", seg, f"c{seg}", f"b{seg}", "outbox", path, 0, "p", "e")
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


_SITE: dict = {}
_RUN_NUMBERS = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(starts=st.lists(st.one_of(st.just(0), st.integers(1, 10 ** 6)), min_size=1, max_size=8),
       grows=st.lists(st.integers(1, 50), min_size=9, max_size=9))
def test_any_layout_of_parts_and_cuts_counts_each_segment_from_its_parts_base(tmp_path_factory, starts, grows):
    """Parts and live cuts in any order (a byte start of 0 begins a part: a restarted job's own
    run directory), each segment confirmed in order with the server's running row count: every
    segment's base is the count after the segment before its part began, as a plain walk over
    the segments says (not the ledger's query)."""
    if "site" not in _SITE:
        _SITE["site"] = make_deliver_site(tmp_path_factory.mktemp("layouts") / "site", "http://127.0.0.1:9", "k" * 40)
    site = _SITE["site"]
    run_id = f"run{next(_RUN_NUMBERS)}"         # a run of its own in the one ledger, each example
    layout = [None] + starts                     # segment 0, then the later segments' byte starts
    through, total = [], 0
    for g in grows[:len(layout)]:
        total += g
        through.append(total)                    # rows the server holds once the segment is confirmed
    want, base = [], 0
    for seg, start in enumerate(layout):
        if seg > 0 and start == 0:
            base = through[seg - 1]
        want.append(base)
    cfg = site.config()
    led = site.ledger()
    try:
        units = []
        for seg, start in enumerate(layout):
            path = site.cfg.parent / f"{run_id}-{seg}.tar.zst.age"
            led.record_sealed(bundle_id=f"{run_id}b{seg}", run_key=None, run_id=run_id, segment=seg, name=path.name,
                              path=str(path), content_id=f"{run_id}c{seg}", byte_start=start, byte_end=(start or 0) + 10,
                              project="p", entity="e", audit={"kind": "sealed", "bundle_id": f"{run_id}b{seg}"})
            units.append(Unit(run_id, seg, f"{run_id}c{seg}", f"{run_id}b{seg}", "outbox", path, 0, "p", "e"))
        for u, rows in zip(units, through):
            set_state(led, u, "local", "confirmed", server_rows=rows)
        settler = Settler(led, cfg, targets(cfg)["local"], "k" * 40, sync_settings(cfg), lambda *a, **k: None)
        assert [settler.base_rows(u) for u in units] == want, (layout, through)
    finally:
        led.close()
