"""Task overhead: hpcgen's worker over one shard against a bare vLLM script with identical engine kwargs,
prompts, SamplingParams and seeds, each in its own subprocess, in the order bare, hpcgen, hpcgen, bare.

Figures: generation-phase ratio (bare / hpcgen, goal >= 0.97), whole-task ratio, output agreement, and the
measured engine start / rows per second recorded for ``hpcgen submit --dry-run``'s sizing advice.
On a loaded machine single phases swing by +-25 %, so a cross-check follows: one process, one engine, the
two kinds of generation phase alternated (hpcgen, bare, hpcgen), compared by their means.

    python bench/bench_worker.py [--rows 200] [--order bare,hpcgen,hpcgen,bare] [--ab-order hpcgen,bare,hpcgen]
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

B = "worker"


def job_data(dataset: Path, model: Path, every_rows: int) -> dict:
    return {
        "defaults": ["model/tiny", "cluster/dev"],
        "data": {"path": str(dataset), "n_samples": 4},
        "model": {"path": str(model)},
        "rollout": {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "response_length": 32},
        "sharding": {"num_shards": 1},
        "checkpoint": {"every_rows": every_rows, "every_seconds": 3600},
        "seed": 7,
    }


def new_run(data: dict, root: Path) -> Path:
    from hpcgen.login.plan import create_run_dir, make_plan
    from hpcgen.spec.loader import load_job

    spec = load_job(None, [], data=data)
    plan = make_plan(spec, job_file=None, overrides=[])
    return create_run_dir(root, plan.manifest).root


# --- children ------------------------------------------------------------------------------------


def child_hpcgen(run_dir: Path) -> None:
    from hpcgen.task.engine import Engine
    from hpcgen.task.worker import run_shards

    build = {}

    def factory(spec, path):
        t = time.perf_counter()
        eng = Engine(spec, path)
        build["s"] = time.perf_counter() - t
        build["cpu"] = common.tree_cpu()
        return eng

    t0 = time.perf_counter()
    run_shards(run_dir, [0], engine_factory=factory)
    total = time.perf_counter() - t0
    own, kids = common.tree_cpu()
    common.emit_child({"build_s": build["s"], "gen_s": total - build["s"], "run_shards_s": total,
                       "front_cpu_s": own - build["cpu"][0], "engine_cpu_s": kids - build["cpu"][1]})


def build_bare(run_dir: Path) -> tuple:
    """The bare script's engine: ``vllm.LLM`` with hpcgen's exact engine kwargs (and CPU adjustments)."""
    from hpcgen.rundir.manifest import load_manifest, spec_from_manifest
    from hpcgen.task.engine import cpu_build_adjustments, engine_kwargs

    manifest = load_manifest(run_dir)
    spec = spec_from_manifest(manifest)
    for k, v in spec.env.items():
        os.environ.setdefault(k, v)
    t0 = time.perf_counter()
    from vllm import LLM
    from vllm.platforms import current_platform

    kwargs = engine_kwargs(spec, spec.model.path)
    if current_platform.is_cpu():
        kwargs = cpu_build_adjustments(kwargs)
    llm = LLM(**kwargs)
    return llm, spec, manifest, time.perf_counter() - t0


def bare_phase(llm, spec, manifest: dict, out: Path) -> float:
    """What a user would write by hand: one LLM.generate over the rows, one parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from hpcgen.task.engine import row_seed

    t0 = time.perf_counter()
    tok = llm.get_tokenizer()
    prompts = pq.read_table(manifest["datasets"][0]["files"][0]["path"],
                            columns=[spec.data.prompt_key]).column(0).to_pylist()
    r, n = spec.rollout, spec.data.n_samples
    token_prompts, params = [], []
    for row_id, msgs in enumerate(prompts):
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        token_prompts.append(TokensPrompt(prompt_token_ids=list(tok.encode(text, add_special_tokens=False))))
        params.append(SamplingParams(n=n, temperature=spec.temperature, top_p=r.top_p, top_k=max(0, r.top_k),
                                     max_tokens=r.response_length, seed=row_seed(spec.run_seeds[0], row_id, n)))
    outs = llm.generate(token_prompts, params, use_tqdm=False)
    rows = []
    for row_id, o in enumerate(outs):
        s = sorted(o.outputs, key=lambda x: x.index)
        rows.append({"row_id": row_id, "responses": [x.text for x in s],
                     "finish_reasons": [str(x.finish_reason) for x in s],
                     "response_tokens": [len(x.token_ids) for x in s], "prompt_tokens": len(o.prompt_token_ids)})
    pq.write_table(pa.Table.from_pylist(rows), out)
    return time.perf_counter() - t0


