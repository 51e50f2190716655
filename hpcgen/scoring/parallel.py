"""Grading a file's batches in order: in this process, or in worker processes for large files, with a
progress bar on stderr. Worker processes read their own shares of a parquet file (``graded_units``);
for ``.jsonl`` input and the per-sample output the main process reads and sends them batches (``graded``)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from hpcgen.scoring.grading import BatchResult, GradeJob, grade_rows
from hpcgen.scoring.inputs import Batch, FileInfo, Keys, Unit, iter_unit, parquet_units

# Below these sizes, starting worker processes (~0.5 s each) costs more than it saves: the verl rules grade
# ~250,000 samples/s per core, math-verify's sympy-based equivalence a few thousand.
PARALLEL_MIN_SAMPLES = {"verl": 400_000, "math-verify": 5_000}
PARALLEL_MIN_BYTES = {"verl": 256 << 20, "math-verify": 4 << 20}  # .jsonl: samples not known up front
PROGRESS_MIN_SAMPLES = 200_000  # files this large get a progress bar (when stderr is a terminal)
MAX_WORKERS = 32


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(info: FileInfo, job: GradeJob) -> int:
    """Worker processes for this file: 1 (in-process) for small files and custom scorers (user code runs
    in this process, as in the scorer's own tests), else one per available CPU."""
    if job.grader.custom_path:
        return 1
    name = "math-verify" if job.compare is not None else job.grader.name  # the slower one sets the pace
    big = (info.samples >= PARALLEL_MIN_SAMPLES[name] if info.samples is not None
           else info.size >= PARALLEL_MIN_BYTES[name])
    cpus = available_cpus()
    return min(cpus, MAX_WORKERS) if big and cpus > 1 else 1


def is_long(info: FileInfo) -> bool:
    if info.samples is not None:
        return info.samples >= PROGRESS_MIN_SAMPLES
    return info.size >= PARALLEL_MIN_BYTES["verl"]


@contextlib.contextmanager
def progress_bar(enabled: bool, total_rows: int | None, label: str) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(rows)``; draws a rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda rows: None
        return
    from rich import progress as rp
    from rich.console import Console

    columns: list[Any] = [rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.TaskProgressColumn(),
                          rp.MofNCompleteColumn(), rp.TextColumn("rows"), rp.TimeElapsedColumn(),
                          rp.TimeRemainingColumn()]
    with rp.Progress(*columns, console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(label, total=total_rows)
        yield lambda rows: prog.advance(task, rows)


def _work(rows: Any, first_index: int, job: GradeJob) -> BatchResult:
    return grade_rows(rows, first_index, job)


def _work_unit(unit: Unit, job: GradeJob) -> BatchResult:
    total = BatchResult()
    for b in iter_unit(unit):
        total.merge(grade_rows(b.rows, b.first_index, job))
    return total


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn: no fork of a process that may hold pyarrow's threads
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def graded_units(path: Any, keys: Keys, job: GradeJob, workers: int,
                 advance: Callable[[int], None]) -> Iterator[BatchResult]:
    """Each share of a parquet file graded by a worker that reads it itself, in file order."""
    units = parquet_units(path, workers, keys)
    with _pool(workers) as pool:
        futures = [pool.submit(_work_unit, u, job) for u in units]
        try:
            for unit, fut in zip(units, futures, strict=True):
                res = fut.result()
                advance(unit.rows)
                yield res
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def graded(batches: Iterator[Batch], job: GradeJob, workers: int,
           advance: Callable[[int], None]) -> Iterator[tuple[Batch, BatchResult]]:
    """(batch, its result) in file order."""
    if workers <= 1:
        for b in batches:
            res = grade_rows(b.rows, b.first_index, job)
            advance(b.count)
            yield b, res
        return
    window = 2 * workers + 2  # batches in flight: keeps the workers busy, bounds memory
    pending: deque[tuple[Batch, Future[BatchResult]]] = deque()
    with _pool(workers) as pool:
        try:
            for b in batches:
                pending.append((b, pool.submit(_work, b.rows, b.first_index, job)))
                b.rows = None  # the worker has its copy
                while len(pending) >= window or (pending and pending[0][1].done()):
                    first, fut = pending.popleft()
                    res = fut.result()
                    advance(first.count)
                    yield first, res
            while pending:
                first, fut = pending.popleft()
                res = fut.result()
                advance(first.count)
                yield first, res
        except BaseException:
            for _, fut in pending:
                fut.cancel()
            raise
