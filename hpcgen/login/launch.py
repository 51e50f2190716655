"""submitit executors: one job array per submit (split only above MaxArraySize), the concurrency cap,
the GPU/CPU request per task, the local executor, and the dry-run sbatch text. Knows nothing of vLLM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from hpcgen.errors import SchedulerError
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


def make_executor(kind: str, layout: RunLayout, spec: JobSpec) -> Any:
    import submitit

    if kind == "local":
        local = submitit.LocalExecutor(folder=str(layout.logs_dir / "%j"))
        local.update_parameters(timeout_min=spec.slurm.local_timeout_min, gpus_per_node=0,
                                signal_delay_s=spec.slurm.signal_delay_s)
        return local
    params = slurm_parameters(spec)
    python = spec.slurm.python or sys.executable
    if spec.slurm.container is not None:
        from hpcgen.login import container

        python = container.apply(params, spec, layout.root)
    ex = submitit.SlurmExecutor(folder=str(layout.logs_dir / "%j"), max_num_timeout=spec.slurm.max_requeues,
                                python=python)
    params["setup"] = params["setup"] + _task_env_lines(spec)
    ex.update_parameters(**params)
    return ex


def dry_run_text(layout: RunLayout, spec: JobSpec, n_tasks: int) -> str:
    """The exact sbatch script submitit would write for this array (first chunk if it is split)."""
    from submitit.slurm.slurm import _make_sbatch_string

    from hpcgen.login import container

    ex = make_executor("slurm", layout, spec)
    chunk = min(n_tasks, max_array_size())
    params = dict(ex.parameters)
    notes = container.describe(spec, layout.root)
    if spec.rollout.batch_invariant:
        notes.append("# rollout.batch_invariant: vLLM's batch-invariant mode, set by 'export VLLM_BATCH_INVARIANT=1' "
                     "below (and in the task before vLLM starts); GPU builds only")
    script = _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder,
                                 map_count=chunk if n_tasks > 1 else None, **params)
    return "\n".join([*notes, script])


@dataclass
class Submission:
    seq: int
    kind: str  # submit | resume
    executor: str
    jobs: dict[int, str]  # shard -> job id
    arrays: list[str]
    sbatch_calls: int
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "executor": self.executor, "time": self.time,
                "arrays": self.arrays, "sbatch_calls": self.sbatch_calls,
                "jobs": {str(k): v for k, v in self.jobs.items()}}


def submit_groups(layout: RunLayout, spec: JobSpec, groups: list[list[int]], *, executor: str,
                  kind: str, extra: dict[str, Any] | None = None) -> Submission:
    """Queue one task per group (shards processed with one engine load) and record the submission."""
    from hpcgen.task.worker import ShardTask

    ex = make_executor(executor, layout, spec)
    jobs: dict[int, str] = {}
    arrays: list[str] = []
    calls = 0
    run_dir = str(layout.root)
    if executor == "local":
        # Local: at most array_parallelism processes, each running its groups back to back.
        width = max(1, min(spec.slurm.array_parallelism, len(groups)))
        packed = [[s for g in groups[i::width] for s in g] for i in range(width)]
        for shard_ids in packed:
            job = ex.submit(ShardTask(), run_dir, shard_ids)
            calls += 1
            arrays.append(str(job.job_id))
            jobs.update({s: str(job.job_id) for s in shard_ids})
    else:
        chunk = max_array_size()
        try:
            for i in range(0, len(groups), chunk):
                part = groups[i:i + chunk]
                submitted = ex.map_array(ShardTask(), [run_dir] * len(part), part)
                calls += 1
                arrays.append(str(submitted[0].job_id).split("_")[0])
                for g, job in zip(part, submitted, strict=True):
                    jobs.update({s: str(job.job_id) for s in g})
        except Exception as exc:
            if jobs:  # record what did get queued, so cancel/resume know about it
                _record(layout, kind, executor, jobs, arrays, calls, extra)
            msg = str(exc).strip().splitlines()
            raise SchedulerError(f"sbatch failed: {msg[-1] if msg else type(exc).__name__}") from None
    return _record(layout, kind, executor, jobs, arrays, calls, extra)


def _record(layout: RunLayout, kind: str, executor: str, jobs: dict[int, str], arrays: list[str],
            calls: int, extra: dict[str, Any] | None) -> Submission:
    seq = len(layout.list_submissions()) + 1
    sub = Submission(seq, kind, executor, jobs, arrays, calls, time.time())
    atomic.write_json(layout.submission(seq), {**sub.to_dict(), **(extra or {})})
    return sub


def cancel_jobs(job_ids: list[str], executor: str) -> int:
    """scancel the given jobs (array ids cancel whole arrays); local jobs get SIGTERM."""
    if not job_ids:
        return 0
    if executor == "local":
        import signal

        n = 0
        for jid in job_ids:
            try:
                os.kill(int(jid), signal.SIGTERM)
                n += 1
            except (ValueError, ProcessLookupError, PermissionError):
                pass
        return n
    if shutil.which("scancel") is None:
        raise SchedulerError("scancel not found: is SLURM available on this node?")
    res = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    if res.returncode != 0 and "Invalid job id" not in res.stderr:
        raise SchedulerError(f"scancel failed: {res.stderr.strip().splitlines()[-1] if res.stderr else res.returncode}")
    return len(job_ids)


def annotate_submission(layout: RunLayout, seq: int, **fields: Any) -> None:
    path = layout.submission(seq)
    atomic.write_json(path, {**atomic.read_json(path), **fields})
