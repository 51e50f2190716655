"""Changes under a running run, on the real cluster with real vLLM: a model overwritten in place with weights of
the same shapes is refused by the next task and by resume; a dataset regenerated in place with the same row
count is refused by merge. Nothing is mixed into the output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import hpcgen, part_files, status_json, wait_for, write_job

pytestmark = [pytest.mark.slurm, pytest.mark.vllm]


def same_shape_rewrite(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    for i in range(start, len(data), 4096):
        data[i] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even the modification time is kept


def test_model_and_dataset_changed_in_place(cluster, tiny_model, tmp_path):
    from hpcgen_dev.datasets import make_dataset

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = make_dataset(tmp_path / "d.parquet", 40, style="gsm8k", seed=5)
    # no stealing: shard 1 must be left to its own task, which starts after the change (with stealing, shard
    # 0's task would do it with the weights it loaded before the change, the plan's: right, but not this test)
    job = write_job(tmp_path / "job.yaml", data=data, model=model, sharding={"num_shards": 2, "steal": False},
                    slurm={"array_parallelism": 1}, rollout={"response_length": 16, "max_num_seqs": 4})
    res = hpcgen("submit", str(job), "--run-dir", str(tmp_path / "run"), env={"HPCGEN_TEST_STEP_DELAY_S": "0.02"})
    assert res.returncode == 0, res.stderr
    run = tmp_path / "run"
    wait_for(lambda: part_files(run, 0), 300, "shard 0's first rows")
    same_shape_rewrite(model / "model.safetensors")  # while shard 0's task runs on the model it loaded
    st = wait_for(lambda: (s := status_json(run))["shards"][1]["state"] in ("failed", "done") and s, 300,
                  "shard 1's task")
    assert st["shards"][0]["state"] == "done"
    assert st["shards"][1]["state"] == "failed" and "changed since the plan" in st["shards"][1]["last_error"]
    assert not part_files(run, 1)  # not one answer of the other model
    res = hpcgen("resume", str(run))
    assert res.returncode == 2 and "cannot resume: model" in res.stderr and "changed since the plan" in res.stderr
    # the dataset regenerated in place, same rows: the saved answers belong to the old prompts
    make_dataset(data, 40, style="gsm8k", seed=6)
    res = hpcgen("merge", str(run), "--allow-partial", "--output", str(tmp_path / "o.parquet"))
    assert res.returncode == 2 and "cannot merge: dataset" in res.stderr, res.stderr
    assert not (tmp_path / "o.parquet").exists()
