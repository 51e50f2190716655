"""Work stealing at scale, simulated with hpcgen's real claim code (no engine).

1,000 tasks over 1,000,000 rows (1,000 shards, chunks of the default size). A row costs a lognormal draw
(sigma 1) times its shard's lognormal factor (sigma 0.5: some shards are far slower than others); costs are
scaled so that the work is ``--task-seconds`` per task on average. Tasks start after delays drawn like a busy
queue (most within a second, a fifth up to 10 % of the run late); 5 % of them are killed at a random moment
(their heartbeat stops and their leases stay, as after kill -9 on another node). Each task is a thread running
``hpcgen.task.work.WorkQueue`` (claims, takeovers, steals), a real task record with its heartbeat
(``TaskProgress``), and real chunk and shard markers; generating a chunk is sleeping its cost. The run
directory lives on /dev/shm (tmpfs) so that 2,000 threads' fsyncs do not stand in for a cluster filesystem;
the claim overhead per chunk on the local disk is measured separately, single-threaded.

Figures: makespan against the ideal (the sum of task-busy seconds / number of tasks), against static sharding
of the same work (each task its own shard; the killed tasks' shards never finish there), rows lost or done
twice (from the markers), takeovers, and the file operations and seconds a chunk costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

B = "steal-sim"


def build(root: Path, rows: int, tasks: int, timeout_s: float):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hpcgen.login.plan import create_run_dir, make_plan
    from hpcgen.spec.loader import load_job

    data = root / "prompts.parquet"
    pq.write_table(pa.table({"prompt": pa.array(["q"] * rows)}), data)
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    spec = load_job(None, [], data={"data": {"path": str(data), "n_samples": 1}, "model": {"path": str(model)},
                                    "rollout": {"max_num_seqs": 8},
                                    "sharding": {"num_shards": tasks}})
    plan = make_plan(spec, job_file=None, overrides=[])
    return create_run_dir(root / "run", plan.manifest), plan.manifest


def costs(manifest: dict, seconds_per_task: float, rng: random.Random) -> dict[tuple[int, int], float]:
    from hpcgen.rundir.chunks import shard_chunks

    raw: dict[tuple[int, int], float] = {}
    for shard, bounds in enumerate(manifest["shards"]):
        factor = rng.lognormvariate(0, 0.5)
        for chunk, (lo, hi) in enumerate(shard_chunks(bounds, manifest["chunk_rows"])):
            raw[(shard, chunk)] = factor * sum(rng.lognormvariate(0, 1.0) for _ in range(hi - lo))
    scale = seconds_per_task * len(manifest["shards"]) / sum(raw.values())
    return {k: v * scale for k, v in raw.items()}


def capacity_ideal(work: float, starts: list[float], ends: list[float | None]) -> float:
    """The best makespan any scheduler could reach with these start times and deaths: the M at which the
    tasks' available time (from their start to M, or to their death) adds up to the work."""
    lo, hi = 0.0, max(starts) + work
    for _ in range(100):
        m = (lo + hi) / 2
        cap = sum(max(0.0, min(m, e if e is not None else m) - s) for s, e in zip(starts, ends, strict=True))
        lo, hi = (m, hi) if cap < work else (lo, m)
    return hi


