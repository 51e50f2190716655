"""Where every shard stands: files in the run directory are the truth; one sacct call at most is a hint for
pending/running/failed of shards that are not done. Shared by ``status``, ``resume``, ``merge``, ``cancel``.
Writes nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.login import runstats
from hpcgen.login.runstats import RunStats
from hpcgen.rundir import atomic
from hpcgen.rundir.chunks import num_chunks
from hpcgen.rundir.layout import RunLayout

STATUS_FORMAT = "hpcgen-status/1"  # version of ``status --json`` (fields in the README)

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED", "STAGE_OUT",
           "REQUEUE_FED", "REQUEUE_HOLD", "SIGNALING"}
PENDING = {"PENDING"}
CANCELLED = {"CANCELLED"}


@dataclass
class ShardState:
    id: int
    state: str  # pending | running | done | failed | cancelled
    rows_done: int
    rows_total: int
    job_id: str | None
    attempts: int
    error_rows: int = 0
    log: str | None = None
    last_error: str | None = None
    logs_command: str | None = None  # for failed/cancelled shards: the command that prints the log


@dataclass
class RunState:
    run_dir: str
    rows_total: int
    rows_done: int
    shards: list[ShardState]
    counts: dict[str, int] = field(default_factory=dict)
    rows_per_second: float | None = None
    eta_seconds: float | None = None
    executor: str | None = None
    sacct_calls: int = 0
    chain: dict[str, Any] | None = None  # the merge+score step, when the job asked for one
    extra_tasks: dict[str, str] = field(default_factory=dict)  # job id -> state of tasks without own shards
    dropped_rows: int = 0  # rows saved twice (a task that had lost its chunk) and left out of the markers
    stats: RunStats | None = None  # elapsed, rates, GPU-hours, tokens, ... (login.runstats)

    def shards_in(self, *states: str) -> list[int]:
        return [s.id for s in self.shards if s.state in states]

    @property
    def complete(self) -> bool:
        return all(s.state == "done" for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": STATUS_FORMAT}
        d.update((k, v) for k, v in vars(self).items() if k not in ("shards", "stats"))
        if self.stats is not None:
            d.update(runstats.to_dict(self.stats))
        d["shards"] = [dict(vars(s)) for s in self.shards]  # shallow: fast with 10,000 shards
        d["complete"] = self.complete
        return d


def latest_jobs(layout: RunLayout) -> tuple[dict[int, str], dict[str, Any] | None, str | None]:
    """shard -> job id of its most recent submission; the latest submission record; its executor."""
    jobs: dict[int, str] = {}
    last: dict[str, Any] | None = None
    for path in layout.list_submissions():
        try:
            sub = atomic.read_json(path)
        except (OSError, ValueError):
            continue
        jobs.update({int(k): v for k, v in sub.get("jobs", {}).items()})
        last = sub
    return jobs, last, (last or {}).get("executor")


def extra_jobs(layout: RunLayout) -> list[str]:
    """Job ids of tasks without a shard of their own (``scale``, ``resume --tasks`` beyond the open shards)."""
    out: list[str] = []
    for path in layout.list_submissions():
        try:
            out += [str(j) for j in atomic.read_json(path).get("extra_tasks", [])]
        except (OSError, ValueError):
            continue
    return out


def sacct_states(job_ids: list[str]) -> dict[str, str] | None:
    """One sacct call for the given array/job ids -> {"<array>_<index>" or "<job>": STATE}; None if unknown."""
    if not job_ids or shutil.which("sacct") is None:
        return None
    bases = sorted({j.split("_")[0] for j in job_ids})
    try:
        res = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(bases)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    states: dict[str, str] = {}
    for line in res.stdout.splitlines():
        if "|" not in line:
            continue
        jid, state = line.split("|", 1)
        state = state.split()[0] if state.strip() else "UNKNOWN"
        m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", jid)
        if m:  # a pending range such as 123_[4-9%2]
            for rng in m[2].split(","):
                lo, _, hi = rng.partition("-")
                for i in range(int(lo), int(hi or lo) + 1):
                    states[f"{m[1]}_{i}"] = state
        else:
            states[jid] = state
    return states


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def log_path(layout: RunLayout, job_id: str | None) -> Path | None:
    if not job_id:
        return None
    return layout.logs_dir / job_id / f"{job_id}_0_log.err"


def last_error_line(layout: RunLayout, shard: int, attempt_names: list[str], log: Path | None) -> str | None:
    """The error the worker recorded for its latest attempt, else the last meaningful line of the log."""
    if len(attempt_names) > 1:
        attempt_names = sorted(attempt_names, key=lambda n: (layout.attempts_dir / n).stat().st_mtime, reverse=True)
    for name in attempt_names:
        try:
            err = atomic.read_json(layout.attempts_dir / name).get("error")
        except (OSError, ValueError):
            continue
        if err:
            return str(err)
        break
    if log is not None and log.is_file():
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 8192))
            lines = [x.strip() for x in fh.read().decode("utf-8", "replace").splitlines() if x.strip()]
        for line in reversed(lines):
            if re.search(r"error|exception|killed|cancelled|oom|time limit", line, re.I):
                return line[:300]
        return lines[-1][:300] if lines else None
    return None


def collect(run_dir: Path, manifest: dict[str, Any], *, query_scheduler: bool = True) -> RunState:
    layout = RunLayout(run_dir)
    shards = manifest["shards"]
    done = layout.list_done()
    attempts = layout.list_attempts()
    jobs, last_sub, executor = latest_jobs(layout)
    extra = extra_jobs(layout)
    open_jobs = [jobs[i] for i in range(len(shards)) if i not in done and i in jobs]
    task_jobs = sorted(set(open_jobs) | set(extra))
    chain_job = (last_sub or {}).get("chain_job")
    queried = task_jobs + ([chain_job] if chain_job and not layout.scores.exists() else [])
    progress = runstats.ProgressReader(layout)  # reads the progress records while sacct runs
    states: dict[str, str] | None = None
    calls = 0
    if query_scheduler and queried and executor == "slurm":
        states = sacct_states(queried)
        calls = 1
    # with stealing, a shard whose own task has ended can still be in the hands of another task
    working = [j for j in task_jobs if _open_state(j, executor, states, -1, ["?"]) == "running"]
    out: list[ShardState] = []
    dropped = 0
    for i, (start, end) in enumerate(shards):
        total = end - start
        jid = jobs.get(i)
        n_att = len(attempts.get(i, []))
        scan = None if i in done else layout.scan(i)
        if scan is not None and len(scan.done) >= num_chunks(manifest, i):
            done.add(i)  # every chunk marked; the shard's own marker follows (merge writes it if no task did)
        state = "done" if i in done else _open_state(jid, executor, states, i, attempts.get(i, []))
        if state in ("failed", "cancelled") and layout.done(i).exists():  # the task finished after the listing
            state = "done"
        if state == "done":
            out.append(ShardState(i, "done", total, total, jid, n_att))
            continue
        assert scan is not None  # noqa: S101 - not done means scanned
        rows = sum(min(end, lo + manifest["chunk_rows"]) - lo for lo in
                   (start + c * manifest["chunk_rows"] for c in scan.done))
        rows += sum(p.rows for c, ps in scan.parts.items() if c not in scan.done for p in ps)
        if state in ("failed", "cancelled") and working and (scan.leases or state == "failed"):
            state = "running"  # its own task ended; other tasks of the run hold or will take its chunks
        s = ShardState(i, state, min(total, rows), total, jid, n_att)
        if state in ("failed", "cancelled"):
            lp = log_path(layout, jid)
            s.log = str(lp) if lp else None
            s.last_error = last_error_line(layout, i, attempts.get(i, []), lp) or (
                "its task ended with chunks left unfinished; 'hpcgen resume' continues")
            s.logs_command = f"hpcgen logs {layout.root} {i} --err"
        out.append(s)
    rs = RunState(str(layout.root), sum(e - s for s, e in shards), sum(s.rows_done for s in out), out,
                  executor=executor, sacct_calls=calls)
    for s in out:
        rs.counts[s.state] = rs.counts.get(s.state, 0) + 1
    rs.extra_tasks = {j: _open_state(j, executor, states, -1, ["?"]) for j in extra}
    for path in layout.list_dropped():
        with contextlib.suppress(OSError, ValueError):
            dropped += int(atomic.read_json(path).get("dropped_rows", 0))
    rs.dropped_rows = dropped
    if chain_job:
        st = "done" if layout.scores.exists() else _open_state(chain_job, executor, states, -1, ["?"])
        rs.chain = {"job_id": chain_job, "state": st, "scores": str(layout.scores) if st == "done" else None}
    _figures(rs, layout, progress.records())
    return rs


def _open_state(jid: str | None, executor: str | None, states: dict[str, str] | None, shard: int,
                attempt_names: list[str]) -> str:
    if jid is None:
        return "pending"
    if executor == "local":
        try:
            return "running" if _pid_alive(int(jid)) else "failed"
        except ValueError:
            return "failed"
    if states is None:
        return "pending" if not attempt_names else "running"
    st = states.get(jid)
    if st is None:  # not in the accounting database yet
        return "pending"
    if st in PENDING:
        return "pending"
    if st in RUNNING:
        return "running"
    if st in CANCELLED:
        return "cancelled"
    return "failed"  # COMPLETED without a done marker, FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ...


def _figures(rs: RunState, layout: RunLayout, records: list[dict[str, Any]]) -> None:
    """Elapsed time, rates, ETA, GPU-hours, tokens, length cuts, error rows (from progress records)."""
    subs = layout.list_submissions()
    first = None
    if subs:
        try:
            first = float(atomic.read_json(subs[0]).get("time"))
        except (OSError, ValueError, TypeError):
            first = None
    busy = bool(rs.shards_in("pending", "running"))
    running = {s.job_id for s in rs.shards if s.state == "running" and s.job_id}
    st = runstats.gather(layout, first, running, busy, records=records)
    rs.stats = st
    rs.rows_per_second = st.rows_per_second
    rs.eta_seconds = runstats.eta_seconds(st, rs.rows_total - rs.rows_done, busy)
    per_shard: dict[str, int] = {}
    for t in st.tasks:
        for shard, c in t.shards.items():
            per_shard[shard] = per_shard.get(shard, 0) + int(c.get("errors") or 0)
    if per_shard:
        for s in rs.shards:
            s.error_rows = per_shard.get(str(s.id), 0)
