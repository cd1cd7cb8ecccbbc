"""Atomic file writes: write to a temp file in the destination folder, then rename over it.
A crash leaves either the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to `dst`; on success it replaces `dst`, on error it is removed."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_file(path: str | os.PathLike, expect: type, error: type[Exception], what: str = "file"):
    """Parse a UTF-8 JSON file whose top level must be `expect` (dict or list); every problem raises
    `error` with the path in the message."""
    import json

    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {what} not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{p}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(data, expect):
        raise error(f"{p}: expected a JSON {'object' if expect is dict else 'list'} at the top level, "
                    f"got {type(data).__name__}")
    return data
