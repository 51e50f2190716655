"""Evaluations without SLURM or vLLM (stand-in engines): many files as one dataset, several datasets and seeds in
one run, the merge per dataset, the per-seed spread in score, sweeps, and every bad input as one line."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SeedEngine, hpcgen

from hpcgen.errors import ConfigError, DatasetError
from hpcgen.login.merge import merge_all, merge_run
from hpcgen.login.plan import create_run_dir, make_plan
from hpcgen.rundir.blocks import blocks, dataset_shards, shard_block
from hpcgen.rundir.chunks import chunk_bounds, num_chunks
from hpcgen.rundir.layout import RunLayout
from hpcgen.spec.loader import load_job
from hpcgen.task.worker import run_shards
from hpcgen_dev.datasets import arrow_schema, make_rows
from hpcgen_dev.evaldata import save_to_disk, split_parquet

BASE = {"rollout": {"max_num_seqs": 8}, "checkpoint": {"every_rows": 4}, "sharding": {"steal": False}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The same 40 GSM8K/MATH rows as one parquet file, as 20 files, as a save_to_disk folder; 12 more as JSON."""
    root = tmp_path_factory.mktemp("evaldata")
    rows = make_rows(40, style="mixed", seed=3)
    schema = arrow_schema()
    one = root / "one.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), one)
    split_parquet(rows, root / "many", 20, schema=schema)
    save_to_disk(rows, root / "hf", shards=3, schema=schema)
    jl = root / "j.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in make_rows(12, style="math", seed=5)))
    return {"one": one, "glob": root / "many" / "part-*.parquet", "dir": root / "many", "hf": root / "hf",
            "jsonl": jl, "root": root}


def run(tmp: Path, model: Path, job: dict, *overrides: str, name: str = "run", engine=SeedEngine) -> RunLayout:
    """Plan and run a job in this process with a stand-in engine (every shard by one task)."""
    spec = load_job(None, list(overrides), data={**BASE, **job, "model": {"path": str(model)}})
    plan = make_plan(spec, job_file=None, overrides=list(overrides))
    layout = create_run_dir(tmp / name, plan.manifest)
    run_shards(layout.root, list(range(len(plan.shards))), engine_factory=engine, job=f"{name}_0")
    return layout


def table(path: str | Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# --- many files as one dataset ------------------------------------------------------------------------


def test_twenty_files_as_a_glob_merge_like_one_file(tmp_path, data, fake_model):
    one = run(tmp_path, fake_model, {"data": {"path": str(data["one"]), "n_samples": 2}}, name="one")
    many = run(tmp_path, fake_model, {"data": {"path": str(data["glob"]), "n_samples": 2}}, name="many")
    manifest = json.loads(many.manifest.read_text())
    files = [f["path"] for f in manifest["datasets"][0]["files"]]
    assert len(files) == 20 and files == sorted(files)  # sorted path order
    a, b = table(merge_run(one.root).output), table(merge_run(many.root).output)
    assert [{k: v for k, v in r.items() if k not in ("source_file", "source_row")} for r in b] == a
    assert [(Path(r["source_file"]).name, r["source_row"]) for r in b[:3]] == [
        ("part-00000.parquet", 0), ("part-00000.parquet", 1), ("part-00001.parquet", 0)]
    assert b[-1]["source_file"].endswith("part-00019.parquet")
    no_meta = table(merge_run(many.root, metadata=False, output=tmp_path / "plain.parquet").output)
    assert set(no_meta[0]) == set(a[0]) - {"finish_reasons", "response_tokens", "prompt_tokens", "prompt_truncated",
                                           "gen_error"}


def test_a_directory_a_list_and_a_save_to_disk_folder(tmp_path, data, fake_model):
    import hpcgen.login.datasets as ds_mod

    files = sorted(str(p) for p in (data["dir"]).glob("*.parquet"))
    ref = table(merge_run(run(tmp_path, fake_model, {"data": {"path": str(data["one"]), "n_samples": 1}},
                              name="ref").root).output)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("source_")} for r in rows]  # noqa: E731
    for name, path in (("dir", str(data["dir"])), ("list", files), ("hf", str(data["hf"]))):
        out = merge_run(run(tmp_path, fake_model, {"data": {"path": path, "n_samples": 1}}, name=name).root).output
        assert strip(table(out)) == ref, name
    reversed_list = run(tmp_path, fake_model, {"data": {"path": files[::-1], "n_samples": 1}}, name="rev")
    got = table(merge_run(reversed_list.root).output)
    assert got[0]["source_file"] == files[-1]  # a list is read in the order given
    assert "datasets" not in sys.modules and ds_mod.HF_STATE == "state.json"  # read with pyarrow alone


