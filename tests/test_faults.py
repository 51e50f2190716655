"""Fault matrix on the real throwaway cluster with real vLLM: every case ends in a complete merge with no row
lost, none duplicated, no saved row generated twice, and the very same samples (T=1.0, per-row seeds) as an
uninterrupted run with a different number of shards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faultkit import PACE_S, ROWS, SLOW, merged, parts, start, wait_for  # noqa: F401
from helpers import REPO, hpcgen, part_files, status_json

from hpcgen.rundir import atomic

pytestmark = [pytest.mark.slurm, pytest.mark.vllm]

def saved_rows(run_dir: Path) -> int:
    return sum(len(v) for v in parts(run_dir).values())


def attempt_records(run_dir: Path) -> list[dict]:
    return [atomic.read_json(p) for p in sorted((run_dir / "attempts").glob("*.json"))]


def kill_tree(pid: int) -> None:
    """SIGKILL a task process and everything it started (what a lost node or an OOM kill does; under
    proctrack/linuxproc SLURM would not reap the orphaned engine processes)."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def check_no_regeneration(before: dict[str, list[int]], after: dict[str, list[int]]) -> None:
    assert all(after.get(name) == ids for name, ids in before.items()), "a saved part changed"
    old = {i for ids in before.values() for i in ids}
    new = [i for name, ids in after.items() if name not in before for i in ids]
    assert not old & set(new), "rows saved before the fault were generated again"


