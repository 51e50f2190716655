"""Where every shard stands: files in the run directory are the truth; for shards that are not done, one
``sacct`` and one ``squeue`` call at most are hints (pending/running/failed), and the attempt records settle
what neither knows (accounting off or failing, a job purged from both): such a shard is ``unknown`` with a
reason, and ``resume`` treats it as not running. Shared by ``status``, ``resume``, ``merge``, ``cancel``.
Writes nothing.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.login import runstats
from hpcgen.login.runstats import RunStats
from hpcgen.rundir import atomic
from hpcgen.rundir.blocks import blocks
from hpcgen.rundir.chunks import num_chunks
from hpcgen.rundir.layout import RunLayout, safe_job_id
from hpcgen.rundir.lock import process_alive

STATUS_FORMAT = "hpcgen-status/1"  # version of ``status --json`` (fields in the README)

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED", "STAGE_OUT",
           "REQUEUE_FED", "REQUEUE_HOLD", "SIGNALING"}
PENDING = {"PENDING"}
CANCELLED = {"CANCELLED"}


@dataclass
class ShardState:
    id: int
    state: str  # pending | running | done | failed | cancelled | unknown
    rows_done: int
    rows_total: int
    job_id: str | None
    attempts: int
    error_rows: int = 0
    log: str | None = None
    last_error: str | None = None
    reason: str | None = None  # why the state is "unknown" (no source knows the job)
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
    squeue_calls: int = 0
    scheduler_answered: bool = True  # False when neither sacct nor squeue answered (SLURM unreachable)
    chain: dict[str, Any] | None = None  # the merge+score step, when the job asked for one
    stats: RunStats | None = None  # elapsed, rates, GPU-hours, tokens, ... (login.runstats)
    extra_tasks: dict[str, str] = field(default_factory=dict)  # job id -> state of tasks without own shards
    dropped_rows: int = 0  # rows saved twice (a task that had lost its chunk) and left out of the markers

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
    return _parse_states(res.stdout)


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """One squeue call: the controller's view of the given jobs (queued, running, and ended within its
    MinJobAge), array tasks one per line; None if squeue did not answer. Works with accounting off."""
    if not job_ids or shutil.which("squeue") is None:
        return None
    bases = sorted({j.split("_")[0] for j in job_ids})
    try:
        res = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(bases)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:  # one id the controller no longer knows is an error, not an answer-less squeue
        return {} if "Invalid job id" in res.stderr else None
    return _parse_states(res.stdout)


def _parse_states(text: str) -> dict[str, str]:
    states: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        jid, state = line.split("|", 1)
        state = state.split()[0].rstrip("+") if state.strip() else "UNKNOWN"  # "CANCELLED+": cancelled by a user
        m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", jid)
        if m:  # a pending range such as 123_[4-9%2]
            for rng in m[2].split(","):
                lo, _, hi = rng.partition("-")
                for i in range(int(lo), int(hi or lo) + 1):
                    states[f"{m[1]}_{i}"] = state
        else:
            states[jid] = state
    return states


@dataclass
class Scheduler:
    """What SLURM says about the run's open jobs: one sacct and one squeue answer (None: no answer)."""

    sacct: dict[str, str] | None = None
    squeue: dict[str, str] | None = None
    local_starts: dict[str, str] = field(default_factory=dict)  # local executor: pid -> process start

    @property
    def answered(self) -> bool:
        return self.sacct is not None or self.squeue is not None

    def state(self, jid: str) -> tuple[str | None, str | None]:
        """(SLURM state or None if no source knows the job, a note on why the sources disagree)."""
        live = self.squeue.get(jid) if self.squeue is not None else None
        if live is not None:  # the controller's own view is the freshest
            return live, None
        acct = self.sacct.get(jid) if self.sacct is not None else None
        if acct is None and self.sacct is not None and "_" in jid:  # an array that never started a task
            acct = self.sacct.get(jid.split("_")[0])  # has one record for all of them ("123 CANCELLED")
        if acct in PENDING | RUNNING and self.squeue is not None:
            return None, f"sacct says {acct} but the controller does not know the job (stale accounting record)"
        return acct, None


