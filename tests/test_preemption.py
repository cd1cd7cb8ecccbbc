"""The preemption guard on its own (no Ray): which phase a SIGTERM / SIGINT stops at once, which it lets
finish within the grace, and what a second signal does. The trainer's use of it runs in
tests/test_reliability.py (a SIGTERMed job resumes; a stop during a learner step)."""

import os
import signal
import time

import pytest

from tempsamp.errors import Preempted
from tempsamp.preemption import PreemptionGuard


def _signal(sig=signal.SIGTERM):
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs in this (main) thread at the next bytecode


def test_a_signal_while_abandonable_stops_at_once():
    with PreemptionGuard(grace_s=5) as g:
        with pytest.raises(Preempted, match="SIGTERM: step abandoned"):
            with g.abandonable():
                _signal()
                pytest.fail("not stopped")
        assert (g.requested, g.overdue) == ("SIGTERM", False) and "abandoned" in g.stopped


def test_a_signal_during_a_learner_step_waits_for_its_end_then_settles():
    with PreemptionGuard(grace_s=0.3) as g:
        _signal(signal.SIGINT)
        assert g.requested == "SIGINT" and g.stopped is None  # the step goes on
        g.settle()  # the step ended in time: the checkpoint is not cut short
        time.sleep(0.5)
        assert g.stopped is None
        with pytest.raises(Preempted):  # the next step must not start collecting
            with g.abandonable():
                pass


def test_a_step_past_the_grace_is_stopped_and_marked_overdue():
    with PreemptionGuard(grace_s=0.2) as g:
        _signal()
        with pytest.raises(KeyboardInterrupt, match=r"did not end within trainer.preempt_grace_s=0.2s"):
            time.sleep(5)
        assert g.overdue and g.requested == "SIGTERM"


def test_second_signal_and_zero_grace_stop_at_once():
    with PreemptionGuard(grace_s=60) as g:
        _signal()
        with pytest.raises(Preempted, match="second signal"):
            _signal(signal.SIGINT)
        assert g.overdue  # a learner step was in progress
    with PreemptionGuard(grace_s=0) as g:
        with pytest.raises(Preempted, match="preempt_grace_s=0"):
            _signal()
        assert g.overdue


def test_handlers_are_restored_and_an_unentered_guard_is_inert():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    with PreemptionGuard(grace_s=1):
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before
    g = PreemptionGuard(grace_s=1)  # a Trainer used as a library: never entered
    with g.abandonable():
        pass
    assert g.requested is None and g.stopped is None
