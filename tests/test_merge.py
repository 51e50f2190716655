"""The verified, ordered, streaming merge (fast, with a stand-in engine)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import FakeEngine, make_run, parts_of

from hpcgen.errors import IncompleteRunError, LockedError, RunDirError
from hpcgen.login.merge import compact_ranges, merge_run
from hpcgen.rundir.lock import Lock
from hpcgen.task.worker import run_shards


def test_merge_keeps_input_columns_and_order(tmp_path, small_dataset, fake_model):
    run = make_run(tmp_path, small_dataset, fake_model)
    run_shards(run.root, [2, 0, 1], engine_factory=FakeEngine)
    res = merge_run(run.root, output=tmp_path / "out.parquet")
    out = pq.read_table(res.output)
    inp = pq.read_table(small_dataset)
    assert out.num_rows == inp.num_rows == res.rows
    assert out.select(inp.column_names).equals(inp)  # every input column unchanged, nested ones included
    responses = out.column("responses").to_pylist()
    assert all(r == [f"row {i} sample 0", f"row {i} sample 1"] for i, r in enumerate(responses))
    assert {"finish_reasons", "response_tokens", "prompt_tokens", "gen_error"} <= set(out.column_names)
    plain = merge_run(run.root, output=tmp_path / "plain.parquet", metadata=False)
    assert pq.read_table(plain.output).column_names == [*inp.column_names, "responses"]  # verl's schema


def test_merge_jsonl_output_and_jsonl_input(tmp_path, fake_model):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i} é", "extra": {"i": i}}, ensure_ascii=False) + "\n"
                            for i in range(10)))
    run = make_run(tmp_path, data, fake_model)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    rows = [json.loads(x) for x in Path(merge_run(run.root, output=tmp_path / "o.jsonl").output).read_text().splitlines()]
    assert [r["extra"]["i"] for r in rows] == list(range(10))
    assert rows[3]["prompt"] == "question 3 é" and rows[3]["responses"][1] == "row 3 sample 1"
    t = pq.read_table(merge_run(run.root, output=tmp_path / "o.parquet").output)
    assert t.column("extra").to_pylist()[9] == {"i": 9}


def test_incomplete_run_refused_unless_partial(tmp_path, small_dataset, fake_model):
    run = make_run(tmp_path, small_dataset, fake_model)
    run_shards(run.root, [1], engine_factory=FakeEngine)
    out = tmp_path / "out.parquet"
    with pytest.raises(IncompleteRunError, match=r"shards 0,2 are not done \(2 of 3\)"):
        merge_run(run.root, output=out)
    assert not out.exists()
    res = merge_run(run.root, output=out, allow_partial=True)
    assert res.rows == 33 and res.missing_shards == [0, 2]


def test_tampered_part_is_never_merged(tmp_path, small_dataset, fake_model):
    run = make_run(tmp_path, small_dataset, fake_model)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    part = run.part(parts_of(run, 1)[0])
    part.write_bytes(part.read_bytes()[:-30])
    out = tmp_path / "out.parquet"
    with pytest.raises(RunDirError, match=r"shard 1 cannot be merged: part .* checksum.*hpcgen resume"):
        merge_run(run.root, output=out)
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))  # nothing half-written


def test_concurrent_merge_refused(tmp_path, small_dataset, fake_model):
    run = make_run(tmp_path, small_dataset, fake_model)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    held, release = threading.Event(), threading.Event()

    def hold():
        with Lock(run.lock, "merge"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(LockedError, match="is locked by merge"):
            merge_run(run.root, output=tmp_path / "o.parquet")
    finally:
        release.set()
        t.join()
    assert merge_run(run.root, output=tmp_path / "o.parquet").rows == 100


def test_compact_ranges():
    assert compact_ranges([5, 0, 1, 2, 9, 10]) == "0-2,5,9-10"


def test_resume_invalidates_a_done_shard_whose_part_broke(tmp_path, small_dataset, fake_model):
    import json as _json

    from hpcgen.rundir.parts import invalidate_bad_done

    run = make_run(tmp_path, small_dataset, fake_model)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    victim = run.part(parts_of(run, 2)[1])
    lost = pq.read_table(victim).num_rows
    victim.write_bytes(victim.read_bytes()[:50])
    manifest = _json.loads(run.manifest.read_text())
    assert invalidate_bad_done(run, manifest) == [2]
    assert 2 not in run.list_done() and not victim.exists()
    again = FakeEngine(None, "")
    run_shards(run.root, [2], engine_factory=lambda s, p: (setattr(again, "spec", s), again)[1])
    assert len(again.added) == lost  # only the broken part's rows
    assert merge_run(run.root, output=tmp_path / "o.parquet").rows == 100
