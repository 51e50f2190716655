"""What a task pays to read its prompts when row groups span many shards (``hpcgen.task.prompts``).

A parquet reader can address a row group's column chunk, not a row: a task whose shard sits at the end of a
big row group decodes the rows before it too. Measured on one input written twice, 100,000 rows of ~1.7 KB
prompts split into 16 shards: as one row group, and with one row group per shard. Each shard is read in a
fresh process (as a task would), with hpcgen's streaming reader and with the former whole-row-group read.

Figures: arrow pool peak per task (streaming vs whole row group: memory), and the sum over the 16 tasks of
the read time against one pass over the whole column in the same run (reading: ~N/2 x for one row group,
~1 x when row groups follow the shards).

    python bench/bench_prompts.py [--rows 100000] [--shards 16]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

B = "prompts"


def child(path: str, mode: str, shards: int, shard: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_metadata(path).num_rows
    bounds = [(i * rows // shards, (i + 1) * rows // shards) for i in range(shards)]
    manifest = {"shards": bounds, "job": {"data": {"prompt_key": "prompt"}},  # the manifest's reading part
                "datasets": [{"name": "d", "kind": "parquet", "files": [{"path": path, "rows": rows}],
                              "prompt_key": "prompt", "n_samples": 1}],
                "blocks": [{"dataset": 0, "seed": 0, "start": 0, "rows": rows, "first_shard": 0, "shards": shards}]}
    pa.Table.from_pylist([{"a": 1}])  # pyarrow's lazy set-up, not counted
    from hpcgen.task.prompts import read_prompts

    base = pa.default_memory_pool().max_memory()
    t0 = time.perf_counter()
    if mode == "stream":
        n = sum(1 for _ in read_prompts(manifest, shard))
    elif mode == "whole":  # what a task did before: the whole row group's prompt column, then a slice
        pf, (s, e), n, first = pq.ParquetFile(path), bounds[shard], 0, 0
        for rg in range(pf.metadata.num_row_groups):
            k = pf.metadata.row_group(rg).num_rows
            lo, hi = max(s, first), min(e, first + k)
            if lo < hi:
                n += sum(1 for _ in pf.read_row_group(rg, columns=["prompt"]).column(0).slice(lo - first, hi - lo)
                         .to_pylist())
            first += k
    else:  # one pass over the whole column: the baseline
        n = sum(b.num_rows for b in pq.ParquetFile(path).iter_batches(columns=["prompt"], batch_size=4096))
    common.emit_child({"rows": n, "s": time.perf_counter() - t0,
                       "pool_peak_mb": (pa.default_memory_pool().max_memory() - base) / 1e6,
                       "rss_mb": common.vmhwm_mb()})


def make_input(rows: int, row_group: int, out: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if out.exists():
        return out
    rnd = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    prompts = [" ".join(rnd.choice(words) for _ in range(300)) + f" #{i}" for i in range(rows)]
    pq.write_table(pa.table({"prompt": prompts}), out, row_group_size=row_group)
    return out


def measure(path: Path, mode: str, shards: int, shard: int) -> dict:
    res = common.run_measured([common.PY, __file__, "--child", str(path), mode, str(shards), str(shard)])
    return common.child_json(res)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--child", nargs=4)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], int(a.child[2]), int(a.child[3]))
        return
    d = common.bench_dir("prompts")
    one = make_input(a.rows, a.rows, d / f"one-rg-{a.rows}.parquet")
    aligned = make_input(a.rows, -(-a.rows // a.shards), d / f"aligned-{a.rows}-{a.shards}.parquet")
    last = a.shards - 1
    stream, whole = measure(one, "stream", a.shards, last), measure(one, "whole", a.shards, last)
    common.report(B, "arrow pool peak of the last task, one row group: streaming (MB)", stream["pool_peak_mb"], "MB",
                  note=f"whole-row-group read {whole['pool_peak_mb']:.0f} MB; peak RSS {stream['rss_mb']:.0f} vs "
                       f"{whole['rss_mb']:.0f} MB; {a.rows} rows, {a.shards} shards")
    common.report(B, "arrow pool peak, streaming / whole row group", stream["pool_peak_mb"] / whole["pool_peak_mb"],
                  goal="<= 0.1", ok=stream["pool_peak_mb"] <= 0.1 * whole["pool_peak_mb"])
    for name, path in (("one row group", one), ("one row group per shard", aligned)):
        full = min(measure(path, "full", a.shards, 0)["s"] for _ in range(2))
        per_task = [measure(path, "stream", a.shards, s)["s"] for s in range(a.shards)]
        common.report(B, f"read time of all {a.shards} tasks / one pass over the column ({name})",
                      sum(per_task) / full, "x",
                      note=f"sum {sum(per_task):.2f} s vs one pass {full:.2f} s; first task {per_task[0]:.3f} s, "
                           f"last {per_task[-1]:.3f} s")
    print(json.dumps({"stream": stream, "whole": whole}))


if __name__ == "__main__":
    main()