def test_planning_parquet_files_reads_footers_only(data, fake_model, monkeypatch):
    import pyarrow.parquet as pq_mod

    def no_rows(*a, **k):
        raise AssertionError("the plan read rows")

    monkeypatch.setattr(pq_mod.ParquetFile, "read", no_rows)
    monkeypatch.setattr(pq_mod.ParquetFile, "iter_batches", no_rows)
    monkeypatch.setattr(pq_mod.ParquetFile, "read_row_group", no_rows)
    spec = load_job(None, [], data={"data": {"path": str(data["glob"])}, "model": {"path": str(fake_model)}})
    plan = make_plan(spec, job_file=None, overrides=[])
    assert plan.rows == 40 and plan.datasets[0].kind == "parquet"


# --- several datasets and seeds ---------------------------------------------------------------------


EVAL = {"datasets": {"gsm": {"path": None, "n_samples": 2}, "math": {"path": None, "n_samples": 1},
                     "hf": {"path": None, "n_samples": 3}}, "seeds": [0, 1]}


def eval_job(data: dict[str, Path]) -> dict:
    job = json.loads(json.dumps(EVAL))
    job["datasets"]["gsm"]["path"] = str(data["glob"])
    job["datasets"]["math"]["path"] = str(data["jsonl"])
    job["datasets"]["hf"]["path"] = str(data["hf"])
    return job


def test_blocks_are_cut_per_dataset_and_seed(data, fake_model):
    spec = load_job(None, ["sharding.num_shards=8", "sharding.num_tasks=2"],
                    data={**eval_job(data), "model": {"path": str(fake_model)}})
    plan = make_plan(spec, job_file=None, overrides=[])
    m = plan.manifest
    bs = blocks(m)
    assert [(b.name, b.seed, b.rows) for b in bs] == [("gsm", 0, 40), ("gsm", 1, 40), ("math", 0, 12),
                                                       ("math", 1, 12), ("hf", 0, 40), ("hf", 1, 40)]
    assert [b.shards for b in bs] == [2, 2, 1, 1, 2, 2]  # 8 shards spread by rows, at least one each
    for d in range(3):  # every seed block of a dataset cut the same way
        for group in dataset_shards(m, d):
            assert len(group) == 2
            assert len({(m["shards"][s][0] - shard_block(m, s).start, m["shards"][s][1] - shard_block(m, s).start)
                        for s in group}) == 1
    for shard, (lo, hi) in enumerate(m["shards"]):
        b = shard_block(m, shard)
        assert b.start <= lo < hi <= b.start + b.rows  # a shard never crosses a block
        for c in range(num_chunks(m, shard)):
            clo, chi = chunk_bounds(m, shard, c)
            assert b.start <= clo < chi <= b.start + b.rows
    assert len(plan.tasks) == 2 and sorted(s for t in plan.tasks for s in t) == list(range(10))


