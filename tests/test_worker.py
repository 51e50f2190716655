"""The in-task loop with a stand-in engine (fast); the real engine is exercised in test_pipeline.py."""

from __future__ import annotations

import functools

import pyarrow.parquet as pq
import pytest
from helpers import FakeEngine, make_run, parts_of

from hpcgen.task.engine import PromptError, normalize_messages, row_seed
from hpcgen.task.worker import run_shards


def test_shards_saved_in_parts_then_marked_done(tmp_path, small_dataset, fake_model):
    run = make_run(tmp_path, small_dataset, fake_model)
    engines = []

    def factory(spec, path):
        engines.append(FakeEngine(spec, path))
        return engines[-1]

    out = run_shards(run.root, [0, 1, 2], engine_factory=factory)
    assert len(engines) == 1  # one engine load for all the task's shards
    assert sorted(run.list_done()) == [0, 1, 2]
    assert sum(p.rows for s in range(3) for p in parts_of(run, s)) == 100
    assert len(parts_of(run, 0)) >= 5  # chunks of 8 rows, every_rows=4 -> many saves
    assert out["rows"] == {"0": 33, "1": 33, "2": 34} and out["chunks"] == 5 + 5 + 5
    # a second run does nothing: done markers are honoured, no engine built
    engines.clear()
    run_shards(run.root, [0, 1, 2], engine_factory=factory)
    assert engines == []


def test_restart_skips_saved_rows_and_replaces_corrupt_parts(tmp_path, small_dataset, fake_model):
    run = make_run(tmp_path, small_dataset, fake_model)
    engine = FakeEngine(None, "")
    run_shards(run.root, [0], engine_factory=lambda s, p: (setattr(engine, "spec", s), engine)[1])
    # simulate a crash after some saves, before two chunks were marked: drop a part, corrupt another
    parts = parts_of(run, 0)
    run.done(0).unlink()
    for p in (parts[0], parts[-1]):
        run.chunk_done(0, p.chunk).unlink()
    run.part(parts[-1]).unlink()
    victim = run.part(parts[0])
    victim.write_bytes(victim.read_bytes()[:20])  # torn by hand
    lost = parts[-1].rows + parts[0].rows
    second = FakeEngine(None, "")
    run_shards(run.root, [0], engine_factory=lambda s, p: (setattr(second, "spec", s), second)[1])
    assert len(second.added) == lost  # only the missing rows were generated again
    assert any(".corrupt." in p.name for p in run.shard_dir(0).iterdir())
    ids = sorted(i for p in parts_of(run, 0) for i in pq.read_table(run.part(p))["row_id"].to_pylist())
    assert ids == list(range(33)) and 0 in run.list_done()


