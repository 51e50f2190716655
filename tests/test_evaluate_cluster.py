"""An evaluation on the real throwaway SLURM cluster with real vLLM on the tiny model, through the real CLI.

One submission of 3 datasets (20 parquet files given as a glob, JSON lines, a ``save_to_disk`` folder; n 2, 1
and 3) x 2 seeds over 2 tasks; at the same time a model sweep (the tiny model and a copy of it) on SLURM; and,
in one child process with one engine, the separate single-dataset runs of the same rows with each seed (the
reference), the 20 files' rows given as one file, and an OpenAI batch file. Then: 3 verified outputs whose rows
and samples equal the separate runs', one engine start per task, one score table; the glob's output identical
to the one file's; the batch file round trip checked with vLLM's own models; sweep status/merge/score/report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from faultkit import wait_for
from helpers import REPO, hpcgen, status_json

from hpcgen.login.plan import create_run_dir, make_plan
from hpcgen.spec.loader import load_job

pytestmark = [pytest.mark.slurm, pytest.mark.vllm]

ROLLOUT = {"temperature": 1.0, "top_p": 0.9, "response_length": 12, "max_num_seqs": 16}
NS = {"gsm": 2, "math": 1, "hf": 3}

REFERENCE = r"""
import json, os, sys
from pathlib import Path
from hpcgen.rundir.manifest import load_manifest, spec_from_manifest
from hpcgen.task.engine import Engine
from hpcgen.task.worker import run_shards

runs = [Path(p) for p in sys.argv[1:]]
spec = spec_from_manifest(load_manifest(runs[0]))
for k, v in spec.env.items():
    os.environ.setdefault(k, v)
llm = Engine._build(spec, spec.model.path)  # one engine for every reference run (per-row seeds: same samples)
for i, run in enumerate(runs):
    manifest = load_manifest(run)
    run_shards(run, list(range(len(manifest["shards"]))), engine_factory=lambda s, p: Engine(s, p, llm=llm),
               job=f"ref_{i}")