class Sim:
    """Tasks of one process (threads); the run is split over a few processes so that 2,000 threads do not
    queue on one interpreter lock. Times are wall-clock seconds since the common ``t0``."""

    def __init__(self, layout, manifest, cost, steal: bool, timeout_s: float, beat_s: float, t0: float) -> None:
        self.layout, self.manifest, self.cost, self.steal = layout, manifest, cost, steal
        self.timeout_s, self.beat_s, self.t0 = timeout_s, beat_s, t0
        self.lock = threading.Lock()
        self.done: list[tuple[int, int, str]] = []  # (shard, chunk, job) per chunk marker written
        self.busy: dict[str, float] = {}
        self.claim_s = 0.0
        self.claims = 0
        self.last = 0.0

    def task(self, i: int, delay: float, kill_at: float | None) -> None:
        from hpcgen.rundir.parts import finalize_shard, write_chunk_done
        from hpcgen.rundir.progress import TaskProgress
        from hpcgen.task.work import WorkQueue

        time.sleep(max(0.0, self.t0 + delay - time.time()))
        job = f"1_{i}.r0"
        progress = TaskProgress(self.layout, job, 1, [i])
        progress.save()
        progress.start_beat(self.beat_s)
        queue = WorkQueue(self.layout, self.manifest, job, [i], steal=self.steal, timeout_s=self.timeout_s,
                          beat_s=self.beat_s, rng=random.Random(i))
        busy = 0.0
        while True:
            t = time.perf_counter()
            c = queue.next()
            with self.lock:
                self.claim_s += time.perf_counter() - t
                self.claims += 1
            c = c or queue.after_suspects()
            if c is None:
                break
            work = self.cost[(c.shard, c.chunk)]
            now = time.time() - self.t0
            if kill_at is not None and now + work > kill_at:  # killed mid-chunk: no marker, no goodbye
                time.sleep(max(0.0, kill_at - now))
                busy += max(0.0, kill_at - now)
                progress._stop.set()
                self.busy[job] = busy
                return
            time.sleep(work)
            busy += work
            if queue.still_mine(c):
                write_chunk_done(self.layout, c.shard, c.chunk, [], 0, job, c.gen)
                finalize_shard(self.layout, self.manifest, c.shard)
                with self.lock:
                    self.done.append((c.shard, c.chunk, job))
                    self.last = max(self.last, time.time() - self.t0)
        progress.finish()
        self.busy[job] = busy


def _process(args) -> dict:
    layout, manifest, cost, steal, tasks, delays, kills, timeout_s, beat_s, t0 = args
    sim = Sim(layout, manifest, cost, steal, timeout_s, beat_s, t0)
    threads = [threading.Thread(target=sim.task, args=(i, delays[i], kills.get(i)), daemon=True) for i in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"done": sim.done, "busy": sim.busy, "claim_s": sim.claim_s, "claims": sim.claims, "last": sim.last}


def run(layout, manifest, cost, steal: bool, delays: list[float], kills: dict[int, float], timeout_s: float,
        beat_s: float, processes: int = 8) -> dict:
    import multiprocessing as mp

    t0 = time.time() + 2.0  # every process starts its clock at the same instant
    groups = [list(range(p, len(delays), processes)) for p in range(processes)]
    with mp.get_context("fork").Pool(processes) as pool:
        outs = pool.map(_process, [(layout, manifest, cost, steal, g, delays, kills, timeout_s, beat_s, t0)
                                   for g in groups])
    return {"done": [d for o in outs for d in o["done"]], "busy": {k: v for o in outs for k, v in o["busy"].items()},
            "claim_s": sum(o["claim_s"] for o in outs), "claims": sum(o["claims"] for o in outs),
            "last": max(o["last"] for o in outs)}