def test_bad_rows_are_recorded_not_fatal(tmp_path, fake_model):
    """Each kind of bad prompt (null, empty, unknown role, message without role, engine rejection) becomes that
    row's gen_error; the rows around it are generated. JSON lines keep the chat prompts as lists (a parquet
    column cannot mix strings and lists)."""
    import json

    data = tmp_path / "d.jsonl"
    prompts = ["fine", None, "", [{"role": "wizard", "content": "x"}], [{"content": "no role"}], "also fine",
               [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    run = make_run(tmp_path, data, fake_model, "sharding.num_shards=1", f"data.output_path={tmp_path}/out.jsonl")
    eng = functools.partial(FakeEngine, fail_rows=(5,))
    run_shards(run.root, [0], engine_factory=eng)
    import pyarrow as pa

    t = pa.concat_tables([pq.read_table(run.part(p)) for p in parts_of(run, 0)]).sort_by("row_id").to_pylist()
    errors = {r["row_id"]: r["gen_error"] for r in t}
    assert set(errors) == set(range(len(prompts)))
    assert errors[0] is None and len(t[0]["responses"]) == 2
    assert errors[1] == "prompt is null" and errors[2] == "prompt is an empty string"
    assert errors[3] == "message 0 has unknown role 'wizard'"
    assert errors[4] == "message 0 must have 'role' and 'content'"
    assert errors[5] == "row 5 rejected by the engine"
    assert errors[6] is None and len(t[6]["responses"]) == 2
    assert all(t[i]["responses"] == [] for i in range(1, 6))
    assert 0 in run.list_done()


def test_normalize_messages():
    assert normalize_messages("hi") == [{"role": "user", "content": "hi"}]
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert normalize_messages(msgs) == msgs
    for bad in (None, "  ", [], [{"role": "x", "content": "y"}], [{"role": "user"}], [{"role": "user", "content": 3}], 5):
        with pytest.raises(PromptError):
            normalize_messages(bad)


def test_row_seeds_are_spaced_by_n():
    n = 4
    seeds = [row_seed(7, r, n) for r in range(1000)]
    children = {s + i for s in seeds for i in range(n)}
    assert len(children) == 1000 * n  # sibling samples never share a seed
    assert row_seed(7, 5, n) != row_seed(8, 5, n)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_prompt_reader_reads_only_the_chunk(tmp_path, small_dataset, fake_model, fmt):
    import json

    from hpcgen.rundir.chunks import chunk_bounds, num_chunks
    from hpcgen.task.prompts import PromptReader

    data = small_dataset
    full = pq.read_table(small_dataset, columns=["prompt"]).column(0).to_pylist()
    if fmt == "jsonl":
        data = tmp_path / "d.jsonl"
        data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in full))
    run = make_run(tmp_path, data, fake_model)
    manifest = json.loads(run.manifest.read_text())
    reader = PromptReader(manifest)
    for shard in (1, 2, 0):
        for chunk in reversed(range(num_chunks(manifest, shard))):  # a thief's order
            lo, hi = chunk_bounds(manifest, shard, chunk)
            rows = list(reader.rows(shard, chunk, lo, hi))
            assert [r.row_id for r in rows] == list(range(lo, hi))
            assert [r.value for r in rows] == full[lo:hi]


def test_finished_task_ignores_a_late_time_limit_warning(tmp_path, small_dataset, fake_model):
    """USR2 landing while a finished task exits must not make submitit requeue it (seen on a quiet machine:
    a shard done in 65 s, the warning 1 s later, during vLLM's shutdown)."""
    import signal

    from hpcgen.task.worker import ShardTask

    run = make_run(tmp_path, small_dataset, fake_model)
    before = signal.getsignal(signal.SIGUSR2)
    try:
        out = ShardTask()(str(run.root), [0, 1, 2], engine_factory=FakeEngine)
        assert sorted(run.list_done()) == [0, 1, 2] and out["rows"]["0"] == 33
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, before)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


PEAK = """
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
from hpcgen.task.prompts import read_prompts
path, shards = sys.argv[1], 10
rows = pq.read_metadata(path).num_rows
manifest = {"shards": [(i * rows // shards, (i + 1) * rows // shards) for i in range(shards)],
            "datasets": [{"name": "d", "kind": "parquet", "files": [{"path": path, "rows": rows}],
                          "prompt_key": "prompt", "n_samples": 1}],
            "blocks": [{"dataset": 0, "seed": 0, "start": 0, "rows": rows, "first_shard": 0, "shards": shards}]}
pa.Table.from_pylist([{"a": 1}])
base = pa.default_memory_pool().max_memory()
ids = [r for r, _ in read_prompts(manifest, shards - 1)]
print(json.dumps({"ids": [ids[0], ids[-1], len(ids)], "peak": pa.default_memory_pool().max_memory() - base}))
"""


def test_a_task_reading_a_big_row_group_holds_one_batch(tmp_path):
    """One row group for all shards (the input as many tools write it): the last shard's task reads its rows
    in batches; its arrow memory stays far below the row group's prompt column (which the former reader
    loaded whole, for every task)."""
    import json
    import subprocess
    import sys

    import pyarrow as pa
    from helpers import REPO

    rows = 50_000
    prompts = [("lorem ipsum dolor sit amet " * 60) + str(i) for i in range(rows)]
    column_bytes = sum(map(len, prompts))
    pq.write_table(pa.table({"prompt": prompts}), tmp_path / "one.parquet", row_group_size=rows)
    assert pq.read_metadata(tmp_path / "one.parquet").num_row_groups == 1
    res = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "one.parquet")], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ids"] == [45_000, 49_999, 5_000]
    assert out["peak"] < column_bytes / 5, (out["peak"], column_bytes)
