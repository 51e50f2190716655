"""Site features on the throwaway SLURM cluster with real vLLM on the tiny model: a job through the Apptainer
command line hpcgen writes (run by a stand-in, since Apptainer is not packaged for this distribution), and
``rollout.batch_invariant`` reaching the task (where the CPU build refuses it, naming the key)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import need
from helpers import REPO, hpcgen, status_json, write_job

import hpcgen as hpcgen_pkg

STANDIN = REPO / "hpcgen_dev" / "standin_apptainer.sh"


def image_file(path: Path) -> Path:
    """The stand-in's "image": the system, this Python and its venv, and the hpcgen package the tasks import.
    Not the checkout, the model cache or /tmp: those are visible only if hpcgen mounts them."""
    entries = ["/usr", "/etc", "/bin", "/lib", "/lib64", "/sbin", sys.base_prefix, sys.prefix,
               str(Path(hpcgen_pkg.__file__).resolve().parent)]
    path.write_text("\n".join(e for e in entries if Path(e).exists() or Path(e).is_symlink()) + "\n")
    return path


@pytest.fixture(scope="module")
def bwrap() -> None:
    need(shutil.which("bwrap") is not None, "bubblewrap (bwrap), installed with the throwaway cluster's packages")


def test_standin_hides_what_is_not_mounted(bwrap, tmp_path):
    """The stand-in is strict enough to catch a missing mount: a file outside the image and the binds is gone."""
    data = tmp_path / "data.txt"
    data.write_text("x")
    image = image_file(tmp_path / "image.txt")
    code = f"import os, hpcgen; print(os.path.exists({str(data)!r}))"
    for binds, seen in ((["--bind", f"{data}:{data}:ro"], "True"), ([], "False")):
        res = subprocess.run([str(STANDIN), "exec", "--nv", *binds, "--pwd", "/", str(image), sys.executable, "-c",
                              code], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == seen
    res = subprocess.run([str(STANDIN), "exec", "--bind", f"{tmp_path / 'missing'}", str(image), "true"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "does not exist" in res.stderr


@pytest.mark.slurm
@pytest.mark.vllm
def test_apptainer_job_runs_with_only_what_hpcgen_mounts(cluster, tiny_model, bwrap, tmp_path):
    """Dataset, run directory and output under a private /tmp, the model outside the image: the job generates
    only because hpcgen's --bind list names each of them."""
    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp_path / "in" / "prompts.parquet", 12)
    log = tmp_path / "standin.log"
    job = write_job(tmp_path / "job.yaml", data=data, model=tiny_model,
                    rollout={"temperature": 1.0, "response_length": 8},
                    sharding={"num_shards": 2, "shards_per_task": 2},
                    slurm={"container": {"runtime": "apptainer", "image": str(image_file(tmp_path / "image.txt")),
                                         "executable": str(STANDIN), "python": sys.executable}})
    spec = yaml.safe_load(job.read_text())  # the output in a directory of its own, not the one above the others
    spec["data"].update(n_samples=1, output_path=str(tmp_path / "out" / "gen.parquet"))
    job.write_text(yaml.safe_dump(spec))
    (tmp_path / "out").mkdir()
    run_dir = tmp_path / "run"
    dry = hpcgen("submit", str(job), "--dry-run", "--run-dir", str(run_dir))
    assert dry.returncode == 0, dry.stderr
    assert f"{STANDIN} exec --nv --bind " in dry.stdout and f"--pwd {run_dir}" in dry.stdout
    res = hpcgen("submit", str(job), "--run-dir", str(run_dir), "--wait", env={"HPCGEN_STANDIN_LOG": str(log)})
    assert res.returncode == 0, res.stderr[-3000:]
    st = status_json(run_dir)
    assert st["rows_done"] == 12 and {s["state"] for s in st["shards"]} == {"done"}
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and f"image={tmp_path / 'image.txt'}" in calls[0]  # one task, through the stand-in
    assert f"pwd={run_dir}" in calls[0] and f"cmd={sys.executable} -u -m submitit.core._submit" in calls[0]
    res = hpcgen("merge", str(run_dir))
    assert res.returncode == 0, res.stderr
    out = pq.read_table(tmp_path / "out" / "gen.parquet")
    assert out.num_rows == 12 and all(len(r) == 1 for r in out.column("responses").to_pylist())


@pytest.mark.slurm
@pytest.mark.vllm
def test_batch_invariant_reaches_the_task_and_the_cpu_build_refuses_it(cluster, tiny_model, tmp_path):
    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp_path / "prompts.parquet", 4)
    job = write_job(tmp_path / "job.yaml", data=data, model=tiny_model, rollout={"batch_invariant": True},
                    sharding={"num_shards": 1})
    run_dir = tmp_path / "run"
    res = hpcgen("submit", str(job), "--run-dir", str(run_dir), "--wait")
    assert res.returncode == 6, res.stderr[-2000:]  # the shard failed, with the reason named
    shard = status_json(run_dir)["shards"][0]
    assert shard["state"] == "failed"
    assert "rollout.batch_invariant: vLLM's batch-invariant mode does not run on the CPU build" in shard["last_error"]