def test_kill_9_worker_then_resume_and_corrupt_part(cluster, tiny_model, fault_data, reference, tmp_path):
    import psutil

    run_dir = start(tmp_path, tiny_model, fault_data)
    wait_for(lambda: saved_rows(run_dir) >= 8, 600, "first saved rows")
    worker = psutil.Process(attempt_records(run_dir)[-1]["pid"])
    engine = worker.children(recursive=True)  # vLLM's engine core (and hpcgen's guard)
    assert engine
    worker.kill()  # kill -9 of the worker process only: its guard takes the orphaned engine down with it
    gone, alive = psutil.wait_procs(engine, timeout=30)
    assert not alive, f"left behind after kill -9: {[p.cmdline() for p in alive]}"
    st = wait_for(lambda: (s := status_json(run_dir)["shards"][0])["state"] == "failed" and s, 120, "failed state")
    assert st["rows_done"] < ROWS and st["log"]
    before = parts(run_dir)
    res = hpcgen("resume", str(run_dir), "--wait")
    assert res.returncode == 0, res.stderr
    check_no_regeneration(before, parts(run_dir))
    assert merged(run_dir, tmp_path / "a.parquet") == reference
    # parts of the done shard changed after its marker: one truncated, one rewritten as valid parquet with
    # other answers (same name), one with a bit flipped. Never merged; resume regenerates exactly their rows
    # (it does not re-bless them), keeps them aside, and the samples are the reference's again.
    victims = part_files(run_dir)[:3]
    before = parts(run_dir)
    changed = {i for v in victims for i in before[v.name]}
    victims[0].write_bytes(victims[0].read_bytes()[:100])
    forged = pq.read_table(victims[1]).to_pylist()
    forged[0]["responses"] = ["forged answer"] * 2
    pq.write_table(pa.Table.from_pylist(forged, schema=pq.read_schema(victims[1])), victims[1])
    data = bytearray(victims[2].read_bytes())
    data[len(data) // 2] ^= 1
    victims[2].write_bytes(bytes(data))
    res = hpcgen("merge", str(run_dir), "--output", str(tmp_path / "b.parquet"))
    assert res.returncode == 2 and "does not match its checksum" in res.stderr and "hpcgen resume" in res.stderr
    assert not (tmp_path / "b.parquet").exists()
    res = hpcgen("resume", str(run_dir), "--wait")
    assert res.returncode == 0, res.stderr
    assert "no longer verify" in res.stderr
    after = parts(run_dir)
    regenerated = sorted(i for name, ids in after.items() if name not in before for i in ids)
    assert regenerated == sorted(changed)  # exactly the changed parts' rows, each once
    assert all(list(v.parent.glob(v.name + ".corrupt.*")) for v in victims)  # kept for inspection
    assert merged(run_dir, tmp_path / "c.parquet") == reference
    res = hpcgen("resume", str(run_dir))  # resume and merge agree: nothing left to do
    assert res.returncode == 0 and "nothing to resume" in res.stderr, res.stderr


def test_scontrol_requeue_continues_without_resume(cluster, tiny_model, fault_data, reference, tmp_path):
    run_dir = start(tmp_path, tiny_model, fault_data)
    wait_for(lambda: saved_rows(run_dir) >= 8, 600, "first saved rows", poll=0.2)
    job = status_json(run_dir)["shards"][0]["job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    before = parts(run_dir)
    assert sum(map(len, before.values())) < ROWS and not (run_dir / "done" / "s000000.json").exists(), (
        "the shard finished before the requeue: the test did not exercise a requeue")
    wait_for(lambda: status_json(run_dir)["shards"][0]["state"] == "done", 900, "done after requeue", poll=3)
    check_no_regeneration(before, parts(run_dir))
    assert len(attempt_records(run_dir)) == 2  # same job id, restart count 1
    assert merged(run_dir, tmp_path / "a.parquet") == reference
    # merges while another process holds the run's lock: every one refuses (4) naming it, nothing written
    out = tmp_path / "race.parquet"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / ".lock.d")], stdout=subprocess.PIPE,
                              stdin=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    merge = [str(REPO / ".venv/bin/hpcgen"), "merge", str(run_dir), "--output", str(out)]
    procs = [subprocess.Popen(merge, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 4, err
        assert f"is locked by resume (pid {holder.pid} on " in err and "try again when it finishes" in err, err
    assert not out.exists()
    holder.communicate("release\n", timeout=30)
    # then merges racing each other: one at least succeeds, the others refuse clearly; the output is intact
    procs = [subprocess.Popen(merge, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        codes.append(p.returncode)
        assert p.returncode == 0 or (p.returncode == 4 and "is locked by merge" in err), err
    assert 0 in codes
    assert pq.read_table(out).column("responses").to_pylist() == reference


HOLD_LOCK = """
import sys
from pathlib import Path
from hpcgen.rundir.lock import Lock
with Lock(Path(sys.argv[1]), "resume"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_time_limit_finishes_through_requeues(cluster, tiny_model, fault_data, reference, tmp_path):
    """A 3-minute limit with the warning 90 s before it (SLURM may send it up to 60 s earlier, so a run does
    at most ~75 s of work after its ~15 s engine start) and a shard paced to ~100 s of work (the 96 fault
    rows three times, one row at a time, 7 ms after each engine step): the shard needs several runs and
    gets them, each continuing from the last. Rows 0-95 are the reference rows (same prompts, same row ids,
    so same seeds): their samples equal the uninterrupted run's."""
    table = pq.read_table(fault_data)
    data = tmp_path / "thrice.parquet"
    pq.write_table(pa.concat_tables([table] * 3), data)
    run_dir = start(tmp_path, tiny_model, data, pace="0.007", rollout={"max_num_seqs": 2},
                    slurm={"time": "3", "signal_delay_s": 90, "max_requeues": 10})
    wait_for(lambda: status_json(run_dir)["shards"][0]["state"] in ("done", "failed"), 1500, "end", poll=5)
    st = status_json(run_dir)["shards"][0]
    assert st["state"] == "done", st
    assert st["attempts"] >= 2  # it really was cut by the limit and continued
    res = hpcgen("merge", str(run_dir), "--output", str(tmp_path / "a.parquet"))
    assert res.returncode == 0, res.stderr
    responses = pq.read_table(tmp_path / "a.parquet").column("responses").to_pylist()
    assert len(responses) == 3 * ROWS  # merge verified each row id exactly once with n responses
    assert responses[:ROWS] == reference


def test_lost_node_then_resume(cluster, tiny_model, fault_data, reference, tmp_path):
    """slurmd of the task's node dies together with the task (a lost node); after it returns, resume."""
    from hpcgen_dev import cluster as cl

    run_dir = start(tmp_path, tiny_model, fault_data)
    wait_for(lambda: saved_rows(run_dir) >= 8, 600, "first saved rows")
    job = status_json(run_dir)["shards"][0]["job_id"]
    node = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True).stdout.strip()
    assert node in ("n1", "n2")
    try:
        slurmd_pid = cl._alive(cluster.state_dir)[f"slurmd-{node}"]
        os.kill(slurmd_pid, signal.SIGKILL)
        kill_tree(attempt_records(run_dir)[-1]["pid"])  # the node's processes die with it
        wait_for(lambda: f"slurmd-{node}" not in cl._alive(cluster.state_dir), 30, f"slurmd-{node} to die")
        before = parts(run_dir)

        def lost() -> bool:  # DOWN, or at least flagged not responding (`*`) by the controller's pings
            st = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True).stdout.strip()
            return st.startswith("down") or st.endswith("*")

        wait_for(lost, 240, f"the controller to see {node} lost (SlurmdTimeout)")
        # A loaded controller may take longer than SlurmdTimeout to move a not-responding node to DOWN: do what
        # its next ping would, so the job ends NODE_FAIL either way.
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=lost-node-test"],
                       capture_output=True, text=True)
    finally:
        cl.up()  # the node returns (and a failure here leaves no dead node to later tests)
    res = hpcgen("resume", str(run_dir), "--wait")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: status_json(run_dir)["shards"][0]["state"] == "done", 900, "done", poll=3)
    check_no_regeneration(before, parts(run_dir))
    assert merged(run_dir, tmp_path / "a.parquet") == reference
