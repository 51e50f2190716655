"""Who this task is: its job id (array task + restart count) as attempt records and part tags name it."""

from __future__ import annotations

import os

import submitit


def restart_count() -> int:
    """How many times SLURM has requeued this job (preemption, ``scontrol requeue``, time-limit requeues)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def job_id() -> str:
    """``<array>_<index>`` (or the job id) plus SLURM's restart count, so each requeue is its own attempt."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        jid = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    elif env.get("SLURM_JOB_ID"):
        jid = env["SLURM_JOB_ID"]
    else:
        try:
            jid = str(submitit.JobEnvironment().job_id)
        except RuntimeError:
            jid = f"pid{os.getpid()}"
    return f"{jid}.r{restart_count()}"
