"""Status at scale: a 10,000-shard run directory (half done, a quarter with partial parts, a quarter with
nothing) whose submission record points at real, held-then-cancelled arrays on the throwaway cluster, so
``collect`` really asks sacct.

Figures: seconds for ``hpcgen.login.state.collect`` and for ``hpcgen status RUN --json`` (goal < 1 s each), and
sacct calls per status (goal <= 1, counted by a PATH shim).

Part files are hard links to one tiny real part (PART_SCHEMA): status lists names, it never reads parts.
Each started shard has its task's progress record (rundir.progress, as the worker writes it): status reads
those 7,500 small files for elapsed time, rates, GPU-hours and tokens.

    python bench/bench_status.py [--shards 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

B = "status"
JOB_NAME = "hpcgen-bench-status"


def child(run_dir: Path) -> None:
    from hpcgen.login.state import collect
    from hpcgen.rundir.manifest import load_manifest

    t0 = time.perf_counter()
    manifest = load_manifest(run_dir)
    t1 = time.perf_counter()
    state = collect(run_dir, manifest)
    t2 = time.perf_counter()
    common.emit_child({"manifest_s": t1 - t0, "collect_s": t2 - t1, "counts": state.counts,
                       "sacct_calls": state.sacct_calls})


def held_arrays(n_shards: int, max_array: int, log_dir: Path) -> list[str]:
    """Queue held arrays covering n_shards tasks, cancel them at once; returns their ids."""
    arrays: list[str] = []
    try:
        for lo in range(0, n_shards, max_array):
            n = min(max_array, n_shards - lo)
            out = subprocess.run(["sbatch", "--hold", f"--array=0-{n - 1}", "-p", "gpu", "-J", JOB_NAME, "-t", "1",
                                  "-o", str(log_dir / "%A_%a.out"), "--wrap", "true"],
                                 capture_output=True, text=True, check=True).stdout
            arrays.append(re.search(r"job (\d+)", out)[1])
    finally:
        common.scancel(arrays)
    return arrays


def build_run(root: Path, shards: int) -> tuple[Path, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hpcgen.login.launch import Submission, max_array_size
    from hpcgen.login.plan import create_run_dir, make_plan
    from hpcgen.rundir import atomic
    from hpcgen.rundir.parts import PART_SCHEMA
    from hpcgen.spec.loader import load_job

    data = {"defaults": ["model/tiny", "cluster/dev"],
            "data": {"path": str(common.big_prompt_parquet()), "n_samples": 4},
            "model": {"path": str(common.tiny_model())}, "sharding": {"num_shards": shards}}
    plan = make_plan(load_job(None, [], data=data), job_file=None, overrides=[])
    layout = create_run_dir(root / "run", plan.manifest)
    layout.progress_dir.mkdir(exist_ok=True)
    arrays = held_arrays(shards, max_array_size(), root)
    chunk = max_array_size()
    jobs = {s: f"{arrays[s // chunk]}_{s % chunk}" for s in range(shards)}
    sub = Submission(1, "submit", "slurm", jobs, arrays, len(arrays), time.time() - 3600)
    atomic.write_json(layout.submission(1), {**sub.to_dict(), "rows_done_at_submit": 0})

    proto = root / "proto.parquet"
    row = {"row_id": 0, "responses": ["x"] * 4, "finish_reasons": ["stop"] * 4, "response_tokens": [1] * 4,
           "prompt_tokens": 3, "prompt_truncated": False, "gen_error": None}
    pq.write_table(pa.Table.from_pylist([row], schema=PART_SCHEMA), proto)
    done_n, partial_n = shards // 2, shards // 4
    for s in range(done_n + partial_n):
        start, end = plan.shards[s]
        jid = jobs[s] + ".r0"
        tag = jid.replace(".", "-")
        rows = [end - start] if s < done_n else [(end - start) // 3] * 2
        names = [common.part_name(s, seq, 0, n, tag) for seq, n in enumerate(rows)]
        layout.shard_dir(s).mkdir(parents=True, exist_ok=True)
        for p in names:  # a running shard: two chunks claimed, one of them marked done, parts saved
            os.link(proto, layout.part(p))
        if s >= done_n:
            for c in range(2):
                layout.lease(s, c, 0).write_text(jid)
            layout.chunk_done(s, 0).write_text("{}")
        layout.attempt(s, jid).write_text(json.dumps({"shard": s, "job_id": jid, "host": "n1", "pid": 1,
                                                      "started": time.time() - 600, "error": None}))
        # the task's progress record, as the worker writes it at each flush (status reads these, not parts)
        rows_done = sum(rows)
        now = time.time()
        counts = {"rows": rows_done, "samples": 4 * rows_done, "output_tokens": 400 * rows_done, "length": 3,
                  "errors": 0}
        layout.progress(jid).write_text(json.dumps({
            "format": "hpcgen-progress/1", "job_id": jid, "host": "n1", "pid": 1, "gpus": 8,
            "started": now - 600, "updated": now - 5, "ended": now - 5 if s < done_n else None, "error": None,
            **counts, "shards": {str(s): {**counts, "first": now - 590, "last": now - 5}},
            "recent": [[now - 5 - 60 * k, rows_done - k, 400 * (rows_done - k)] for k in range(8)][::-1]},
            separators=(",", ":")))
        if s < done_n:
            layout.done(s).write_text(json.dumps({
                "shard": s, "rows": end - start, "errors": 0, "job_id": jid, "finished": time.time(),
                "parts": [{"name": p.rel, "rows": end - start, "sha256": "0" * 64} for p in names]}))
    return layout.root, arrays


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        child(Path(a.child))
        return

    os.environ.update(common.cluster_env())
    root = common.fresh_dir("status")
    root.mkdir(parents=True)
    t = time.perf_counter()
    run_dir, arrays = build_run(root, a.shards)
    print(f"[{B}] built {run_dir} with {a.shards} shards in {time.perf_counter() - t:.1f}s; "
          f"held+cancelled arrays {','.join(arrays)}", flush=True)
    # the accounting database learns of the cancellations within a second or two
    time.sleep(3)
    sacct_log = common.make_shim(root / "shims", "sacct")
    squeue_log = common.make_shim(root / "shims", "squeue")
    env = {"PATH": f"{root / 'shims'}:{os.environ['PATH']}"}

    col, cli = [], []
    for _ in range(a.repeat):
        sacct_log.write_text("")
        squeue_log.write_text("")
        r = common.child_json(common.run_measured([common.PY, __file__, "--child", str(run_dir)], env=env))
        r["shim_calls"] = len(common.shim_calls(sacct_log))
        r["squeue_calls"] = len(common.shim_calls(squeue_log))
        col.append(r)
        sacct_log.write_text("")
        squeue_log.write_text("")
        res = common.run_measured([str(Path(sys.executable).parent / "hpcgen"), "status", str(run_dir), "--json"],
                                  env=env)
        st = json.loads(res["stdout"])
        cli.append({"wall_s": res["wall_s"], "shim_calls": len(common.shim_calls(sacct_log)),
                    "squeue_calls": len(common.shim_calls(squeue_log)), "counts": st["counts"]})
    best_col = min(r["collect_s"] for r in col)
    best_cli = min(r["wall_s"] for r in cli)
    common.report(B, f"state.collect over {a.shards:,} shards (best of {a.repeat})", best_col, "s", "< 1 s",
                  best_col < 1, note="runs: " + ", ".join(f"{r['collect_s']:.3f}" for r in col)
                  + f"; load_manifest {min(r['manifest_s'] for r in col):.3f}s")
    common.report(B, f"hpcgen status --json wall (best of {a.repeat})", best_cli, "s", "< 1 s", best_cli < 1,
                  note="runs: " + ", ".join(f"{r['wall_s']:.3f}" for r in cli)
                  + " (Python start-up and imports included)")
    calls = max(r["shim_calls"] for r in col + cli)
    common.report(B, "sacct calls per status", calls, "", "<= 1", calls <= 1,
                  note=f"state.sacct_calls={col[0]['sacct_calls']}")
    calls = max(r["squeue_calls"] for r in col + cli)
    common.report(B, "squeue calls per status", calls, "", "<= 1", calls <= 1)
    helps = [common.run_measured([str(Path(sys.executable).parent / "hpcgen"), "--help"])["wall_s"]
             for _ in range(a.repeat)]
    common.report(B, f"hpcgen --help wall (best of {a.repeat})", min(helps), "s", "< 1 s", min(helps) < 1,
                  note="runs: " + ", ".join(f"{x:.3f}" for x in helps))
    common.report(B, "shard states seen", json.dumps(cli[0]["counts"], sort_keys=True), "", "info",
                  note="expected done 5000; the rest cancelled (their arrays were cancelled)")
    left = common.wait_gone(arrays)
    common.report(B, "our jobs left in squeue", len(left), "", "0", not left)


if __name__ == "__main__":
    main()
