"""The scheduler side on the real throwaway cluster: accounting really unavailable (slurmdbd stopped), the
chained merge+score step after a resume while the old array still runs (run directory with spaces and quotes,
real vLLM), and array_parallelism held over the whole run by the real sbatch (held arrays)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from functools import partial

import helpers
import pyarrow.parquet as pq
import pytest
from helpers import REPO, hpcgen, make_run, part_files, status_json, write_job

pytestmark = pytest.mark.slurm


wait_for = partial(helpers.wait_for, poll=1.0)


def squeue(*jobs: str) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(jobs)],
                         capture_output=True, text=True).stdout
    return dict(line.split("|", 1) for line in out.split())


def scontrol(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout


def sacct_works() -> bool:
    return subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True).returncode == 0


@pytest.fixture
def accounting_down(cluster):
    """slurmdbd stopped for the test (sacct fails as with accounting off or broken), restarted afterwards."""
    from hpcgen_dev import cluster as cl

    pid = cl._alive(cluster.state_dir)["slurmdbd"]
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: "slurmdbd" not in cl._alive(cluster.state_dir), 60, "slurmdbd to stop")
        wait_for(lambda: not sacct_works(), 30, "sacct to fail")
        yield
    finally:
        cl.up(cluster.state_dir)
        wait_for(sacct_works, 120, "sacct to answer again")


def test_accounting_unavailable(cluster, accounting_down, fake_model, tmp_path):
    """With sacct failing: running tasks read running (squeue), --wait ends when they fail, and once the
    controller has forgotten the jobs (MinJobAge) the shards are 'unknown' with a reason and resume takes
    them. The task's "python" is a script that runs 15 s and fails without a trace (no attempt record)."""
    fake_python = tmp_path / "fakepython"
    fake_python.write_text("#!/bin/sh\nsleep 15\nexit 3\n")
    fake_python.chmod(0o755)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(4)))
    job = write_job(tmp_path / "job.yaml", data=data, model=fake_model, sharding={"num_shards": 2},
                    slurm={"python": str(fake_python), "array_parallelism": 2, "time": "5"})
    run_dir = tmp_path / "run"
    waiting = subprocess.Popen([str(REPO / ".venv/bin/hpcgen"), "submit", str(job), "--wait", "--run-dir", str(run_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HPCGEN_POLL_SECONDS": "1"})
    try:
        wait_for(lambda: (run_dir / "submissions" / "0001.json").exists(), 120, "the submission", poll=0.2)
        st = wait_for(lambda: (s := status_json(run_dir)) and [x["state"] for x in s["shards"]] == ["running"] * 2
                      and s, 120, "both shards running (from squeue)", poll=0.5)
        assert st["sacct_calls"] == 1 and st["squeue_calls"] == 1 and st["scheduler_answered"]
        out, err = waiting.communicate(timeout=300)  # it used to wait forever
    finally:
        waiting.kill()
    assert waiting.returncode == 6, err
    assert out.strip().splitlines()[-1] == str(run_dir)
    arrays = json.loads((run_dir / "submissions" / "0001.json").read_text())["arrays"]
    wait_for(lambda: not squeue(*arrays), 300, "the controller to forget the jobs (MinJobAge)", poll=3)
    st = status_json(run_dir)
    assert [s["state"] for s in st["shards"]] == ["unknown"] * 2, st
    assert all("known to neither sacct nor squeue" in s["reason"] and "never started a task" in s["reason"]
               for s in st["shards"])
    res = hpcgen("resume", str(run_dir))
    assert res.returncode == 0 and "resubmitted 2 shard(s)" in res.stderr, res.stderr
    second = json.loads((run_dir / "submissions" / "0002.json").read_text())
    assert sorted(second["jobs"]) == ["0", "1"]
    res = hpcgen("cancel", str(run_dir))
    assert res.returncode == 0, res.stderr
    wait_for(lambda: not {"PENDING", "RUNNING"} & set(squeue(*second["arrays"]).values()), 60, "cancelled")


@pytest.mark.vllm
def test_chain_waits_for_the_old_array_after_resume(cluster, tiny_model, tmp_path):
    """score.after_merge, 2 shards: shard 1's task is suspended (still running for SLURM), shard 0's is
    cancelled, resume queues shard 0 again and a new merge+score step. When the new array has succeeded, the
    step must still wait for the old task of shard 1; once it ends, merge+score completes. The run directory
    has spaces and quotes: sbatch reads the quoted paths (logs land inside it)."""
    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp_path / "d.parquet", 24, style="gsm8k", seed=5)
    # no stealing: the resumed task must leave the suspended task's shard to it
    job = write_job(tmp_path / "job.yaml", data=data, model=tiny_model, sharding={"num_shards": 2, "steal": False},
                    rollout={"response_length": 8, "max_num_seqs": 2}, checkpoint={"every_rows": 2},
                    slurm={"array_parallelism": 2}, score={"after_merge": True})
    run_dir = tmp_path / "it's a \"run\" dir"
    res = hpcgen("submit", str(job), "--run-dir", str(run_dir), env={"HPCGEN_TEST_STEP_DELAY_S": "0.5"})
    assert res.returncode == 0, res.stderr
    old = json.loads((run_dir / "submissions" / "0001.json").read_text())["jobs"]
    try:
        wait_for(lambda: part_files(run_dir, 0) and part_files(run_dir, 1), 600, "both shards generating", poll=0.5)
        subprocess.run(["scontrol", "suspend", old["1"]], check=True, capture_output=True)
        subprocess.run(["scancel", old["0"]], check=True, capture_output=True)
        wait_for(lambda: status_json(run_dir)["shards"][0]["state"] == "cancelled", 120, "shard 0 cancelled")
        assert squeue(old["1"]) == {old["1"]: "SUSPENDED"} and status_json(run_dir)["shards"][1]["state"] == "running"
        res = hpcgen("resume", str(run_dir))
        assert res.returncode == 0 and "resubmitted 1 shard(s)" in res.stderr, res.stderr
        sub = json.loads((run_dir / "submissions" / "0002.json").read_text())
        new_array, chain = sub["arrays"][0], sub["chain_job"]
        old_array = old["1"].split("_")[0]
        assert f"afterany:{old_array}_*(unfulfilled)" in scontrol(chain)
        wait_for(lambda: status_json(run_dir)["shards"][0]["state"] == "done", 600, "shard 0 done again")
        wait_for(lambda: f"afterok:{new_array}" not in scontrol(chain), 120, "the new array's dependency fulfilled")
        info = scontrol(chain)
        assert "JobState=PENDING" in info and f"Dependency=afterany:{old_array}_*(unfulfilled)" in info, info
        subprocess.run(["scontrol", "resume", old["1"]], check=True, capture_output=True)
        st = wait_for(lambda: (s := status_json(run_dir))["chain"]["state"] in ("done", "failed", "cancelled") and s,
                      600, "the merge+score step to end", poll=2)
        assert st["chain"]["state"] == "done" and st["complete"], st
        assert json.loads((run_dir / "scores.json").read_text())["overall"]["rows"] == 24
        assert pq.read_metadata(tmp_path / "out.parquet").num_rows == 24
        assert list((run_dir / "logs").glob(f"{old['1']}/*_log.out"))  # sbatch wrote where the quoted path says
    finally:  # a failure must not leave a suspended job holding a node
        hpcgen("cancel", str(run_dir))


def test_array_parallelism_holds_over_the_run_on_the_scheduler(cluster, fake_model, tmp_path, monkeypatch):
    """MaxArraySize is 1001 here: with a stand-in of 4, 10 tasks make 3 arrays. The real sbatch gets %2 each
    for array_parallelism=6, and for array_parallelism=2 arrays that wait for each other (held, then
    cancelled: nothing runs)."""
    import pyarrow as pa

    from hpcgen.login import launch
    from hpcgen.rundir.manifest import load_manifest, spec_from_manifest

    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(10)]}), tmp_path / "in.parquet")
    run = make_run(tmp_path, tmp_path / "in.parquet", fake_model, "sharding.num_shards=10")
    monkeypatch.setattr(launch, "max_array_size", lambda: 4)
    arrays: list[str] = []
    try:
        for cap, throttles in ((6, ["2", "2", "2"]), (2, ["2", "2", "2"])):
            spec = spec_from_manifest(load_manifest(run.root))
            spec.slurm.array_parallelism = cap
            spec.slurm.additional["hold"] = True
            sub = launch.submit_groups(run, spec, [[i] for i in range(10)], executor="slurm", kind="submit")
            arrays += sub.arrays
            infos = [scontrol(a) for a in sub.arrays]
            assert [re.search(r"ArrayTaskThrottle=(\d+)", i)[1] for i in infos] == throttles
            deps = [re.search(r"Dependency=(\S+)", i)[1] for i in infos]
            if cap == 6:
                assert deps == ["(null)"] * 3
            else:
                assert deps == ["(null)", f"afterany:{sub.arrays[0]}_*(unfulfilled)",
                                f"afterany:{sub.arrays[1]}_*(unfulfilled)"]
    finally:
        subprocess.run(["scancel", *arrays], capture_output=True)