def local_starts(layout: RunLayout) -> dict[str, str]:
    """Local executor: pid -> start identity recorded at submit (a reused pid is not the task)."""
    out: dict[str, str] = {}
    for path in layout.list_submissions():
        try:
            out.update(atomic.read_json(path).get("local_starts", {}))
        except (OSError, ValueError):
            continue
    return out


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
    task_jobs = sorted({jobs[i] for i in range(len(shards)) if i not in done and i in jobs} | set(extra))
    open_jobs = list(task_jobs)
    chain_job = (last_sub or {}).get("chain_job")
    if chain_job and not layout.scores.exists():
        open_jobs.append(chain_job)
    progress = runstats.ProgressReader(layout)  # reads the progress records while sacct and squeue run
    sched = Scheduler()
    calls = 0
    if query_scheduler and open_jobs and executor == "slurm":
        sched = Scheduler(sacct_states(open_jobs), squeue_states(open_jobs))
        calls = 1
    elif executor == "local":
        sched.local_starts = local_starts(layout)
    # with stealing, a shard whose own task has ended can still be in the hands of another task of the run
    steal = bool(manifest["job"].get("sharding", {}).get("steal", True))
    extra_states = {j: _open_state(layout, j, executor, sched, -1, [], query_scheduler)[0] for j in extra}
    working = [j for j in task_jobs if (extra_states.get(j) or _open_state(
        layout, j, executor, sched, -1, [], query_scheduler)[0]) == "running"]
    out: list[ShardState] = []
    for i, (start, end) in enumerate(shards):
        total = end - start
        jid = jobs.get(i)
        n_att = len(attempts.get(i, []))
        reason = None
        scan = None if i in done else layout.scan(i)
        if scan is not None and len(scan.done) >= num_chunks(manifest, i):
            done.add(i)  # every chunk marked; the shard's own marker follows (merge writes it if no task did)
        if i in done:
            state = "done"
        else:
            state, reason = _open_state(layout, jid, executor, sched, i, attempts.get(i, []), query_scheduler)
        if state in ("failed", "cancelled", "unknown") and layout.done(i).exists():  # finished after the listing
            state = "done"
        if state == "done":
            out.append(ShardState(i, "done", total, total, jid, n_att))
            continue
        assert scan is not None  # noqa: S101 - a shard that is not done was listed
        chunk_rows = manifest["chunk_rows"]
        rows = sum(min(end, start + (c + 1) * chunk_rows) - (start + c * chunk_rows) for c in scan.done)
        rows += sum(p.rows for c, ps in scan.parts.items() if c not in scan.done for p in ps)
        if state in ("failed", "cancelled", "unknown") and steal and working and (scan.leases or state == "failed"):
            state, reason = "running", None  # its own task ended; other tasks of the run hold or will take its chunks
        s = ShardState(i, state, min(total, rows), total, jid, n_att, reason=reason)
        if state in ("failed", "cancelled"):
            lp = log_path(layout, jid)
            s.log = str(lp) if lp else None
            s.last_error = last_error_line(layout, i, attempts.get(i, []), lp) or (
                "its task ended with chunks left unfinished; 'hpcgen resume' continues")
            s.logs_command = f"hpcgen logs {layout.root} {i} --err"
        out.append(s)
    rs = RunState(str(layout.root), sum(e - s for s, e in shards), sum(s.rows_done for s in out), out,
                  executor=executor, sacct_calls=calls, squeue_calls=calls,
                  scheduler_answered=sched.answered or not calls)
    for s in out:
        rs.counts[s.state] = rs.counts.get(s.state, 0) + 1
    rs.extra_tasks = extra_states
    for path in layout.list_dropped():
        with contextlib.suppress(OSError, ValueError):
            rs.dropped_rows += int(atomic.read_json(path).get("dropped_rows", 0))
    if chain_job:
        st, why = ("done", None) if layout.scores.exists() else _open_state(
            layout, chain_job, executor, sched, -1, [], query_scheduler)
        rs.chain = {"job_id": chain_job, "state": st, "scores": str(layout.scores) if st == "done" else None}
        if why:
            rs.chain["reason"] = why
    _figures(rs, layout, progress.records())
    return rs


def _open_state(layout: RunLayout, jid: str | None, executor: str | None, sched: Scheduler, shard: int,
                attempt_names: list[str], queried: bool) -> tuple[str, str | None]:
    """(state, reason) of a shard (or, shard -1, the merge+score step) that is not done."""
    if jid is None:
        return "pending", None
    if executor == "local":
        try:
            return ("running" if process_alive(int(jid), sched.local_starts.get(jid)) else "failed"), None
        except ValueError:
            return "failed", None
    if not queried:  # cancel: no scheduler call; the latest submission's jobs are what may run
        return "running", None
    st, note = sched.state(jid)
    if st in PENDING:
        return "pending", None
    if st in RUNNING:
        return "running", None
    if st in CANCELLED:
        return "cancelled", None
    if st is not None:
        return "failed", None  # COMPLETED without a done marker, FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ...
    if not sched.answered:
        return "unknown", "neither sacct nor squeue answered: SLURM is unreachable from here"
    # no source knows the job (accounting off or failing, job purged): the attempt records tell what they can
    mine = [n for n in attempt_names if n.startswith(f"s{shard:06d}.{safe_job_id(jid)}.")]
    record: dict[str, Any] = {}
    restart = re.compile(r"\.r(\d+)\.json$")
    for name in sorted(mine, key=lambda n: int(m[1]) if (m := restart.search(n)) else -1):  # latest restart last
        try:
            record = atomic.read_json(layout.attempts_dir / name)
        except (OSError, ValueError):
            continue
    if record.get("error"):
        return "failed", None
    why = note or f"job {jid} is known to neither sacct nor squeue (accounting off or failing, or purged)"
    if record:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0))))
        why += f"; its task started on {record.get('host', '?')} at {when} and recorded no end"
    elif shard >= 0:
        why += "; it never started a task"
    return "unknown", why


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


def block_progress(manifest: dict[str, Any], state: Any) -> dict[str, tuple[int, int]]:
    """Rows done / total per dataset (every seed counted) from a run's status."""
    out: dict[str, tuple[int, int]] = {}
    for b in blocks(manifest):
        done = sum(state.shards[s].rows_done for s in range(b.first_shard, b.first_shard + b.shards))
        d, t = out.get(b.name, (0, 0))
        out[b.name] = (d + done, t + b.rows)
    return out
