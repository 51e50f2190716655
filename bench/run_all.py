"""Run every benchmark in sequence (about 15 minutes on a loaded 2-core machine), then print one markdown
summary table and write it to ``bench/results.md``.

    source <(.venv/bin/python -m hpcgen_dev.cluster env)   # optional: the scripts find the cluster themselves
    .venv/bin/python bench/run_all.py [--only worker,plan,status,merge]

Caches (tiny model, 10M-row parquet, merge input) live in $HPCGEN_BENCH_DIR (default /tmp/hpcgen-bench).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

SCRIPTS = {"worker": "bench_worker.py", "plan": "bench_plan.py", "status": "bench_status.py",
           "merge": "bench_merge.py", "fingerprint": "bench_fingerprint.py", "score": "bench_score.py",
           "prompts": "bench_prompts.py", "steal-sim": "bench_steal_sim.py", "steal-cluster": "bench_steal_cluster.py",
           "eval": "bench_eval.py"}


def run(name: str) -> tuple[list[dict], float, int]:
    """Stream the script's output; collect its BENCH_RESULT records."""
    print(f"\n=== {name}: {SCRIPTS[name]} ===", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-u", str(HERE / SCRIPTS[name])], stdout=subprocess.PIPE,
                            text=True, cwd=common.REPO, env={**os.environ, **common.cluster_env()})
    records = []
    assert proc.stdout is not None  # noqa: S101
    for line in proc.stdout:
        if line.startswith(common.MARK):
            records.append(json.loads(line[len(common.MARK):]))
        else:
            print(line, end="", flush=True)
    rc = proc.wait()
    return records, time.perf_counter() - t0, rc


def fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(records: list[dict]) -> str:
    lines = ["| bench | figure | value | goal | status | note |", "|---|---|---|---|---|---|"]
    for r in records:
        status = {True: "OK", False: "**MISSED**", None: ""}[r["ok"]]
        value = f"{fmt(r['value'])} {r['unit']}".strip()
        note = str(r["note"]).replace("|", "/")
        lines.append(f"| {r['bench']} | {r['figure']} | {value} | {r['goal']} | {status} | {note} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(SCRIPTS))
    a = ap.parse_args()
    t0 = time.perf_counter()
    records, timings = [], []
    for name in a.only.split(","):
        recs, secs, rc = run(name)
        records += recs
        timings.append(f"{name} {secs:.0f}s" + ("" if rc == 0 else f" (exit {rc})"))
        if rc != 0:
            records.append({"bench": name, "figure": "script exit code", "value": rc, "unit": "", "goal": "0",
                            "ok": False, "note": "see the output above"})
    total = time.perf_counter() - t0
    load = os.getloadavg()
    head = (f"# hpcgen benchmarks\n\n{time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()}: "
            f"{os.cpu_count()} CPUs, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end; "
            f"total {total / 60:.1f} min ({', '.join(timings)}).\n\n"
            "Ratios are measured side by side in the same run; absolute seconds depend on the machine's load.\n")
    text = head + "\n" + table(records) + "\n"
    missed = [r for r in records if r["ok"] is False]
    text += f"\n{len(missed)} goal(s) missed.\n" if missed else "\nAll goals met.\n"
    print("\n" + text)
    (HERE / "results.md").write_text(text)


if __name__ == "__main__":
    main()
