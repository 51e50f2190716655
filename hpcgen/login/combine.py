"""Several seeds become extra samples of one row: the verified rows of one shard position from every seed block
(same dataset rows, :mod:`hpcgen.rundir.blocks`) side by side, samples in seed order.

verl's schema stays one row per prompt with a list of ``responses``; with seeds ``[0, 1]`` and ``n_samples`` 4
a row has 8 responses, those of seed 0 first. ``sample_seed`` (a list parallel to ``responses``) says which seed
gave each sample, so per-seed means stay computable (``hpcgen score`` reports their spread); without metadata
the layout itself says it: samples ``k*n .. (k+1)*n - 1`` are seed ``k``'s.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LIST_COLUMNS = ("responses", "finish_reasons", "response_tokens")


def _lengths(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def concat_lists(cols: list[pa.ChunkedArray]) -> pa.ListArray:
    """Row-wise concatenation of K list columns of equal length: row r = cols[0][r] + cols[1][r] + ..."""
    cols = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cols]
    lens = np.stack([_lengths(c) for c in cols])  # K x R
    flats = [pc.list_flatten(c) for c in cols]
    bases = np.cumsum([0] + [len(f) for f in flats[:-1]])
    starts = np.stack([np.cumsum(seg) - seg for seg in lens])  # K x R: where row r starts in flats[k]
    seg_start = (starts + bases[:, None]).T.reshape(-1)  # row-major: (r, k)
    seg_len = lens.T.reshape(-1)
    total = int(seg_len.sum())
    index = np.repeat(seg_start - np.cumsum(seg_len) + seg_len, seg_len) + np.arange(total)
    values = pa.concat_arrays(flats).take(pa.array(index, pa.int64())) if total else pa.concat_arrays(flats)[:0]
    offsets = np.concatenate([[0], np.cumsum(lens.sum(axis=0))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def seed_lists(cols: list[pa.ChunkedArray], seeds: list[int]) -> pa.ListArray:
    """``sample_seed``: for each row, the seed of each of its concatenated samples."""
    lens = np.stack([_lengths(c) for c in cols])
    per_row = lens.T.reshape(-1)
    values = np.repeat(np.tile(np.asarray(seeds, dtype=np.int64), lens.shape[1]), per_row)
    offsets = np.concatenate([[0], np.cumsum(lens.sum(axis=0))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))


def _errors(tables: list[pa.Table], seeds: list[int]) -> pa.Array:
    cols = [t.column("gen_error").to_pylist() for t in tables]
    out: list[str | None] = []
    for values in zip(*cols, strict=True):
        msgs = [(s, v) for s, v in zip(seeds, values, strict=True) if v]
        if not msgs:
            out.append(None)
        elif len({v for _, v in msgs}) == 1 and len(msgs) == len(seeds):
            out.append(msgs[0][1])  # the same error for every seed (a prompt too long, say)
        else:
            out.append("; ".join(f"seed {s}: {v}" for s, v in msgs))
    return pa.array(out, pa.string())


def combine_seeds(tables: list[pa.Table], seeds: list[int]) -> pa.Table:
    """One table (part schema + ``sample_seed``) from the same rows of each seed block, in seed order. Row ids
    are those of the first block."""
    if len(tables) == 1:
        return tables[0]
    first = tables[0]
    cols = {"row_id": first.column("row_id")}
    for name in LIST_COLUMNS:
        cols[name] = concat_lists([t.column(name) for t in tables])
    cols["prompt_tokens"] = pc.coalesce(*[t.column("prompt_tokens") for t in tables])
    truncated = tables[0].column("prompt_truncated")
    for t in tables[1:]:
        truncated = pc.or_(truncated, t.column("prompt_truncated"))
    cols["prompt_truncated"] = truncated
    cols["gen_error"] = _errors(tables, seeds)
    cols["sample_seed"] = seed_lists([t.column("responses") for t in tables], seeds)
    return pa.table(cols)
