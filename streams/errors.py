"""Processing errors: a record that fails inside a dataflow step is dead-lettered, not the job.

In the spirit of Kafka Streams' processing exception handler (KIP-1033): an exception while one record is handled
sends that record to the dead-letter topic with reason ``processing_error``, the step and a one-line cause, and
the job goes on. An error budget (``DRIFTRAG_RUN__MAX_PROCESSING_ERRORS``) stops the job with one clear line and a
non-zero exit instead of dead-lettering a whole stream, or crash-looping, when a step is broken for every record.

Keyed state is never left half-updated by a failed record. How, per kind of step:

- stateless batch functions (:func:`guard_batch`): on an exception the batch is run again record by record, and
  only the records that fail are dead-lettered;
- per-key steps whose state is a value (:func:`guard_keyed`): the step builds the new state without touching the
  old one, so a failure keeps the old state;
- stateful batch logic with snapshots (:class:`GuardedLogic`) and the drift step (:func:`guard_redo`): a redo log,
  the last snapshot plus the values applied since; on a failure the state is rebuilt from them and the batch
  is applied record by record, each failing record skipped (dead-lettered) and the state rebuilt again.

Dead letters are written by the job's writer (Kafka producer or ``dead_letter.jsonl``) as they happen; a record
that fails after a restart fails again and is written again under the same source position, so consumers can
drop repeats by ``(step, source)``.

>>> errors = ProcessingErrors(budget=1)
>>> double = guard_batch("double", lambda batch: [100 // x for x in batch], errors)
>>> double([1, 0, 4]), errors.count, errors.last.detail
([100, 25], 1, 'double: ZeroDivisionError: integer division or modulo by zero')
>>> try:
...     double([0])
... except ErrorBudgetExceeded as e:
...     print(str(e)[:58])
2 records failed in dataflow steps (budget 1); last in dou
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

import orjson
from bytewax.operators import StatefulBatchLogic
from prometheus_client import Counter

from streams.contract import DeadLetter, RawMessage

__all__ = ["ERRORS", "ErrorBudgetExceeded", "GuardedLogic", "ProcessingErrors", "guard_batch", "guard_keyed",
           "guard_redo"]

log = logging.getLogger(__name__)

PROCESSING_ERRORS = Counter("driftrag_processing_errors_total",
                            "Records dead-lettered because a dataflow step failed on them", ["step"])

# Values applied since the last snapshot before a guarded step takes its own (bounds the redo log's memory and
# the work of a rebuild; the drift step's snapshot is a pickle of the whole monitor, ~15 ms at 16 clusters).
REDO_MAX = 50_000


class ErrorBudgetExceeded(RuntimeError):
    """More records failed in dataflow steps than the budget allows: the job stops (exit status 4)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _as_json(record: Any) -> bytes:
    """The failed record as JSON (dataclasses as objects, anything else as text)."""
    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
        if isinstance(o, tuple | set | frozenset):
            return list(o)
        return repr(o)[:1000]
    try:
        return orjson.dumps(record, default=default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except Exception:  # noqa: BLE001 - the error path must not fail
        return orjson.dumps(repr(record)[:10_000])


class ProcessingErrors:
    """Counts failed records against the budget and hands each one's dead letter to ``write`` (one per process;
    the job configures it). ``budget``: failed records allowed per process run; more stops the job."""

    def __init__(self, budget: int = 100, write: Callable[[DeadLetter], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.configure(budget, write)

    def configure(self, budget: int, write: Callable[[DeadLetter], None] | None = None) -> None:
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        with self._lock:
            self.budget, self.write = budget, write
            self.count = 0
            self.by_step: dict[str, int] = {}
            self.last: DeadLetter | None = None

    def report(self, step: str, record: Any, exc: BaseException) -> None:
        """Dead-letter ``record`` for ``exc`` in ``step``; raise :class:`ErrorBudgetExceeded` past the budget."""
        detail = f"{step}: {_one_line(exc)}"
        if isinstance(record, RawMessage):  # failed before validation: the original bytes and their position
            dl = DeadLetter("processing_error", detail, None, record.topic, record.partition, record.offset,
                            record.key, record.value, step=step)
        else:  # a record past validation: as JSON, from its topic (offset unknown: -1)
            src = getattr(record, "engagement", record)  # a clustered engagement: its engagement's source
            topic = "items" if type(src).__name__ in ("ContentEvent", "EmbeddedItem") else "engagements"
            key = getattr(src, "user_id", None) or getattr(src, "item_id", None)
            dl = DeadLetter("processing_error", detail, None, topic, int(getattr(src, "partition", 0) or 0), -1,
                            key.encode() if isinstance(key, str) else None, _as_json(record), step=step)
        PROCESSING_ERRORS.labels(step).inc()
        with self._lock:
            self.count += 1
            self.by_step[step] = self.by_step.get(step, 0) + 1
            self.last = dl
            over = self.count > self.budget
            write = self.write
        # The traceback of the first few only: a step that fails for many records would flood the log.
        log.warning("processing error in %s (%d so far): %s", step, self.count, dl.detail,
                    exc_info=exc if self.by_step[step] <= 3 else None)
        if write is not None:
            write(dl)
        if over:
            raise ErrorBudgetExceeded(f"{self.count} records failed in dataflow steps (budget {self.budget}); "
                                      f"last in {dl.detail}")


ERRORS = ProcessingErrors()  # the process's policy; the job configures budget and writer


def guard_batch(step: str, fn: Callable[[list], list], errors: ProcessingErrors = ERRORS,
                split: Callable[[list], list[tuple[Any, list]]] | None = None) -> Callable[[list], list]:
    """A stateless batch function that dead-letters the records it fails on instead of raising. On a failure the
    batch is run again one record at a time: ``split(batch)`` gives (record, batch of that record alone) pairs
    where a batch is not a plain list of records."""
    def guarded(batch: list) -> list:
        try:
            return fn(batch)
        except ErrorBudgetExceeded:
            raise
        except Exception:  # noqa: BLE001 - isolate the failing records below
            out: list = []
            for record, alone in (split(batch) if split is not None else [(x, [x]) for x in batch]):
                try:
                    out += fn(alone)
                except ErrorBudgetExceeded:
                    raise
                except Exception as e:  # noqa: BLE001
                    errors.report(step, record, e)
            return out
    return guarded


def guard_keyed(step: str, fn: Callable[[Any, Any], tuple[Any, list]], errors: ProcessingErrors = ERRORS
                ) -> Callable[[Any, Any], tuple[Any, list]]:
    """A per-key step ``fn(state, value) -> (state, out)`` that never changes ``state`` in place: a failing value
    is dead-lettered and the key keeps its state."""
    def guarded(state: Any, value: Any) -> tuple[Any, list]:
        try:
            return fn(state, value)
        except ErrorBudgetExceeded:
            raise
        except Exception as e:  # noqa: BLE001
            errors.report(step, value, e)
            return state, []
    return guarded


class GuardedLogic(StatefulBatchLogic):
    """Wraps a Bytewax ``StatefulBatchLogic`` built by ``build(resume_state)``: a batch that raises is applied
    again record by record from the last snapshot and the values applied since (the redo log), each failing
    record dead-lettered and skipped. Outputs already emitted are not emitted again."""

    def __init__(self, step: str, build: Callable[[Any], StatefulBatchLogic], resume: Any,
                 errors: ProcessingErrors = ERRORS) -> None:
        self._step, self._build, self._errors = step, build, errors
        self._inner = build(resume)
        self._base = resume
        self._redo: list = []

    def on_batch(self, values: list) -> tuple[list, bool]:
        try:
            out, retain = self._inner.on_batch(values)
        except ErrorBudgetExceeded:
            raise
        except Exception:  # noqa: BLE001
            return self._isolate(values)
        self._applied(values)
        return out, retain

    def _applied(self, values: list) -> None:
        self._redo += values
        if len(self._redo) > REDO_MAX:
            self._base, self._redo = self._inner.snapshot(), []

    def _rebuild(self) -> StatefulBatchLogic:
        inner = self._build(self._base)
        if self._redo:
            inner.on_batch(list(self._redo))  # applied before without error; its outputs were sent then
        return inner

    def _isolate(self, values: list) -> tuple[list, bool]:
        self._inner = self._rebuild()
        out: list = []
        retain = StatefulBatchLogic.RETAIN
        for v in values:
            try:
                o, retain = self._inner.on_batch([v])
            except ErrorBudgetExceeded:
                raise
            except Exception as e:  # noqa: BLE001
                self._errors.report(self._step, v, e)
                self._inner = self._rebuild()
                continue
            out += o
            self._applied([v])
        return out, retain

    def on_notify(self) -> tuple[list, bool]:
        return self._inner.on_notify()

    def on_eof(self) -> tuple[list, bool]:
        return self._inner.on_eof()

    def notify_at(self) -> Any:
        return self._inner.notify_at()

    def snapshot(self) -> Any:
        snap = self._inner.snapshot()
        self._base, self._redo = snap, []
        return snap


class _Redo:
    """A stateful_flat_map state with its redo log: ``base`` (a pickle of the state, or None until the next value)
    and the values applied since. Bytewax's recovery snapshots only ``state`` (see ``__reduce__``).

    Bytewax snapshots a stateful_flat_map state with ``copy.deepcopy`` at the end of every epoch: a walk in Python
    over every object of the drift steps' state (3.4x the time of pickling it at K=2,048 clusters). Its copy here
    is the state pickled instead (:class:`_Frozen`): independent of the live state as a deep copy is, already
    what the recovery store keeps, and a ``_Redo`` again when the store gives it back.

    >>> import copy
    >>> w = _Redo({"counts": [1, 2]})
    >>> snap = copy.deepcopy(w)
    >>> w.state["counts"].append(3)  # the live state moves on; the snapshot does not
    >>> back = pickle.loads(pickle.dumps(snap))  # what a recovery store gives back
    >>> type(back).__name__, back.state
    ('_Redo', {'counts': [1, 2]})
    """

    __slots__ = ("base", "redo", "size", "state")

    def __init__(self, state: Any) -> None:
        self.state, self.base, self.redo, self.size = state, None, [], 0

    def __reduce__(self) -> tuple:
        return (_Redo, (self.state,))

    def __deepcopy__(self, memo: dict) -> _Frozen:
        return _Frozen(pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL))


class _Frozen:
    """A snapshot of a :class:`_Redo`: its state pickled. Unpickled, it is a ``_Redo`` of that state."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple:
        return (_thaw, (self.data,))


def _thaw(data: bytes) -> _Redo:
    return _Redo(pickle.loads(data))


def guard_redo(step: str, fn: Callable[[Any, list], tuple[Any, list]], size: Callable[[list], int] = len,
               errors: ProcessingErrors = ERRORS) -> Callable[[Any, list], tuple[Any, list]]:
    """A stateful_flat_map step ``fn(state, values) -> (state, out)`` over a list of values that may change its
    state in place (the drift monitor): a failing list is applied again value by value from a pickled copy of the
    state and the lists applied since, each failing value dead-lettered and skipped."""
    def restore(w: _Redo) -> Any:
        state = pickle.loads(w.base)
        for values in w.redo:
            state, _ = fn(state, values)  # applied before without error; its outputs were sent then
        return state

    def guarded(w: Any, values: list) -> tuple[_Redo, list]:
        if not isinstance(w, _Redo):  # new, or recovered
            w = _Redo(w)
        if w.base is None:
            w.base, w.redo, w.size = pickle.dumps(w.state, protocol=pickle.HIGHEST_PROTOCOL), [], 0
        try:
            w.state, out = fn(w.state, values)
        except ErrorBudgetExceeded:
            raise
        except Exception:  # noqa: BLE001
            w.state, out = restore(w), []
            for v in values:
                try:
                    w.state, o = fn(w.state, [v])
                except ErrorBudgetExceeded:
                    raise
                except Exception as e:  # noqa: BLE001
                    errors.report(step, v, e)
                    w.state = restore(w)
                    continue
                out += o
                w.redo.append([v])
            return w, out
        w.redo.append(values)
        w.size += size(values)
        if w.size > REDO_MAX:
            w.base = None  # the next list starts a new segment from a fresh copy
        return w, out
    return guarded
