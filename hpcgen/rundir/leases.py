"""Claims on chunks, safe on cluster filesystems, and the task records that say whether a claim's holder lives.

A claim is a lease file ``work/s<shard>/c<chunk>.g<gen>.lease`` made with ``link(2)``: the holder writes its
name into a private temporary file and links it to the lease name, which fails if the name exists. ``link`` is
atomic on NFS, Lustre and GPFS (``O_EXCL`` is not on older NFS); a lost reply is caught by the temporary
file's link count. Generation 0 claims a fresh chunk; a lease whose holder is gone is taken over by linking
generation ``g + 1`` (again only one taker wins), and the highest generation holds the chunk. A holder learns
that it lost a chunk when a higher generation appears; it then saves nothing more as that chunk's owner.

A lease (its content: the holder's job id) does not need renewing: the holder's task record
(``progress/<job>.json``) carries a heartbeat that the task rewrites every ``BEAT_S`` seconds, one write per
task whatever the number of chunks it holds. A holder is
gone when its record says it exited or is dead (``resume`` records jobs the scheduler says are over), when it
ran on this host under a pid that is no longer alive (or now belongs to another process), or when its heartbeat is older than the run's
``sharding.lease_timeout_s`` (judged on the reader's clock; keep the bound well above clock skew).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from typing import Any

from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout
from hpcgen.rundir.lock import process_alive

BEAT_S = 10.0
HOST = socket.gethostname()


# --- holders ---------------------------------------------------------------------------------------


def read_task(layout: RunLayout, job_id: str) -> dict[str, Any] | None:
    """A task attempt's record (:class:`hpcgen.rundir.progress.TaskProgress`): heartbeat and state."""
    try:
        return atomic.read_json(layout.progress(job_id))
    except (OSError, ValueError):
        return None


def mark_dead(layout: RunLayout, job_id: str, why: str) -> None:
    """The scheduler says this task is over though its record says running (kill -9, a lost node, a requeue):
    the chunks it held are free at once, not after the lease timeout."""
    rec = read_task(layout, job_id)
    if rec is not None and rec.get("state", "running") == "running" and not rec.get("ended"):
        rec.update(state="dead", ended=time.time(), why=why)
        atomic.write_json(layout.progress(job_id), rec)


class Liveness:
    """Judges holders, reading each task record at most once per instance (make one per decision). A holder
    is alive, gone, or suspect: alive but silent for more than ``3 * beat_s`` (its node may be lost; it is
    judged gone once silent for ``timeout_s``)."""

    def __init__(self, layout: RunLayout, timeout_s: float, beat_s: float = BEAT_S) -> None:
        self.layout, self.timeout_s, self.beat_s = layout, timeout_s, beat_s
        self._cache: dict[str, str] = {}

    def status(self, job_id: str) -> str:
        if job_id not in self._cache:
            rec = read_task(self.layout, job_id)
            self._cache[job_id] = "gone" if rec is None else _status(rec, self.timeout_s, self.beat_s)
        return self._cache[job_id]

    def alive(self, job_id: str) -> bool:
        return self.status(job_id) != "gone"


def _status(rec: dict[str, Any], timeout_s: float, beat_s: float) -> str:
    if rec.get("state", "running") != "running" or rec.get("ended"):
        return "gone"
    if rec.get("host") == HOST and not process_alive(int(rec.get("pid", -1)), rec.get("start_id")):
        return "gone"  # on this host, its process is gone (or its pid now belongs to another process)
    silent = time.time() - float(rec.get("beat", 0))
    return "gone" if silent > timeout_s else "suspect" if silent > 3 * beat_s else "alive"


# --- leases ------------------------------------------------------------------------------------------


def holder(layout: RunLayout, shard: int, chunk: int, gen: int) -> str | None:
    try:
        return layout.lease(shard, chunk, gen).read_text().strip() or None
    except OSError:
        return None


def claim(layout: RunLayout, shard: int, chunk: int, gen: int, job_id: str) -> bool:
    """Link generation ``gen`` of the chunk's lease to ``job_id``; False if someone else has that generation."""
    target = layout.lease(shard, chunk, gen)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        tmp.write_text(job_id)
    except FileNotFoundError:  # the shard's first claim makes its folder
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(job_id)
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
