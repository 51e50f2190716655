"""The CLI contract: bad input is one clear line on stderr, a non-zero exit, no traceback, nothing created."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import REPO, hpcgen


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    data = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": ["What is 1+1?", "Hi"], "x": [1, 2]}), data)
    return {"tmp": tmp_path, "model": model, "data": data}


def job_file(env, **top) -> Path:
    job = {"data": {"path": str(env["data"]), "n_samples": 1}, "model": {"path": str(env["model"])},
           "trainer": {"n_gpus_per_node": 1}}
    for k, v in top.items():
        job.setdefault(k, {}).update(v) if isinstance(v, dict) else job.__setitem__(k, v)
    p = env["tmp"] / f"job{time.monotonic_ns()}.yaml"
    p.write_text(yaml.safe_dump(job))
    return p


def _setup(env: dict[str, Path], case: str) -> tuple[list[str], str]:
    t = env["tmp"]
    j = lambda **kw: str(job_file(env, **kw))  # noqa: E731
    if case == "missing dataset":
        return [j(data={"path": str(t / "nope.parquet")})], r"data.path .*nope.parquet does not exist"
    if case == "not parquet":
        (t / "bad.parquet").write_text("hello")
        return [j(data={"path": str(t / "bad.parquet")})], r"not a readable parquet"
    if case == "unsupported format":
        (t / "d.csv").write_text("a\n")
        return [j(data={"path": str(t / "d.csv")})], r"unsupported format"
    if case == "empty dataset":
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), t / "e.parquet")
        return [j(data={"path": str(t / "e.parquet")})], r"has no rows"
    if case == "missing prompt_key":
        return [j(data={"prompt_key": "question"})], r"data.prompt_key 'question' is not a column"
    if case == "invalid utf-8 jsonl":
        (t / "d.jsonl").write_bytes(b'{"prompt": "a"}\n{"prompt": "\xc3\x28"}\n')
        return [j(data={"path": str(t / "d.jsonl")})], r"d.jsonl line 2: invalid UTF-8"
    if case == "jsonl row not an object":
        (t / "d2.jsonl").write_text('{"prompt": "a"}\n[1, 2]\n')
        return [j(data={"path": str(t / "d2.jsonl")})], r"line 2: a row must be a JSON object"
    if case == "yaml syntax error":
        (t / "bad.yaml").write_text("data:\n  path: [\n")
        return [str(t / "bad.yaml")], r"bad.yaml line \d+: YAML syntax error"
    if case == "job file missing":
        return [str(t / "missing.yaml")], r"job file .*missing.yaml does not exist"
    if case == "unknown key":
        return [j(), "rollout.temprature=0.7"], r"unknown key 'rollout.temprature'; did you mean 'rollout.temperature'"
    if case == "wrong type":
        return [j(), "data.n_samples=many"], r"key 'data.n_samples'"
    if case == "n_samples below 1":
        return [j(), "data.n_samples=0"], r"key 'data.n_samples': Input should be greater than or equal to 1"
    if case == "tp larger than gpus":
        return [j(), "rollout.tensor_model_parallel_size=2"], r"exceeds trainer.nnodes x trainer.n_gpus_per_node = 1"
    if case == "negative temperature":
        return [j(), "rollout.temperature=-1"], r"key 'rollout.temperature'"
    if case == "greedy with n>1":
        return [j(), "rollout.temperature=0", "data.n_samples=4"], r"greedy decoding .* needs data.n_samples=1"
    if case == "model without config":
        (env["model"] / "config.json").unlink()
        return [j()], r"model.path .* has no config.json"
    if case == "model without tokenizer":
        (env["model"] / "tokenizer.json").unlink()
        return [j()], r"has no tokenizer"
    if case == "model missing":
        return [j(model={"path": str(t / "no-model")})], r"model.path .*no-model does not exist"
    if case == "output not writable":
        return [j(data={"output_path": "/etc/hostname/out.parquet"})], r"data.output_path .* is not writable"
    if case == "override without value":
        return [j(), "data.n_samples"], r"override 'data.n_samples' must look like KEY=VALUE"
    if case == "newline in partition":
        return [j(slurm={"partition": "gpu\n#SBATCH --wrap=x"})], r"key 'slurm.partition'"
    if case == "sbatch line in setup":
        return [j(slurm={"setup": ["#SBATCH --exclusive"]})], r"key 'slurm.setup'"
    if case == "both sharding keys":
        return [j(sharding={"num_shards": 2, "rows_per_shard": 5})], r"sharding.num_shards or sharding.rows_per_shard"
    if case == "unknown preset":
        return [j(defaults=["model/nonexistent"])], r"preset 'model/nonexistent' not found"
    raise AssertionError(case)


CASES = ["missing dataset", "not parquet", "unsupported format", "empty dataset", "missing prompt_key",
         "invalid utf-8 jsonl", "jsonl row not an object", "yaml syntax error", "job file missing", "unknown key",
         "wrong type", "n_samples below 1", "tp larger than gpus", "negative temperature", "greedy with n>1",
         "model without config", "model without tokenizer", "model missing", "output not writable",
         "override without value", "newline in partition", "sbatch line in setup", "both sharding keys",
         "unknown preset"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_no_traceback_nothing_created(env, case):
    import re

    args, pattern = _setup(env, case)
    run_dir = env["tmp"] / "run"
    res = hpcgen("submit", *args, "--run-dir", str(run_dir), "--executor", "local")
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hpcgen: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not run_dir.exists()
    assert not [p for p in env["tmp"].iterdir() if p.name.startswith(".run")]


def test_run_dir_holding_another_run(env):
    run_dir = env["tmp"] / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text("{}")
    res = hpcgen("submit", str(job_file(env)), "--run-dir", str(run_dir), "--executor", "local")
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json"]


def test_commands_on_a_directory_that_is_not_a_run(env):
    for cmd in ("status", "merge", "resume", "cancel"):
        res = hpcgen(cmd, str(env["tmp"]))
        assert res.returncode == 2, (cmd, res.stderr)
        assert res.stderr.strip() == f"hpcgen: error: {env['tmp']} is not an hpcgen run directory (no manifest.json)"


def test_status_json_is_valid_on_error_free_run(env):
    from hpcgen.login.plan import create_run_dir, make_plan
    from hpcgen.spec.loader import load_job

    spec = load_job(job_file(env))
    plan = make_plan(spec, job_file=None, overrides=[])
    run = create_run_dir(env["tmp"] / "r", plan.manifest)
    res = hpcgen("status", str(run.root), "--json")
    st = json.loads(res.stdout)
    assert st["rows_total"] == 2 and st["rows_done"] == 0 and st["shards"][0]["state"] == "pending"
    res = hpcgen("merge", str(run.root))
    assert res.returncode == 3 and "shards 0 are not done" in res.stderr


def test_help_imports_no_engine():
    """(How fast --help is, is measured in bench/bench_status.py, not asserted here.)"""
    res = subprocess.run([str(REPO / ".venv/bin/hpcgen"), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "submit" in res.stdout
    code = ("import sys, hpcgen.cli, hpcgen.login.ops, hpcgen.login.state, hpcgen.login.merge, hpcgen.login.launch, hpcgen.scoring.score, "
            "hpcgen.scoring.command; bad = [m for m in ('torch', 'vllm', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
