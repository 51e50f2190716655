"""The throwaway SLURM cluster really schedules: arrays with sacct states, 2-node jobs, idempotent up()."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hpcgen_dev import cluster as cl

pytestmark = pytest.mark.slurm

TIMEOUT = 180


def _sacct_states(job_id: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-j", job_id, "--parsable2", "-n", "-o", "JobID,State"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    rows = (line.split("|") for line in out.splitlines() if line.strip())
    return {jid: state for jid, state in rows if "." not in jid}  # allocations only, not .batch/.0 steps


def _wait_for(pred, what: str, timeout: float = TIMEOUT):
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}\n{cl.status()}")
        time.sleep(1)


def _executor(folder: Path, **params):
    import submitit  # a core dependency: missing is a failure, not a skip
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(slurm_partition="gpu", timeout_min=10, mem_gb=1, cpus_per_task=1, **params)
    return ex


def test_job_array_states_via_sacct_and_results(cluster, tmp_path: Path) -> None:
    ex = _executor(tmp_path, slurm_array_parallelism=8)
    jobs = ex.map_array(cl.whoami, list(range(6)))
    assert len(jobs) == 6
    array_id = jobs[0].job_id.split("_")[0]
    assert all(j.job_id.startswith(array_id + "_") for j in jobs)

    _wait_for(lambda: all(j.done() for j in jobs), "the array to finish")
    results = [j.result() for j in jobs]
    assert [r[0] for r in results] == list(range(6))
    assert {r[1] for r in results} <= set(cluster.nodes)
    assert sorted(int(r[2]) for r in results) == list(range(6))  # SLURM_ARRAY_TASK_ID in each task

    # submitit reads job states through sacct: accounting must know the tasks as COMPLETED
    def states_done() -> bool:
        jobs[0].watcher.update()
        return all(j.state == "COMPLETED" for j in jobs)

    _wait_for(states_done, f"submitit states COMPLETED, got {[j.state for j in jobs]}", timeout=60)
    assert jobs[0].watcher.num_calls > 0
    states = _wait_for(lambda: (s := _sacct_states(array_id)) and len(s) == 6 and s, "sacct rows", 60)
    assert set(states) == {f"{array_id}_{i}" for i in range(6)}
    assert set(states.values()) == {"COMPLETED"}, states


def test_two_node_job_sees_both_nodes(cluster, tmp_path: Path) -> None:
    cmd = ["srun", "-N2", "--ntasks-per-node=1", "-p", cluster.partition, "printenv", "SLURMD_NODENAME"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert sorted(out.split()) == ["n1", "n2"]
    hosts = subprocess.run(["srun", "-N2", "--ntasks-per-node=1", "bash", "-c",
                            "scontrol show hostnames $SLURM_JOB_NODELIST"],
                           capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert sorted(hosts) == ["n1", "n1", "n2", "n2"]
    assert {socket.gethostbyname(h) for h in hosts} == {"127.0.0.1"}  # node names resolve (as addresses)

    ex = _executor(tmp_path, nodes=2, tasks_per_node=1)
    job = ex.submit(cl.whoami, "multi")
    _wait_for(job.done, "the 2-node job")
    results = job.results()
    assert len(results) == 2
    assert sorted(r[1] for r in results) == ["n1", "n2"]
    assert {r[0] for r in results} == {"multi"}


def test_up_is_idempotent_and_quick(cluster) -> None:
    before = cl._alive(cluster.state_dir)
    assert len(before) == len(cl._daemons(cluster.state_dir))
    t0 = time.monotonic()
    again = cl.up(cluster.state_dir)
    assert time.monotonic() - t0 < 5
    assert again == cluster
    assert cl._alive(cluster.state_dir) == before  # nothing restarted, nothing duplicated
    procs = [argv for _, argv, env in cl._procs() if cl._is_ours(cluster.state_dir, env)
             and argv and os.path.basename(argv[0]) == "slurmd"]
    assert len(procs) == 2
    assert cl._healthy(cluster.state_dir), cl.status(cluster.state_dir)


def test_up_restarts_a_dead_slurmd(cluster) -> None:
    old = cl._alive(cluster.state_dir)["slurmd-n2"]
    os.kill(old, signal.SIGKILL)
    _wait_for(lambda: "slurmd-n2" not in cl._alive(cluster.state_dir), "slurmd-n2 to die", 20)
    cl.up(cluster.state_dir)
    new = cl._alive(cluster.state_dir).get("slurmd-n2")
    assert new is not None and new != old
    out = subprocess.run(["srun", "-w", "n2", "printenv", "SLURMD_NODENAME"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["n2"]
