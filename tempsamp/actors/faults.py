"""Fault-injection hooks for the chaos tests (tests/test_reliability.py).

Every pool actor mixes this in. `arm_fault("exit" | "hang:<s>" | "raise", method)` makes the *next*
call of `method` on that actor die (process exit, like a crashed GPU worker), sleep (a stuck engine)
or raise. Nothing is armed in normal runs; the hook is a dict lookup per call.
"""

from __future__ import annotations

import os
import time


class InjectedFault(RuntimeError):
    pass


class FaultHooks:
    _armed: dict | None = None

    def arm_fault(self, kind: str, method: str) -> bool:
        if self._armed is None:
            self._armed = {}
        self._armed[method] = kind
        return True

    def _maybe_fault(self, method: str) -> None:
        if not self._armed or method not in self._armed:
            return
        kind = self._armed.pop(method)
        if kind == "exit":
            os._exit(17)
        if kind.startswith("hang:"):
            time.sleep(float(kind.split(":", 1)[1]))
            return
        if kind == "raise":
            raise InjectedFault(f"injected fault in {method}")
        raise ValueError(f"unknown fault kind {kind!r}")