def claim_overhead(rows: int = 20_000, tasks: int = 20) -> tuple[float, dict[str, int]]:
    """Seconds and file operations per chunk for claim + chunk marker + shard marker, on the local disk, one
    thread, by counting the os calls the claim code makes."""
    import builtins

    from hpcgen.rundir.parts import finalize_shard, write_chunk_done
    from hpcgen.task.work import WorkQueue

    with tempfile.TemporaryDirectory(dir=common.bench_dir(B)) as tmp:
        layout, manifest = build(Path(tmp), rows, tasks, 300)
        counts: Counter[str] = Counter()
        originals = {}

        def counted(name, fn):
            def wrapper(*a, **k):
                counts[name] += 1
                return fn(*a, **k)
            return wrapper

        for name in ("link", "rename", "replace", "unlink", "mkdir", "scandir", "fsync", "stat"):
            originals[name] = getattr(os, name)
            setattr(os, name, counted(name, originals[name]))
        originals["open"] = builtins.open
        builtins.open = counted("open", builtins.open)
        try:
            n = 0
            t0 = time.perf_counter()
            for i in range(tasks):
                queue = WorkQueue(layout, manifest, f"1_{i}.r0", [i], steal=True, timeout_s=300)
                while (c := queue.next()) is not None:
                    write_chunk_done(layout, c.shard, c.chunk, [], 0, f"1_{i}.r0", c.gen)
                    finalize_shard(layout, manifest, c.shard)
                    n += 1
            seconds = time.perf_counter() - t0
        finally:
            for name, fn in originals.items():
                if name == "open":
                    builtins.open = fn
                else:
                    setattr(os, name, fn)
    return seconds / n, {k: round(v / n, 2) for k, v in sorted(counts.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--task-seconds", type=float, default=180.0)
    ap.add_argument("--kill", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=4.0, help="lease timeout (s); heartbeats every quarter of it")
    ap.add_argument("--processes", type=int, default=8, help="the tasks are threads spread over this many "
                    "processes (fewer threads per interpreter lock: less queueing for it)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    timeout_s, beat_s = a.timeout, a.timeout / 4  # scaled down with the run: 10 s beats and 120 s on a cluster
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(dir=shm, prefix="hpcgen-sim-") as tmp:
        layout, manifest = build(Path(tmp), a.rows, a.tasks, timeout_s)
        cost = costs(manifest, a.task_seconds, random.Random(a.seed))
        delays = [rng.uniform(0, 1.0) if rng.random() < 0.8 else rng.uniform(0, 0.1 * a.task_seconds)
                  for _ in range(a.tasks)]
        kills = {i: rng.uniform(0, a.task_seconds) for i in rng.sample(range(a.tasks), int(a.kill * a.tasks))}
        t0 = time.perf_counter()
        sim = run(layout, manifest, cost, True, delays, kills, timeout_s, beat_s, a.processes)
        per_chunk = Counter((s, c) for s, c, _ in sim["done"])
        busy = sum(sim["busy"].values())
        st = {"makespan": sim["last"], "wall": time.perf_counter() - t0, "ideal": busy / a.tasks,
              "capacity_ideal": capacity_ideal(busy, delays, [kills.get(i) for i in range(a.tasks)]),
              "chunks": len(cost), "missing": len(cost) - len(per_chunk),
              "twice": sum(1 for v in per_chunk.values() if v > 1), "shards_done": len(layout.list_done()),
              "takeovers": len(list(layout.work_dir.glob("*/c*.g1.lease"))),
              "claim_ms": 1000 * sim["claim_s"] / max(1, sim["claims"])}
        print(f"[{B}] stealing: {json.dumps(st)}", flush=True)
    # static sharding of the same work: each task its own shard, no recovery (computed, nothing to simulate)
    shard_cost = Counter()
    for (shard, _), c in cost.items():
        shard_cost[shard] += c
    survivors = [delays[i] + shard_cost[i] for i in range(a.tasks) if i not in kills]
    sta = {"makespan": max(survivors), "missing_shards": len(kills),
           "no_kills": max(delays[i] + shard_cost[i] for i in range(a.tasks))}
    ratio = st["makespan"] / st["capacity_ideal"]
    common.report(B, f"makespan / ideal given the starts and deaths, {a.tasks} tasks, {a.rows:,} rows, "
                  f"{int(a.kill * 100)}% killed, staggered starts", ratio, "", "<= 1.05", ratio <= 1.05,
                  f"makespan {st['makespan']:.1f}s; ideal {st['capacity_ideal']:.1f}s: the makespan at which the "
                  "tasks' time between their start and the end (or their death) equals the work")
    common.report(B, "makespan / (sum of task-busy seconds / tasks)", st["makespan"] / st["ideal"], "", "info",
                  None, f"{st['ideal']:.1f}s: counts late starts and killed tasks as if they had worked all along")
    common.report(B, "rows lost (stealing)", st["missing"], "chunks", "0", st["missing"] == 0,
                  f"{st['chunks']} chunks of {manifest['chunk_rows']} rows, each with exactly one marker (so each row "
                  f"once in the merge); {st['takeovers']} taken over from killed tasks")
    common.report(B, "chunks generated twice (wasted work)", st["twice"], "", "info", None,
                  "a holder judged gone while it was only late: both finished the chunk, one marker counts")
    common.report(B, "static sharding, same work and starts: makespan / stealing's", sta["no_kills"] / st["makespan"],
                  "", "info", None, f"static {sta['no_kills']:.1f}s with no task killed (with the kills "
                  f"{sta['missing_shards']} shards never finish; the rest end at {sta['makespan']:.1f}s)")
    common.report(B, f"claim time per chunk, {a.tasks} tasks in {a.processes} processes on tmpfs (WorkQueue.next)",
                  st["claim_ms"], "ms", "info")
    secs, ops = claim_overhead()
    common.report(B, "claim + chunk marker + shard marker per chunk, local disk, one thread", 1000 * secs, "ms",
                  "info", None, "file operations per chunk: " + ", ".join(f"{k} {v}" for k, v in ops.items()))


if __name__ == "__main__":
    main()
