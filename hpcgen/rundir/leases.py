"""Claims on chunks, safe on cluster filesystems, and the task records that say whether a claim's holder lives.

A claim is a lease file ``work/s<shard>/c<chunk>.g<gen>.lease`` made with ``link(2)``: the holder writes its
name into a private temporary file and links it to the lease name, which fails if the name exists. ``link`` is
atomic on NFS, Lustre and GPFS (``O_EXCL`` is not on older NFS); a lost reply is caught by the temporary
file's link count. Generation 0 claims a fresh chunk; a lease whose holder is gone is taken over by linking
generation ``g + 1`` (again only one taker wins), and the highest generation holds the chunk. A holder learns
that it lost a chunk when a higher generation appears; it then saves nothing more as that chunk's owner.

A lease does not need renewing: its holder's task record (``tasks/<tag>.json``) carries a heartbeat that the
task rewrites every ``BEAT_S`` seconds, one write per task whatever the number of chunks it holds. A holder is
gone when its record says it exited or is dead (``resume`` records jobs the scheduler says are over), when it
ran on this host under a pid that is no longer alive, or when its heartbeat is older than the run's
``sharding.lease_timeout_s`` (judged on the reader's clock; keep the bound well above clock skew).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from typing import Any

from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout

BEAT_S = 10.0
HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


# --- task records ------------------------------------------------------------------------------------


class TaskRecord:
    """This task's record and heartbeat thread. ``rows`` counts the rows it saved per shard."""

    def __init__(self, layout: RunLayout, tag: str, job_id: str, own: list[int], beat_s: float = BEAT_S) -> None:
        self.layout, self.tag = layout, tag
        self.data: dict[str, Any] = {"task": tag, "job_id": job_id, "host": HOST, "pid": os.getpid(),
                                     "own": own, "started": time.time(), "beat": time.time(),
                                     "state": "running", "rows": {}, "chunks": 0, "stolen_chunks": 0}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self.write()
        self._thread = threading.Thread(target=self._beat, args=(beat_s,), daemon=True, name="hpcgen-beat")
        self._thread.start()

    def write(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields, beat=time.time())
            atomic.write_json(self.layout.task(self.tag), self.data)

    def count(self, shard: int, rows: int) -> None:
        with self._lock:
            key = str(shard)
            self.data["rows"][key] = self.data["rows"].get(key, 0) + rows

    def _beat(self, beat_s: float) -> None:
        while not self._stop.wait(beat_s):
            with contextlib.suppress(OSError):
                self.write()

    def close(self, state: str = "exited", **fields: Any) -> None:
        """The task is leaving: its leases are free for others at once."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.write(state=state, ended=time.time(), **fields)


def read_task(layout: RunLayout, tag: str) -> dict[str, Any] | None:
    try:
        return atomic.read_json(layout.task(tag))
    except (OSError, ValueError):
        return None


def mark_dead(layout: RunLayout, tag: str, why: str) -> None:
    """Login side: the scheduler says this task is over though its record says running (kill -9, lost node)."""
    rec = read_task(layout, tag)
    if rec is not None and rec.get("state") == "running":
        rec.update(state="dead", ended=time.time(), why=why)
        atomic.write_json(layout.task(tag), rec)


class Liveness:
    """Judges holders, reading each task record at most once per instance (make one per decision)."""

    def __init__(self, layout: RunLayout, timeout_s: float) -> None:
        self.layout, self.timeout_s = layout, timeout_s
        self._cache: dict[str, bool] = {}

    def alive(self, tag: str) -> bool:
        if tag not in self._cache:
            rec = read_task(self.layout, tag)
            self._cache[tag] = rec is not None and _alive(rec, self.timeout_s)
        return self._cache[tag]


def _alive(rec: dict[str, Any], timeout_s: float) -> bool:
    if rec.get("state") != "running":
        return False
    if rec.get("host") == HOST and not pid_alive(int(rec.get("pid", -1))):
        return False
    return time.time() - float(rec.get("beat", 0)) <= timeout_s


# --- leases ------------------------------------------------------------------------------------------


def holder(layout: RunLayout, shard: int, chunk: int, gen: int) -> str | None:
    try:
        return layout.lease(shard, chunk, gen).read_text().strip() or None
    except OSError:
        return None


def claim(layout: RunLayout, shard: int, chunk: int, gen: int, tag: str) -> bool:
    """Link generation ``gen`` of the chunk's lease to ``tag``; False if someone else has that generation."""
    target = layout.lease(shard, chunk, gen)
    tmp = target.with_name(f".{target.name}.{tag}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(tag)
    except FileNotFoundError:  # the shard's first claim makes its folder
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(tag)
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        # NFS: the link may have been made though its reply was lost; the temp file's link count tells.
        with contextlib.suppress(OSError):
            return os.stat(tmp).st_nlink == 2
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
