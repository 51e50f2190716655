"""submitit executors: one job array per submit (split only above MaxArraySize), the concurrency cap,
the GPU/CPU request per task, the local executor, and the dry-run sbatch text. Knows nothing of vLLM.

``slurm.array_parallelism`` caps the tasks of the whole run that run at once: SLURM's ``%N`` is per array,
so the cap is split over the arrays queued together (MaxArraySize chunks), less the tasks of earlier
submissions that are still pending or running; with fewer slots than arrays, the arrays run one after the
other (``afterany``), the first after the earlier submissions' arrays when they fill the cap.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import SchedulerError, UserError
from hpcgen.login.partition import cpus_per_task, max_array_size
from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout
from hpcgen.spec.schema import JobSpec, time_minutes


def slurm_parameters(spec: JobSpec) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one task of this job."""
    s = spec.slurm
    gpus = spec.gpus_per_task_node
    nodes = spec.trainer.nnodes
    params: dict[str, Any] = {
        "job_name": s.job_name,
        "time": time_minutes(s.time),
        "nodes": nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": cpus_per_task(spec),
        "array_parallelism": s.array_parallelism,
        "signal_delay_s": s.signal_delay_s,
        "setup": list(s.setup),
        "additional_parameters": {"requeue": True, **s.additional},
        "stderr_to_stdout": False,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if nodes > 1:  # one node failing ends the whole step instead of leaving the others waiting
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    for key in ("partition", "account", "qos", "mem", "constraint", "exclude"):
        value = getattr(s, key)
        if value:
            params[key] = value
    return params


def _task_env_lines(spec: JobSpec) -> list[str]:
    import shlex

    return [f"export {k}={shlex.quote(v)}" for k, v in sorted(spec.task_env().items())]


_UNSAFE_PATH = re.compile(r"[\x00-\x1f\x7f%]")


def check_script_path(path: Path, key: str) -> None:
    """A path that goes into the sbatch script: no newline or other control character (it would start a
    shell line of its own), no '%' (SLURM reads it as a file-name pattern). Spaces and quotes are fine:
    submitit quotes every path (shlex), and sbatch reads the quoted ``#SBATCH`` lines (golden test)."""
    bad = _UNSAFE_PATH.search(str(path))
    if bad:
        what = "'%' (SLURM would read it as a file-name pattern)" if bad[0] == "%" else "a newline or control character"
        raise UserError(f"{key} {str(path)!r} contains {what}; pick a path without it")


def make_executor(kind: str, layout: RunLayout, spec: JobSpec, *, dry_run: bool = False) -> Any:
    import submitit

    check_script_path(layout.root, "run directory")

    if kind == "local":
        from hpcgen.login.local_controller import LocalExecutor

        local = LocalExecutor(folder=str(layout.logs_dir / "%j"))  # log folders named by the real job id
        local.update_parameters(timeout_min=spec.slurm.local_timeout_min, gpus_per_node=0,
                                signal_delay_s=spec.slurm.signal_delay_s)
        return local
    params = slurm_parameters(spec)
    python = spec.slurm.python or sys.executable
    if spec.slurm.container is not None:
        from hpcgen.login import container

        python = container.apply(params, spec, layout.root)
    cls = _dry_run_executor_class() if dry_run else submitit.SlurmExecutor
    ex = cls(folder=str(layout.logs_dir / "%j"), max_num_timeout=spec.slurm.max_requeues, python=python)
    params["setup"] = params["setup"] + _task_env_lines(spec)
    ex.update_parameters(**params)
    return ex


def _dry_run_executor_class() -> Any:
    import submitit

    class DryRun(submitit.SlurmExecutor):
        """Writes the same sbatch text without probing for srun: a dry run needs no SLURM commands."""

        @classmethod
        def affinity(cls) -> int:
            return 2

    return DryRun


def require_slurm() -> None:
    """Queueing on SLURM needs its commands on this machine; say so before anything is written."""
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if missing:
        raise SchedulerError(f"{' and '.join(missing)} not found on this machine: SLURM's commands are needed to "
                             "queue jobs (--dry-run shows the sbatch script without them; --executor local "
                             "runs here without SLURM)")


def pack_local(spec: JobSpec, groups: list[list[int]], busy: int = 0) -> list[list[int]]:
    """Local: at most array_parallelism processes (less ``busy`` still running), each running its groups back
    to back."""
    width = max(1, min(spec.slurm.array_parallelism - busy, len(groups)))
    return [[s for g in groups[i::width] for s in g] for i in range(width)]


def local_plan_text(spec: JobSpec, groups: list[list[int]]) -> str:
    """What ``--executor local`` would start: processes and the shards each runs, in order."""
    packed = pack_local(spec, groups)
    lines = [f"# local executor: {len(packed)} process(es) on this machine (no SLURM), "
             f"timeout {spec.slurm.local_timeout_min} min each"]
    for i, shards in enumerate(packed):
        shown = ",".join(map(str, shards[:20])) + (f",... ({len(shards)} shards)" if len(shards) > 20 else "")
        lines.append(f"process {i}: shards {shown}")
    return "\n".join(lines)


@dataclass
class ArrayPlan:
    """One sbatch array of a submission: its groups, its share of the cap, what it waits for."""

    start: int
    stop: int
    cap: int
    after_previous: bool  # waits for the previous array of this submission to end
    after_busy: bool  # waits for the earlier submissions' arrays to end


def plan_arrays(n_groups: int, cap: int, max_size: int, busy: int = 0) -> list[ArrayPlan]:
    """Cut ``n_groups`` tasks into arrays of at most ``max_size`` so that, with ``busy`` tasks of earlier
    submissions still queued or running, no more than ``cap`` tasks of the run run at once."""
    bounds = [(i, min(n_groups, i + max_size)) for i in range(0, n_groups, max_size)]
    room = cap - busy
    if room >= len(bounds):  # enough slots: split them over the arrays, all queued at once
        share = [room // len(bounds) + (1 if i < room % len(bounds) else 0) for i in range(len(bounds))]
        return [ArrayPlan(a, b, min(c, b - a), False, False) for (a, b), c in zip(bounds, share, strict=True)]
    plans = []  # fewer slots than arrays: one array after the other
    for i, (a, b) in enumerate(bounds):
        first_fits = i == 0 and room >= 1
        plans.append(ArrayPlan(a, b, min(room if first_fits else cap, b - a), i > 0, busy > 0 and not first_fits))
    return plans


def dry_run_text(layout: RunLayout, spec: JobSpec, n_tasks: int) -> str:
    """The exact sbatch script submitit would write for this array (first chunk if it is split)."""
    from submitit.slurm.slurm import _make_sbatch_string

    from hpcgen.login import container

    ex = make_executor("slurm", layout, spec, dry_run=True)
    first = plan_arrays(n_tasks, spec.slurm.array_parallelism, max_array_size())[0]
    params = dict(ex.parameters)
    params["array_parallelism"] = first.cap
    notes = container.describe(spec, layout.root)
    if spec.rollout.batch_invariant:
        notes.append("# rollout.batch_invariant: vLLM's batch-invariant mode, set by 'export VLLM_BATCH_INVARIANT=1' "
                     "below (and in the task before vLLM starts); GPU builds only")
    script = _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder,
                                 map_count=first.stop - first.start if n_tasks > 1 else None, **params)
    return "\n".join([*notes, script])


@dataclass
class Submission:
    seq: int
    kind: str  # submit | resume | scale
    executor: str
    jobs: dict[int, str]  # shard -> job id
    arrays: list[str]
    sbatch_calls: int
    time: float
    extra_tasks: list[str] = field(default_factory=list)  # job ids of tasks without a shard of their own

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "executor": self.executor, "time": self.time,
                "arrays": self.arrays, "sbatch_calls": self.sbatch_calls,
                "jobs": {str(k): v for k, v in self.jobs.items()}, "extra_tasks": self.extra_tasks}


