"""A SIGTERM (or Ctrl-C) that lands while the source's Python code runs reaches Bytewax as that code's
KeyboardInterrupt, which Bytewax wraps in a BytewaxRuntimeError: the job must read it as a clean stop, as it does
the "signal received" form (a CI run of the retail Kafka test exited 1 on it)."""

from __future__ import annotations

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, run_main

from streams.job import interrupted


class _Interrupted(StatefulSourcePartition):
    def next_batch(self) -> list:
        raise KeyboardInterrupt  # what SIGTERM -> default_int_handler raises inside next_batch

    def snapshot(self) -> None:
        return None


class _Source(FixedPartitionedSource):
    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Interrupted:
        return _Interrupted()


def test_a_keyboard_interrupt_inside_a_source_is_an_interruption():
    flow = Dataflow("interrupt")
    op.output("out", op.input("in", flow, _Source()), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as caught:
        run_main(flow)
    assert "signal received" not in str(caught.value)  # the wrapped form, not Bytewax's own report
    assert interrupted(caught.value)


def test_other_errors_are_not_interruptions():
    try:
        raise BytewaxRuntimeError("error calling `next_batch`") from ValueError("bad")
    except BytewaxRuntimeError as e:
        assert not interrupted(e)