def child_bare(run_dir: Path, out: Path) -> None:
    llm, spec, manifest, build_s = build_bare(run_dir)
    cpu0 = common.tree_cpu()
    gen_s = bare_phase(llm, spec, manifest, out)
    own, kids = common.tree_cpu()
    common.emit_child({"build_s": build_s, "gen_s": gen_s, "front_cpu_s": own - cpu0[0],
                       "engine_cpu_s": kids - cpu0[1]})


def child_ab(order: str, run_dirs: list[Path], out: Path) -> None:
    """Cross-check with less noise: ONE engine, generation phases alternated in one process (prefix cache
    reset before each), so both kinds see the same engine and nearly the same machine load."""
    from hpcgen.task.engine import Engine
    from hpcgen.task.worker import run_shards

    llm, spec, manifest, _ = build_bare(run_dirs[0])
    times: dict[str, list[float]] = {"bare": [], "hpcgen": []}
    for kind in order.split(","):
        llm.reset_prefix_cache()
        if kind == "bare":
            times["bare"].append(bare_phase(llm, spec, manifest, out))
        else:
            t0 = time.perf_counter()
            run_shards(run_dirs.pop(), [0], engine_factory=lambda s, p: Engine(s, p, llm=llm))
            times["hpcgen"].append(time.perf_counter() - t0)
    common.emit_child(times)


# --- parent --------------------------------------------------------------------------------------


def agreement(run_dir: Path, bare_out: Path) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted((run_dir / "work").glob("*/*.parquet"))
    h = pa.concat_tables([pq.read_table(p, columns=["row_id", "responses"]) for p in parts]).sort_by("row_id")
    b = pq.read_table(bare_out, columns=["row_id", "responses"]).sort_by("row_id")
    hr, br = h.column("responses").to_pylist(), b.column("responses").to_pylist()
    return sum(x == y for x, y in zip(hr, br, strict=True)) / max(1, len(br))


