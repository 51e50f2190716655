"""A lock that holds across the nodes of a shared filesystem (NFS, Lustre with or without ``flock``).

``flock`` is no good there: Lustre mounted without ``flock`` raises ENOSYS, and with ``localflock`` two login
nodes do not exclude each other. What every shared filesystem does atomically is ``mkdir`` (and ``rename``):

- **acquire**: ``mkdir PATH``; the winner writes ``PATH/owner.json`` (token, what, host, pid, the process's
  start time, when taken, heartbeat). ``EEXIST`` means someone holds it, unless the record is our own token
  (an NFS client may retransmit a ``mkdir`` that had succeeded).
- **refresh**: the holder rewrites its record with a new heartbeat (``Lock.__enter__`` runs a thread for it);
  it learns that way if its lock was taken over.
- **staleness**: a holder on this host whose process is gone (pid dead, or reused: the start time differs) is
  stale at once; a holder on another host once its heartbeat is older than ``stale_after`` seconds (the hosts'
  clocks are taken to agree within that); a lock directory without a record once it is that old.
- **steal_if_stale**: ``rename`` the stale directory aside (only one contender's rename succeeds), check that
  what was moved is the stale holder's record (else put it back), remove it.
- **release**: the holder renames its directory aside and removes it.

Meant for the run lock of ``merge``/``resume`` and for any other lease kept in the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpcgen.errors import LockedError
from hpcgen.rundir import atomic

log = logging.getLogger("hpcgen.lock")

OWNER = "owner.json"
STALE_AFTER = 120.0  # seconds without a heartbeat before another host's holder is presumed dead


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """An identity of process ``pid`` that a reused pid does not share: boot id + start time in clock ticks
    (field 22 of ``/proc/<pid>/stat``). None when the process does not exist or /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] == b"Z":  # a zombie has finished
        return None
    return f"{_boot_id()}:{fields[19].decode()}"  # fields after ")" start at field 3: 22 -> index 19


def process_alive(pid: int, start: str | None) -> bool:
    """Is the process that had start identity ``start`` still running as ``pid``? Without a recorded start
    (old records, no /proc) only the pid is checked."""
    now = process_start(pid)
    if now is not None:
        return start is None or now == start
    if Path("/proc/self/stat").exists():  # /proc works: the pid is gone (or a zombie)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Owner:
    token: str
    what: str
    host: str
    pid: int
    start: str | None
    acquired: float
    beat: float

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host})"

    @classmethod
    def mine(cls, what: str, token: str) -> Owner:
        now = time.time()
        return cls(token, what, socket.gethostname(), os.getpid(), process_start(os.getpid()), now, now)


class Lock:
    """``with Lock(path, "merge"):`` -- or the primitives ``try_acquire``/``refresh``/``release``/``steal_if_stale``."""

    def __init__(self, path: Path, what: str, *, stale_after: float = STALE_AFTER,
                 heartbeat: float | None = None) -> None:
        self.path, self.what, self.stale_after = Path(path), what, stale_after
        self.heartbeat = heartbeat if heartbeat is not None else max(1.0, stale_after / 6)
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading ------------------------------------------------------------------------------------
    def holder(self, path: Path | None = None) -> Owner | None:
        """The owner record of the lock (or of a moved-aside lock directory), None if there is none."""
        try:
            rec = atomic.read_json((path or self.path) / OWNER)
            return Owner(**{k: rec[k] for k in Owner.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def stale_reason(self, owner: Owner | None) -> str | None:
        """Why the current lock may be taken over, or None while its holder may still be alive."""
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return "it is gone"
            return f"it has had no owner record for {age:.0f}s" if age > self.stale_after else None
        if owner.host == socket.gethostname():
            return None if process_alive(owner.pid, owner.start) else f"its holder {owner.describe()} is gone"
        age = time.time() - owner.beat
        if age > self.stale_after:
            return f"its holder {owner.describe()} has not refreshed it for {age:.0f}s"
        return None

    # --- the primitives -----------------------------------------------------------------------------
    def try_acquire(self, *, steal_stale: bool = True) -> Owner | None:
        """Take the lock: None on success, else the live holder's record (a placeholder if it has not
        written one yet)."""
        for _ in range(5):
            try:
                os.mkdir(self.path)
            except FileExistsError:
                owner = self._wait_for_record()
                if owner is not None and owner.token == self.token:  # our own mkdir, retransmitted
                    self.held = True
                    return None
                if steal_stale and self.steal_if_stale(owner):
                    continue
                return owner or Owner("", "another process", "?", 0, None, 0.0, 0.0)
            try:
                atomic.write_json(self.path / OWNER, asdict(Owner.mine(self.what, self.token)))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rmdir(self.path)
                raise
            self.held = True
            return None
        return self.holder()

    def acquire(self) -> None:
        """Take the lock or raise LockedError naming the holder (never waits for it)."""
        owner = self.try_acquire()
        if owner is not None:
            raise LockedError(f"{self.what}: {self.path.parent} is locked by {owner.describe()}; "
                              "try again when it finishes")

    def refresh(self) -> bool:
        """Renew the heartbeat; False if the lock is no longer ours (taken over as stale, or removed)."""
        owner = self.holder()
        if owner is None or owner.token != self.token:
            self.held = False
            return False
        owner.beat = time.time()
        try:
            atomic.write_json(self.path / OWNER, asdict(owner))
        except OSError:
            self.held = False
            return False
        return True

    def release(self) -> None:
        """Give the lock up (only if it is still ours)."""
        self.held = False
        owner = self.holder()
        if owner is None or owner.token != self.token:
            log.warning("lock %s was no longer ours at release (taken over as stale?)", self.path)
            return
        grave = self.path.with_name(f"{self.path.name}.released.{self.token}")
        try:
            os.rename(self.path, grave)
        except OSError:
            return
        shutil.rmtree(grave, ignore_errors=True)

    def steal_if_stale(self, seen: Owner | None = None) -> bool:
        """Move a stale lock aside so that it can be taken; True if it was. ``seen`` is the record the caller
        judged (read again when not given): only that holder's lock is ever moved."""
        seen = seen if seen is not None else self.holder()
        reason = self.stale_reason(seen)
        if reason is None:
            return False
        grave = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, grave)
        except OSError:  # another contender moved it first, or it was released
            return True
        moved = self.holder(grave)
        if (moved.token if moved else None) != (seen.token if seen else None):  # a fresh lock got in between
            with contextlib.suppress(OSError):
                os.rename(grave, self.path)
            return False
        log.warning("took over the lock %s: %s", self.path, reason)
        shutil.rmtree(grave, ignore_errors=True)
        return True

    def _wait_for_record(self) -> Owner | None:
        """A winner writes its record just after its mkdir: give it a moment before calling it missing."""
        for _ in range(20):
            owner = self.holder()
            if owner is not None or not self.path.is_dir():
                return owner
            time.sleep(0.05)
        return None

    # --- context manager with a heartbeat ----------------------------------------------------------
    def __enter__(self) -> Lock:
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat-{self.what}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if not self.refresh():
                log.error("lost the lock %s (taken over as stale): another %s may run at once", self.path,
                          self.what)
                return
