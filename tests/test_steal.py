"""Work stealing with stand-in engines (fast): tasks in threads of one process, each named like a SLURM task.
The same behaviour on the real cluster with real vLLM is in tests/test_steal_cluster.py."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest
from helpers import FakeEngine, make_run, parts_of

from hpcgen.login.merge import merge_run
from hpcgen.rundir import atomic
from hpcgen.rundir.leases import read_task
from hpcgen.task.worker import run_shards


class SlowEngine(FakeEngine):
    """Rows of the slow shard take ``delay`` seconds per engine step (a shard of long answers)."""

    def __init__(self, spec, path, *, slow: range = range(0), delay: float = 0.0, **kw):
        super().__init__(spec, path, **kw)
        self.slow, self.delay = slow, delay

    def step(self):
        if self.delay and any(r in self.slow for r in self.queue[: self.per_step]):
            time.sleep(self.delay)
        return super().step()


def run_tasks(run, tasks: dict[str, list[int]], factory, start_delays: dict[str, float] | None = None):
    """Run the named tasks concurrently; return their summaries (or the exception each raised)."""
    out: dict[str, object] = {}

    def one(name: str, own: list[int]) -> None:
        time.sleep((start_delays or {}).get(name, 0))
        try:
            out[name] = run_shards(run.root, own, engine_factory=factory, job=name)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out[name] = exc

    threads = [threading.Thread(target=one, args=(n, o)) for n, o in tasks.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def merged_responses(run, tmp_path, name="o.parquet"):
    return pq.read_table(merge_run(run.root, output=tmp_path / name).output).column("responses").to_pylist()


EXPECTED = [[f"row {i} sample 0", f"row {i} sample 1"] for i in range(100)]


def test_a_task_that_finished_its_shard_takes_the_tail_of_a_slow_one(tmp_path, small_dataset, fake_model):
    # the engine holds 4 sequences (2 rows of n=2): a task claims one chunk ahead of what it generates
    run = make_run(tmp_path, small_dataset, fake_model, "sharding.steal=true", "sharding.num_shards=2",
                   "rollout.max_num_seqs=4")
    slow = range(0, 50)  # shard 0's rows are 20x slower

    def factory(spec, path):
        return SlowEngine(spec, path, slow=slow, delay=0.05)

    out = run_tasks(run, {"1_0.r0": [0], "1_1.r0": [1]}, factory)
    assert all(isinstance(v, dict) for v in out.values()), out
    fast, slowrec = read_task(run, "1_1.r0"), read_task(run, "1_0.r0")
    stolen = fast["shards"].get("0", {}).get("rows", 0)
    assert stolen > 0 and fast["stolen_chunks"] > 0  # it generated rows of shard 0
    assert slowrec["shards"]["0"]["rows"] + stolen == 50  # each of shard 0's rows once
    assert merged_responses(run, tmp_path) == EXPECTED  # every row once, in order, the same samples
    # the thief took the far end: the owner's rows are a prefix of its shard
    owner_rows = sorted(i for p in parts_of(run, 0) if p.tag == "1_0-r0"
                        for i in pq.read_table(run.part(p), columns=["row_id"]).column(0).to_pylist())
    assert owner_rows == list(range(len(owner_rows)))


def test_steal_false_keeps_tasks_to_their_shards(tmp_path, small_dataset, fake_model):
    run = make_run(tmp_path, small_dataset, fake_model, "sharding.num_shards=2")  # make_run: steal=false
    out = run_tasks(run, {"2_1.r0": [1]}, lambda s, p: FakeEngine(s, p))
    assert out["2_1.r0"]["own"] == {1: "done"}
    assert sorted(run.list_done()) == [1] and not parts_of(run, 0)


def test_a_task_with_no_work_left_exits_before_loading_an_engine(tmp_path, small_dataset, fake_model):
    run = make_run(tmp_path, small_dataset, fake_model, "sharding.steal=true")
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine, job="3_0.r0")
    built = []
    out = run_shards(run.root, [], engine_factory=lambda s, p: built.append(1), job="3_1.r0")
    assert built == [] and out["engine"] is False and out["chunks"] == 0


def _hold(run, shard: int, chunk: int, job: str, **record) -> None:
    """A lease on the chunk held by task ``job`` with the given task record (a holder alive or gone)."""
    from hpcgen.rundir.leases import claim

    assert claim(run, shard, chunk, 0, job)
    run.progress_dir.mkdir(exist_ok=True)
    atomic.write_json(run.progress(job), {"job_id": job, "state": "running", "host": "elsewhere", "pid": 1,
                                          "beat": time.time(), "ended": None, **record})


def test_a_lease_whose_holder_is_gone_is_taken_over_without_redoing_saved_rows(tmp_path, small_dataset,
                                                                            fake_model):
    import pyarrow as pa

    from hpcgen.rundir.parts import PART_SCHEMA, write_part

    run = make_run(tmp_path, small_dataset, fake_model, "sharding.steal=true", "sharding.num_shards=1")
    # chunk 2 (rows 16-23) was held by a task on a lost node: silent for longer than the lease timeout, with
    # rows 16-19 saved; chunk 3 by a task alive elsewhere
    _hold(run, 0, 2, "9_0.r0", beat=time.time() - 3600)
    rows = [{"row_id": i, "responses": [f"row {i} sample 0", f"row {i} sample 1"], "finish_reasons": ["stop"] * 2,
             "response_tokens": [3, 3], "prompt_tokens": 5, "prompt_truncated": False, "gen_error": None}
            for i in range(16, 20)]
    write_part(run, 0, 2, 0, "9_0-r0", pa.Table.from_pylist(rows, schema=PART_SCHEMA))
    _hold(run, 0, 3, "9_1.r0")
    engine = FakeEngine(None, "")
    out = run_shards(run.root, [0], engine_factory=lambda s, p: (setattr(engine, "spec", s), engine)[1],
                     job="4_0.r0")
    assert run.lease(0, 2, 1).read_text() == "4_0.r0"  # taken over: generation 1
    assert not any(16 <= r < 20 for r in engine.added)  # the saved rows were not generated again
    assert not any(24 <= r < 32 for r in engine.added)  # the live holder's chunk was left to it
    assert out["own"] == {0: "not done"} and 0 not in run.list_done()


def test_a_holder_that_lost_its_chunk_saves_no_marker_and_merge_drops_its_rows(tmp_path, small_dataset,
                                                                               fake_model):
    """A task judged gone (stalled past the timeout) comes back while another has taken its chunk over: its late
    rows are duplicates, left out of every marker, and counted."""
    from hpcgen.login.state import collect
    from hpcgen.rundir.manifest import load_manifest

    run = make_run(tmp_path, small_dataset, fake_model, "sharding.steal=true", "sharding.num_shards=1")
    late: list[int] = []

    class Stalling(FakeEngine):
        def step(self):
            if self.added and not late:  # holds chunk 0 and stalls until another task takes it over
                late.append(1)
                atomic.write_json(run.progress("5_0.r0"), {**read_task(run, "5_0.r0"), "beat": 0})
                run_shards(run.root, [], engine_factory=FakeEngine, job="5_1.r0")
            return super().step()

    run_shards(run.root, [0], engine_factory=Stalling, job="5_0.r0")
    st = collect(run.root, load_manifest(run.root), query_scheduler=False)
    assert st.dropped_rows > 0
    res = merge_run(run.root, output=tmp_path / "o.parquet")
    assert res.dropped_rows == st.dropped_rows and res.rows == 100
    assert pq.read_table(res.output).column("responses").to_pylist() == EXPECTED


def test_many_tasks_some_killed_every_row_once(tmp_path, fake_model):
    """20 tasks on 10 shards with staggered starts; up to 3 of them die holding chunks (their records say so, as
    resume records a job the scheduler says is over); later tasks take their chunks over; every row once."""
    import random

    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp_path / "d.parquet", 400, style="gsm8k", seed=1)
    run = make_run(tmp_path, data, fake_model, "sharding.steal=true", "sharding.num_shards=10",
                   "sharding.rows_per_chunk=8")
    rng = random.Random(7)

    class Dying(FakeEngine):
        def step(self):
            if len(self.added) > 12:
                raise RuntimeError("node lost")
            return super().step()

    names = [f"6_{i}.r0" for i in range(20)]
    dying = set(rng.sample(names[:10], 3))
    tasks = {n: ([i] if i < 10 else []) for i, n in enumerate(names)}

    def factory_for(name):
        return lambda s, p: (Dying if name in dying else FakeEngine)(s, p)

    out: dict[str, object] = {}

    def one(name):
        time.sleep(rng.random() * 0.2 + (0.3 if name not in dying else 0))
        try:
            out[name] = run_shards(run.root, tasks[name], engine_factory=factory_for(name), job=name)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out[name] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    deaths = [str(v) for v in out.values() if isinstance(v, BaseException)]
    assert deaths and set(deaths) == {"node lost"}, out  # (a dying task may find its chunks held and leave)
    assert list(run.work_dir.glob("*/c*.g1.lease"))  # chunks of the dead were taken over
    assert sorted(run.list_done()) == list(range(10)) or resume_rest(run)
    res = merge_run(run.root, output=tmp_path / "o.parquet")
    assert res.rows == 400
    responses = pq.read_table(res.output).column("responses").to_pylist()
    assert responses == [[f"row {i} sample 0", f"row {i} sample 1"] for i in range(400)]


def resume_rest(run) -> bool:
    """Tasks that started after the deaths may have finished before them: one more task takes the rest."""
    run_shards(run.root, [], engine_factory=FakeEngine, job="7_0.r0")
    return sorted(run.list_done()) == list(range(10))


def test_spread_over_tasks():
    from hpcgen.login.ops import _spread

    assert _spread([3, 4, 7, 9, 12], 3) == [[3], [4, 7], [9, 12]]
    assert _spread([5], 3) == [[], [], [5]]
    assert sorted(s for g in _spread(list(range(10)), 4) for s in g) == list(range(10))


@pytest.mark.parametrize("rows, shards, window, expect", [(96, 1, 8, 8), (1_000_000, 1000, 8, 32),
                                                         (10**8, 10, 8, 4096), (10**6, 100, 2048, 1024)])
def test_auto_chunk_rows(rows, shards, window, expect):
    from hpcgen.login.plan import shard_ranges
    from hpcgen.rundir.chunks import auto_chunk_rows

    assert auto_chunk_rows(shard_ranges(rows, shards, None), window) == expect
