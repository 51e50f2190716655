"""Planning from metadata: shard table, fingerprints, dataset/model checks, atomic run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpcgen.errors import DatasetError, ModelError, RunDirError
from hpcgen.login.plan import check_model, create_run_dir, inspect_dataset, shard_ranges, task_groups


@pytest.mark.parametrize("rows, num, per", [(100, 4, None), (7, 3, None), (5, 10, None), (1000, None, 64),
                                            (10, None, 1), (1, 1, None)])
def test_shard_ranges_cover_rows_once_contiguously(rows, num, per):
    ranges = shard_ranges(rows, num, per)
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(e > s for s, e in ranges)
    if num:
        assert len(ranges) == min(num, rows)
        sizes = [e - s for s, e in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_task_groups():
    assert task_groups(5, 2) == [[0, 1], [2, 3], [4]]


def test_parquet_planned_from_metadata(small_dataset: Path):
    info = inspect_dataset(small_dataset, "prompt")
    assert info.rows == 100 and info.format == "parquet" and "reward_model" in info.columns
    assert info.fingerprint == inspect_dataset(small_dataset, "prompt").fingerprint


def test_fingerprint_changes_with_content(tmp_path: Path):
    a = tmp_path / "a.parquet"
    pq.write_table(pa.table({"prompt": ["x", "y"]}), a)
    f1 = inspect_dataset(a, "prompt").fingerprint
    pq.write_table(pa.table({"prompt": ["x", "z"]}), a)
    assert inspect_dataset(a, "prompt").fingerprint != f1


def test_jsonl_offsets_and_errors(tmp_path: Path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"q{i}", "k": i}) + "\n" for i in range(5)) + "\n")
    info = inspect_dataset(p, "prompt")
    assert info.rows == 5 and len(info.line_offsets) == 5
    raw = p.read_bytes()
    assert json.loads(raw[info.line_offsets[3]:].split(b"\n")[0])["k"] == 3
    p.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DatasetError, match=r"line 2: invalid UTF-8"):
        inspect_dataset(p, "prompt")
    p.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(DatasetError, match=r"line 2: not JSON"):
        inspect_dataset(p, "prompt")


def test_bad_datasets(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        inspect_dataset(tmp_path / "none.parquet", "prompt")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="unsupported format"):
        inspect_dataset(tmp_path / "x.csv", "prompt")
    (tmp_path / "fake.parquet").write_text("not parquet at all")
    with pytest.raises(DatasetError, match="not a readable parquet"):
        inspect_dataset(tmp_path / "fake.parquet", "prompt")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DatasetError, match="has no rows"):
        inspect_dataset(tmp_path / "empty.parquet", "prompt")
    pq.write_table(pa.table({"question": ["x"]}), tmp_path / "nokey.parquet")
    with pytest.raises(DatasetError, match="data.prompt_key 'prompt' is not a column.*question"):
        inspect_dataset(tmp_path / "nokey.parquet", "prompt")


def test_model_checks(tmp_path: Path):
    assert check_model("deepseek-ai/deepseek-llm-7b-chat") == "deepseek-ai/deepseek-llm-7b-chat"  # hub id
    with pytest.raises(ModelError, match="does not exist"):
        check_model(str(tmp_path / "nope"))
    m = tmp_path / "m"
    m.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        check_model(str(m))
    (m / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no tokenizer"):
        check_model(str(m))
    (m / "tokenizer.json").write_text("{}")
    assert check_model(str(m)) == str(m)


def test_run_dir_created_whole_or_not_at_all(tmp_path: Path):
    run = create_run_dir(tmp_path / "run", {"format": "hpcgen-run/1"})
    assert (run.root / "manifest.json").is_file() and run.work_dir.is_dir()
    with pytest.raises(RunDirError, match="already holds a run"):
        create_run_dir(tmp_path / "run", {"format": "hpcgen-run/1"})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(RunDirError, match="not empty"):
        create_run_dir(tmp_path / "busy", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "run"]  # no temp dirs left behind
