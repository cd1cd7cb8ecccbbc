"""The one progress bar of every long command (training steps, cache, eval, reframe): tqdm, shown only
to a person watching a terminal. Quiet when stderr is not a TTY (logs, pipes, CI) or the process runs
as a Ray job (`ray job submit` sets RAY_JOB_SUBMISSION_ID / RAY_JOB_ID; its log view would keep every
redraw as a line); TEMPSAMP_PROGRESS=1 / 0 forces it on / off."""

from __future__ import annotations

import os
import sys
from typing import Iterable

RAY_JOB_VARS = ("RAY_JOB_SUBMISSION_ID", "RAY_JOB_ID")


def progress_enabled(env: dict | None = None, stream=None) -> bool:
    """Whether a bar would be drawn here: TEMPSAMP_PROGRESS wins, then a Ray job or a non-TTY stderr
    turn it off."""
    env = os.environ if env is None else env
    forced = env.get("TEMPSAMP_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if any(env.get(v) for v in RAY_JOB_VARS):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, initial: int = 0):
    """A tqdm bar (also usable without an iterable: `.update(n)`, `.write(line)`, `.close()`), disabled
    when the caller says so or `progress_enabled()` is false (`tqdm.write` then prints the line as is)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
                mininterval=1.0, disable=not (enabled and progress_enabled()))
