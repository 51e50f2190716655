"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader sees either the old file or the complete new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path next to ``target``; on success it is fsynced and renamed onto ``target``."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: Path, obj: Any) -> None:
    write_bytes(target, (json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=False) + "\n").encode())


def write_with(target: Path, writer: Callable[[Path], None]) -> None:
    """``writer(tmp_path)`` fills the temp file (e.g. pyarrow.parquet.write_table)."""
    with atomic_path(target) as tmp:
        writer(tmp)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _lock_holder(fd: int) -> str:
    """The holder writes its name just after taking the lock: give it a moment before saying 'another'."""
    import time

    for _ in range(20):
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if holder:
            return holder
        time.sleep(0.05)
    return "another process"


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Non-blocking exclusive flock; raises LockedError naming the holder instead of waiting."""
    import fcntl

    from hpcgen.errors import LockedError

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            raise LockedError(f"{what}: {path.parent} is locked by {holder}; try again when it finishes") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)
