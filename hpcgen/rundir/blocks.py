"""The run's row space: blocks of (dataset, seed), read from the manifest.

A run holds one or more datasets and one or more seeds. Its rows are the concatenation of blocks, one per
(dataset, seed) in that order (dataset 0 seed 0, dataset 0 seed 1, ..., dataset 1 seed 0, ...); a block holds
every row of its dataset once. Row ids in parts and markers are run row ids (a row's position in this
concatenation); ``local`` is the row's position in its dataset. Shards never cross a block, and every seed
block of a dataset is cut into shards identically, so shard ``first_shard + j`` of each seed block covers the
same dataset rows: the merge puts their samples side by side.

Manifest (``hpcgen-run/3``)::

    "datasets": [{"name", "kind", "files": [{"path", "rows", "size", "fingerprint", "sample"}], "rows",
                  "columns", "prompt_key", "n_samples", "n_runs", "output_path", "apply_chat_template_kwargs",
                  "source_columns", "given"}],
    "seeds": [0, 1],
    "blocks": [{"dataset": 0, "seed": 0, "start": 0, "rows": 120, "first_shard": 0, "shards": 2}, ...],

``n_runs`` is null when every row of the dataset has ``n_samples`` samples, else ``[[first local row, n], ...]``
(an OpenAI batch file whose requests ask for different ``n``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcgen.errors import UserError


@dataclass(frozen=True)
class Block:
    index: int
    dataset: int
    name: str
    seed: int
    start: int  # first run row id
    rows: int
    first_shard: int
    shards: int
    n_samples: int

    def local(self, row: int) -> int:
        return row - self.start


class NRuns:
    """Samples per row when they differ within a dataset: ``of(run row ids)`` -> expected counts."""

    def __init__(self, runs: list[list[int]], start: int) -> None:
        self.first = np.asarray([r[0] for r in runs], dtype=np.int64)
        self.n = np.asarray([r[1] for r in runs], dtype=np.int64)
        self.start = start

    def of(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.first, np.asarray(ids, dtype=np.int64) - self.start, side="right") - 1
        return self.n[np.clip(pos, 0, None)]

    def at(self, row: int) -> int:
        return int(self.of(np.asarray([row]))[0])


def blocks(manifest: dict[str, Any]) -> list[Block]:
    ds = manifest["datasets"]
    return [Block(i, b["dataset"], ds[b["dataset"]]["name"], b["seed"], b["start"], b["rows"], b["first_shard"],
                  b["shards"], ds[b["dataset"]]["n_samples"]) for i, b in enumerate(manifest["blocks"])]


def shard_block(manifest: dict[str, Any], shard: int) -> Block:
    firsts = [b["first_shard"] for b in manifest["blocks"]]
    i = bisect.bisect_right(firsts, shard) - 1
    b = manifest["blocks"][i]
    d = manifest["datasets"][b["dataset"]]
    return Block(i, b["dataset"], d["name"], b["seed"], b["start"], b["rows"], b["first_shard"], b["shards"],
                 d["n_samples"])


def shard_n(manifest: dict[str, Any], shard: int) -> int | NRuns:
    """What every row of the shard must hold: its dataset's ``n_samples``, or per-row counts (``NRuns``)."""
    b = shard_block(manifest, shard)
    runs = manifest["datasets"][b.dataset].get("n_runs")
    return NRuns(runs, b.start) if runs else b.n_samples


def expected_n(n: int | NRuns, ids: np.ndarray) -> np.ndarray | int:
    return n.of(ids) if isinstance(n, NRuns) else n


def dataset_shards(manifest: dict[str, Any], dataset: int) -> list[list[int]]:
    """For each shard position j of the dataset: the shard ids of its seed blocks, in seed order."""
    mine = [b for b in manifest["blocks"] if b["dataset"] == dataset]
    return [[b["first_shard"] + j for b in mine] for j in range(mine[0]["shards"])] if mine else []


def dataset_index(manifest: dict[str, Any], name: str) -> int:
    for i, d in enumerate(manifest["datasets"]):
        if d["name"] == name:
            return i
    names = ", ".join(d["name"] for d in manifest["datasets"])
    raise UserError(f"--dataset {name}: no dataset of that name in this run (its datasets: {names})")


def dataset_output(layout: Any, manifest: dict[str, Any], d: int) -> Path:
    """Where a dataset's merged output goes by default: its ``output_path``, else ``RUN_DIR/merged.parquet`` for
    a run of one dataset, else ``RUN_DIR/merged/<name>.parquet`` (``.jsonl`` for an OpenAI batch file)."""
    entry = manifest["datasets"][d]
    if entry.get("output_path"):
        return Path(entry["output_path"])
    suffix = ".jsonl" if entry["kind"] == "openai_batch" else ".parquet"
    if len(manifest["datasets"]) == 1:
        return Path(layout.default_output).with_suffix(suffix)
    return Path(layout.merged_dir) / f"{entry['name']}{suffix}"
