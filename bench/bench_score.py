"""Scoring at scale: 1,000,000 samples (250,000 rows x 4 responses; GSM8K, MATH and DAPO rows in equal
parts, varied answers from ``hpcgen_dev.verl_cases`` made unique by a per-row preamble, ~700 characters
each) graded with the ``verl`` grader by ``hpcgen score FILE --json`` (a subprocess: start-up, reading,
worker processes, all of it), against a baseline that reads the same file with pyarrow and calls verl's own
reward functions (from the verl 0.9.1 wheel, ``hpcgen_dev.verl_oracle``) in a plain loop, averaging the way
verl's main_eval does.

Figures: hpcgen's wall time (goal < 60 s; worker processes chosen automatically, and in one process for
information), baseline_time / hpcgen_time, and the largest difference between the two per-data_source means
(must be 0 to 1e-9: the benchmark is also a fidelity check at scale).

    python bench/bench_score.py [--rows 250000] [--n 4] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

B = "score"


def make_input(rows: int, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from hpcgen_dev import verl_cases

    path = common.bench_dir("data") / f"score-{rows}x{n}.parquet"
    if path.is_file():
        return path
    pool = [r for fam in ("gsm8k", "math", "dapo") for r in verl_cases.rows(fam, 2000, n, seed=7)]
    schema = pa.schema([("data_source", pa.string()), ("responses", pa.list_(pa.string())),
                        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
                        ("extra_info", pa.struct([("index", pa.int64())]))])
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    preamble = ("Problem {i}. Let us read the question carefully and reason step by step before answering; "
                "we write down every quantity, check units and recompute each partial result twice. ") * 2
    with pq.ParquetWriter(tmp, schema) as w:
        step = 10_000
        for lo in range(0, rows, step):
            recs = []
            for i in range(lo, min(rows, lo + step)):
                ds, responses, truth = pool[i % len(pool)]
                head = preamble.format(i=i)
                recs.append({"data_source": ds, "responses": [head + r for r in responses],
                             "reward_model": {"style": "rule", "ground_truth": truth}, "extra_info": {"index": i}})
            w.write_table(pa.Table.from_pylist(recs, schema=schema))
    os.replace(tmp, path)
    t = pq.read_table(path, columns=["responses"]).column("responses")
    chars = pc.sum(pc.utf8_length(pc.list_flatten(t))).as_py()
    print(f"[{B}] built {path}: {rows} rows x {n}, {chars / (rows * n):.0f} characters per response", flush=True)
    return path


def baseline_child(path: str) -> None:
    """verl's functions in a plain loop over the file's samples; main_eval's arithmetic."""
    import contextlib
    import io

    import pyarrow.parquet as pq

    from hpcgen_dev.verl_oracle import Oracle, fetch_wheel

    oracle = Oracle(fetch_wheel(Path(os.environ["HPCGEN_TEST_CACHE"])))
    t0 = time.perf_counter()
    per_ds: dict[str, list[float]] = {}
    pf = pq.ParquetFile(path)
    with contextlib.redirect_stdout(io.StringIO()):
        for rb in pf.iter_batches(batch_size=4096, columns=["data_source", "responses", "reward_model"]):
            for row in rb.to_pylist():
                ds, gt = row["data_source"], row["reward_model"]["ground_truth"]
                scores = []
                for r in row["responses"]:
                    res = oracle.default_compute_score(ds, r, gt)
                    scores.append((1.0 if res["acc"] else 0.0) if isinstance(res, dict) else res)
                per_ds.setdefault(ds, []).append(sum(scores) / len(scores))
    means = {ds: sum(v) / len(v) for ds, v in per_ds.items()}
    common.emit_child({"seconds": time.perf_counter() - t0, "means": means})


def uncached_child(path: str) -> None:
    """hpcgen in one process with its caches of normalised answers turned off (what a file whose answers
    never repeat would cost)."""
    from hpcgen.scoring.score import score_file
    from hpcgen.scoring.verl_rules import dapo, math_reward, qa_em

    math_reward.strip_string = math_reward.strip_string.__wrapped__  # type: ignore[attr-defined]
    dapo.normalize_final_answer = dapo.normalize_final_answer.__wrapped__  # type: ignore[attr-defined]
    qa_em.normalize = qa_em.normalize.__wrapped__  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    score_file(Path(path), workers=1, progress=False)
    common.emit_child({"seconds": time.perf_counter() - t0})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0, help="hpcgen score --workers (0: automatic)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child-baseline")
    ap.add_argument("--child-uncached")
    a = ap.parse_args()
    if a.child_baseline:
        baseline_child(a.child_baseline)
        return
    if a.child_uncached:
        uncached_child(a.child_uncached)
        return
    from hpcgen_dev.verl_oracle import fetch_wheel

    cache = Path(os.environ.setdefault("HPCGEN_TEST_CACHE", str(common.REPO / ".cache")))
    fetch_wheel(cache)
    path = make_input(a.rows, a.n)
    samples = a.rows * a.n
    b: dict = {}
    # Best of several runs each, alternated: this machine is shared and noisy.
    out = common.bench_dir("out") / "scores.json"
    cmd = [common.PY, "-m", "hpcgen", "score", str(path), "--json", "--output", str(out)]
    walls: dict[str, list[float]] = {"auto": [], "one": []}
    base_secs: list[float] = []
    report: dict = {}
    for _ in range(a.repeat):
        b = common.child_json(common.run_measured([common.PY, __file__, "--child-baseline", str(path)], timeout=3600))
        base_secs.append(b["seconds"])
        res = common.run_measured([*cmd, "--workers", str(a.workers)], timeout=3600)
        walls["auto"].append(res["wall_s"])
        report = json.loads(res["stdout"])
        walls["one"].append(common.run_measured([*cmd, "--workers", "1"], timeout=3600)["wall_s"])
    diff = max(abs(report["by_data_source"][ds]["mean"] - m) for ds, m in b["means"].items())
    secs, one, base = min(walls["auto"]), min(walls["one"]), min(base_secs)
    common.report(B, f"grade {samples:,} samples with the verl grader (hpcgen score, wall incl. start-up)",
                  secs, "s", "< 60 s", secs < 60, f"{os.cpu_count()} CPUs, {samples / secs:,.0f} samples/s")
    common.report(B, "verl's functions in a plain loop over the same samples (reading included)",
                  base, "s", note=f"{samples / base:,.0f} samples/s")
    common.report(B, "ratio baseline_time / hpcgen_time", base / secs, "", "≥ 1",
                  base / secs >= 1, f"{base:.1f} s vs {secs:.1f} s; best of {a.repeat} each")
    common.report(B, "the same in one process (--workers 1)", one, "s",
                  note=f"ratio to the baseline {base / one:.2f}")
    unc = common.child_json(common.run_measured([common.PY, __file__, "--child-uncached", str(path)], timeout=3600))
    common.report(B, "one process, caches of normalised answers off (answers that never repeat)", unc["seconds"],
                  "s", note=f"ratio to the baseline {base / unc['seconds']:.2f}")
    common.report(B, "largest |hpcgen - verl| per-data_source mean", diff, "", "≤ 1e-9", diff <= 1e-9)


if __name__ == "__main__":
    main()
