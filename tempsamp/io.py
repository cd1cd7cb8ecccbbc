"""Atomic file writes: write to a temp file in the destination folder, then rename over it.
A crash leaves either the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to `dst`; on success it replaces `dst`, on error it is removed. The file
    gets the mode any new file of the user gets (0666 less the umask), whatever wrote it."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(dst)
    mode = os.stat(tmp).st_mode & 0o7777
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o7777 != mode:  # a writer replaced the file with its own (safetensors
            os.chmod(tmp, mode)  # 0.8 writes 0600): give it the mode the user's umask gave ours
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder `<dst>.tmp`; on success it replaces `dst` (an old `dst` is removed first),
    on error it is removed. Every file written into it gets the mode any new file of the user gets (0666
    less the umask), whatever wrote it: `save_pretrained` writes model.safetensors 0600 (the safetensors
    writer), which would keep an exported model from other users and pods on a shared volume."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        probe = _create_temp(tmp / ".mode")
        mode = os.stat(probe).st_mode & 0o7777
        os.unlink(probe)
        for f in tmp.rglob("*"):
            if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o7777 != mode:
                os.chmod(f, mode)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _create_temp(dst: Path) -> str:
    """An empty, new temp file next to `dst`, created with mode 0666 so that the kernel applies the
    user's umask (and the folder's default ACL) as for any file the user creates. Not
    tempfile.mkstemp: it creates 0600 whatever the umask, and the rename would keep that mode, so
    other users or pods on a shared volume could not read the result; a chmod after the fact would
    need the umask (process-wide, not thread-safe to read) and would override a default ACL."""
    for _ in range(100):
        tmp = dst.parent / f".{dst.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"{dst.parent}: no free temp file name for {dst.name} after 100 tries")


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