def submit_groups(layout: RunLayout, spec: JobSpec, groups: list[list[int]], *, executor: str,
                  kind: str, extra: dict[str, Any] | None = None, busy: int = 0,
                  busy_arrays: list[str] | None = None) -> Submission:
    """Queue one task per group (its own shards, processed with one engine load; an empty group is a task that
    only takes over others' work) and record the submission.

    ``busy``: tasks of earlier submissions still pending or running (``busy_arrays``: their arrays), which
    count against ``slurm.array_parallelism``."""
    from hpcgen.task.worker import ShardTask

    if executor == "slurm":
        require_slurm()
    ex = make_executor(executor, layout, spec)
    jobs: dict[int, str] = {}
    thieves: list[str] = []
    arrays: list[str] = []
    calls = 0
    run_dir = str(layout.root)
    extra = dict(extra or {})
    if executor == "local":
        from hpcgen.rundir.lock import process_start

        starts: dict[str, str] = {}
        for shard_ids in pack_local(spec, groups, busy):
            job = ex.submit(ShardTask(), run_dir, shard_ids)
            calls += 1
            arrays.append(str(job.job_id))
            jobs.update({s: str(job.job_id) for s in shard_ids})
            if not shard_ids:
                thieves.append(str(job.job_id))
            starts[str(job.job_id)] = process_start(int(job.job_id)) or "gone"  # a pid is reused, its start is not
        extra["local_starts"] = starts
    else:
        plans = plan_arrays(len(groups), spec.slurm.array_parallelism, max_array_size(), busy)
        extra["array_caps"] = [p.cap for p in plans]
        try:
            for plan in plans:
                part = groups[plan.start:plan.stop]
                after = ([arrays[-1]] if plan.after_previous else []) + (list(busy_arrays or []) if plan.after_busy
                                                                           else [])
                ex.update_parameters(array_parallelism=plan.cap)
                if after:
                    ex.update_parameters(dependency="afterany:" + ":".join(after))
                else:
                    ex.parameters.pop("dependency", None)
                submitted = ex.map_array(ShardTask(), [run_dir] * len(part), part)
                calls += 1
                arrays.append(str(submitted[0].job_id).split("_")[0])
                for g, job in zip(part, submitted, strict=True):
                    jobs.update({s: str(job.job_id) for s in g})
                    if not g:
                        thieves.append(str(job.job_id))
        except Exception as exc:
            if jobs or thieves:  # record what did get queued, so cancel/resume know about it
                _record(layout, kind, executor, jobs, arrays, calls, extra, thieves)
            msg = str(exc).strip().splitlines()
            raise SchedulerError(f"sbatch failed: {msg[-1] if msg else type(exc).__name__}") from None
    return _record(layout, kind, executor, jobs, arrays, calls, extra, thieves)


