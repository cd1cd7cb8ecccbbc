"""Fault-injection hooks for the chaos tests (tests/test_reliability.py).

Every pool actor mixes this in. `arm_fault("exit" | "hang:<s>" | "raise" | "kill_engine", method, after=0)`
makes the next call of `method` on that actor, or the one after `after` more calls, die (process exit, like a crashed GPU worker), sleep (a stuck
engine), raise, or — on a rollout actor — SIGKILL its engine's own processes (vLLM's EngineCore) and then
run the call, as when an engine dies of CUDA OOM or an NCCL error while its actor lives on. Nothing is armed in normal runs; the hook is a dict lookup per call.
"""

from __future__ import annotations

import os
import signal
import time


class InjectedFault(RuntimeError):
    pass


class FaultHooks:
    _armed: dict | None = None

    def arm_fault(self, kind: str, method: str, after: int = 0) -> bool:
        if self._armed is None:
            self._armed = {}
        self._armed[method] = kind
        self._skip = {**getattr(self, "_skip", {}), method: after}  # calls of `method` that still run normally
        return True

    def _engine_pids(self) -> list[int]:
        return []

    def _maybe_fault(self, method: str) -> None:
        if not self._armed or method not in self._armed:
            return
        if self._skip.get(method, 0) > 0:
            self._skip[method] -= 1
            return
        kind = self._armed.pop(method)
        if kind == "exit":
            os._exit(17)
        if kind.startswith("hang:"):
            time.sleep(float(kind.split(":", 1)[1]))
            return
        if kind == "kill_engine":
            pids = self._engine_pids()
            if not pids:
                raise ValueError("kill_engine: this actor drives no engine process")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return
        if kind == "raise":
            raise InjectedFault(f"injected fault in {method}")
        raise ValueError(f"unknown fault kind {kind!r}")