def test_datasets_and_seeds_merge_like_separate_runs(tmp_path, data, fake_model):
    """One run of 3 datasets x 2 seeds (n 2, 1, 3): each merged output's row holds the samples of separate
    single-dataset runs with seed 0, then seed 1; sample_seed says which; one engine for all of it."""
    both = run(tmp_path, fake_model, eval_job(data), "sharding.num_shards=5", name="both")
    results = merge_all(both.root)
    assert [Path(r.output).name for r in results] == ["gsm.parquet", "math.parquet", "hf.parquet"]
    progress = [json.loads(p.read_text()) for p in (both.root / "progress").glob("*.json")]
    assert [p["engine_starts"] for p in progress] == [1]
    for name, path, n, res in (("gsm", data["glob"], 2, results[0]), ("math", data["jsonl"], 1, results[1]),
                               ("hf", data["hf"], 3, results[2])):
        merged = table(res.output)
        singles = [table(merge_run(run(tmp_path, fake_model, {"data": {"path": str(path), "n_samples": n}},
                                       f"seed={s}", name=f"{name}{s}").root).output) for s in (0, 1)]
        assert len(merged) == len(singles[0])
        for row, a, b in zip(merged, *singles, strict=True):
            assert row["responses"] == a["responses"] + b["responses"]
            assert row["sample_seed"] == [0] * n + [1] * n
            assert row["finish_reasons"] == a["finish_reasons"] + b["finish_reasons"]
            assert row["prompt"] == a["prompt"]


def test_score_shows_the_spread_across_seeds(tmp_path):
    """Per-seed mean@n, then mean, std (ddof=1) and std-err of those means (NeMo-Skills' definitions)."""
    rows = [{"data_source": "openai/gsm8k", "reward_model": {"style": "rule", "ground_truth": "1"},
             "responses": [f"#### {a}" for a in answers], "sample_seed": [0, 0, 1, 1, 2, 2]}
            for answers in ([1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0])]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    res = hpcgen("score", str(path), "--json")
    assert res.returncode == 0, res.stderr
    seeds = json.loads(res.stdout)["overall"]["seeds"]
    means = [0.75, 0.75, 0.0]  # seed 0: rows 1 and 0.5; seed 1: 0.5 and 1; seed 2: 0 and 0
    assert seeds["per_seed"] == {"0": 0.75, "1": 0.75, "2": 0.0}
    m = sum(means) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in means) / 2)
    assert seeds["mean"] == pytest.approx(m) and seeds["std"] == pytest.approx(sd)
    assert seeds["se"] == pytest.approx(sd / math.sqrt(3))
    assert "across seeds" in hpcgen("score", str(path)).stdout


def test_score_of_a_run_of_several_datasets_is_one_table(tmp_path, data, fake_model):
    layout = run(tmp_path, fake_model, eval_job(data), name="scored")
    assert hpcgen("merge", str(layout.root)).returncode == 0
    res = hpcgen("score", str(layout.root))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("│ gsm ") for line in lines) and any(line.startswith("│ hf ") for line in lines)
    assert "across seeds: mean ± sd" in res.stdout
    saved = json.loads((layout.root / "scores.json").read_text())
    assert sorted(saved["datasets"]) == ["gsm", "hf", "math"]
    st = json.loads(hpcgen("status", str(layout.root), "--json").stdout)
    assert st["datasets"]["gsm"] == {"rows_done": 80, "rows_total": 80}  # 40 rows x 2 seeds
    shown = hpcgen("status", str(layout.root), "--all").stdout
    assert "dataset/seed" in shown and "gsm/1" in shown and "hf/0" in shown
    assert hpcgen("report", str(layout.root)).returncode == 0


# --- bad input: one line, nothing queued ----------------------------------------------------------------


BAD = ["glob matching nothing", "schemas differ", "prompt column missing in one file", "duplicate dataset name",
       "duplicate dataset name (list)", "repeated seeds", "batch line without custom_id", "duplicate custom_id",
       "batch field that would be ignored", "max_tokens over response_length", "two formats in one dataset",
       "a DatasetDict folder", "batch seed with several seeds", "column types differ", "unknown key in a dataset",
       "batch temperature over 2", "batch n at temperature 0", "batch min_tokens over max_tokens",
       "one output spelled two ways", "output over an input file", "data.path beside datasets",
       "save_to_disk state listing no file", "seeds that are not integers"]


