"""Per-task progress records: what a task knows at each part flush, so ``status`` never reads part files.

``RUN/progress/<job id>.json``, one per task attempt (the job id carries SLURM's restart count, so a requeue
is a new record), rewritten atomically after every part flush and when the task ends::

    {"format": "hpcgen-progress/1", "job_id": "123_4.r0", "host": "n1", "pid": 812, "gpus": 8,
     "started": t0, "updated": t, "ended": null | t, "error": null | "one line",
     "rows": 96, "samples": 384, "output_tokens": 51234, "length": 12, "errors": 1,
     "shards": {"4": {"rows": 96, "samples": 384, "output_tokens": 51234, "length": 12, "errors": 1,
                      "first": t, "last": t}},
     "recent": [[t, rows, output_tokens], ...]}          # the last RECENT flushes, for recent rates

Counters count what this attempt generated (a regenerated row counts again: it cost GPU time again).
``engine_starts`` counts the engines this attempt built (0 when it found no work left, else 1) and
``engine_start_s`` how long the build took. ``shards`` says which shard's rows the task did; ``length`` counts samples that ended at
``rollout.response_length`` (finish reason "length"); ``errors`` counts rows with ``gen_error``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout
from hpcgen.rundir.lock import process_start

log = logging.getLogger("hpcgen.progress")

FORMAT = "hpcgen-progress/1"
RECENT = 8
COUNTERS = ("rows", "samples", "output_tokens", "length", "errors")


def count_rows(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The counters of a batch of finished rows (part schema)."""
    c = dict.fromkeys(COUNTERS, 0)
    for r in rows:
        c["rows"] += 1
        if r.get("gen_error"):
            c["errors"] += 1
        reasons = r.get("finish_reasons") or []
        c["samples"] += len(reasons)
        c["length"] += sum(1 for f in reasons if f == "length")
        c["output_tokens"] += sum(r.get("response_tokens") or [])
    return c


def task_gpus(spec: Any) -> int:
    """GPUs this task holds: SLURM's allocation when inside a job, else what the job asks for per task."""
    env = os.environ
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or spec.trainer.nnodes or 1)
    per_node = env.get("SLURM_GPUS_ON_NODE")
    if env.get("SLURM_JOB_ID") and per_node and per_node.isdigit():
        return int(per_node) * nodes
    return int(spec.gpus_per_task_node) * int(spec.trainer.nnodes)


class TaskProgress:
    """The progress record of one task attempt. ``flushed`` is called by the part writer after each save.

    It is also the task's heartbeat, which says whether the chunks it holds are still in good hands
    (:mod:`hpcgen.rundir.leases`): ``beat`` is rewritten every ``beat_s`` seconds by a thread, ``state`` is
    running until the task ends (exited, failed) or ``resume`` finds its job over (dead), ``own`` are the
    shards it was queued for, ``chunks`` / ``stolen_chunks`` count the chunks it marked done."""

    def __init__(self, layout: RunLayout, job_id: str, gpus: int, own: list[int] | None = None) -> None:
        now = time.time()
        self.path = layout.progress(job_id)
        self.record: dict[str, Any] = {
            "format": FORMAT, "job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(), "gpus": gpus,
            "started": now, "updated": now, "ended": None, "error": None, **dict.fromkeys(COUNTERS, 0),
            "shards": {}, "recent": [], "own": list(own or []), "state": "running", "beat": now, "chunks": 0,
            "stolen_chunks": 0, "start_id": process_start(os.getpid()), "engine_starts": 0, "engine_start_s": None}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # ``hpcgen logs`` cuts a requeued job's log (SLURM appends to it) at this line
        log.info("hpcgen attempt %s started on %s", job_id, self.record["host"])

    def save(self) -> None:
        import json

        with self._lock:
            self.record["beat"] = time.time()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps(self.record, separators=(",", ":")).encode()  # compact: status reads many
            atomic.write_bytes(self.path, data)

    def start_beat(self, beat_s: float) -> None:
        """Rewrite the record every ``beat_s`` seconds until :meth:`finish` (one write per task, not per chunk)."""

        def beat() -> None:
            while not self._stop.wait(beat_s):
                with contextlib.suppress(OSError):
                    self.save()

        threading.Thread(target=beat, daemon=True, name="hpcgen-beat").start()

    def engine_started(self, seconds: float) -> None:
        """The task built its engine (once per task: every dataset and seed of the run goes through it)."""
        self.record["engine_starts"] += 1
        self.record["engine_start_s"] = round(seconds, 3)
        self.save()

    def chunk_done(self, stolen: bool) -> None:
        self.record["chunks"] += 1
        self.record["stolen_chunks"] += int(stolen)

    def flushed(self, shard: int, rows: list[dict[str, Any]]) -> None:
        now = time.time()
        rec = self.record
        c = count_rows(rows)
        per = rec["shards"].setdefault(str(shard), {**dict.fromkeys(COUNTERS, 0), "first": now})
        for k, v in c.items():
            rec[k] += v
            per[k] += v
        per["last"] = now
        rec["updated"] = now
        rec["recent"] = [*rec["recent"], [now, rec["rows"], rec["output_tokens"]]][-RECENT:]
        self.save()

    def finish(self, error: str | None = None, **fields: Any) -> None:
        """The task is leaving: the chunks it still holds are free for others at once."""
        self._stop.set()
        self.record["ended"] = self.record["updated"] = time.time()
        self.record.update(error=error, state="failed" if error else "exited", **fields)
        self.save()


def read_records(layout: RunLayout) -> list[dict[str, Any]]:
    """Every progress record of the run (unreadable ones skipped: they are rewritten at the next flush)."""
    import json

    out: list[dict[str, Any]] = []
    d = layout.progress_dir
    try:
        entries = list(os.scandir(d))
    except FileNotFoundError:
        return out
    for e in entries:
        if not e.name.endswith(".json") or e.name.startswith("."):
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY)
            try:
                data = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
            rec = json.loads(data)
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("format") == FORMAT:
            out.append(rec)
    return out
