"""Sweeps without SLURM: the runs of ``--sweep`` / ``-m`` (cartesian product), the sweep folder, and status, merge,
score and report on it (runs generated in this process with a stand-in engine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import SeedEngine, hpcgen

from hpcgen.errors import ConfigError
from hpcgen.spec.sweep import sweep_runs
from hpcgen_dev.datasets import make_dataset


def test_sweep_runs_are_the_cartesian_product():
    runs = sweep_runs(["model.path=/ckpt/a,/ckpt/b", "seed=0,1"], ["data.n_samples=2"], multirun=False)
    assert [r.values for r in runs] == [{"model.path": "/ckpt/a", "seed": "0"}, {"model.path": "/ckpt/a", "seed": "1"},
                                        {"model.path": "/ckpt/b", "seed": "0"}, {"model.path": "/ckpt/b", "seed": "1"}]
    assert [r.name for r in runs] == ["000-a_0", "001-a_1", "002-b_0", "003-b_1"]
    assert runs[0].label == "model.path=a, seed=0"
    assert runs[3].overrides == ["data.n_samples=2", "model.path=/ckpt/b", "seed=1"]
    hydra = sweep_runs([], ["model.path=x/m1,y/m2", "slurm.exclude='n1,n2'", "data.n_samples=2"], multirun=True)
    assert [r.label for r in hydra] == ["m1", "m2"]  # quoted commas belong to the value
    assert hydra[0].overrides == ["slurm.exclude='n1,n2'", "data.n_samples=2", "model.path=x/m1"]
    same = sweep_runs(["model.path=/a/ckpt,/b/ckpt"], [], multirun=False)
    assert [r.label for r in same] == ["model.path=/a/ckpt", "model.path=/b/ckpt"]  # labels stay apart
    for args, msg in (((["seed=1,1"], [], False), "value '1' appears twice"),
                      ((["seed=1,2"], ["seed=3"], False), "seed is both swept and set"),
                      ((["seed=1,2", "seed=3,4"], [], False), "seed is swept twice"),
                      (([], ["seed=1"], True), "nothing to sweep"), ((["seed"], [], False), "KEY=A,B,C")):
        with pytest.raises(ConfigError, match=msg):
            sweep_runs(*args)


@pytest.fixture
def sweep(tmp_path, fake_model) -> tuple[Path, Path]:
    """A sweep over two models (copies of one stand-in), two datasets and two seeds, generated in-process."""
    from hpcgen.login.sweep import submit_sweep
    from hpcgen.task.worker import run_shards

    other = tmp_path / "model-b"
    shutil.copytree(fake_model, other)
    a = make_dataset(tmp_path / "a.parquet", 10, style="gsm8k")
    b = make_dataset(tmp_path / "b.jsonl", 6, style="math")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "model": {"path": str(fake_model)}, "rollout": {"max_num_seqs": 8}, "seeds": [0, 1],
        "datasets": {"gsm": {"path": str(a), "n_samples": 2, "output_path": str(tmp_path / "out" / "gsm.parquet")},
                     "math": {"path": str(b), "n_samples": 1}}}))
    names = iter(range(100))

    def submit_one(layout, plan):
        return run_shards(layout.root, list(range(len(plan.shards))), engine_factory=SeedEngine,
                          job=f"7_{next(names)}")

    res = submit_sweep(job, [f"model.path={fake_model},{other}"], [], multirun=False, root=tmp_path / "sw",
                       executor="local", dry_run=False, submit_one=submit_one)
    assert [r.name for r in res.runs] == ["000-model", "001-model-b"]
    return res.root, tmp_path


def test_status_merge_score_and_report_of_a_sweep(sweep):
    root, tmp = sweep
    st = json.loads(hpcgen("status", str(root), "--json").stdout)
    assert [(r["label"], r["state"], r["datasets"]) for r in st["runs"]] == [
        ("model", "done", {"gsm": [20, 20], "math": [12, 12]}), ("model-b", "done", {"gsm": [20, 20], "math": [12, 12]})]
    text = hpcgen("status", str(root)).stdout
    assert "model-b" in text and "20/20" in text
    res = hpcgen("merge", str(root))
    assert res.returncode == 0, res.stderr
    outs = res.stdout.split()
    assert outs == [str(tmp / "out" / "000-model" / "gsm.parquet"), str(root / "000-model" / "merged" / "math.parquet"),
                    str(tmp / "out" / "001-model-b" / "gsm.parquet"),
                    str(root / "001-model-b" / "merged" / "math.parquet")]  # explicit outputs get the run's folder
    res = hpcgen("score", str(root))
    assert res.returncode == 0, res.stderr
    assert "scores by run (rows) and dataset (columns)" in res.stdout
    assert any(line.startswith("│ model-b") for line in res.stdout.splitlines())
    scores = json.loads((root / "scores.json").read_text())
    assert [r["label"] for r in scores["runs"]] == ["model", "model-b"]
    assert "seeds" in scores["runs"][0]["scores"]["datasets"]["gsm"]["overall"]
    res = hpcgen("report", str(root))
    assert res.returncode == 0, res.stderr
    page = (root / "report.html").read_text()
    assert 'href="000-model/report.html"' in page and (root / "001-model-b" / "report.html").is_file()
    assert "20/20 rows" in page and "±" in page


def test_sweep_dry_run_creates_nothing(tmp_path, fake_model):
    data = make_dataset(tmp_path / "a.parquet", 4)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"defaults": ["model/tiny", "cluster/dev"], "model": {"path": str(fake_model)},
                                   "data": {"path": str(data), "n_samples": 1}}))
    res = hpcgen("submit", str(job), "-m", "seed=0,1,2", "--dry-run", "--run-dir", str(tmp_path / "sw"))
    assert res.returncode == 0, res.stderr
    assert "# sweep: 3 runs in" in res.stdout and "#SBATCH" in res.stdout
    assert res.stderr.count("plan: 4 rows") == 3
    assert not (tmp_path / "sw").exists()
    bad = hpcgen("submit", str(job), "--sweep", "rollout.temperature=0.5,x", "--run-dir", str(tmp_path / "sw"))
    assert bad.returncode == 2 and "rollout.temperature" in bad.stderr and not (tmp_path / "sw").exists()