Engine(spec, spec.model.path, llm=llm).shutdown()
print("REFERENCE DONE", flush=True)
"""


def batch_requests() -> list[dict]:
    from hpcgen_dev.evaldata import batch_request

    q = [{"role": "user", "content": "What is 7 times 6?"}]
    return [batch_request("plain", q), batch_request("short", q, max_tokens=3),
            batch_request("three", q, n=3, temperature=0.8), batch_request("seeded-1", q, seed=77, n=2),
            batch_request("seeded-2", q, seed=77, n=2), batch_request("greedy-1", q, temperature=0),
            batch_request("greedy-2", q, temperature=0),
            batch_request("parts", [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}],
                          top_k=5, stop=["."], min_tokens=1)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from hpcgen_dev.datasets import arrow_schema, make_rows
    from hpcgen_dev.evaldata import save_to_disk, split_parquet, write_batch

    root = tmp_path_factory.mktemp("eval-inputs")
    schema = arrow_schema()
    gsm = make_rows(20, style="gsm8k", seed=21)
    split_parquet(gsm, root / "gsm", 20, schema=schema)
    pq.write_table(pa.Table.from_pylist(gsm, schema=schema), root / "gsm-one.parquet")
    (root / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_rows(8, style="math", seed=22)))
    save_to_disk(make_rows(9, style="mixed", seed=23), root / "hf", shards=3, schema=schema)
    write_batch(root / "requests.jsonl", batch_requests())
    return {"gsm": root / "gsm" / "part-*.parquet", "gsm-one": root / "gsm-one.parquet",
            "math": root / "math.jsonl", "hf": root / "hf", "batch": root / "requests.jsonl", "root": root}


def job_file(path: Path, model: Path, datasets: dict, seeds: list[int], **extra) -> Path:
    job = {"defaults": ["model/tiny", "cluster/dev"], "model": {"path": str(model)}, "rollout": ROLLOUT,
           "datasets": datasets, "seeds": seeds, "checkpoint": {"every_rows": 8, "every_seconds": 5}, **extra}
    path.write_text(yaml.safe_dump(job, sort_keys=False))  # datasets in the order written
    return path


def plan_local(run: Path, model: Path, data: dict, seeds: list[int]) -> Path:
    """A planned single-dataset run (no jobs) that the reference process generates."""
    spec = load_job(None, [], data={"defaults": ["model/tiny", "cluster/dev"], "model": {"path": str(model)},
                                    "rollout": ROLLOUT, "data": data, "seeds": seeds})
    return create_run_dir(run, make_plan(spec, job_file=None, overrides=[]).manifest).root


@pytest.fixture(scope="module")
def evaluation(cluster, tiny_model, inputs, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("evaluation")
    datasets = {name: {"path": str(inputs[name]), "n_samples": n} for name, n in NS.items()}
    job = job_file(work / "eval.yaml", tiny_model, datasets, [0, 1], sharding={"num_tasks": 2})
    res = hpcgen("submit", str(job), "--run-dir", str(work / "run"))
    assert res.returncode == 0, res.stderr
    copy = work / "tiny-copy"  # the same weights under another path: a sweep of two "models"
    copy.mkdir()
    for f in tiny_model.iterdir():
        (copy / f.name).symlink_to(f)
    sweep_job = job_file(work / "sweep.yaml", tiny_model, {"math": {"path": str(inputs["math"]), "n_samples": 1}},
                         [0])
    res = hpcgen("submit", str(sweep_job), "--sweep", f"model.path={tiny_model},{copy}", "--run-dir",
                 str(work / "sweep"))
    assert res.returncode == 0, res.stderr
    refs = {}
    for name in NS:  # the separate single-dataset runs, one per seed (the 20 files given as one file)
        path = inputs["gsm-one"] if name == "gsm" else inputs[name]
        for seed in (0, 1):
            refs[name, seed] = plan_local(work / f"ref-{name}-{seed}", tiny_model,
                                          {"path": str(path), "n_samples": NS[name]}, [seed])
    refs["one-file"] = plan_local(work / "ref-one-file", tiny_model, {"path": str(inputs["gsm-one"]), "n_samples": 2},
                                  [0, 1])
    refs["batch"] = plan_local(work / "ref-batch", tiny_model, {"path": str(inputs["batch"])}, [0])
    proc = subprocess.run([sys.executable, "-c", REFERENCE, *map(str, refs.values())], capture_output=True,
                          text=True, timeout=900, cwd=REPO, env=os.environ.copy())
    assert "REFERENCE DONE" in proc.stdout, proc.stderr[-3000:]
    for run in [work / "run", *(work / "sweep" / r for r in ("000-tiny-model", "001-tiny-copy"))]:
        wait_for(lambda run=run: status_json(run)["complete"] or any(
            s["state"] in ("failed", "cancelled") for s in status_json(run)["shards"]), 900, f"{run} to finish",
                 poll=3)
    return {"work": work, "run": work / "run", "sweep": work / "sweep", "refs": refs, "copy": copy}


def merged_rows(run: Path, *args: str) -> list[dict]:
    res = hpcgen("merge", str(run), *args)
    assert res.returncode == 0, res.stderr
    return pq.read_table(res.stdout.split()[-1]).to_pylist()


def test_one_submission_of_three_datasets_and_two_seeds(evaluation):
    run = evaluation["run"]
    st = status_json(run)
    assert st["complete"], [(s["id"], s["state"], s.get("last_error")) for s in st["shards"]]
    res = hpcgen("merge", str(run))
    assert res.returncode == 0, res.stderr
    outputs = res.stdout.split()
    assert [Path(p).name for p in outputs] == ["gsm.parquet", "math.parquet", "hf.parquet"]
    for name, out in zip(NS, outputs, strict=True):
        rows = pq.read_table(out).to_pylist()
        seed0, seed1 = (merged_rows(evaluation["refs"][name, s]) for s in (0, 1))
        assert len(rows) == len(seed0) == {"gsm": 20, "math": 8, "hf": 9}[name]
        for row, a, b in zip(rows, seed0, seed1, strict=True):  # the same rows, the same samples, seed 0 first
            assert row["prompt"] == a["prompt"] and row["reward_model"] == a["reward_model"]
            assert row["responses"] == a["responses"] + b["responses"], name
            assert row["sample_seed"] == [0] * NS[name] + [1] * NS[name]
    records = [json.loads(p.read_text()) for p in (run / "progress").glob("*.json")]
    assert len(records) == 2  # two tasks, one engine each for all 3 datasets x 2 seeds (one that found no work
    assert all(r["engine_starts"] == (1 if r["rows"] else 0) for r in records)  # left would have loaded none)
    assert sum(r["engine_starts"] for r in records) >= 1
    assert {s for r in records for s in r["shards"]} == {str(s) for s in range(6)}  # every block generated
    res = hpcgen("score", str(run))
    assert res.returncode == 0, res.stderr
    table = res.stdout
    assert all(any(line.startswith(f"│ {n} ") for line in table.splitlines()) for n in NS), table
    assert "across seeds: mean ± sd" in table


def test_twenty_files_as_a_glob_merge_like_one_file(evaluation, tmp_path):
    glob_rows = merged_rows(evaluation["run"], "--dataset", "gsm", "--output", str(tmp_path / "gsm.parquet"))
    one_rows = merged_rows(evaluation["refs"]["one-file"])
    assert [{k: v for k, v in r.items() if k not in ("source_file", "source_row")} for r in glob_rows] == one_rows
    assert [(Path(r["source_file"]).name, r["source_row"]) for r in glob_rows] == [
        (f"part-{i:05d}.parquet", 0) for i in range(20)]


def test_openai_batch_file_round_trips(evaluation, inputs):
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    res = hpcgen("merge", str(evaluation["refs"]["batch"]))
    assert res.returncode == 0, res.stderr
    lines = Path(res.stdout.strip()).read_text().splitlines()
    out = [json.loads(x) for x in lines]
    assert [x["custom_id"] for x in out] == [r["custom_id"] for r in batch_requests()]  # each once, in order
    for line in lines:  # vLLM's own models read each line and write it back the same
        assert json.loads(BatchRequestOutput.model_validate_json(line).model_dump_json()) == json.loads(line)
    body = {x["custom_id"]: x["response"]["body"] for x in out}
    texts = {k: [c["message"]["content"] for c in b["choices"]] for k, b in body.items()}
    assert [len(texts[k]) for k in ("plain", "short", "three", "seeded-1", "greedy-1")] == [1, 1, 3, 2, 1]
    assert body["short"]["usage"]["completion_tokens"] <= 3  # max_tokens honoured
    assert texts["seeded-1"] == texts["seeded-2"]  # seed honoured: same request, same seed, same samples
    assert texts["greedy-1"] == texts["greedy-2"]  # temperature 0 honoured: the rows' own seeds change nothing
    assert all(c["finish_reason"] in ("stop", "length") for b in body.values() for c in b["choices"])


def test_model_sweep_status_merge_score_and_report(evaluation):
    sweep = evaluation["sweep"]
    st = json.loads(hpcgen("status", str(sweep), "--json").stdout)
    assert [(r["label"], r["state"], r["datasets"]) for r in st["runs"]] == [
        ("tiny-model", "done", {"math": [8, 8]}), ("tiny-copy", "done", {"math": [8, 8]})]
    res = hpcgen("merge", str(sweep))
    assert res.returncode == 0, res.stderr
    a, b = (pq.read_table(p).column("responses").to_pylist() for p in res.stdout.split())
    assert a == b == [r["responses"] for r in merged_rows(evaluation["refs"]["math", 0])]  # same weights and seed
    res = hpcgen("score", str(sweep))
    assert res.returncode == 0, res.stderr
    assert "tiny-model" in res.stdout and "tiny-copy" in res.stdout and "math" in res.stdout
    res = hpcgen("report", str(sweep))
    assert res.returncode == 0, res.stderr
    assert (sweep / "000-tiny-model" / "report.html").is_file() and "tiny-copy" in (sweep / "report.html").read_text()
