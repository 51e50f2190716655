"""Nothing silently changed (fast, stand-in engine): a part is judged against the checksum recorded when it was
written; whatever does not verify is set aside (kept) and its rows generated again, and resume and merge agree
on what verifies. The same cases run on the real cluster in tests/test_faults.py."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FakeEngine, make_run, parts_of

from hpcgen.errors import RunDirError
from hpcgen.login.merge import merge_run
from hpcgen.rundir import atomic
from hpcgen.rundir.manifest import load_manifest
from hpcgen.rundir.parts import PART_SCHEMA, invalidate_bad_done
from hpcgen.task.worker import run_shards


def _done_run(tmp_path, dataset, model):
    run = make_run(tmp_path, dataset, model)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    return run


def rewrite(path, change) -> None:
    """Rewrite a part in place, keeping its name: a valid parquet file with other content."""
    rows = pq.read_table(path).to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=PART_SCHEMA), path)


def flip_bit(path, offset_from_middle: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + offset_from_middle] ^= 0x01
    path.write_bytes(bytes(data))


def resume_locally(run) -> tuple[list[int], list[int]]:
    """What `hpcgen resume` does to the files, then the worker on every shard: (invalidated, regenerated rows)."""
    bad = invalidate_bad_done(run, load_manifest(run.root))
    engine = FakeEngine(None, "")
    run_shards(run.root, [0, 1, 2], engine_factory=lambda s, p: (setattr(engine, "spec", s), engine)[1])
    return bad, sorted(engine.added)


def responses(path) -> list[list[str]]:
    return pq.read_table(path).column("responses").to_pylist()


@pytest.mark.parametrize("damage", ["other answers", "one bit flipped", "wrong number of samples"])
def test_resume_regenerates_a_changed_part_instead_of_reblessing_it(tmp_path, small_dataset, fake_model, damage):
    run = _done_run(tmp_path, small_dataset, fake_model)
    reference = responses(merge_run(run.root, output=tmp_path / "ref.parquet").output)
    victim_name = parts_of(run, 1)[0]
    victim = run.part(victim_name)
    victim_rows = pq.read_table(victim, columns=["row_id"]).column(0).to_pylist()
    if damage == "other answers":
        rewrite(victim, lambda rows: rows[0].update(responses=["forged", "forged"]))
    elif damage == "one bit flipped":
        flip_bit(victim)
    else:
        rewrite(victim, lambda rows: rows[0].update(responses=["only one"]))
    with pytest.raises(RunDirError, match=r"shard 1 cannot be merged: part .*"):
        merge_run(run.root, output=tmp_path / "before.parquet")
    bad, regenerated = resume_locally(run)
    assert bad == [1]
    assert regenerated == victim_rows  # exactly the changed part's rows, nothing else
    assert not victim.exists() and list(victim.parent.glob(victim_name.name + ".corrupt.*"))  # kept aside
    assert list(run.done_dir.glob("s000001.json.invalid.*"))  # the old marker is kept too
    after = responses(merge_run(run.root, output=tmp_path / "after.parquet").output)
    assert after == reference  # the forged text never reaches the output
    assert resume_locally(run) == ([], [])  # and resume and merge now agree: no going round in circles


def test_worker_restart_does_not_trust_a_changed_part_before_any_marker(tmp_path, small_dataset, fake_model):
    """A crash before the marker: the restarted worker checks earlier parts against their recorded checksums."""
    run = make_run(tmp_path, small_dataset, fake_model)
    run_shards(run.root, [0], engine_factory=FakeEngine)
    run.done(0).unlink()
    part = parts_of(run, 0)[1]
    run.chunk_done(0, part.chunk).unlink()  # the crash came before the chunk was marked
    changed = pq.read_table(run.part(part), columns=["row_id"]).column(0).to_pylist()
    rewrite(run.part(part), lambda rows: rows[-1].update(responses=["x", "y"]))
    engine = FakeEngine(None, "")
    run_shards(run.root, [0], engine_factory=lambda s, p: (setattr(engine, "spec", s), engine)[1])
    assert sorted(engine.added) == changed
    out = responses(merge_run(run.root, output=tmp_path / "o.parquet", allow_partial=True).output)
    assert ["x", "y"] not in out


def test_marker_naming_a_part_of_another_checksum_is_refused(tmp_path, small_dataset, fake_model):
    run = _done_run(tmp_path, small_dataset, fake_model)
    marker = atomic.read_json(run.done(2))
    marker["parts"][0]["sha256"] = "f" * 64
    atomic.write_json(run.done(2), marker)
    with pytest.raises(RunDirError, match="shard 2 cannot be merged: done marker lists"):
        merge_run(run.root, output=tmp_path / "o.parquet")
    assert invalidate_bad_done(run, load_manifest(run.root)) == [2]


# --- every input key reaches the output (issue 10.2) ----------------------------------------------------


def _jsonl(path, rows) -> None:
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


SPARSE = [{"prompt": f"q{i}", **({"extra_info": {"index": i, "split": "test"}} if i % 3 else {}),
           **({"note": "n"} if i == 8 else {})} for i in range(9)]


def test_jsonl_keys_missing_from_the_first_row_reach_both_outputs(tmp_path, fake_model):
    import json

    data = tmp_path / "d.jsonl"
    _jsonl(data, SPARSE)
    run = make_run(tmp_path, data, fake_model)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    out_jsonl = [json.loads(x) for x in open(merge_run(run.root, output=tmp_path / "o.JSONL").output)]
    assert [{k: v for k, v in r.items() if k in ("prompt", "extra_info", "note")} for r in out_jsonl] == SPARSE
    raw = (tmp_path / "o.JSONL").read_text().splitlines()
    assert all(line.startswith(json.dumps(row, ensure_ascii=False)[:-1]) for line, row in zip(raw, SPARSE, strict=True))
    table = pq.read_table(merge_run(run.root, output=tmp_path / "o.parquet").output)
    assert table.column("extra_info").to_pylist() == [r.get("extra_info") for r in SPARSE]
    assert table.column("note").to_pylist() == [None] * 8 + ["n"]


def test_jsonl_key_of_varying_type(tmp_path, fake_model):
    """JSON lines out: every value as written. Parquet out: refused before anything is queued or written."""
    import json

    from hpcgen.errors import DatasetError

    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}", "id": i if i != 4 else f"id-{i}"} for i in range(6)]
    _jsonl(data, rows)
    with pytest.raises(DatasetError, match=r"key 'id' is a number on line 1 and a string on line 5.*jsonl"):
        make_run(tmp_path, data, fake_model)
    run = make_run(tmp_path, data, fake_model, "data.output_path=" + str(tmp_path / "out.jsonl"))
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    out = [json.loads(x) for x in open(merge_run(run.root).output)]
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    with pytest.raises(DatasetError, match=r"values of 'id' do not share one type"):
        merge_run(run.root, output=tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_ints_and_floats_of_one_key_merge_into_parquet(tmp_path, fake_model):
    data = tmp_path / "d.jsonl"
    _jsonl(data, [{"prompt": "a", "x": 1}, {"prompt": "b", "x": 2.5}, {"prompt": "c"}])
    run = make_run(tmp_path, data, fake_model)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    assert pq.read_table(merge_run(run.root, output=tmp_path / "o.parquet").output)["x"].to_pylist() == [1.0, 2.5, None]


@pytest.mark.parametrize("column, option", [("responses", "merge.response_key"),
                                            ("gen_error", "merge.metadata_prefix")])
def test_input_column_named_like_a_generated_one(tmp_path, fake_model, column, option):
    from hpcgen.errors import DatasetError

    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], column: ["keep me", None, "me too"]}), data)
    with pytest.raises(DatasetError, match=rf"already has a column '{column}'.*{option}"):
        make_run(tmp_path, data, fake_model)
    fix = "merge.response_key=gen_responses" if column == "responses" else "merge.metadata_prefix=hpcgen_"
    run = make_run(tmp_path, data, fake_model, fix)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    for out in ("o.parquet", "o.jsonl"):
        res = merge_run(run.root, output=tmp_path / out)
        rows = pq.read_table(res.output).to_pylist() if out.endswith("parquet") else [
            __import__("json").loads(x) for x in open(res.output)]
        assert [r[column] for r in rows] == ["keep me", None, "me too"]
        assert all(len(r["gen_responses" if column == "responses" else "responses"]) == 2 for r in rows)


def test_merge_output_format_from_suffix_case_insensitive(tmp_path, small_dataset, fake_model):
    import json

    from hpcgen.errors import UserError

    run = _done_run(tmp_path, small_dataset, fake_model)
    for name in ("o.ndjson", "o.JSONL"):
        first = open(merge_run(run.root, output=tmp_path / name).output).readline()
        assert json.loads(first)["responses"] == ["row 0 sample 0", "row 0 sample 1"]
    assert pq.read_table(merge_run(run.root, output=tmp_path / "o.PARQUET").output).num_rows == 100
    with pytest.raises(UserError, match="unknown format '.csv'"):
        merge_run(run.root, output=tmp_path / "o.csv")


# --- changes under a running run are seen (issue 10.3) --------------------------------------------------


def _same_shape_rewrite(path) -> None:
    """New weights of the same shapes: the safetensors header (names, dtypes, shapes, offsets), the size and
    even the modification time stay; only tensor bytes change."""
    import os

    st = path.stat()
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    for i in range(start, len(data), 997):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def weighted_model(fake_model):
    """A model directory with a 9 MiB safetensors file (sampled, not hashed whole)."""
    import json
    import os

    header = json.dumps({"w": {"dtype": "F32", "shape": [9 * 1024 * 256], "data_offsets": [0, 9 * 1024 * 1024]}})
    body = os.urandom(9 * 1024 * 1024)
    (fake_model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode() + body)
    return fake_model


def test_model_overwritten_in_place_with_same_shapes_is_refused(tmp_path, small_dataset, weighted_model):
    from hpcgen.errors import RunDirError as RDE
    from hpcgen.login.ops import check_unchanged

    run = make_run(tmp_path, small_dataset, weighted_model)
    run_shards(run.root, [0], engine_factory=FakeEngine)
    _same_shape_rewrite(weighted_model / "model.safetensors")
    with pytest.raises(RDE, match="model .* changed since the plan"):
        check_unchanged(load_manifest(run.root))  # resume
    engine = FakeEngine(None, "")
    with pytest.raises(RDE, match="model .* changed since the plan"):
        run_shards(run.root, [1], engine_factory=lambda s, p: engine)  # a task that starts now
    assert engine.added == []
    err = [atomic.read_json(p)["error"] for p in run.attempts_dir.glob("s000001.*.json")]
    assert err and "changed since the plan" in err[0]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_dataset_regenerated_in_place_with_the_same_rows_is_refused(tmp_path, fake_model, fmt):
    from hpcgen.errors import RunDirError as RDE

    data = tmp_path / f"d.{fmt}"
    rows = [{"prompt": f"question {i}"} for i in range(12)]

    def write(rows):
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), data)
        else:
            _jsonl(data, rows)

    write(rows)
    run = make_run(tmp_path, data, fake_model)
    run_shards(run.root, [0], engine_factory=FakeEngine)
    write([{"prompt": f"question {i + 100}"} for i in range(12)])  # same count, same size, other prompts
    with pytest.raises(RDE, match=r"cannot merge: dataset .* changed since the plan"):
        merge_run(run.root, output=tmp_path / "o.parquet", allow_partial=True)
    with pytest.raises(RDE, match="dataset .* changed since the plan"):
        run_shards(run.root, [1], engine_factory=FakeEngine)


def test_task_with_other_generation_settings_than_the_plan_refuses(tmp_path, small_dataset, fake_model):
    from hpcgen.errors import RunDirError as RDE

    run = make_run(tmp_path, small_dataset, fake_model)
    manifest = load_manifest(run.root)
    manifest["generation"]["top_p"] = 0.5  # what another hpcgen version could have derived at plan time
    atomic.write_json(run.manifest, manifest)
    with pytest.raises(RDE, match="other generation settings than the plan's.*top_p"):
        run_shards(run.root, [0], engine_factory=FakeEngine)


def test_fingerprint_samples_content_and_trusts_hub_blob_names(tmp_path):
    import os

    from hpcgen.rundir.fingerprint import BLOCK, file_digest

    big = tmp_path / "w.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    before = file_digest(big)
    data = bytearray(big.read_bytes())
    data[(len(data) - BLOCK) // 63 * 5 + 10] ^= 1  # inside the 5th sampled block
    big.write_bytes(bytes(data))
    assert file_digest(big) != before
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    blob = blobs / ("ab" * 32)
    blob.write_bytes(b"x" * 10)
    link = tmp_path / "model.safetensors"
    link.symlink_to(blob)
    assert file_digest(link) == "blob:" + "ab" * 32
