"""A small finished-looking run built with the real worker code and a stand-in engine, for the fast status,
logs and report tests: shard 0 done at once; shard 1 requeued once (its first attempt dies after saving some
rows) then done; shard 2 failed at engine start. Logs are written where submitit would put them.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import FakeEngine, make_run

ARRAY = "4242"
STATUS_FIELDS = {"format", "run_dir", "rows_total", "rows_done", "counts", "executor", "sacct_calls", "chain",
                 "started", "ended", "elapsed_seconds", "active_seconds", "rows_generated", "samples",
                 "output_tokens", "finished_length", "length_share", "error_rows", "rows_per_second",
                 "rows_per_second_recent", "tokens_per_second", "tokens_per_second_recent", "eta_seconds",
                 "gpu_hours", "tasks", "shards", "complete"}


@contextmanager
def slurm_env(index: int, restart: int = 0):
    keys = {"SLURM_ARRAY_JOB_ID": ARRAY, "SLURM_ARRAY_TASK_ID": str(index), "SLURM_RESTART_COUNT": str(restart)}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class DiesAfter(FakeEngine):
    """Finishes a few rows, then the task 'is preempted' (raises) mid-shard."""

    def __init__(self, *a: Any, steps: int = 2, **kw: Any):
        super().__init__(*a, **kw)
        self.left = steps

    def step(self) -> list[Any]:
        if self.left == 0:
            raise RuntimeError("preempted: node reclaimed")
        self.left -= 1
        return super().step()


class LengthEngine(FakeEngine):
    """Every third sample ends at the length limit, with more tokens."""

    def step(self) -> list[Any]:
        out = super().step()
        for f in out:
            f.finish_reasons = ["length" if (f.row_id + i) % 3 == 0 else "stop" for i in range(len(f.texts))]
            f.response_tokens = [16 if r == "length" else 5 for r in f.finish_reasons]
        return out


def build_observe_run(tmp: Path, dataset: Path, model: Path) -> Path:
    from hpcgen.login.launch import _record
    from hpcgen.task.worker import run_shards

    layout = make_run(tmp, dataset, model, "rollout.prompt_length=40", "checkpoint.every_rows=3")
    jobs = {i: f"{ARRAY}_{i}" for i in range(3)}
    _record(layout, "submit", "slurm", jobs, [ARRAY], 1, {"rows_done_at_submit": 0})
    with slurm_env(0):
        run_shards(layout.root, [0], engine_factory=lambda s, p: LengthEngine(s, p))
    with slurm_env(1, 0):
        try:
            run_shards(layout.root, [1], engine_factory=lambda s, p: DiesAfter(s, p))
        except RuntimeError:
            pass
    with slurm_env(1, 1):
        run_shards(layout.root, [1], engine_factory=lambda s, p: LengthEngine(s, p))

    def broken(spec: Any, path: str) -> Any:
        raise RuntimeError("engine start failed: CUDA out of memory")

    with slurm_env(2):
        try:
            run_shards(layout.root, [2], engine_factory=broken)
        except RuntimeError:
            pass
    # submitit's logs: a requeued job appends to the same files
    for i in range(3):
        layout.log(jobs[i]).parent.mkdir(parents=True, exist_ok=True)
    starts = lambda r: (f"submitit INFO (2026-01-01 00:00:0{r},000) - Starting with JobEnvironment(job_id={jobs[1]})\n"  # noqa: E731
                        f"out of attempt r{r}\n")
    layout.log(jobs[1]).write_text(starts(0) + starts(1))
    layout.log(jobs[1], err=True).write_text(
        "import noise\n"
        f"2026 hpcgen.progress INFO hpcgen attempt {jobs[1]}.r0 started on n1\nRuntimeError: preempted: node reclaimed\n"
        f"2026 hpcgen.progress INFO hpcgen attempt {jobs[1]}.r1 started on n1\nall good in r1\n")
    layout.log(jobs[0]).write_text("shard 0 out\n")
    layout.log(jobs[0], err=True).write_text("shard 0 err\n")
    layout.log(jobs[2]).write_text("shard 2 out\n")
    layout.log(jobs[2], err=True).write_text(
        f"hpcgen attempt {jobs[2]}.r0 started\nTraceback (most recent call last):\n"
        "RuntimeError: engine start failed: CUDA out of memory\n")
    return layout.root


def fresh_observe_run(tmp: Path) -> Path:
    """build_observe_run on a new 30-row dataset and a stand-in model directory, as seen without sacct."""
    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp / "p.parquet", 30, variety=True, overlong_rows=[3, 14], row_group_size=8)
    model = tmp / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    run = build_observe_run(tmp, data, model)
    use_executor(run, "local")  # no sacct: shard 2 (no marker, job not alive) reads as failed
    return run


def use_executor(run_dir: Path, executor: str) -> None:
    """Rewrite the submission record's executor (local: no sacct, unknown pids read as failed)."""
    path = run_dir / "submissions" / "0001.json"
    sub = json.loads(path.read_text())
    sub["executor"] = executor
    path.write_text(json.dumps(sub))


def no_slurm_path(tmp: Path) -> str:
    """A PATH holding every command of this machine except SLURM's."""
    d = tmp / "noslurm"
    d.mkdir()
    slurm = {"sbatch", "srun", "sacct", "squeue", "scontrol", "scancel", "sinfo", "salloc", "sacctmgr"}
    for p in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(p):
            continue
        for name in os.listdir(p):
            src = os.path.join(p, name)
            if name not in slurm and not (d / name).exists() and os.access(src, os.X_OK):
                (d / name).symlink_to(src)
    return str(d)