def _record(layout: RunLayout, kind: str, executor: str, jobs: dict[int, str], arrays: list[str],
            calls: int, extra: dict[str, Any] | None, thieves: list[str] | None = None) -> Submission:
    seq = len(layout.list_submissions()) + 1
    sub = Submission(seq, kind, executor, jobs, arrays, calls, time.time(), list(thieves or []))
    atomic.write_json(layout.submission(seq), {**sub.to_dict(), **(extra or {})})
    return sub


_BENIGN_SCANCEL = ("Invalid job id", "already completing or completed")


def cancel_jobs(job_ids: list[str], executor: str, starts: dict[str, str] | None = None) -> int:
    """scancel the given jobs (array ids cancel whole arrays); local jobs get SIGTERM, but only while the
    pid still belongs to the process that was started (``starts``: pid -> start identity from submit)."""
    if not job_ids:
        return 0
    if executor == "local":
        import signal

        from hpcgen.rundir.lock import process_alive

        n = 0
        for jid in job_ids:
            try:
                if not process_alive(int(jid), (starts or {}).get(jid)):
                    continue  # gone, or the pid now belongs to another process
                os.kill(int(jid), signal.SIGTERM)
                n += 1
            except (ValueError, ProcessLookupError, PermissionError):
                pass
        return n
    if shutil.which("scancel") is None:
        raise SchedulerError("scancel not found: is SLURM available on this node?")
    res = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    errors = [x for x in res.stderr.strip().splitlines() if x and not any(b in x for b in _BENIGN_SCANCEL)]
    if res.returncode != 0 and errors:
        raise SchedulerError(f"scancel failed: {errors[-1]}")
    return len(job_ids)


def annotate_submission(layout: RunLayout, seq: int, **fields: Any) -> None:
    path = layout.submission(seq)
    atomic.write_json(path, {**atomic.read_json(path), **fields})
