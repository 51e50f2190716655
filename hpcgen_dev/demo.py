"""``make demo``: build the tiny model and a small dataset, run jobs/demo.yaml through hpcgen on submitit's
local executor (no SLURM needed), merge, score, and print a preview. Uses the real CLI and real vLLM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from hpcgen_dev.datasets import make_dataset
from hpcgen_dev.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[1]


def hpcgen(*args: str) -> str:
    cmd = [sys.executable, "-m", "hpcgen", *args]
    print("$ hpcgen " + " ".join(args), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        sys.exit(f"demo: 'hpcgen {' '.join(args)}' failed with exit code {res.returncode}")
    return res.stdout


def main() -> None:
    cache = REPO / ".cache"
    build_tiny_model(cache / "tiny-model")
    make_dataset(cache / "demo" / "prompts.parquet", 48, style="mixed", seed=0)
    run_dir = cache / "demo" / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    # one local process on a small machine: all shards through one engine load
    out = hpcgen("submit", "jobs/demo.yaml", "slurm.array_parallelism=1", "--executor", "local", "--wait",
                 "--run-dir", str(run_dir))
    assert out.strip().splitlines()[-1] == str(run_dir)  # noqa: S101 - demo sanity check
    merged = hpcgen("merge", str(run_dir)).strip()
    print(hpcgen("score", str(run_dir)))
    import pyarrow.parquet as pq

    table = pq.read_table(merged)
    print(f"{merged}: {table.num_rows} rows, columns {table.column_names}\n")
    for row in table.slice(0, 3).to_pylist():
        prompt = row["prompt"][-1]["content"]
        print(json.dumps({"prompt": prompt[:80] + "...", "ground_truth": row["reward_model"]["ground_truth"],
                          "responses": [r[:60] for r in row["responses"]],
                          "finish_reasons": row["finish_reasons"]}, ensure_ascii=False, indent=1))
    print(f"\nrun directory: {run_dir}\nmerged output: {merged}")


if __name__ == "__main__":
    main()