@pytest.mark.parametrize("case", BAD)
def test_bad_evaluation_input_is_one_line(case, tmp_path, data, fake_model):
    from hpcgen_dev.evaldata import batch_request, write_batch

    msg = [{"role": "user", "content": "hi"}]
    job: dict = {"defaults": ["model/tiny", "cluster/dev"], "model": {"path": str(fake_model)},
                 "data": {"path": str(data["one"])}}
    text = None
    if case == "glob matching nothing":
        job["data"]["path"] = str(tmp_path / "none-*.parquet")
        want = r"data.path .*none-\*.parquet' matches no file"
    elif case == "schemas differ":
        d = tmp_path / "d"
        split_parquet(make_rows(4), d, 2, schema=arrow_schema())
        pq.write_table(pa.table({"prompt": ["x"], "other": [1]}), d / "part-00002.parquet")
        job["data"]["path"] = str(d)
        want = r"data.path: .*part-00002.parquet has other columns than .*part-00000.parquet"
    elif case == "column types differ":
        d = tmp_path / "d"
        d.mkdir()
        pq.write_table(pa.table({"prompt": ["x"], "level": [1]}), d / "a.parquet")
        pq.write_table(pa.table({"prompt": ["y"], "level": ["hard"]}), d / "b.parquet")
        job["data"]["path"] = str(d / "*.parquet")
        want = r"b.parquet has other columns than .*a.parquet \(column 'level' is string, not int64\)"
    elif case == "unknown key in a dataset":
        job["datasets"] = {"gsm": {"path": str(data["one"]), "n_sample": 2}}
        want = r"unknown key 'datasets.gsm.n_sample'; did you mean 'datasets.gsm.n_samples'\?"
    elif case == "prompt column missing in one file":
        (tmp_path / "a.jsonl").write_text('{"prompt": "x"}\n')
        (tmp_path / "b.jsonl").write_text('{"question": "x"}\n')
        job["datasets"] = {"qa": {"path": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]}}
        want = r"datasets.qa.prompt_key 'prompt' is not a column of .*b.jsonl"
    elif case == "duplicate dataset name":
        text = (f"defaults: [model/tiny, cluster/dev]\nmodel: {{path: {fake_model}}}\ndatasets:\n"
                f"  gsm: {{path: {data['one']}}}\n  gsm: {{path: {data['jsonl']}}}\n")
        want = r"line 5: key 'gsm' appears twice"
    elif case == "duplicate dataset name (list)":
        job["datasets"] = [{"name": "gsm", "path": str(data["one"])}, {"name": "gsm", "path": str(data["jsonl"])}]
        want = r"key 'datasets': dataset name 'gsm' appears twice"
    elif case == "repeated seeds":
        job["seeds"] = [0, 1, 0]
        want = r"key 'seeds': seed 0 appears twice"
    elif case == "batch line without custom_id":
        req = batch_request("a", msg)
        del req["custom_id"]
        job["data"]["path"] = str(write_batch(tmp_path / "b.jsonl", [batch_request("x", msg), req]))
        want = r"data.path .*b.jsonl line 2: no custom_id"
    elif case == "duplicate custom_id":
        job["data"]["path"] = str(write_batch(tmp_path / "b.jsonl", [batch_request("x", msg)] * 2))
        want = r"line 2: custom_id 'x' appears twice \(first at b.jsonl line 1\)"
    elif case == "batch field that would be ignored":
        job["data"]["path"] = str(write_batch(tmp_path / "b.jsonl", [batch_request("x", msg, logprobs=True)]))
        want = r"line 1 \(custom_id 'x'\): body.logprobs=True is not supported here \(it would be ignored\)"
    elif case == "max_tokens over response_length":
        job["data"]["path"] = str(write_batch(tmp_path / "b.jsonl", [batch_request("x", msg, max_tokens=9999)]))
        want = r"custom_id 'x' asks for max_tokens=9999, over rollout.response_length="
    elif case == "two formats in one dataset":
        job["data"]["path"] = [str(data["one"]), str(data["jsonl"])]
        want = r"data.path mixes jsonl and parquet files: one format per dataset"
    elif case == "a DatasetDict folder":
        (tmp_path / "dd").mkdir()
        (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
        job["data"]["path"] = str(tmp_path / "dd")
        want = r"holds the splits train, test of a DatasetDict: point it at one of them"
    elif case == "batch temperature over 2":
        job["data"]["path"] = str(write_batch(tmp_path / "b.jsonl", [batch_request("x", msg, temperature=3.5)]))
        want = r"line 1 \(custom_id 'x'\): body.temperature=3.5 is out of range"
    elif case == "batch n at temperature 0":
        job["data"]["path"] = str(write_batch(tmp_path / "b.jsonl", [batch_request("x", msg, temperature=0)]))
        job["data"]["n_samples"] = 2
        want = r"custom_id 'x' asks for n=2 at temperature 0 \(greedy\)"
    elif case == "batch min_tokens over max_tokens":
        job["data"]["path"] = str(write_batch(tmp_path / "b.jsonl", [batch_request("x", msg, min_tokens=100)]))
        want = r"custom_id 'x' asks for min_tokens=100, over its max_tokens="
    elif case == "one output spelled two ways":
        out = tmp_path / "out"
        job["datasets"] = {"a": {"path": str(data["one"]), "output_path": str(out / "a.parquet")},
                           "b": {"path": str(data["jsonl"]), "output_path": str(out / ".." / "out" / "a.parquet")}}
        want = r"datasets a and b write the same output_path"
    elif case == "output over an input file":
        job["datasets"] = {"a": {"path": str(data["one"])},
                           "b": {"path": str(data["jsonl"]), "output_path": str(data["one"])}}
        want = r"datasets.b.output_path .*one.parquet is an input file of datasets.a.path"
    elif case == "data.path beside datasets":
        job["datasets"] = {"a": {"path": str(data["jsonl"])}}
        want = r"data.path is given together with a 'datasets' section"
    elif case == "save_to_disk state listing no file":
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "state.json").write_text('{"_data_files": []}')
        job["data"]["path"] = str(tmp_path / "hf")
        want = r"state.json lists no data file"
    elif case == "seeds that are not integers":
        job["seeds"] = [True, False]
        want = r"key 'seeds.0': Input should be a valid integer \(got True\)"
    else:
        job["data"]["path"] = str(write_batch(tmp_path / "b.jsonl", [batch_request("x", msg, seed=5)]))
        job["seeds"] = [0, 1]
        want = r"custom_id 'x' sets body.seed, but the run has several seeds"
    if "datasets" in job and "data" in job and case != "data.path beside datasets":
        del job["data"]["path"]
    path = tmp_path / "job.yaml"
    path.write_text(text if text is not None else json.dumps(job))
    res = hpcgen("submit", str(path), "--run-dir", str(tmp_path / "run"), "--executor", "local")
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    import re

    assert re.search(want, res.stderr), res.stderr
    assert not (tmp_path / "run").exists()


