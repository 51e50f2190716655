"""Planning and submission at scale: a 10-million-row parquet planned into 10,000 shards, then queued on the
throwaway cluster as held arrays (``slurm.additional={"hold": True}``) and cancelled at once.

Figures: make_plan seconds (goal < 5 s) and peak RSS, create_run_dir seconds, sbatch calls (goal <= 10,
counted by a PATH shim), seconds to queue, and nothing of ours left in squeue afterwards.

    python bench/bench_plan.py [--rows 10000000] [--shards 10000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

B = "plan"
JOB_NAME = "hpcgen-bench-plan"


def child(run_dir: Path, data: dict) -> None:
    import pyarrow.parquet  # noqa: F401  (make_plan imports it: counted with the imports, not the plan)

    from hpcgen.login.launch import submit_groups
    from hpcgen.login.plan import create_run_dir, make_plan
    from hpcgen.spec.loader import load_job

    out: dict = {"rss_imports_mb": common.vmhwm_mb()}
    spec = load_job(None, [], data=data)
    t = time.perf_counter()
    plan = make_plan(spec, job_file=None, overrides=[])
    out["plan_s"] = time.perf_counter() - t
    out["rss_plan_mb"] = common.vmhwm_mb()
    out["shards"], out["tasks"] = len(plan.shards), len(plan.tasks)
    import tracemalloc  # a second, traced plan: Python's own peak allocation while planning

    tracemalloc.start()
    make_plan(spec, job_file=None, overrides=[])
    out["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    t = time.perf_counter()
    layout = create_run_dir(run_dir, plan.manifest)
    out["create_s"] = time.perf_counter() - t
    out["manifest_mb"] = layout.manifest.stat().st_size / 1e6
    t = time.perf_counter()
    try:
        sub = submit_groups(layout, plan.spec, plan.tasks, executor="slurm", kind="submit")
    finally:
        out["submit_s"] = time.perf_counter() - t
        # whatever got queued is cancelled right away (the parent cancels again from the sbatch log)
        arrays = sorted({v.split("_")[0] for v in _recorded_jobs(layout.submissions_dir)})
        held = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(arrays)],
                              capture_output=True, text=True).stdout.splitlines() if arrays else []
        common.scancel(arrays)
    out["rss_end_mb"] = common.vmhwm_mb()
    out.update(arrays=sub.arrays, sbatch_calls=sub.sbatch_calls, jobs=len(sub.jobs), squeue_before_cancel=held)
    common.emit_child(out)


def _recorded_jobs(subs: Path) -> list[str]:
    jobs: list[str] = []
    for p in subs.glob("*.json"):
        jobs += list(json.loads(p.read_text()).get("jobs", {}).values())
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        child(Path(a.child[0]), json.loads(a.child[1]))
        return

    t = time.perf_counter()
    data_path = common.big_prompt_parquet(a.rows)
    print(f"[{B}] dataset {data_path} ({data_path.stat().st_size / 1e6:.0f} MB) ready in "
          f"{time.perf_counter() - t:.1f}s (cached after the first build)", flush=True)
    model = common.tiny_model()
    root = common.fresh_dir("plan")
    shim_dir = root / "shims"
    env = common.cluster_env()
    os.environ.update(env)
    sbatch_log = common.make_shim(shim_dir, "sbatch")
    data = {
        "defaults": ["model/tiny", "cluster/dev"],
        "data": {"path": str(data_path), "n_samples": 4},
        "model": {"path": str(model)},
        "sharding": {"num_shards": a.shards},
        "slurm": {"job_name": JOB_NAME, "additional": {"hold": True}},
    }
    run_dir = root / "run"
    env = {**env, "PATH": f"{shim_dir}:{os.environ['PATH']}"}
    try:
        res = common.run_measured([common.PY, __file__, "--child", str(run_dir), json.dumps(data)], env=env)
    finally:
        ids = sorted({m[0] for line in common.shim_output(sbatch_log) for m in [re.findall(r"\d+", line)] if m})
        common.scancel(ids)
    r = common.child_json(res)
    calls = common.shim_calls(sbatch_log)
    max_array = int(re.search(r"MaxArraySize\s*=\s*(\d+)", subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True).stdout)[1])
    goal_calls = math.ceil(a.shards / max_array)

    common.report(B, f"make_plan, {a.rows:,} rows -> {r['shards']:,} shards", r["plan_s"], "s", "< 5 s",
                  r["plan_s"] < 5, note="imports (pyarrow, pydantic) done before timing")
    common.report(B, "peak RSS after make_plan (imports alone)",
                  f"{r['rss_plan_mb']:.0f} MB ({r['rss_imports_mb']:.0f} MB)", "",
                  note=f"maxrss grows {r['rss_plan_mb'] - r['rss_imports_mb']:.0f} MB; "
                  f"tracemalloc peak {r['traced_peak_mb']:.1f} MB")
    common.report(B, "create_run_dir (manifest write)", r["create_s"], "s",
                  note=f"manifest {r['manifest_mb']:.1f} MB")
    common.report(B, f"sbatch calls for {r['tasks']:,} tasks", len(calls), "",
                  f"<= ceil({a.shards}/{max_array}) = {goal_calls}", len(calls) <= goal_calls,
                  note=f"hpcgen counted {r['sbatch_calls']}")
    common.report(B, "seconds to queue (submit_groups)", r["submit_s"], "s", "info",
                  note=f"{r['submit_s'] / max(1, r['tasks']) * 1000:.2f} ms per task")
    common.report(B, "peak RSS of the whole plan+submit process", r["rss_end_mb"], "MB", "info")
    lines = r["squeue_before_cancel"]
    held = [x for x in lines if "|PENDING|" in x and x.endswith("JobHeldUser")]
    common.report(B, "arrays pending+held before cancel", f"{len(held)}/{len(r['arrays'])}",
                  goal="all held", ok=len(held) == len(r["arrays"]) and len(lines) == len(held))
    left = common.wait_gone(r["arrays"])
    common.report(B, "our jobs left in squeue after scancel", len(left), "", "0", not left)
    print(f"[{B}] arrays {','.join(r['arrays'])} cancelled", flush=True)
    logs = run_dir / "logs"
    if logs.is_dir():
        print(f"[{B}] submitit wrote {sum(1 for _ in logs.rglob('*'))} files under {logs}")


if __name__ == "__main__":
    main()
