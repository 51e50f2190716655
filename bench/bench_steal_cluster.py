"""Work stealing on the throwaway cluster with the tiny model: a length-skewed dataset and staggered starts.

4 shards of 40 rows, 4 array tasks, at most 2 running at once (the queue hands out 2 GPU slots: tasks 3 and 4
start when a slot frees). Shard 0's rows cost far more than the others: the tiny model cannot be asked for
long answers, so ``HPCGEN_TEST_SLOW_ROWS`` pauses each engine step while one of them is in flight, in
whichever task runs it (so stolen slow rows are slow too). The same job runs with stealing and with
``sharding.steal=false``, one after the other.

Figures, from the tasks' own records (``RUN/progress``): makespan (first task start to last task end) against
the ideal for 2 slots (the sum of task-busy seconds / 2, engine starts included) and against static sharding
measured in the same run; the sum of busy seconds / number of tasks is printed too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

B = "steal-cluster"
ROWS, SHARDS, SLOTS = 160, 4, 2
SLOW = "0-40:0.12"


def run(mode: str, data: Path, model: Path, root: Path) -> dict:
    import yaml

    job = root / f"{mode}.yaml"
    job.write_text(yaml.safe_dump({
        "defaults": ["model/tiny", "cluster/dev"],
        "data": {"path": str(data), "n_samples": 2},
        "model": {"path": str(model)},
        "rollout": {"temperature": 1.0, "response_length": 24, "max_num_seqs": 4},
        "sharding": {"num_shards": SHARDS, "rows_per_chunk": 4, "steal": mode == "steal"},
        "checkpoint": {"every_rows": 4, "every_seconds": 5},
        "slurm": {"array_parallelism": SLOTS},
    }))
    run_dir = root / f"run-{mode}"
    t0 = time.time()
    res = subprocess.run([common.PY, "-m", "hpcgen", "submit", str(job), "--run-dir", str(run_dir), "--wait"],
                         capture_output=True, text=True, cwd=common.REPO,
                         env={**__import__("os").environ, **common.cluster_env(), "HPCGEN_TEST_SLOW_ROWS": SLOW,
                              "HPCGEN_POLL_SECONDS": "2"})
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"{mode} run failed: {res.stderr[-2000:]}")
    recs = [json.loads(p.read_text()) for p in (run_dir / "progress").glob("*.json")]
    start, end = min(r["started"] for r in recs), max(r["ended"] for r in recs)
    busy = sum(r["ended"] - r["started"] for r in recs)
    stolen = sum(r.get("stolen_chunks", 0) for r in recs)
    return {"makespan": end - start, "busy": busy, "tasks": len(recs), "wall": wall, "stolen": stolen,
            "run": str(run_dir)}


def main() -> None:
    from hpcgen_dev.datasets import make_dataset

    root = common.fresh_dir(B)
    root.mkdir(parents=True)
    data = make_dataset(root / "prompts.parquet", ROWS, style="gsm8k", seed=21)
    model = common.tiny_model()
    out = {mode: run(mode, data, model, root) for mode in ("static", "steal")}
    for mode, r in out.items():
        print(f"[{B}] {mode}: makespan {r['makespan']:.1f}s, busy {r['busy']:.1f}s over {r['tasks']} tasks, "
              f"{r['stolen']} chunks stolen, submit --wait {r['wall']:.1f}s", flush=True)
    st, sta = out["steal"], out["static"]
    ideal = st["busy"] / SLOTS
    common.report(B, f"makespan / ideal ({SHARDS} shards, one slow; {SLOTS} slots, staggered starts)",
                  st["makespan"] / ideal, "", "<= 1.15", st["makespan"] / ideal <= 1.15,
                  f"makespan {st['makespan']:.1f}s, ideal {ideal:.1f}s = busy seconds / {SLOTS} slots "
                  f"(busy / {st['tasks']} tasks = {st['busy'] / st['tasks']:.1f}s)")
    speedup = sta["makespan"] / st["makespan"]
    common.report(B, "static sharding makespan / stealing makespan, same run", speedup, "", ">= 1.3",
                  speedup >= 1.3, f"static {sta['makespan']:.1f}s, stealing {st['makespan']:.1f}s, "
                  f"{st['stolen']} chunks stolen")


if __name__ == "__main__":
    main()