def test_file_order_and_names_as_given(tmp_path):
    """A glob sorts files by their own names (a hub snapshot's symlinks to blobs keep their order); a file whose
    name holds glob characters is read as that file."""
    from hpcgen.login.datasets import resolve_files

    blobs, snap = tmp_path / "blobs", tmp_path / "snap"
    blobs.mkdir()
    snap.mkdir()
    for link, blob in (("a.parquet", "z0"), ("b.parquet", "y0")):
        (blobs / blob).write_bytes(b"x")
        (snap / link).symlink_to(blobs / blob)
    by_glob, _ = resolve_files(str(snap / "*.parquet"), "data")
    by_folder, _ = resolve_files(str(snap), "data")
    assert [p.name for p in by_glob] == [p.name for p in by_folder] == ["a.parquet", "b.parquet"]
    odd = tmp_path / "test[1].parquet"
    odd.write_bytes(b"x")
    (tmp_path / "test1.parquet").write_bytes(b"x")
    assert resolve_files(str(odd), "data")[0] == [odd]


def test_a_folder_skips_hidden_and_underscore_files_and_subfolders(tmp_path):
    from hpcgen.login.datasets import resolve_files

    for name in ("b.parquet", "a.jsonl", ".hidden.parquet", "_meta.parquet", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.parquet").write_bytes(b"x")
    assert [p.name for p in resolve_files(str(tmp_path), "data")[0]] == ["a.jsonl", "b.parquet"]


def test_json_lines_files_with_other_keys_keep_every_key(tmp_path, fake_model):
    (tmp_path / "a.jsonl").write_text('{"prompt": "x", "level": 1}\n{"prompt": "y", "level": 2}\n')
    (tmp_path / "b.jsonl").write_text('{"prompt": "z", "topic": "geometry"}\n')
    layout = run(tmp_path, fake_model, {"data": {"path": str(tmp_path / "*.jsonl"), "n_samples": 1}})
    out = merge_run(layout.root, output=tmp_path / "o.jsonl").output
    rows = [json.loads(x) for x in Path(out).read_text().splitlines()]
    assert [(r["prompt"], r.get("level"), r.get("topic")) for r in rows] == [
        ("x", 1, None), ("y", 2, None), ("z", None, "geometry")]
    assert "topic" not in rows[0] and "level" not in rows[2]  # each row's own keys, byte for byte


def test_multirun_keeps_a_bracketed_list_whole():
    from hpcgen.spec.sweep import split_sweeps

    assert split_sweeps([], ["seeds=[0,1]"], True) == ([], ["seeds=[0,1]"])
    assert split_sweeps([], ["seeds=[0,1],[2,3]"], True)[0] == [("seeds", ["[0,1]", "[2,3]"])]


def test_spec_errors_name_the_key():
    base = {"model": {"path": "m"}, "datasets": {"a": {"path": "x"}, "b": {"path": "y"}}}
    with pytest.raises(ConfigError, match="unknown key 'datasets.a.pth'; did you mean 'datasets.a.path'"):
        load_job(None, ["datasets.a.pth=z"], data=base)
    with pytest.raises(ConfigError, match="data.output_path names one file, but the job lists several datasets"):
        load_job(None, ["data.output_path=o.parquet"], data=base)
    with pytest.raises(ConfigError, match=r"needs datasets.a.n_samples=1"):
        load_job(None, ["rollout.temperature=0", "datasets.a.n_samples=4"], data=base)
    with pytest.raises(ConfigError, match="dataset name 'a b' must be a word"):
        load_job(None, [], data={"model": {"path": "m"}, "datasets": {"a b": {"path": "x"}}})
    with pytest.raises(ConfigError, match="missing required key 'data.path' \\(or a 'datasets' section\\)"):
        load_job(None, [], data={"model": {"path": "m"}})
    spec = load_job(None, ["data.n_samples=4", "seeds=[3,1]"], data=base)
    assert [(e.name, e.n_samples) for e in spec.dataset_entries()] == [("a", 4), ("b", 4)]
    assert spec.run_seeds == [3, 1]


def test_the_frozen_job_reads_back_in_the_task(data, fake_model):
    """The manifest's job (every new key set) validates again as the task reads it."""
    from hpcgen.rundir.manifest import spec_from_manifest

    spec = load_job(None, ["sharding.num_tasks=2", "seeds=[0,5]", "data.format=auto"],
                    data={**eval_job(data), "model": {"path": str(fake_model)}})
    manifest = make_plan(spec, job_file=None, overrides=[]).manifest
    again = spec_from_manifest(json.loads(json.dumps(manifest)))
    assert again.generation_settings() == manifest["generation"] and again.sharding.num_tasks == 2
    with pytest.raises(ConfigError, match="set sharding.num_tasks or sharding.shards_per_task, not both"):
        load_job(None, ["sharding.num_tasks=2", "sharding.shards_per_task=3"], data={**eval_job(data),
                                                                                   "model": {"path": "m"}})


def test_plan_error_for_a_file_of_a_dataset_names_the_file(tmp_path, data, fake_model):
    (tmp_path / "bad.parquet").write_text("not parquet")
    spec = load_job(None, [], data={"model": {"path": str(fake_model)},
                                    "datasets": {"x": {"path": [str(data["one"]), str(tmp_path / "bad.parquet")]}}})
    with pytest.raises(DatasetError, match=r"datasets.x.path .*bad.parquet is not a readable parquet file"):
        make_plan(spec, job_file=None, overrides=[])


def test_chained_merge_and_score_handles_every_dataset(tmp_path, data, fake_model):
    """score.after_merge's step on a run of several datasets: every output, one scores.json, the report."""
    from hpcgen.login.chain import merge_and_score

    layout = run(tmp_path, fake_model, eval_job(data), name="chained")
    out = merge_and_score(str(layout.root))
    assert [Path(p).name for p in out["outputs"]] == ["gsm.parquet", "math.parquet", "hf.parquet"]
    assert sorted(json.loads((layout.root / "scores.json").read_text())["datasets"]) == ["gsm", "hf", "math"]
    page = (layout.root / "report.html").read_text()
    assert "dataset gsm" in page and "<th>dataset</th>" in page and "<td>hf</td>" in page  # a score line each


def test_a_sweep_folder_given_to_a_one_run_command_says_so(tmp_path):
    (tmp_path / "sw" / "000-a").mkdir(parents=True)
    (tmp_path / "sw" / "sweep.json").write_text("{}")
    (tmp_path / "sw" / "000-a" / "manifest.json").write_text("{}")
    res = hpcgen("resume", str(tmp_path / "sw"))
    assert res.returncode == 2 and "is a sweep folder: this command takes one of its runs, e.g." in res.stderr
    res = hpcgen("merge", str(tmp_path / "sw"), "--output", str(tmp_path / "o.parquet"))
    assert res.returncode == 2 and "a sweep merges each run to its own outputs" in res.stderr, res.stderr


def test_one_changed_file_of_many_is_refused_by_merge_and_resume(tmp_path, data, fake_model):
    from hpcgen.errors import RunDirError
    from hpcgen.login.ops import check_unchanged
    from hpcgen.rundir.manifest import load_manifest

    folder = tmp_path / "copy"
    shutil.copytree(data["dir"], folder)
    layout = run(tmp_path, fake_model, {"data": {"path": str(folder / "*.parquet"), "n_samples": 1}}, name="chg")
    victim = folder / "part-00007.parquet"
    rows = pq.read_table(victim).to_pylist()
    rows[0]["prompt"] = [{"role": "user", "content": "another question"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(victim)), victim)
    with pytest.raises(RunDirError, match=r"cannot merge: dataset .*part-00007.parquet changed since the plan"):
        merge_run(layout.root)
    with pytest.raises(RunDirError, match=r"cannot resume: dataset .*part-00007.parquet changed since the plan"):
        check_unchanged(load_manifest(layout.root))


def test_container_mounts_every_dataset_and_output_folder():
    from hpcgen.login.container import auto_mounts

    spec = load_job(None, [], data={"model": {"path": "/m/model"}, "datasets": {
        "gsm": {"path": "/data/gsm/test-*.parquet", "output_path": "/out/a/gsm.parquet"},
        "math": {"path": ["/data/math/a.jsonl", "/other/b.jsonl"]}, "hf": {"path": "/data/hf"}}})
    mounts = {(m.src, m.mode, m.why) for m in auto_mounts(spec, Path("/runs/r"))}
    assert {("/data/gsm", "ro", "dataset gsm"), ("/data/math/a.jsonl", "ro", "dataset math"),
            ("/other/b.jsonl", "ro", "dataset math"), ("/data/hf", "ro", "dataset hf"),
            ("/out/a", None, "output directory")} <= mounts
