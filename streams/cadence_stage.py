"""The cadence controller as dataflow steps: C_p where the successor estimates are, the decisions on one key.

    monitor_drift (one key: the event-time hold, canonical order, CadenceClock)
      -> ScoredTriple, CadenceFlush   -> count_successors_by_source (key = c2): learns each triple; at a flush,
           |                             exports the records of the pairs with triples since the last check
           |                             -> SourceRecords
      -> DriftBundle (the drift shards' ops of one call, with the checks it passed; a fine-tune's mark is a
           |          placeholder ("c", ts) until decided)
      -> decide_cadence (one key): CadenceBook (R_p, B_p, stale traffic, drift debt) and a mirror of the records
              -> CadenceEvent (rag_refresh | fine_tune)           -> cadence topic / cadence.jsonl, metrics
              -> each bundle's drift shard ops, placeholders decided ("m": new reference) -> drift_shards

The successor estimates are the controller's C_p: the same table per source cluster that the pair states come
from, learned once. A check needs readings of pairs that had no triple for a while (stale rows, every pair at a
fine-tune), so the decision step keeps the latest exported record of every pair and reads C_p there
(:meth:`AdaptiveSuccessorTable.export`): bit for bit what the successor step would answer, because a pair's
record and its source's score counter change only when it learns a triple, and then it is exported again. A
fine-tune re-bases the drift monitor, so drift shards get a bundle's ops only once its checks are decided: no
feedback edge is needed (a Bytewax dataflow has none). Decisions equal one CadenceController's fed the same
triples in the same order (tests/test_drift_shards.py).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from operators.adaptive_successors import AdaptiveSuccessorTable
from operators.cadence import CadenceBook, CadenceCheck, CadenceConfig, CadenceEvent, read_estimate
from streams.errors import ERRORS, ErrorBudgetExceeded, ProcessingErrors
from streams.transitions_stage import CadenceFlush, SourceRecords

__all__ = [
    "CADENCE_EVENTS", "CadenceState", "DriftBundle", "adopt_controller", "cadence_step", "count_cadence", "flushes",
]

CADENCE_EVENTS = Counter("driftrag_cadence_events_total", "Cadence signals emitted", ["kind"])
CADENCE_PAIRS = Counter("driftrag_cadence_pairs_refreshed_total", "Pair rows a RAG refresh signal asked to re-infer")
CADENCE_DEBT = Gauge("driftrag_cadence_drift_debt", "Drift debt accrued since the last fine-tune (cost units)")


def count_cadence(events: list[CadenceEvent]) -> None:
    """The cadence metrics of emitted events."""
    for ev in events:
        CADENCE_EVENTS.labels(ev.kind).inc()
        if ev.kind == "rag_refresh":
            CADENCE_PAIRS.inc(len(ev.pairs))


def flushes(check: CadenceCheck) -> list[CadenceFlush]:
    """One flush per source cluster with triples since the last check, in first-seen order of its pairs.

    >>> [(f.c2, f.pairs) for f in flushes(CadenceCheck(7_200_000, 0, ((1, 2, 5), (3, 4, 1), (5, 2, 2))))]
    [(2, ((1, 2), (5, 2))), (4, ((3, 4),))]
    """
    by_source: dict[int, list[tuple[int, int]]] = {}
    for c1, c2, _ in check.pending:
        by_source.setdefault(c2, []).append((c1, c2))
    return [CadenceFlush(check.ts_ms, c2, tuple(pairs)) for c2, pairs in by_source.items()]


@dataclass(slots=True)
class DriftBundle:
    """One ordering call's ops for the drift shards (key, ops) with the cadence checks they pass (placeholders
    ``("c", ts)`` and ``("r", ("c", ts))`` where a fine-tune's mark would go); ``adopt``: (book, table) of a
    controller recovered from a store of the version that kept it in the ordering step, pickled (the step's
    guard may apply a value twice: each time gets its own copy)."""

    sent: list[tuple[str, list[tuple]]]
    checks: list[CadenceCheck]
    adopt: bytes | None = None


class CadenceState:
    """The decision step's state: the :class:`CadenceBook`, the mirror of every pair's latest exported record
    (an :class:`AdaptiveSuccessorTable` that only ever installs records), the bundles waiting for their checks'
    records (oldest first) and the records that came for checks not decided yet (check -> source -> records)."""

    __slots__ = ("book", "table", "waiting", "records")

    def __init__(self, book: CadenceBook, table: AdaptiveSuccessorTable) -> None:
        self.book, self.table = book, table
        self.waiting: list[DriftBundle] = []
        self.records: dict[int, dict[int, Any]] = {}

    def __getstate__(self) -> tuple:
        return self.book, self.table, self.waiting, self.records

    def __setstate__(self, state: tuple) -> None:
        self.book, self.table, self.waiting, self.records = state


def _ready(state: CadenceState, check: CadenceCheck) -> bool:
    got = state.records.get(check.ts_ms, {})
    return all(c2 in got for _, c2, _ in check.pending)


def _decided(sent: list[tuple[str, list[tuple]]], finetunes: set[int]) -> list[tuple[str, list[tuple]]]:
    """The shards' ops with each check's placeholder replaced by a fine-tune's mark, or dropped; a shard left
    with nothing but its place header ("n") gets no call."""
    out = []
    for key, ops in sent:
        kept: list[tuple] = []
        for o in ops:
            kind = o[0]
            if kind == "c":
                if o[1] in finetunes:
                    kept.append(("m", o[1], "fine-tune"))
            elif kind == "r" and o[1][0] == "c":
                if o[1][1] in finetunes:
                    kept.append(("r", ("m", o[1][1], "fine-tune")))
            else:
                kept.append(o)
        if any(o[0] != "n" for o in kept):
            out.append((key, kept))
    return out


def cadence_step(config: CadenceConfig, errors: ProcessingErrors = ERRORS):  # noqa: ANN201
    """``decide_cadence``: bundles and records in, cadence events and the drift shards' (key, ops) out. A bundle
    goes out once every check it passed is decided, and bundles go out in the order they came. A check whose
    decision raises is dead-lettered once (``{"cadence_check": ts}``) and passed without a decision (the step's
    guard restores the state and applies the values again): the same state would fail it every time, and
    drift and the index must go on."""
    failed: set[int] = set()

    def decide(state: CadenceState, check: CadenceCheck) -> list[CadenceEvent]:
        got = state.records.pop(check.ts_ms, {})
        for c2 in dict.fromkeys(c2 for _, c2, _ in check.pending):  # sources in first-seen order
            state.table.install(got[c2])
        if check.ts_ms in failed:
            return []
        table = state.table
        try:
            return state.book.check(check.ts_ms, check.start_ms, {(c1, c2): n for c1, c2, n in check.pending},
                                    lambda key, ts: read_estimate(table, key, ts), table.pairs)
        except ErrorBudgetExceeded:
            raise
        except Exception as e:
            failed.add(check.ts_ms)
            errors.report("decide_cadence", {"cadence_check": check.ts_ms}, e)
            raise

    def step(state: CadenceState | None, values: list[DriftBundle | SourceRecords]) -> tuple[CadenceState, list[Any]]:
        if state is None:
            state = CadenceState(CadenceBook(config), AdaptiveSuccessorTable(config.half_lives()))
        for v in values:
            if type(v) is SourceRecords:
                state.records.setdefault(v.ts_ms, {})[v.c2] = v.records
            else:
                if v.adopt is not None:  # the first bundle after a restart from an older store: nothing waits
                    state.book, state.table = pickle.loads(v.adopt)
                state.waiting.append(v)
        out: list[Any] = []
        waiting = state.waiting
        while waiting:
            bundle = waiting[0]
            if not all(_ready(state, c) for c in bundle.checks):
                break  # a source has not exported its records of a check yet: this bundle and the later ones wait
            events: list[CadenceEvent] = []
            for check in bundle.checks:
                events += decide(state, check)
            waiting.pop(0)
            count_cadence(events)
            out += events
            out += _decided(bundle.sent, {e.ts_ms for e in events if e.kind == "fine_tune"})
        CADENCE_DEBT.set(state.book.debt)
        return state, out

    return step


def adopt_controller(controller: Any) -> bytes:
    """A CadenceController recovered from the ordering step of an earlier version: its decisions and its C_p
    (every pair's record) for the decision step (:attr:`DriftBundle.adopt`)."""
    return pickle.dumps((controller.book, controller.successors), protocol=pickle.HIGHEST_PROTOCOL)
