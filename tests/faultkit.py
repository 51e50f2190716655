"""Shared pieces of the fault tests on the real cluster (tests/test_faults.py, tests/test_steal_cluster.py): the
96-row dataset, the uninterrupted reference run, paced submissions, waiting on conditions."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import helpers
import pyarrow.parquet as pq
from helpers import hpcgen, part_files, write_job

ROWS = 96
SLOW = {"rollout": {"response_length": 48, "max_num_seqs": 4}, "checkpoint": {"every_rows": 4, "every_seconds": 5}}
# The faulted task pauses after each engine step (HPCGEN_TEST_STEP_DELAY_S in the submitting environment,
# which sbatch passes to the job and a requeued job keeps; a later `resume` runs unpaced), so that the fault
# lands mid-shard however fast this machine generates (96 rows take ~4 s unpaced on a quiet 2-core machine).
# Pacing does not change samples (per-row seeds), so the unpaced reference stays the reference.
PACE_S = "0.01"


def make_fault_data(tmp_path_factory) -> Path:
    from hpcgen_dev.datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("faults") / "d.parquet", ROWS, style="mixed", seed=11)


def make_reference(tiny_model: Path, fault_data: Path, tmp_path_factory) -> list[list[str]]:
    """The uninterrupted run: 3 shards, one local task, no stealing."""
    work = tmp_path_factory.mktemp("reference")
    job = write_job(work / "job.yaml", data=fault_data, model=tiny_model, **SLOW,
                    sharding={"num_shards": 3, "shards_per_task": 3, "steal": False})
    res = hpcgen("submit", str(job), "--executor", "local", "--wait", "--run-dir", str(work / "run"))
    assert res.returncode == 0, res.stderr
    return merged(work / "run", work / "ref.parquet")


def merged(run_dir: Path, out: Path) -> list[list[str]]:
    res = hpcgen("merge", str(run_dir), "--output", str(out))
    assert res.returncode == 0, res.stderr
    table = pq.read_table(out)
    assert table.num_rows == ROWS  # merge itself verified each row id exactly once with n responses
    return table.column("responses").to_pylist()


def start(tmp: Path, model: Path, data: Path, pace: str = PACE_S, **extra) -> Path:
    sections = {k: dict(v) for k, v in SLOW.items()}
    for k, v in extra.items():
        sections.setdefault(k, {}).update(v)
    job = write_job(tmp / "job.yaml", data=data, model=model, sharding={"num_shards": 1}, **sections)
    res = hpcgen("submit", str(job), "--run-dir", str(tmp / "run"), env={"HPCGEN_TEST_STEP_DELAY_S": pace})
    assert res.returncode == 0, res.stderr
    return tmp / "run"


def parts(run_dir: Path) -> dict[str, list[int]]:
    return {p.name: pq.read_table(p, columns=["row_id"]).column(0).to_pylist()
            for p in part_files(run_dir)}


wait_for = partial(helpers.wait_for, poll=1.0)


