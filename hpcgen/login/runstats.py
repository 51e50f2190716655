"""Run-wide figures for ``status``: elapsed time, rates (recent and average), ETA, GPU-hours, output tokens,
answers cut at ``response_length``, error rows. Read from the tasks' progress records (rundir.progress) and
the submission records only: never from part files, so it stays cheap with 10,000 shards.

Definitions (also in the README's ``status --json`` table):
- a task attempt's time runs from its start record to its end record; a task that died without one (SIGKILL,
  lost node) ends at its last save; a running task ends now. GPU-hours = Σ GPUs × that time / 3600.
- average rates = what the tasks generated ÷ the time at least one task was running (union of attempts);
  recent rates = Σ over tasks of their rate across their saves of the last ``RECENT_WINDOW_S`` seconds.
- ETA = rows left ÷ the recent rate (the average one when no task saved recently).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from hpcgen.rundir.layout import RunLayout
from hpcgen.rundir.progress import COUNTERS, read_records

RECENT_WINDOW_S = 300.0
_RESTART = re.compile(r"^(.*)\.r(\d+)$")


def job_of(attempt_id: str) -> tuple[str, int]:
    """``123_4.r2`` -> (``123_4``, 2): the scheduler's job id and SLURM's restart count of an attempt."""
    m = _RESTART.match(attempt_id)
    return (m[1], int(m[2])) if m else (attempt_id, 0)


@dataclass
class TaskAttempt:
    job_id: str  # attempt id: the scheduler's job id + ".r<restart count>"
    host: str | None
    gpus: int
    started: float
    ended: float | None
    state: str  # running | done | failed | requeued | lost (died without an end record)
    seconds: float
    gpu_hours: float
    rows: int
    output_tokens: int
    error: str | None
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)  # which shard's rows this attempt did


@dataclass
class RunStats:
    started: float | None = None  # first submission
    ended: float | None = None  # last task end, once nothing is pending or running
    elapsed_seconds: float | None = None
    active_seconds: float = 0.0
    rows_generated: int = 0
    samples: int = 0
    output_tokens: int = 0
    finished_length: int = 0
    length_share: float | None = None
    error_rows: int = 0
    rows_per_second: float | None = None
    rows_per_second_recent: float | None = None
    tokens_per_second: float | None = None
    tokens_per_second_recent: float | None = None
    gpu_hours: float = 0.0
    tasks: list[TaskAttempt] = field(default_factory=list)


def _union_seconds(spans: list[tuple[float, float]]) -> float:
    total, cur_lo, cur_hi = 0.0, None, None
    for lo, hi in sorted(spans):
        if cur_hi is None or lo > cur_hi:
            if cur_hi is not None and cur_lo is not None:
                total += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    if cur_hi is not None and cur_lo is not None:
        total += cur_hi - cur_lo
    return total


def _recent_rate(points: list[list[float]], now: float) -> tuple[float, float] | None:
    """(rows/s, tokens/s) of one task across its saves in the window (plus the save just before it)."""
    inside = [i for i, p in enumerate(points) if p[0] >= now - RECENT_WINDOW_S]
    if not inside:
        return None
    first = max(0, inside[0] - 1)
    a, b = points[first], points[-1]
    if b[0] <= a[0]:
        return None
    return (b[1] - a[1]) / (b[0] - a[0]), (b[2] - a[2]) / (b[0] - a[0])


def _attempt_state(rec: dict[str, Any], running_jobs: set[str], newest: dict[str, int]) -> str:
    base, restart = job_of(str(rec["job_id"]))
    if rec.get("state") == "dead":  # ended by what resume or its requeued successor learnt, not by itself
        return "requeued" if newest.get(base, restart) > restart else "lost"
    if rec.get("ended") is not None:
        if not rec.get("error"):
            return "done"
        return "requeued" if newest.get(base, restart) > restart else "failed"
    if base in running_jobs and newest.get(base) == restart:
        return "running"
    return "requeued" if newest.get(base, restart) > restart else "lost"


class ProgressReader:
    """Reads the progress records in a thread, so that the reading overlaps the sacct call."""

    def __init__(self, layout: RunLayout) -> None:
        import threading

        self._out: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=lambda: self._out.extend(read_records(layout)), daemon=True)
        self._thread.start()

    def records(self) -> list[dict[str, Any]]:
        self._thread.join()
        return self._out


def gather(layout: RunLayout, first_submission: float | None, running_jobs: set[str], busy: bool,
           now: float | None = None, records: list[dict[str, Any]] | None = None) -> RunStats:
    """Figures of the run. ``running_jobs``: scheduler job ids of running shards; ``busy``: some shard is
    still pending or running (the run's clock still ticks)."""
    now = time.time() if now is None else now
    records = read_records(layout) if records is None else records
    newest: dict[str, int] = {}
    for rec in records:
        base, restart = job_of(str(rec["job_id"]))
        newest[base] = max(newest.get(base, restart), restart)
    st = RunStats(started=first_submission)
    spans: list[tuple[float, float]] = []
    rate_rows = rate_tok = 0.0
    recent_seen = False
    for rec in records:
        state = _attempt_state(rec, running_jobs, newest)
        t0 = float(rec.get("started") or now)
        t1 = now if state == "running" else float(rec.get("ended") or rec.get("updated") or t0)
        gpus = int(rec.get("gpus") or 0)
        secs = max(0.0, t1 - t0)
        spans.append((t0, t0 + secs))
        st.gpu_hours += gpus * secs / 3600
        c = {k: int(rec.get(k) or 0) for k in COUNTERS}
        st.rows_generated += c["rows"]
        st.samples += c["samples"]
        st.output_tokens += c["output_tokens"]
        st.finished_length += c["length"]
        st.error_rows += c["errors"]
        if state == "running" or (rec.get("recent") and rec["recent"][-1][0] >= now - RECENT_WINDOW_S):
            r = _recent_rate(rec.get("recent") or [], now)
            if r is not None:
                rate_rows += r[0]
                rate_tok += r[1]
                recent_seen = True
        st.tasks.append(TaskAttempt(str(rec["job_id"]), rec.get("host"), gpus, t0, rec.get("ended"), state, secs,
                                    gpus * secs / 3600, c["rows"],
                                    c["output_tokens"], rec.get("error"), rec.get("shards") or {}))
    st.tasks.sort(key=lambda t: (t.started, t.job_id))
    st.active_seconds = _union_seconds(spans)
    if st.samples:
        st.length_share = st.finished_length / st.samples
    if st.active_seconds > 0 and st.rows_generated:
        st.rows_per_second = st.rows_generated / st.active_seconds
        st.tokens_per_second = st.output_tokens / st.active_seconds
    if busy and recent_seen:
        st.rows_per_second_recent, st.tokens_per_second_recent = rate_rows, rate_tok
    if first_submission is not None:
        if busy or not spans:
            st.elapsed_seconds = now - first_submission if busy else None
        else:
            st.ended = max(hi for _, hi in spans)
            st.elapsed_seconds = max(0.0, st.ended - first_submission)
    return st


def eta_seconds(st: RunStats, rows_left: int, busy: bool) -> float | None:
    if not busy or rows_left <= 0:
        return None
    rate = st.rows_per_second_recent or st.rows_per_second
    return rows_left / rate if rate else None


def to_dict(st: RunStats) -> dict[str, Any]:
    d = {k: v for k, v in vars(st).items() if k != "tasks"}
    d["tasks"] = [dict(vars(t)) for t in st.tasks]
    return d
