"""Merge at scale: 1,000,000 rows x 4 responses x ~200 characters in 100 shards (parts of 256 rows, the
default checkpoint size, with real done markers), ``hpcgen.login.merge.merge_run`` against a plain pyarrow
baseline (read all parts, concatenate, sort by row id, put next to the input columns, write one parquet).

Figures: baseline_time / hpcgen_time (goal >= 0.9), peak RSS of each (own subprocess, wait4), and hpcgen's
memory above the interpreter floor in units of one shard (goal: bounded by a few shards, not the dataset).

    python bench/bench_merge.py [--rows 1000000] [--shards 100] [--order baseline,hpcgen,baseline]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

B = "merge"
PART_ROWS = 256
N_SAMPLES = 4


def input_table(rows: int, row_group: int, path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, _input_schema()) as w:
        for lo in range(0, rows, row_group):
            ids = pa.array(np.arange(lo, min(rows, lo + row_group)))
            n = len(ids)
            q = pc.binary_join_element_wise("Question ", pc.cast(ids, pa.string()),
                                            ": how many apples are left after the market closes?", "")
            w.write_table(pa.table({
                "data_source": pa.array(["openai/gsm8k"] * n), "prompt": q, "ability": pa.array(["math"] * n),
                "extra_info": pa.StructArray.from_arrays([pa.array(["train"] * n), ids], ["split", "index"]),
            }, schema=_input_schema()))


def _input_schema():
    import pyarrow as pa

    return pa.schema([("data_source", pa.string()), ("prompt", pa.string()), ("ability", pa.string()),
                      ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64())]))])


def part_table(rng, corpus: bytes, first: int, n: int):
    """n rows of PART_SCHEMA: 4 responses each, 150-250 ASCII characters of word salad, all distinct."""
    import numpy as np
    import pyarrow as pa

    from hpcgen.rundir.parts import PART_SCHEMA

    lengths = rng.integers(150, 251, size=n * N_SAMPLES)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    start = int(rng.integers(0, len(corpus) - int(offsets[-1])))
    texts = pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(
        corpus[start:start + int(offsets[-1])]))
    lists = pa.array(np.arange(0, n * N_SAMPLES + 1, N_SAMPLES, dtype=np.int32))
    return pa.Table.from_arrays([
        pa.array(np.arange(first, first + n, dtype=np.int64)),
        pa.ListArray.from_arrays(lists, texts),
        pa.ListArray.from_arrays(lists, pa.array(["stop"] * (n * N_SAMPLES))),
        pa.ListArray.from_arrays(lists, pa.array((lengths // 4).astype(np.int32))),
        pa.array(rng.integers(20, 80, size=n).astype(np.int32)),
        pa.array(np.zeros(n, dtype=bool)),
        pa.nulls(n, pa.string()),
    ], schema=PART_SCHEMA)


def build(rows: int, shards: int) -> Path:
    """Input parquet + run directory with every shard done; cached under the bench dir."""
    import numpy as np

    from hpcgen.login.plan import create_run_dir, make_plan
    from hpcgen.rundir.chunks import shard_chunks
    from hpcgen.rundir.parts import finalize_shard, write_chunk_done, write_part
    from hpcgen.spec.loader import load_job

    root = common.BENCH_DIR / f"merge-{rows}-{shards}"
    stamp = root / "complete"
    if stamp.is_file():
        return root / "run"
    root = common.fresh_dir(root.name)
    root.mkdir(parents=True)
    input_table(rows, 100_000, root / "input.parquet")
    data = {"defaults": ["model/tiny"], "data": {"path": str(root / "input.parquet"), "n_samples": N_SAMPLES},
            "model": {"path": str(common.tiny_model())}, "sharding": {"num_shards": shards}}
    plan = make_plan(load_job(None, [], data=data), job_file=None, overrides=[])
    layout = create_run_dir(root / "run", plan.manifest)
    rng = np.random.default_rng(0)
    words = ["".join(chr(97 + int(c)) for c in rng.integers(0, 26, size=int(k))) for k in rng.integers(1, 10, 2000)]
    corpus = " ".join(words[int(i)] for i in rng.integers(0, len(words), 600_000)).encode()
    for shard, bounds in enumerate(plan.shards):  # every chunk saved every PART_ROWS rows, marked, shard marked
        layout.shard_dir(shard).mkdir(parents=True, exist_ok=True)  # a task's first claim makes it
        for chunk, (clo, chi) in enumerate(shard_chunks(bounds, plan.manifest["chunk_rows"])):
            parts = [write_part(layout, shard, chunk, seq, "bench0", part_table(rng, corpus, first,
                                                                               min(PART_ROWS, chi - first)))
                     for seq, first in enumerate(range(clo, chi, PART_ROWS))]
            write_chunk_done(layout, shard, chunk, parts, 0, "bench0", 0)
        finalize_shard(layout, plan.manifest, shard)
    stamp.write_text("ok")
    return layout.root


def pool_peak() -> dict:
    import pyarrow as pa

    pool = pa.default_memory_pool()
    return {"pool_peak_mb": pool.max_memory() / 1e6, "pool": pool.backend_name, "peak_mb": common.vmhwm_mb()}


def sibling_run(run_dir: Path, name: str, *, done: int | None = None, one_row_group: bool = False) -> Path:
    """A run sharing ``run_dir``'s parts (symlink) with its own manifest and done markers: only the first
    ``done`` shards done, and/or the input rewritten as one 1M-row row group (``pq.write_table``'s default)."""
    import json
    import shutil

    import pyarrow.parquet as pq

    root = run_dir.parent / name
    if (root / "manifest.json").is_file():
        return root
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if one_row_group:
        path = run_dir.parent / "input-1rg.parquet"
        from hpcgen.rundir.fingerprint import dataset_sample

        entry = manifest["datasets"][0]["files"][0]
        pq.write_table(pq.read_table(entry["path"]), path)
        entry.update(path=str(path), sample=dataset_sample(str(path)))
    shutil.rmtree(root, ignore_errors=True)
    for d in ("attempts", "submissions", "logs"):
        shutil.copytree(run_dir / d, root / d)
    (root / "done").mkdir()
    for f in sorted((run_dir / "done").iterdir())[:done]:
        shutil.copy(f, root / "done" / f.name)
    (root / "work").symlink_to(run_dir / "work")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def warm_floor(run_dir: Path, out: Path) -> float:
    """RSS once pyarrow's parquet/dataset libraries and thread pools are loaded (one part read and written):
    the fixed cost every merge pays, whatever the data size."""
    import pyarrow as pa
    import pyarrow.dataset  # noqa: F401
    import pyarrow.parquet as pq

    first = min((run_dir / "work").glob("*/*.parquet"))
    pq.write_table(pq.read_table(pa.BufferReader(first.read_bytes())), out)
    out.unlink()
    return common.vmhwm_mb()


def child_hpcgen(run_dir: Path, out: Path) -> None:
    from hpcgen.login.merge import merge_run

    floor = warm_floor(run_dir, out)
    t = time.perf_counter()
    res = merge_run(run_dir, output=out, allow_partial=True)
    common.emit_child({"s": time.perf_counter() - t, "rows": res.rows, "floor_mb": floor, **pool_peak()})


def child_baseline(run_dir: Path, out: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hpcgen.rundir.manifest import load_manifest

    floor = warm_floor(run_dir, out)
    t = time.perf_counter()
    inp_path = load_manifest(run_dir)["datasets"][0]["files"][0]["path"]
    files = sorted((run_dir / "work").glob("*/*.parquet"))
    gen = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("row_id")
    inp = pq.read_table(inp_path)
    assert (gen.column("row_id").to_numpy() == np.arange(inp.num_rows)).all()  # noqa: S101
    for name in gen.column_names[1:]:
        inp = inp.append_column(name, gen.column(name))
    pq.write_table(inp, out)
    common.emit_child({"s": time.perf_counter() - t, "rows": inp.num_rows, "floor_mb": floor, **pool_peak()})


def measure(kind: str, run_dir: Path, out: Path, label: str = "") -> dict:
    res = common.run_measured([common.PY, __file__, "--child", kind, str(run_dir), str(out)])
    r = {**common.child_json(res), "out_mb": out.stat().st_size / 1e6}
    out.unlink()
    print(f"[{B}] {kind}{label}: {r['s']:.1f}s, peak RSS {r['peak_mb']:.0f} MB (floor {r['floor_mb']:.0f} MB, "
          f"arrow {r['pool']} pool peak {r['pool_peak_mb']:.0f} MB), {r['rows']} rows, output {r['out_mb']:.0f} MB",
          flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--order", default="baseline,hpcgen,baseline")
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        (child_hpcgen if a.child[0] == "hpcgen" else child_baseline)(Path(a.child[1]), Path(a.child[2]))
        return

    t = time.perf_counter()
    run_dir = build(a.rows, a.shards)
    small_run = sibling_run(run_dir, "run-first10", done=a.shards // 10)
    rg_run = sibling_run(run_dir, "run-1rg", one_row_group=True)
    parts = sorted((run_dir / "work").glob("*/*.parquet"))
    parts_mb = sum(p.stat().st_size for p in parts) / 1e6
    print(f"[{B}] run {run_dir}: {len(parts)} part files, {parts_mb:.0f} MB on disk, ready in "
          f"{time.perf_counter() - t:.1f}s (cached after the first build)", flush=True)
    import pyarrow.parquet as pq

    shard_mb = sum(pq.read_table(p).nbytes for p in parts if p.parent.name == "s000000") / 1e6
    out = common.bench_dir("merge-out") / "merged.parquet"
    runs: dict[str, list[dict]] = {"hpcgen": [], "baseline": []}
    for kind in a.order.split(","):
        runs[kind].append(measure(kind, run_dir, out))
    h = min(runs["hpcgen"], key=lambda r: r["s"])
    b = min(runs["baseline"], key=lambda r: r["s"])
    ratio = b["s"] / h["s"]
    common.report(B, f"hpcgen merge_run, {h['rows']:,} rows (best)", h["s"], "s",
                  note=f"{len(parts)} parts, {parts_mb:.0f} MB; {h['rows'] / h['s'] / 1e3:.1f}k rows/s")
    common.report(B, "pyarrow baseline (best)", b["s"], "s")
    common.report(B, "time ratio baseline/hpcgen", ratio, "", ">= 0.9", ratio >= 0.9)
    h_rss = max(r["peak_mb"] for r in runs["hpcgen"])
    b_rss = max(r["peak_mb"] for r in runs["baseline"])
    common.report(B, "peak RSS hpcgen / baseline", f"{h_rss:.0f} MB / {b_rss:.0f} MB", "", "info",
                  note=f"warm floor (pyarrow loaded) {h['floor_mb']:.0f} MB; arrow pool peaks "
                       f"{h['pool_peak_mb']:.0f} / {b['pool_peak_mb']:.0f} MB")
    grow = max(r["peak_mb"] - r["floor_mb"] for r in runs["hpcgen"])
    small = measure("hpcgen", small_run, out, f" (first {a.shards // 10} shards only)")
    grow_small = small["peak_mb"] - small["floor_mb"]
    extra = a.shards - a.shards // 10
    slope = (grow - grow_small) / extra
    common.report(B, f"hpcgen RSS per extra shard merged ({a.shards // 10} -> {a.shards} shards)", slope, "MB",
                  f"< 0.1 shard = {shard_mb / 10:.1f} MB (flat)", slope < shard_mb / 10,
                  note=f"{grow_small:.0f} -> {grow:.0f} MB above the warm floor; baseline grows "
                       f"{(b_rss - b['floor_mb']) / a.shards:.0f} MB per shard")
    common.report(B, "hpcgen arrow pool peak, in shards", h["pool_peak_mb"] / shard_mb, "shards", "<= 10",
                  h["pool_peak_mb"] / shard_mb <= 10,
                  note=f"one shard = {shard_mb:.1f} MB in memory; RSS above floor = {grow / shard_mb:.1f} shards")
    r1 = measure("hpcgen", rg_run, out, " (input in one row group)")
    worth1 = r1["pool_peak_mb"] / shard_mb
    common.report(B, "same, input written as one 1M-row row group", worth1, "shards", "<= 10", worth1 <= 10,
                  note=f"arrow pool {r1['pool_peak_mb']:.0f} MB, RSS {r1['peak_mb']:.0f} MB, {r1['s']:.1f}s")


if __name__ == "__main__":
    main()