def advice_demo(spec_data: dict, root: Path) -> None:
    """The measured values close the loop: ``hpcgen submit --dry-run`` on a sample job prints them."""
    import yaml

    from hpcgen.login.advice import measured, sizing_advice
    from hpcgen.login.plan import make_plan
    from hpcgen.spec.loader import load_job

    job = dict(spec_data, sharding={"num_shards": 4})
    job_file = root / "sample-job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    plan = make_plan(load_job(job_file, []), job_file=str(job_file), overrides=[])
    print(f"[{B}] measurement on file for this model/settings: {measured(plan.spec)}")
    for i, line in enumerate(sizing_advice(plan.spec, [10_000] * 100)):
        if i == 0:
            common.report(B, "advice for a sample spec (100 shards x 10,000 rows)", line, "", "info")
        else:
            print(f"[{B}] advice (100 shards x 10000 rows): {line}")
    res = common.run_measured([str(Path(sys.executable).parent / "hpcgen"), "submit", str(job_file),
                               "--dry-run", "--run-dir", str(root / "dry")], env=common.cluster_env())
    lines = [x for x in res["stderr"].splitlines() if x.startswith(("estimate", "warning"))]
    for line in lines:
        print(f"[{B}] hpcgen submit --dry-run: {line}")
    common.report(B, "dry-run advice uses the measurement", "yes" if "(measured)" in "".join(lines) else "no",
                  goal="yes", ok="(measured)" in "".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--every-rows", type=int, default=32)
    ap.add_argument("--order", default="bare,hpcgen,hpcgen,bare")
    ap.add_argument("--ab-order", default="hpcgen,bare,hpcgen",
                    help="phases of the one-engine cross-check ('' skips it)")
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        if a.child[0] == "hpcgen":
            child_hpcgen(Path(a.child[1]))
        elif a.child[0] == "bare":
            child_bare(Path(a.child[1]), Path(a.child[2]))
        else:
            child_ab(a.child[1], [Path(x) for x in a.child[3:]], Path(a.child[2]))
        return

    from hpcgen.rundir.manifest import load_manifest, spec_from_manifest
    from hpcgen.rundir.measurements import perf_file, record_measurement
    from hpcgen_dev.datasets import make_dataset

    root = common.fresh_dir("worker")
    model = common.tiny_model()
    dataset = make_dataset(root / "prompts.parquet", a.rows, style="mixed", seed=0)
    data = job_data(dataset, model, a.every_rows)
    env = load_job_env(data)
    results: dict[str, list[dict]] = {"bare": [], "hpcgen": []}
    last_run = last_bare = None
    for i, kind in enumerate(a.order.split(",")):
        run_dir = new_run(data, root / f"run{i}")
        if kind == "hpcgen":
            cmd = [common.PY, __file__, "--child", "hpcgen", str(run_dir)]
            last_run = run_dir
        else:
            last_bare = root / f"bare{i}.parquet"
            cmd = [common.PY, __file__, "--child", "bare", str(run_dir), str(last_bare)]
        res = common.run_measured(cmd, env=env)
        (root / f"run{i}-{kind}.log").write_text(res["stderr"])
        rec = {**common.child_json(res), "wall_s": res["wall_s"]}
        if kind == "hpcgen":
            rec["parts"] = len(list((run_dir / "work").glob("*/*.parquet")))
        results[kind].append(rec)
        print(f"[{B}] run {i} {kind}: " + json.dumps({k: round(v, 2) for k, v in rec.items()}), flush=True)

    metrics = ("gen_s", "wall_s", "build_s", "front_cpu_s", "engine_cpu_s")
    best = {k: {m: min(r[m] for r in v) for m in metrics} for k, v in results.items()}
    gen_ratio = best["bare"]["gen_s"] / best["hpcgen"]["gen_s"]
    wall_ratio = best["bare"]["wall_s"] / best["hpcgen"]["wall_s"]
    rows = a.rows
    common.report(B, "generation phase bare (best)", best["bare"]["gen_s"], "s",
                  note=f"{rows} rows x n=4, {rows / best['bare']['gen_s']:.2f} rows/s")
    common.report(B, "generation phase hpcgen (best)", best["hpcgen"]["gen_s"], "s",
                  note=f"{rows / best['hpcgen']['gen_s']:.2f} rows/s, {results['hpcgen'][0]['parts']} part files")
    kinds = a.order.split(",")
    seq = [(k, results[k][kinds[:i].count(k)]["gen_s"]) for i, k in enumerate(kinds)]
    pairs = [x[1] / y[1] if x[0] == "bare" else y[1] / x[1]  # bare / hpcgen for each adjacent pair
             for x, y in zip(seq[::2], seq[1::2], strict=False) if {x[0], y[0]} == {"bare", "hpcgen"}]
    common.report(B, "generation throughput ratio bare/hpcgen", gen_ratio, "", ">= 0.97", gen_ratio >= 0.97,
                  note="best of each; adjacent pairs: " + ", ".join(f"{p:.3f}" for p in pairs))
    common.report(B, "whole-task ratio bare/hpcgen", wall_ratio, "", "info",
                  note=f"bare {best['bare']['wall_s']:.1f}s vs hpcgen {best['hpcgen']['wall_s']:.1f}s")
    common.report(B, "gen-phase CPU s front-end / engine, bare (best)",
                  f"{best['bare']['front_cpu_s']:.1f} / {best['bare']['engine_cpu_s']:.1f}")
    common.report(B, "gen-phase CPU s front-end / engine, hpcgen (best)",
                  f"{best['hpcgen']['front_cpu_s']:.1f} / {best['hpcgen']['engine_cpu_s']:.1f}")
    common.report(B, "engine build hpcgen / bare (best)", f"{best['hpcgen']['build_s']:.1f}s / "
                  f"{best['bare']['build_s']:.1f}s")
    if last_run and last_bare:
        agree = agreement(last_run, last_bare)
        common.report(B, "rows with identical responses (hpcgen vs bare)", agree, "", "info",
                      note="same seeds; batching may change floating point on CPU")

    spec = spec_from_manifest(load_manifest(last_run or run_dir))
    record_measurement(spec, best["hpcgen"]["build_s"], rows / best["hpcgen"]["gen_s"])
    common.report(B, "recorded for sizing advice", f"engine start {best['hpcgen']['build_s']:.1f}s, "
                  f"{rows / best['hpcgen']['gen_s']:.2f} rows/s", "", "info", note=str(perf_file()))
    if a.ab_order:
        ab_cross_check(a.ab_order, data, root, env)
    advice_demo(data, root)


def ab_cross_check(order: str, data: dict, root: Path, env: dict[str, str]) -> None:
    runs = [str(new_run(data, root / f"ab-run{i}")) for i in range(order.split(",").count("hpcgen"))]
    res = common.run_measured([common.PY, __file__, "--child", "ab", order, str(root / "ab-bare.parquet"), *runs],
                              env=env)
    t = common.child_json(res)
    ratio = (sum(t["bare"]) / len(t["bare"])) / (sum(t["hpcgen"]) / len(t["hpcgen"]))
    common.report(B, "generation ratio bare/hpcgen, one engine, phases alternated", ratio, "", ">= 0.97",
                  ratio >= 0.97, note=f"means of {order}: bare " + ", ".join(f"{x:.1f}" for x in t["bare"])
                  + " s; hpcgen " + ", ".join(f"{x:.1f}" for x in t["hpcgen"]) + " s")


def load_job_env(data: dict) -> dict[str, str]:
    """The job's env (cluster/dev preset), given to both children alike."""
    from hpcgen.spec.loader import load_job

    return dict(load_job(None, [], data=data).env)


if __name__ == "__main__":
    main()
