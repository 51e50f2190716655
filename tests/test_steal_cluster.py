"""Work stealing on the real throwaway cluster with real vLLM: a task that finished its shard generates rows of
another task's shard; a thief killed with kill -9 mid-chunk has that chunk finished by another task; `resume
--tasks` spreads what is left over any number of tasks; `scale` adds a task to a running run. Every merged
output equals the static, uninterrupted reference sample for sample (T=1.0, per-row seeds)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from faultkit import SLOW, merged, wait_for
from helpers import hpcgen, part_files, status_json, write_job

from hpcgen.rundir import atomic

pytestmark = [pytest.mark.slurm, pytest.mark.vllm]


def submit(tmp: Path, model: Path, data: Path, pace: str, sharding: dict, env: dict | None = None, **extra) -> Path:
    job = write_job(tmp / "job.yaml", data=data, model=model, **SLOW, sharding=sharding, **extra)
    res = hpcgen("submit", str(job), "--run-dir", str(tmp / "run"), env={"HPCGEN_TEST_STEP_DELAY_S": pace,
                                                                         **(env or {})})
    assert res.returncode == 0, res.stderr
    return tmp / "run"


def tasks(run: Path) -> dict[str, dict]:
    """job id -> the task attempt's record (heartbeat, own shards, rows per shard)."""
    recs = [atomic.read_json(p) for p in (run / "progress").glob("*.json")]
    return {r["job_id"]: r for r in recs}


def rows_of(path: Path) -> list[int]:
    return pq.read_table(path, columns=["row_id"]).column(0).to_pylist()


def all_done(run: Path) -> bool:
    st = status_json(run)
    return st["complete"] or (all(s["state"] in ("done", "failed", "cancelled") for s in st["shards"]) and st)


def test_thief_takes_the_slow_shards_tail_and_its_chunk_survives_kill_9(cluster, tiny_model, fault_data, reference,
                                                                        tmp_path):
    """Shard 0's task is slow (paced 60 ms per engine step), shard 1's fast (20 ms): the fast task finishes and
    takes chunks from the far end of shard 0. It is killed with kill -9 after saving part of a stolen chunk;
    shard 0's owner takes that chunk over (the holder's pid is dead on this host) without redoing its rows."""
    run = submit(tmp_path, tiny_model, fault_data, "0=0.06,1=0.02", {"num_shards": 2, "rows_per_chunk": 8})

    def stolen_midway():
        for job, rec in tasks(run).items():
            if rec.get("own") != [1]:
                continue
            tag = job.replace(".", "-")
            for lease in (run / "work" / "s000000").glob("c*.g0.lease"):
                chunk = lease.name.split(".")[0]
                if lease.read_text() != job or (run / "work" / "s000000" / f"{chunk}.done.json").exists():
                    continue
                saved = [p for p in part_files(run, 0) if p.name.startswith(chunk + ".") and f".{tag}." in p.name]
                if saved:
                    return rec, chunk, saved
        return None

    thief, chunk, saved = wait_for(stolen_midway, 600, "the fast task saving rows of a stolen chunk", poll=0.2)
    os.kill(thief["pid"], signal.SIGKILL)  # mid-chunk: some of the chunk's rows saved, the lease still held
    before = {p.name: rows_of(p) for p in saved}
    wait_for(lambda: all_done(run), 600, "the run to finish", poll=2)
    st = status_json(run)
    assert [s["state"] for s in st["shards"]] == ["done", "done"], st["shards"]
    taken = run / "work" / "s000000" / f"{chunk}.g1.lease"
    assert taken.exists() and taken.read_text() != thief["job_id"]  # the owner took the thief's chunk over
    assert all(rows_of(run / "work" / "s000000" / n) == ids for n, ids in before.items())
    redone = [i for p in part_files(run, 0) if p.name.startswith(chunk + ".") and p.name not in before
              for i in rows_of(p)]
    assert not set(redone) & {i for ids in before.values() for i in ids}  # saved rows not generated again
    assert merged(run, tmp_path / "a.parquet") == reference


def test_resume_with_fewer_tasks_than_shards(cluster, tiny_model, fault_data, reference, tmp_path):
    """A 5-shard run whose tasks never started (held, then cancelled) resumed as 3 tasks sharing the 5 shards."""
    # held through sbatch's environment (SBATCH_HOLD) for this submission only: the resume's array is not held
    run = submit(tmp_path, tiny_model, fault_data, "0", {"num_shards": 5}, env={"SBATCH_HOLD": "1"})
    assert hpcgen("cancel", str(run)).returncode == 0
    wait_for(lambda: all(s["state"] == "cancelled" for s in status_json(run)["shards"]), 120, "cancelled")
    res = hpcgen("resume", str(run), "--tasks", "3", "--wait")
    assert res.returncode == 0, res.stderr
    assert "5 shard(s) as 3 task(s)" in res.stderr
    sub = atomic.read_json(run / "submissions" / "0002.json")
    assert len(set(sub["jobs"].values())) == 3 and sub["kind"] == "resume"
    assert merged(run, tmp_path / "a.parquet") == reference


def test_scale_adds_a_task_that_takes_work_from_a_running_run(cluster, tiny_model, fault_data, reference, tmp_path):
    run = submit(tmp_path, tiny_model, fault_data, "0.03", {"num_shards": 1, "rows_per_chunk": 8})
    wait_for(lambda: part_files(run, 0), 600, "the first saved rows", poll=0.5)
    res = hpcgen("scale", str(run), "+1")
    assert res.returncode == 0, res.stderr
    added = atomic.read_json(run / "submissions" / "0002.json")
    assert added["kind"] == "scale" and len(added["extra_tasks"]) == 1
    job = added["extra_tasks"][0]
    assert job in status_json(run)["extra_tasks"]
    wait_for(lambda: all_done(run), 600, "the run to finish", poll=2)
    helper = [rec for rec in tasks(run).values() if rec["job_id"].startswith(job + ".")]
    assert helper and helper[0]["shards"].get("0", {}).get("rows", 0) > 0  # the added task did work on shard 0
    assert status_json(run)["shards"][0]["state"] == "done"
    assert merged(run, tmp_path / "a.parquet") == reference
