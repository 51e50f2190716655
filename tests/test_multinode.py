"""Multi-node tasks on the throwaway cluster: two SLURM nodes (n1, n2, both on this host), one task per node.

vLLM's mp backend really splits the tiny model over both nodes (TP 2, one rank per node); the Ray bootstrap
is checked with a real Ray cluster over both nodes (the CPU build of vLLM refuses the Ray executor); a killed
node fails the task within a bounded time; and nothing is left running on any node afterwards. The last test
needs no cluster: the supervisor that guarantees the latter even when a task is SIGKILLed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import need
from helpers import REPO, hpcgen, part_files, status_json, wait_guard_scanned, write_job

slurm = pytest.mark.slurm

TWO_NODES = {"trainer": {"nnodes": 2, "n_gpus_per_node": 1}}


def job_processes(job_id: str, *marks: str) -> list[str]:
    """Processes here that belong to the job: its SLURM_JOB_ID in their environment (helpers, Ray) or a
    ``mark`` in their command line or open files (vLLM's processes retitle themselves, hiding their env)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            files = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env or any(m in x for m in marks for x in [cmd, *files]):
            found.append(f"{pid} {cmd[:150]}")
    return found


def wait_gone(job_id: str, timeout: float, *marks: str) -> float:
    """Seconds until the job left the queue and none of its processes remain on this host."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip()
        if not queued and not job_processes(job_id, *marks):
            return time.monotonic() - t0
        time.sleep(1)
    raise AssertionError(f"job {job_id} still running after {timeout:.0f} s: {job_processes(job_id, *marks)}")


def sacct_state(job_id: str) -> str:
    cmd = ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id]
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def rendezvous(run_dir: Path) -> tuple[Path, dict, dict]:
    folder = next((run_dir / "multinode").iterdir())
    return folder, *(json.loads((folder / f"node-{r}.json").read_text()) for r in (0, 1))


@pytest.fixture
def small_data(tmp_path):
    from hpcgen_dev.datasets import make_dataset

    return lambda rows: make_dataset(tmp_path / "prompts.parquet", rows)


@slurm
@pytest.mark.vllm
def test_tp2_across_two_nodes_generates_and_merges(cluster, tiny_model, small_data, tmp_path):
    """The 2-node demo job (mp backend): the head builds TP 2 over nnodes=2, n2 runs vLLM's headless worker
    (TP rank 1)."""
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    res = hpcgen("submit", str(REPO / "jobs" / "demo-2node.yaml"), f"data.path={small_data(6)}",
                 f"model.path={tiny_model}", f"data.output_path={tmp_path / 'out.parquet'}", "data.n_samples=1",
                 "rollout.response_length=8", "--run-dir", str(run_dir), "--wait", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    jid = json.loads((run_dir / "submissions" / "0001.json").read_text())["arrays"][0]
    done_s, cleanup_s = time.monotonic() - t0, wait_gone(jid, 120, str(run_dir))
    print(f"2-node TP2 run: {done_s:.0f} s to done; cleanup {cleanup_s:.0f} s more")
    assert sacct_state(jid) == "COMPLETED"
    folder, head, other = rendezvous(run_dir)
    assert (head["node"], head["state"], head["engine"]) == ("n1", "done", True)
    assert (other["node"], other["state"]) == ("n2", "exited")
    worker_log = (folder / "node-1.vllm.log").read_text()
    assert "world_size=2 rank=1" in worker_log and "TP rank 1" in worker_log
    assert "'nnodes': 2, 'node_rank': 0" in (run_dir / "logs" / jid / f"{jid}_0_log.err").read_text()

    res = hpcgen("merge", str(run_dir))
    assert res.returncode == 0, res.stderr
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(table) == 6
    for row in table:
        assert len(row["responses"]) == 1 and row["gen_error"] is None and row["response_tokens"][0] > 0, row


@slurm
def test_ray_cluster_forms_over_both_nodes_and_leaves_nothing(cluster, tmp_path):
    """The Ray bootstrap of a ray-backend task, on a real 2-node job: both raylets alive, one Ray task ran on
    each SLURM node, clean shutdown, no raylet/gcs_server/ray process of the job left on the host."""
    need(importlib.util.find_spec("ray") is not None, "ray (pip install 'ray[default]')")
    import submitit

    from hpcgen.task.multinode import ray_bootstrap_check

    ex = submitit.SlurmExecutor(folder=str(tmp_path / "logs" / "%j"), python=sys.executable)
    ex.update_parameters(nodes=2, ntasks_per_node=1, cpus_per_task=1, partition="gpu", time=10)
    t0 = time.monotonic()
    job = ex.submit(ray_bootstrap_check, str(tmp_path), 2, ("--object-store-memory=80000000",))
    head, other = job.results()
    done_s, cleanup_s = time.monotonic() - t0, wait_gone(job.job_id, 60, f"hpcgen-ray-{job.job_id}_")
    print(f"ray bootstrap job: {done_s:.0f} s; cleanup {cleanup_s:.0f} s more")
    assert head["alive_nodes"] == 2
    assert sorted(t["slurm_node"] for t in head["tasks"]) == ["n1", "n2"]
    assert len({t["node_id"] for t in head["tasks"]}) == 2
    assert other == {"node": 1, "host": "n2", "head": "done"}
    assert sacct_state(job.job_id) == "COMPLETED"
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if f"hpcgen-ray-{job.job_id}_" in line], ps
    assert not list(Path("/tmp").glob(f"hpcgen-ray-{job.job_id}_*"))  # removed after a clean run


@slurm
@pytest.mark.vllm
def test_killed_node_fails_the_task_promptly(cluster, tiny_model, small_data, tmp_path):
    """SIGKILL node n2's task while the head generates: the task fails (within a 120 s deadline; the time is
    printed), status names the node."""
    job = write_job(tmp_path / "job.yaml", data=small_data(24), model=tiny_model, **TWO_NODES,
                    rollout={"tensor_model_parallel_size": 2, "response_length": 16, "max_num_seqs": 2},
                    sharding={"num_shards": 1}, checkpoint={"every_rows": 1, "every_seconds": 1})
    run_dir = tmp_path / "run"
    res = hpcgen("submit", str(job), "data.n_samples=1", "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    jid = json.loads((run_dir / "submissions" / "0001.json").read_text())["arrays"][0]
    deadline = time.monotonic() + 600
    while not part_files(run_dir):  # generating across both nodes
        assert time.monotonic() < deadline, status_json(run_dir)
        time.sleep(1)
    _, _, other = rendezvous(run_dir)
    os.kill(other["pid"], signal.SIGKILL)
    took = wait_gone(jid, 120, str(run_dir))  # a deadline, not a measurement: the figure is printed
    print(f"task ended {took:.0f} s after node n2's task was killed")
    assert sacct_state(jid) in ("FAILED", "CANCELLED")
    shard = status_json(run_dir)["shards"][0]
    assert shard["state"] == "failed" and 0 < shard["rows_done"] < 24, shard
    assert shard["last_error"].startswith("NodeFailure: node n2 (rank 1)"), shard


@slurm
def test_two_node_order_dry_run(cluster, tmp_path):
    """verl's 2-node order: one task over 2 nodes x 8 GPUs, one srun task per node."""
    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp_path / "prompts.parquet", 4)
    res = hpcgen("submit", str(REPO / "jobs" / "deepseek7b-gsm8k-2node.yaml"), f"data.path={data}",
                 "--run-dir", str(tmp_path / "run"), "--dry-run", env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1"):
        assert line in res.stdout, res.stdout
    assert not (tmp_path / "run").exists()


def test_supervisor_cleans_up_when_the_task_is_killed(tmp_path):
    """No SLURM: a 'task' spawns a supervised helper and its own child (as the head's in-process engine), then
    dies by SIGKILL. Both are gone within seconds and the task's heartbeat file says it failed."""
    script = f"""
import subprocess, sys, time
from hpcgen.task.multinode import Rendezvous
rdv = Rendezvous({str(tmp_path)!r}, "7.r0", 0, ["n1", "n2"])
helper = rdv.spawn(["sleep", "301"], "helper")
guard = rdv.spawn([], "guard")
engine = subprocess.Popen(["sleep", "302"])
print(helper.pid, engine.pid, guard.pid, flush=True)
time.sleep(300)
"""
    task = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        helper_pid, engine_pid, guard_pid = map(int, task.stdout.readline().split())
        wait_guard_scanned(guard_pid)  # the guard has seen the engine

        def sleeps() -> list[int]:  # this test's own helper and engine, whatever else runs on the machine
            import psutil

            return [p for p in (helper_pid, engine_pid) if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

        assert len(sleeps()) == 2
        task.kill()
        task.wait()
        deadline = time.monotonic() + 10
        while sleeps() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        task.kill()
    assert not sleeps()
    record = json.loads((tmp_path / "multinode" / "7.r0" / "node-0.json").read_text())
    assert record["state"] == "failed" and record["error"] == f"its task process (pid {task.pid}) died"
