"""One evaluation run against separate runs: 3 datasets x 4 seeds on the tiny model as ONE run (one task: one
engine for all 12 blocks) against the 12 separate single-dataset runs of the same rows (one task each), on the
local executor, one after another (the same one "GPU" for both).

Figures: engine starts (from the task records), total wall time (first submission to the last task's end, from
the run directory's records: process start-up and engine builds included, polling not), their ratio, and
whether the samples are the same (the one run's merged responses = the separate runs' concatenated by seed).

    .venv/bin/python bench/bench_eval.py [--rows 16] [--seeds 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common

B = "eval"


def make_inputs(root: Path, rows: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hpcgen_dev.datasets import arrow_schema, make_rows
    from hpcgen_dev.evaldata import save_to_disk

    root.mkdir(parents=True, exist_ok=True)
    gsm = root / "gsm.parquet"
    pq.write_table(pa.Table.from_pylist(make_rows(rows, style="gsm8k", seed=31), schema=arrow_schema()), gsm)
    math = root / "math.jsonl"
    math.write_text("".join(json.dumps(r) + "\n" for r in make_rows(rows, style="math", seed=32)))
    hf = save_to_disk(make_rows(rows, style="mixed", seed=33), root / "hf", shards=2, schema=arrow_schema())
    return {"gsm": gsm, "math": math, "hf": hf}


def job(path: Path, model: Path, datasets: dict[str, Path], seeds: list[int]) -> Path:
    import yaml

    spec = {"defaults": ["model/tiny", "cluster/dev"], "model": {"path": str(model)},
            "rollout": {"temperature": 1.0, "response_length": 16},
            "datasets": {name: {"path": str(p), "n_samples": 2} for name, p in datasets.items()},
            "seeds": seeds, "sharding": {"num_tasks": 1}}
    path.write_text(yaml.safe_dump(spec))
    return path


def run(job_file: Path, run_dir: Path) -> dict:
    """Submit on the local executor and wait; the run's figures from its own records."""
    res = common.run_measured([common.PY, "-m", "hpcgen", "submit", str(job_file), "--executor", "local", "--wait",
                               "--run-dir", str(run_dir)], env={"HPCGEN_POLL_SECONDS": "0.5"}, timeout=3600)
    sub = json.loads((run_dir / "submissions" / "0001.json").read_text())
    records = [json.loads(p.read_text()) for p in (run_dir / "progress").glob("*.json")]
    return {"cli_wall_s": res["wall_s"], "wall_s": max(r["ended"] for r in records) - float(sub["time"]),
            "engine_starts": sum(r.get("engine_starts", 0) for r in records),
            "engine_s": sum(r.get("engine_start_s") or 0 for r in records)}


def responses(run_dir: Path) -> dict[str, list[list[str]]]:
    import pyarrow.parquet as pq

    res = common.run_measured([common.PY, "-m", "hpcgen", "merge", str(run_dir)])
    out = {}
    for path in res["stdout"].split():
        out[Path(path).stem] = pq.read_table(path, columns=["responses"]).column(0).to_pylist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16, help="rows per dataset")
    ap.add_argument("--seeds", type=int, default=4)
    a = ap.parse_args()
    model = common.tiny_model()
    root = common.fresh_dir("eval")
    inputs = make_inputs(root / "data", a.rows)
    seeds = list(range(a.seeds))
    print(f"[{B}] {len(inputs)} datasets x {len(seeds)} seeds, {a.rows} rows each, n=2, 16 tokens", flush=True)
    t0 = time.perf_counter()
    one = run(job(root / "one.yaml", model, inputs, seeds), root / "one")
    print(f"[{B}] one run: {one}", flush=True)
    separate = []
    for name, path in inputs.items():
        for seed in seeds:
            separate.append(run(job(root / f"{name}-{seed}.yaml", model, {name: path}, [seed]),
                                root / f"sep-{name}-{seed}"))
            print(f"[{B}] {name} seed {seed}: {separate[-1]}", flush=True)
    total_sep = sum(r["wall_s"] for r in separate)
    starts_sep = sum(r["engine_starts"] for r in separate)
    merged = responses(root / "one")

    def alone(name: str, seed: int) -> list[list[str]]:  # a run of one dataset merges to RUN/merged.parquet
        (out,) = responses(root / f"sep-{name}-{seed}").values()
        return out

    same = all([row[k * 2:(k + 1) * 2] for row in merged[name]] == alone(name, seed)
               for name in inputs for k, seed in enumerate(seeds))
    n_runs = len(separate)
    common.report(B, f"engine starts, one run of {len(inputs)} datasets x {len(seeds)} seeds", one["engine_starts"],
                  "", "1", one["engine_starts"] == 1, "counted from the task records (engine_starts)")
    common.report(B, f"engine starts, {n_runs} separate runs", starts_sep, "", "", None,
                  f"engine builds {sum(r['engine_s'] for r in separate):.0f} s in all vs {one['engine_s']:.0f} s")
    common.report(B, "wall time, one run", one["wall_s"], "s", "", None,
                  f"first submission to the last task's end; CLI with --wait {one['cli_wall_s']:.0f} s")
    common.report(B, f"wall time, {n_runs} separate runs one after another", total_sep, "s", "", None,
                  f"CLI with --wait {sum(r['cli_wall_s'] for r in separate):.0f} s")
    common.report(B, "wall time ratio separate / one run", total_sep / one["wall_s"], "", "> 1", total_sep > one["wall_s"])
    common.report(B, "same samples (one run = separate runs, seed by seed)", "yes" if same else "NO", "", "yes", same)
    print(f"[{B}] total {time.perf_counter() - t0:.0f} s", flush=True)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
