"""Engine health: the error that means "this engine can no longer serve", and the root cause of it.

vLLM runs its model in a separate EngineCore process. When that process dies (a kernel assertion,
CUDA OOM, an NCCL error, SIGKILL), the actor that owns the `LLM` is still alive, every later call
raises `EngineDeadError` with a generic message, and a call that was waiting on the engine at the
moment of death (a `collective_rpc`, a `generate`) can wait forever. `EngineDead` is what our engines
raise instead, with the engine's own first error line, so the driver replaces the actor (a dead
engine) instead of retrying it, and the user sees why. Pure: no Ray, no vLLM.
"""

from __future__ import annotations

import os
import re
import signal

# The engine process logs one of these before it goes (vLLM 0.32: v1/engine/core.py, core_client.py,
# executor/multiproc_executor.py). The traceback that follows the first one holds the root cause.
_FATAL_MARKERS = ("EngineCore encountered a fatal error", "EngineCore failed to start")
_DEATH_MARKERS = ("died unexpectedly", "exited unexpectedly")
# "AssertionError: CPU GDN attention requires BF16", "torch.OutOfMemoryError: CUDA out of memory. ..."
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$")
# "(EngineCore pid=7907) ERROR 11-29 04:08:26 [core.py:1512] ": process tag, level, date, time, source
_LOG_PREFIX = re.compile(r"^(?:\(\w+[^)]*\)\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\S+\s+\S+\s+\[[^\]]*\]\s?)?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EngineDead(RuntimeError):
    """The rollout engine cannot serve any more (its engine process died). The driver replaces the
    actor in its bundle, re-syncs weights and retries the work; the message carries the root cause."""


class EngineRequestError(ValueError):
    """The engine refused a request (bad input: too long, malformed). Retrying cannot help."""


def _strip(line: str) -> str:
    return _LOG_PREFIX.sub("", _ANSI.sub("", line).strip(), count=1).strip()


def root_cause(log_text: str) -> str | None:
    """The engine's first error line in `log_text` (its stdout/stderr since it started), or None.

    After the first fatal-error marker, the traceback's last exception line is the cause; if the
    process was killed without a traceback, the line saying that it died is."""
    lines = [_strip(x) for x in log_text.splitlines()]
    start = next((i for i, x in enumerate(lines) if any(m in x for m in _FATAL_MARKERS)), None)
    if start is not None:
        # Python prints a chain's original exception first: its line is the root cause
        return next((x for x in lines[start + 1:] if _EXC_LINE.match(x)), lines[start])
    return next((x for x in lines if any(m in x for m in _DEATH_MARKERS)), None)


def exit_description(exitcode: int | None) -> str:
    """How a process ended, in words: 'killed by SIGKILL', 'exit code 1'."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class OutputTail:
    """Reads what this process (and the engine processes it spawned, which inherit its stdout and
    stderr) wrote to its log files since `mark()`. Ray points a worker's stdout/stderr at files; on a
    terminal or pipe there is nothing to read back and `read()` returns ''."""

    def __init__(self, fds: tuple[int, ...] = (1, 2), limit: int = 1 << 20):
        self.paths: list[str] = []
        for fd in fds:
            try:
                p = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if os.path.isfile(p) and p not in self.paths:
                self.paths.append(p)
        self.limit = limit
        self.offsets: dict[str, int] = {}
        self.mark()

    def mark(self) -> None:
        for p in self.paths:
            try:
                self.offsets[p] = os.path.getsize(p)
            except OSError:
                self.offsets[p] = 0

    def read(self) -> str:
        out = []
        for p in self.paths:
            try:
                with open(p, "rb") as f:
                    f.seek(self.offsets.get(p, 0))
                    out.append(f.read(self.limit).decode("utf-8", "replace"))
            except OSError:
                continue
        return "\n".join(out)
