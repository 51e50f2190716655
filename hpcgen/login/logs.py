"""``hpcgen logs``: the log of a shard's latest (or chosen) attempt, from submitit's files
``RUN/logs/<job id>/<job id>_0_log.out|err``.

A shard's attempts, oldest first: for every job it was submitted as (submit, then each resume), each start of
that job (SLURM's restart count: a requeue is a new attempt), or the job alone if it never started. SLURM
appends a requeued job's output to the same files, so the part of the file that belongs to one restart is cut
out at the line each start writes (submitit's "Starting with JobEnvironment" in .out, the worker's
"hpcgen attempt ... started" in .err); when the marks do not add up, the whole file is printed.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hpcgen.errors import UserError
from hpcgen.login.runstats import job_of
from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout

OUT_MARK = re.compile(r"Starting with JobEnvironment")
ERR_MARK = re.compile(r"hpcgen attempt \S+ started")


@dataclass
class LogAttempt:
    number: int  # 1-based, oldest first
    job_id: str  # the scheduler's job (array task) id: names the log files
    attempt_id: str | None  # job id + ".r<restart>" when the task started (its attempt record)
    restart: int
    started: float | None
    error: str | None
    of_job: int = 1  # how many attempts share this job's log file


def shard_attempts(layout: RunLayout, shard: int) -> list[LogAttempt]:
    records: dict[str, list[dict[str, Any]]] = {}
    prefix = f"s{shard:06d}."
    for name in layout.list_attempts().get(shard, []):
        try:
            rec = atomic.read_json(layout.attempts_dir / name)
        except (OSError, ValueError):
            continue
        base, _ = job_of(str(rec.get("job_id") or name[len(prefix):-5]))
        records.setdefault(base, []).append(rec)
    jobs: list[tuple[str, float | None]] = []
    for path in layout.list_submissions():
        try:
            sub = atomic.read_json(path)
        except (OSError, ValueError):
            continue
        jid = (sub.get("jobs") or {}).get(str(shard))
        if jid and jid not in [j for j, _ in jobs]:
            jobs.append((str(jid), sub.get("time")))
    for base, recs in records.items():  # attempts of jobs no submission names (should not happen)
        if base not in [j for j, _ in jobs]:
            jobs.append((base, min(float(r.get("started") or 0) for r in recs)))
    out: list[LogAttempt] = []
    for jid, t in jobs:
        recs = sorted(records.get(jid, []), key=lambda r: job_of(str(r.get("job_id")))[1])
        if not recs:
            out.append(LogAttempt(0, jid, None, 0, t, None))
        for r in recs:
            out.append(LogAttempt(0, jid, str(r.get("job_id")), job_of(str(r.get("job_id")))[1],
                                  r.get("started"), r.get("error"), len(recs)))
    for i, a in enumerate(out, 1):
        a.number = i
    return out


def pick_shard(layout: RunLayout, manifest: dict[str, Any], shard: int | None, failed: list[int]) -> int:
    n = len(manifest["shards"])
    if shard is None:
        if failed:
            return failed[0]
        if n == 1:
            return 0
        raise UserError(f"name a shard (0..{n - 1}): no shard of {layout.root} has failed")
    if not 0 <= shard < n:
        raise UserError(f"shard {shard} does not exist: the run has shards 0..{n - 1}")
    return shard


def pick_attempt(attempts: list[LogAttempt], shard: int, number: int | None) -> LogAttempt:
    if not attempts:
        raise UserError(f"shard {shard} was never submitted, so it has no log")
    if number is None:
        return attempts[-1]
    if not 1 <= number <= len(attempts):
        raise UserError(f"--attempt {number}: shard {shard} has {len(attempts)} attempt(s) (1..{len(attempts)})")
    return attempts[number - 1]


def attempt_offset(text: str, attempt: LogAttempt, attempts: list[LogAttempt], err: bool) -> tuple[int, int]:
    """(start, end) character offsets of this attempt's part of the job's log file (whole file if unsure)."""
    if attempt.of_job <= 1:
        return 0, len(text)
    same = [a for a in attempts if a.job_id == attempt.job_id]
    k = same.index(attempt)
    mark = ERR_MARK if err else OUT_MARK
    starts = [m.start() for m in re.finditer(r"(?m)^.*" + mark.pattern, text)]
    if len(starts) != len(same):
        return 0, len(text)
    starts[0] = 0  # what a start prints before its mark belongs to it
    ends = starts[1:] + [len(text)]
    return starts[k], ends[k]


def print_log(layout: RunLayout, attempts: list[LogAttempt], attempt: LogAttempt, *, err: bool,
              out: IO[str] = sys.stdout) -> int:
    """Print the attempt's part of its log; returns the bytes read (where ``follow`` goes on)."""
    path = layout.log(attempt.job_id, err=err)
    if not path.is_file():
        raise UserError(f"no log for attempt {attempt.number} of this shard (job {attempt.job_id}) yet: {path} "
                        "does not exist (the job may still be pending; --follow waits for it)")
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    lo, hi = attempt_offset(text, attempt, attempts, err)
    out.write(text[lo:hi])
    out.flush()
    return len(data)


def follow(path: Path, still_running: Callable[[], bool], *, pos: int = 0, out: IO[str] = sys.stdout,
           poll: float = 0.5, check_every: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Print what is appended to ``path`` after byte ``pos`` until the attempt is over (asked every
    ``check_every`` s; one last read after it ends)."""
    last_check = time.monotonic()
    running = True
    while True:
        if path.exists():
            size = path.stat().st_size
            if size < pos:  # truncated: start over
                pos = 0
            if size > pos:
                with open(path, "rb") as fh:
                    fh.seek(pos)
                    data = fh.read(size - pos)
                pos = size
                out.write(data.decode("utf-8", "replace"))
                out.flush()
        if not running:
            return
        if time.monotonic() - last_check >= check_every:
            running = still_running()  # one more read after the end, then stop
            last_check = time.monotonic()
        sleep(poll)
