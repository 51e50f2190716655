"""Issue 13 on the throwaway SLURM cluster with real vLLM: one small shared run of 3 shards where shard 1 is
requeued (``scontrol requeue``, what preemption does) and shard 2's task is killed with SIGKILL as soon as it
starts (before its engine loads: cheap), watched by ``status --watch`` through a sacct shim that counts
calls. Then ``status --json``, ``logs`` and ``report`` (opened in headless Chromium) on it. And one local
run on a PATH without SLURM's commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, hpcgen, status_json, wait_for, write_job
from observe_helpers import STATUS_FIELDS, no_slurm_path

pytestmark = [pytest.mark.slurm, pytest.mark.vllm]


def attempt(run: Path, shard: int) -> dict | None:
    recs = [json.loads(p.read_text()) for p in (run / "attempts").glob(f"s{shard:06d}.*.json")]
    return min(recs, key=lambda r: r["started"]) if recs else None


@pytest.fixture(scope="module")
def observed(cluster, tiny_model, tmp_path_factory) -> dict:
    from hpcgen_dev.datasets import make_dataset

    work = tmp_path_factory.mktemp("observed")
    data = make_dataset(work / "p.parquet", 24, style="gsm8k", seed=5)
    # no stealing: the failed shard must stay failed for status, logs and the report to show it
    job = write_job(work / "job.yaml", data=data, model=tiny_model, sharding={"num_shards": 3, "steal": False},
                    rollout={"response_length": 8, "max_num_seqs": 4}, checkpoint={"every_rows": 2},
                    slurm={"array_parallelism": 3}, env={"HPCGEN_TEST_STEP_DELAY_S": "0.05"})
    run = work / "run"
    res = hpcgen("submit", str(job), "--run-dir", str(run))
    assert res.returncode == 0, res.stderr
    # status --watch for the whole run, not a terminal: plain lines; sacct counted by a shim
    shims, calls = work / "bin", work / "sacct-calls"
    shims.mkdir()
    (shims / "sacct").write_text(f"#!/bin/sh\necho call >> {calls}\nexec {shutil.which('sacct')} \"$@\"\n")
    (shims / "sacct").chmod(0o755)
    watch = subprocess.Popen([sys.executable, "-m", "hpcgen", "status", str(run), "--watch", "--interval", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"})
    # shard 2: SIGKILL as soon as its task starts; shard 1: requeued once it is under way
    killed = wait_for(lambda: attempt(run, 2), 600, "shard 2's task to start")
    os.kill(killed["pid"], signal.SIGKILL)
    first = wait_for(lambda: attempt(run, 1), 600, "shard 1's task to start")
    subprocess.run(["scontrol", "requeue", first["job_id"].split(".")[0]], check=True, capture_output=True)
    wait_for(lambda: [s["state"] for s in status_json(run)["shards"]] == ["done", "done", "failed"], 900,
             "shards 0 and 1 done, shard 2 failed", poll=3)
    out, err = watch.communicate(timeout=120)  # it stops by itself once nothing runs
    return {"run": run, "watch_rc": watch.returncode, "watch_out": out, "watch_err": err,
            "sacct_calls": len(calls.read_text().splitlines()), "killed": killed, "requeued": first, "work": work}


def test_status_json_on_a_requeued_and_a_failed_shard(observed):
    st = status_json(observed["run"])
    assert STATUS_FIELDS <= set(st), STATUS_FIELDS - set(st)
    assert st["format"] == "hpcgen-status/1" and st["counts"] == {"done": 2, "failed": 1}
    tasks = {t["job_id"]: t for t in st["tasks"]}
    requeued = observed["requeued"]["job_id"]
    base = requeued.split(".")[0]
    assert tasks[requeued]["state"] == "requeued" and tasks[f"{base}.r1"]["state"] == "done"
    assert tasks[observed["killed"]["job_id"]]["state"] == "lost"  # SIGKILL: no end record
    assert st["rows_generated"] >= st["rows_done"] == 16
    assert st["output_tokens"] > 0 and 0 < st["length_share"] <= 1 and st["samples"] >= 32
    assert st["gpu_hours"] > 0 and all(t["gpus"] == 1 for t in st["tasks"])
    assert st["elapsed_seconds"] > 0 and st["rows_per_second"] > 0 and st["tokens_per_second"] > 0
    assert st["error_rows"] == 0 and st["eta_seconds"] is None
    failed = st["shards"][2]
    assert failed["logs_command"] == f"hpcgen logs {observed['run']} 2 --err" and failed["last_error"]


def test_logs_prints_the_failed_shards_error_line(observed):
    st = status_json(observed["run"])
    res = hpcgen("logs", str(observed["run"]), "--err")  # default: the first failed shard, latest attempt
    assert res.returncode == 0, res.stderr
    assert st["shards"][2]["last_error"] in res.stdout
    assert re.search(r"killed|error", st["shards"][2]["last_error"], re.I)
    res = hpcgen("logs", str(observed["run"]), "1", "--attempt", "1")
    assert res.returncode == 0 and "Starting with JobEnvironment" in res.stdout
    assert res.stdout.count("Starting with JobEnvironment") == 1  # only the first of the requeued job's starts


def test_watch_updated_through_the_run_with_one_sacct_call_per_refresh(observed):
    assert observed["watch_rc"] == 0, observed["watch_err"]
    lines = observed["watch_out"].strip().splitlines()
    assert len(lines) >= 3 and all(re.match(r"\d\d:\d\d:\d\d \d+/24 rows", x) for x in lines), lines
    assert any("running=" in x for x in lines) and "done=2 failed=1" in lines[-1]
    assert 1 <= observed["sacct_calls"] <= len(lines)


def test_report_timeline_shows_the_requeue_and_the_failure(observed):
    res = hpcgen("report", str(observed["run"]))
    assert res.returncode == 0, res.stderr
    page = Path(res.stdout.strip()).read_text()
    rows = re.findall(r'<tr class="(\w+)"><td>(\d+)</td><td>([^<]+)</td>', page)
    assert ("requeued", "1", observed["requeued"]["job_id"]) in rows
    assert ("failed", "2", observed["killed"]["job_id"]) in rows
    assert ("done", "0") in {(c, s) for c, s, _ in rows}
    assert "plot-timeline" in page and "plot-throughput" in page and "plot-response-lengths" in page
    from hpcgen_dev import browser

    result = browser.check_page(Path(res.stdout.strip()))
    assert result["console"] == [] and result["plots"] and all(
        p["drawn_share"] > 0.01 for p in result["plots"].values()), result


def test_local_executor_needs_no_slurm_and_names_log_folders_by_job_id(tiny_model, tmp_path):
    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp_path / "p.parquet", 4, style="gsm8k", seed=2)
    job = write_job(tmp_path / "job.yaml", data=data, model=tiny_model, sharding={"num_shards": 1},
                    rollout={"response_length": 8})
    env = {"PATH": no_slurm_path(tmp_path)}
    run = tmp_path / "run"
    res = hpcgen("submit", str(job), "--executor", "local", "--wait", "--run-dir", str(run), env=env)
    assert res.returncode == 0, res.stderr
    logs = sorted(p.name for p in (run / "logs").iterdir() if p.is_dir())
    sub = json.loads((run / "submissions" / "0001.json").read_text())
    assert logs == [sub["jobs"]["0"]] and logs[0].isdigit()  # no literal %j folder
    assert (run / "logs" / logs[0] / f"{logs[0]}_0_log.out").is_file()
    for args in (("status", str(run), "--json"), ("logs", str(run), "0"), ("report", str(run))):
        res = hpcgen(*args, env=env)
        assert res.returncode == 0, (args, res.stderr)
    assert json.loads(hpcgen("status", str(run), "--json", env=env).stdout)["counts"] == {"done": 1}
