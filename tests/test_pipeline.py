"""End to end on the real throwaway SLURM cluster with real vLLM on the tiny model, through the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import hpcgen, part_files, status_json, write_job

pytestmark = [pytest.mark.slurm, pytest.mark.vllm]

STATES = {"pending", "running", "done", "failed", "cancelled"}


@pytest.fixture(scope="module")
def e2e_data(tmp_path_factory) -> Path:
    """100 rows: system prompts, multi-turn, non-ASCII, nested extra columns, one over-long prompt (row 7)."""
    from hpcgen_dev.datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("e2e") / "prompts.parquet", 100, variety=True,
                        overlong_rows=[7], row_group_size=16)


@pytest.fixture(scope="module")
def slurm_run(cluster, tiny_model, e2e_data, tmp_path_factory) -> dict:
    """One array run: 4 shards, 2 per task (2 tasks), n_samples=2; status polled while it runs."""
    work = tmp_path_factory.mktemp("slurm-run")
    job = write_job(work / "job.yaml", data=e2e_data, model=tiny_model,
                    sharding={"num_shards": 4, "shards_per_task": 2},
                    score={"after_merge": True, "grader": "math-verify"})
    run_dir = work / "run"
    res = hpcgen("submit", str(job), "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == str(run_dir)
    seen = []
    deadline = time.time() + 900
    while time.time() < deadline:
        st = status_json(run_dir)
        seen.append(st)
        if all(s["state"] in ("done", "failed", "cancelled") for s in st["shards"]) and (
                st["chain"] and st["chain"]["state"] in ("done", "failed", "cancelled")):
            break
        time.sleep(3)
    return {"run_dir": run_dir, "job": job, "seen": seen, "work": work}


def test_merge_and_score_chained_after_the_array(slurm_run):
    """score.after_merge: a dependent job (afterok) merges and scores; status shows that step."""
    last = slurm_run["seen"][-1]
    assert last["chain"]["state"] == "done", last["chain"]
    sub = json.loads((slurm_run["run_dir"] / "submissions" / "0001.json").read_text())
    assert sub["chain_job"] == last["chain"]["job_id"]
    # status says done as soon as scores.json exists (files are the truth); the job itself ends a moment later
    deadline = time.time() + 120
    while True:
        deps = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobName,State", "-j", sub["chain_job"]],
                              capture_output=True, text=True).stdout
        if not re.search(r"\|(RUNNING|COMPLETING|PENDING)", deps) or time.time() > deadline:
            break
        time.sleep(2)
    assert "hpcgen-merge|COMPLETED" in deps
    assert "plot-timeline" in (slurm_run["run_dir"] / "report.html").read_text()  # the step writes the report too
    scores = json.loads((slurm_run["run_dir"] / "scores.json").read_text())
    assert scores["grader"] == "math-verify"  # the job's score.grader, not the default
    assert scores["overall"]["rows"] == 100 and scores["overall"]["errors"] == 1
    assert {"mean", "mean_se", "mean_ci95", "pass@1", "pass@2", "maj@2"} <= set(scores["overall"])
    assert set(scores["by_data_source"]) == {"openai/gsm8k", "DigitalLearningGmbH/MATH-lighteval"}
    res = hpcgen("score", str(slurm_run["run_dir"]), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["overall"] == scores["overall"]


def test_status_json_while_running_and_after(slurm_run):
    seen = slurm_run["seen"]
    for st in seen:
        assert {"rows_total", "rows_done", "shards"} <= set(st)
        assert st["rows_total"] == 100 and 0 <= st["rows_done"] <= 100
        for s in st["shards"]:
            assert s["state"] in STATES and 0 <= s["rows_done"] <= s["rows_total"]
            assert {"id", "state", "rows_done", "rows_total", "job_id", "attempts"} <= set(s)
    assert any(s["state"] in ("pending", "running") for st in seen for s in st["shards"]), "never saw it run"
    last = seen[-1]
    assert [s["state"] for s in last["shards"]] == ["done"] * 4
    assert last["rows_done"] == 100 and last["complete"] is True
    # the job ids are array tasks of one array
    arrays = {s["job_id"].split("_")[0] for s in last["shards"]}
    assert len(arrays) == 1


def test_end_to_end_merge_is_verl_schema_in_order(slurm_run, e2e_data):
    run_dir = slurm_run["run_dir"]
    res = hpcgen("merge", str(run_dir))
    assert res.returncode == 0, res.stderr
    out = pq.read_table(res.stdout.strip())
    inp = pq.read_table(e2e_data)
    assert out.num_rows == 100
    assert out.select(inp.column_names).equals(inp)  # input columns unchanged (nested too), input order
    rows = out.to_pylist()
    for i, r in enumerate(rows):
        if i == 7:  # the over-long prompt is recorded, not silently truncated, and not fatal
            assert "over rollout.prompt_length" in r["gen_error"] and r["responses"] == []
            continue
        assert r["gen_error"] is None
        assert len(r["responses"]) == 2 and all(isinstance(x, str) for x in r["responses"])
        assert len(r["finish_reasons"]) == 2 and all(f in ("stop", "length") for f in r["finish_reasons"])
        assert all(0 <= t <= 16 for t in r["response_tokens"]) and r["prompt_tokens"] > 0
    assert "1 rows with errors" in res.stderr


def test_local_executor_same_samples_with_other_sharding(slurm_run, tiny_model, e2e_data, tmp_path):
    """--executor local, 3 shards instead of 4: per-row seeds give the very same samples (T=1.0)."""
    job = write_job(tmp_path / "job.yaml", data=e2e_data, model=tiny_model,
                    sharding={"num_shards": 3, "shards_per_task": 3})
    res = hpcgen("submit", str(job), "--executor", "local", "--wait", "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    res = hpcgen("merge", str(tmp_path / "run"), "--output", str(tmp_path / "local.jsonl"))
    assert res.returncode == 0, res.stderr
    local = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    ref = pq.read_table(hpcgen("merge", str(slurm_run["run_dir"]), "--output",
                               str(tmp_path / "ref.parquet")).stdout.strip()).to_pylist()
    assert len(local) == 100
    assert [r["responses"] for r in local] == [r["responses"] for r in ref]


def test_dry_run_prints_sbatch_and_queues_nothing(cluster, tiny_model, e2e_data, tmp_path):
    job = write_job(tmp_path / "job.yaml", data=e2e_data, model=tiny_model,
                    sharding={"num_shards": 10}, slurm={"array_parallelism": 3})
    before = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    res = hpcgen("submit", str(job), "--dry-run", "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --array=0-9%3" in res.stdout
    assert "#SBATCH --gpus-per-node=1" in res.stdout
    assert "#SBATCH --signal=USR2@30" in res.stdout and "#SBATCH --requeue" in res.stdout
    assert "export VLLM_CPU_KVCACHE_SPACE=1" in res.stdout
    assert not (tmp_path / "run").exists()
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == before


def _parts(run_dir: Path) -> dict[str, list[int]]:
    return {p.name: pq.read_table(p, columns=["row_id"]).column(0).to_pylist()
            for p in part_files(run_dir)}


def test_scancel_mid_shard_then_resume(cluster, tiny_model, tmp_path):
    """Kill the task after it saved some rows; resume continues from them; nothing generated twice."""
    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp_path / "d.parquet", 120, style="gsm8k", seed=3)
    job = write_job(tmp_path / "job.yaml", data=data, model=tiny_model, sharding={"num_shards": 1},
                    rollout={"response_length": 48, "max_num_seqs": 4}, checkpoint={"every_rows": 4})
    run_dir = tmp_path / "run"
    res = hpcgen("submit", str(job), "--run-dir", str(run_dir), env={"HPCGEN_TEST_STEP_DELAY_S": "0.05"})  # paced: cancel mid-shard
    assert res.returncode == 0, res.stderr
    deadline = time.time() + 600
    while time.time() < deadline and not _parts(run_dir):
        time.sleep(1)
    before = _parts(run_dir)
    assert before, "no rows were saved before the deadline"
    res = hpcgen("cancel", str(run_dir))
    assert res.returncode == 0, res.stderr
    deadline = time.time() + 120
    while time.time() < deadline and status_json(run_dir)["shards"][0]["state"] != "cancelled":
        time.sleep(2)
    st = status_json(run_dir)["shards"][0]
    assert st["state"] == "cancelled" and st["rows_done"] < 120
    saved = _parts(run_dir)  # rows saved up to the kill
    res = hpcgen("resume", str(run_dir), "--wait")
    assert res.returncode == 0, res.stderr
    after = _parts(run_dir)
    assert all(after[name] == ids for name, ids in saved.items())  # old parts untouched
    new_ids = [i for name, ids in after.items() if name not in saved for i in ids]
    old_ids = [i for ids in saved.values() for i in ids]
    assert not set(new_ids) & set(old_ids)  # saved rows were not generated again
    assert sorted(old_ids + new_ids) == list(range(120))
    st = status_json(run_dir)
    assert st["shards"][0]["state"] == "done" and st["shards"][0]["attempts"] == 2
    res = hpcgen("merge", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert pq.read_table(res.stdout.strip()).num_rows == 120
