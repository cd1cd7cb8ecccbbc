"""Graceful preemption: SIGTERM / SIGINT (a pod eviction, `ray job stop`, Ctrl-C) become a stop at a
safe point, with a checkpoint, instead of a lost run.

The driver marks the parts of a step that may be abandoned (`abandonable()`: while it starts actors or
collects a step's rollouts, which the learner has not seen). A signal there stops the driver at once
(`Preempted`): the learner is idle at the last finished step and can be checkpointed. Anywhere else
(the learner is training, weights are being broadcast) the signal only sets `requested`; the step runs
to its end, where the driver checkpoints and stops. If that end is not reached within `grace_s`
(`trainer.preempt_grace_s`), SIGALRM stops the driver wherever it is, with `overdue` set: the learner
is mid-step, so no new checkpoint. A second signal stops it at once.

How the stop travels: the handler raises `Preempted`, a KeyboardInterrupt, because Ray's blocking
calls (ray.get, ray.wait) let only that out of a signal handler, as a plain KeyboardInterrupt. So the
driver catches KeyboardInterrupt and reads why from `stopped` (None: a KeyboardInterrupt of its own).

Signals reach only the main thread; a guard entered elsewhere, or never entered (a Trainer used as a
library), stays inert.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from .errors import Preempted

log = logging.getLogger(__name__)


class PreemptionGuard:
    def __init__(self, grace_s: float, signals: tuple = (signal.SIGTERM, signal.SIGINT)):
        self.grace_s = grace_s
        self.signals = signals
        self.requested: str | None = None  # the first signal's name once one arrived
        self.stopped: str | None = None  # why the driver was stopped at once (None: not stopped)
        self.overdue = False  # stopped while a learner step was in progress (its state is not consistent)
        self._abandonable = 0
        self._old: dict = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for s in (*self.signals, signal.SIGALRM):
                self._old[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc) -> bool:
        self.settle()
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()
        return False

    @contextlib.contextmanager
    def abandonable(self):
        """While inside, a stop request stops the driver at once (also one that arrived just before)."""
        self._abandonable += 1
        try:
            if self.requested:
                self._stop(f"{self.requested}: step abandoned before its rollouts reached the learner")
            yield
        finally:
            self._abandonable -= 1

    def settle(self) -> None:
        """The step in progress ended: no deadline from here on (the checkpoint must not be cut short)."""
        if self._old:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _stop(self, why: str, overdue: bool = False):
        self.stopped, self.overdue = why, overdue
        raise Preempted(why)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGALRM:
            self._stop(f"{self.requested}: the step in progress did not end within "
                       f"trainer.preempt_grace_s={self.grace_s:g}s", overdue=True)
        if self.requested:
            self._stop(f"second signal ({name}): stopping at once", overdue=not self._abandonable)
        self.requested = name
        if self._abandonable:
            log.warning("%s: abandoning the step in progress (its rollouts are redone on resume)", name)
            self._stop(f"{name}: step abandoned before its rollouts reached the learner")
        if self.grace_s <= 0:
            self._stop(f"{name}: trainer.preempt_grace_s=0, the step in progress is not waited for", overdue=True)
        log.warning("%s: finishing the step in progress (at most %gs), then checkpointing", name, self.grace_s)
        signal.setitimer(signal.ITIMER_REAL, self.grace_s)
