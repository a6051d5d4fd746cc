"""The ledger: what the agent knows about every run, bundle, import, delivery, target and
approval, in SQLite. It is the only place that reads or writes those tables: the rest of the
agent calls its named transitions (``mark_run_sealed``, ``mark_exported``, ``record_import``,
``set_delivery``, ``quarantine_bundle``, ...), each checked against its entity's state machine
(``states``; an illegal step raises ``IllegalTransition`` and changes nothing) and written to
the audit log once its transaction has committed.

    schema.py      the tables and their migrations
    states.py      one state machine per entity
    core.py        the connection, transactions, the audit lines of transitions
    runs.py, bundles.py, imports.py, deliveries.py (and targets), approvals.py
    check.py, rebuild.py   ``tfwb-agent ledger check`` / ``rebuild``
"""
from __future__ import annotations

from .approvals import ApprovalsTable
from .bundles import BundlesTable
from .check import check
from .core import LedgerCore
from .deliveries import DeliveriesTable
from .errors import IllegalTransition, LedgerError
from .imports import ImportsTable
from .runs import RunsTable
from .schema import MIGRATIONS, SCHEMA_VERSION, TABLES
from .states import BUNDLE_STATES, RUN_STATES


class Ledger(RunsTable, BundlesTable, ImportsTable, DeliveriesTable, ApprovalsTable, LedgerCore):
    """``Ledger(path)``: the ledger at ``path`` (created and migrated as needed); its audit log
    is ``audit.log`` beside it, as in the state directory."""


__all__ = ["Ledger", "LedgerError", "IllegalTransition", "check",
           "MIGRATIONS", "SCHEMA_VERSION", "TABLES", "RUN_STATES", "BUNDLE_STATES"]
