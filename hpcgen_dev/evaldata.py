"""Evaluation inputs for tests and benchmarks: one dataset split into many parquet files, a Hugging Face
``datasets.save_to_disk`` folder written with pyarrow alone (``datasets`` is not installed), and OpenAI batch
request files as vLLM's ``run-batch`` reads them.

The save_to_disk layout follows ``datasets.arrow_dataset.Dataset.save_to_disk``: ``data-%05d-of-%05d.arrow``
files in Arrow's IPC *stream* format (``datasets.arrow_writer.ArrowWriter`` writes with
``pa.RecordBatchStreamWriter``), ``state.json`` listing them in order under ``_data_files``, and
``dataset_info.json`` (features; not read by hpcgen).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def split_parquet(rows: list[dict[str, Any]], folder: Path, files: int, *, schema: Any = None,
                  stem: str = "part") -> list[Path]:
    """``rows`` written as ``files`` parquet files ``<stem>-00000.parquet`` ... (about equal parts, in order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(files):
        part = rows[i * len(rows) // files:(i + 1) * len(rows) // files]
        path = folder / f"{stem}-{i:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(part, schema=schema), path)
        out.append(path)
    return out


def save_to_disk(rows: list[dict[str, Any]], folder: Path, shards: int = 2, *, schema: Any = None,
                 batch_rows: int = 3) -> Path:
    """What ``datasets.Dataset.from_list(rows).save_to_disk(folder, num_shards=shards)`` writes."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    names = []
    for i in range(shards):
        part = table.slice(i * len(rows) // shards, (i + 1) * len(rows) // shards - i * len(rows) // shards)
        name = f"data-{i:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in part.to_batches(max_chunksize=batch_rows):
                writer.write_batch(batch)
        names.append(name)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0" * 16, "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    info = {"citation": "", "description": "", "features": {f.name: {"_type": "Value"} for f in table.schema},
            "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return folder


def batch_request(custom_id: str, messages: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": messages, **body}}


def write_batch(path: Path, requests: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests), encoding="utf-8")
    return path
