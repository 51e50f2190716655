"""``status --watch``: refresh the run's state in place with rich progress bars (overall and one per running
task), or one plain line per refresh when stdout is not a terminal. Each refresh is one ``collect`` (at most
one sacct call). Stops when nothing is pending or running, or on Ctrl-C (cleanly: the terminal is restored).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcgen.errors import UserError
from hpcgen.login.runstats import job_of
from hpcgen.login.state import RunState, collect
from hpcgen.rundir.manifest import load_manifest

MAX_INTERVAL = 5.0
MAX_TASK_BARS = 20


def fmt_secs(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _rate(avg: float | None, recent: float | None, unit: str, fmt: str = "{:.2f}") -> str:
    if not avg and not recent:
        return f"- {unit}"
    a = fmt.format(avg) if avg else "-"
    return f"{a} {unit}" + (f" (recent {fmt.format(recent)})" if recent else "")


def summary_line(state: RunState) -> str:
    """The one-line summary ``status``, ``--wait`` and ``--watch`` print."""
    counts = " ".join(f"{k}={v}" for k, v in sorted(state.counts.items()))
    st = state.stats
    head = f"{state.rows_done}/{state.rows_total} rows, {len(state.shards)} shards ({counts})"
    if state.extra_tasks:
        running = sum(1 for st in state.extra_tasks.values() if st == "running")
        head += f", {len(state.extra_tasks)} added task(s) ({running} running)"
    if state.dropped_rows:
        head += f", {state.dropped_rows} duplicate row(s) dropped"
    if st is None:
        return f"{head}, ETA {fmt_secs(state.eta_seconds)}"
    cut = f"{100 * st.length_share:.1f}%" if st.length_share is not None else "-"
    return (f"{head}, elapsed {fmt_secs(st.elapsed_seconds)}, "
            f"{_rate(st.rows_per_second, st.rows_per_second_recent, 'rows/s')}, "
            f"{_rate(st.tokens_per_second, st.tokens_per_second_recent, 'tok/s', '{:.0f}')}, "
            f"ETA {fmt_secs(state.eta_seconds)}, {st.gpu_hours:.2f} GPU-h, {st.output_tokens} output tokens, "
            f"cut at response_length {cut}, error rows {st.error_rows}")


def running_tasks(state: RunState) -> list[dict[str, Any]]:
    """One entry per running task: its job id, shards, rows done/total, host and tokens so far."""
    tasks: dict[str, dict[str, Any]] = {}
    for s in state.shards:
        if s.state == "running" and s.job_id:
            t = tasks.setdefault(s.job_id, {"job_id": s.job_id, "shards": [], "done": 0, "total": 0,
                                            "host": None, "output_tokens": 0})
            t["shards"].append(s.id)
            t["done"] += s.rows_done
            t["total"] += s.rows_total
    for a in state.stats.tasks if state.stats else []:
        match = tasks.get(job_of(a.job_id)[0])
        if match is not None and a.state == "running":
            match["host"], match["output_tokens"] = a.host, a.output_tokens
    return list(tasks.values())


def finished(state: RunState) -> bool:
    chain_open = bool(state.chain and state.chain.get("state") in ("pending", "running"))
    return not state.shards_in("pending", "running") and not chain_open


def render(state: RunState) -> Any:
    """The rich renderable of one refresh: header, overall bar, one bar per running task, summary."""
    from rich.console import Group
    from rich.markup import escape
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    st = state.stats
    table = Table.grid(padding=(0, 1))
    for _ in range(4):
        table.add_column()
    pct = 100 * state.rows_done / state.rows_total if state.rows_total else 100.0
    table.add_row("overall", ProgressBar(total=max(1, state.rows_total), completed=state.rows_done, width=40),
                  f"{state.rows_done}/{state.rows_total} rows {pct:5.1f}%", f"ETA {fmt_secs(state.eta_seconds)}")
    tasks = running_tasks(state)
    for t in tasks[:MAX_TASK_BARS]:
        shards = ",".join(str(x) for x in t["shards"][:6]) + ("…" if len(t["shards"]) > 6 else "")
        table.add_row(escape(f"task {t['job_id']}"), ProgressBar(total=max(1, t["total"]), completed=t["done"],
                                                                  width=40),
                      f"{t['done']}/{t['total']} rows (shard {shards})",
                      escape(f"{t['host'] or ''} {t['output_tokens']} tok"))
    parts: list[Any] = [Text(f"run {state.run_dir}" + (f" ({state.executor})" if state.executor else ""))]
    parts.append(table)
    if len(tasks) > MAX_TASK_BARS:
        parts.append(Text(f"... {len(tasks) - MAX_TASK_BARS} more running tasks"))
    bad = [s for s in state.shards if s.state in ("failed", "cancelled")]
    for s in bad[:5]:
        parts.append(Text(f"shard {s.id} {s.state}: {s.last_error or 'no error recorded'} — {s.logs_command}"))
    if len(bad) > 5:
        parts.append(Text(f"... {len(bad) - 5} more failed/cancelled shards ('hpcgen status' lists them)"))
    if state.chain:
        parts.append(Text(f"merge+score step: job {state.chain['job_id']} {state.chain['state']}"))
    parts.append(Text(summary_line(state)))
    if st is not None and st.elapsed_seconds is None and not st.tasks:
        parts.append(Text("no task has started yet"))
    return Group(*parts)


def check_interval(interval: float) -> float:
    if not 0 < interval <= MAX_INTERVAL:
        raise UserError(f"--interval must be between 0 and {MAX_INTERVAL:g} seconds (got {interval:g})")
    return interval


def watch(run_dir: Path, *, interval: float = 2.0, tty: bool, console: Any = None,
          out: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
          max_refreshes: int | None = None) -> RunState:
    """Refresh until the run is finished (or Ctrl-C, or ``max_refreshes``); returns the last state."""
    check_interval(interval)
    manifest = load_manifest(run_dir)
    if threading.current_thread() is threading.main_thread():  # Ctrl-C stops it even when started from a
        signal.signal(signal.SIGINT, signal.default_int_handler)  # shell that ignores SIGINT (a background job)
    refreshes = 0
    state: RunState | None = None
    live = None
    if tty:
        from rich.live import Live

        live = Live(console=console, auto_refresh=False, transient=False)
        live.start()
    try:
        while True:
            t0 = time.monotonic()
            state = collect(run_dir, manifest)
            refreshes += 1
            if live is not None:
                live.update(render(state), refresh=True)
            else:
                out(f"{time.strftime('%H:%M:%S')} {summary_line(state)}")
            if finished(state) or (max_refreshes is not None and refreshes >= max_refreshes):
                break
            sleep(max(0.0, interval - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    if state is None:
        state = collect(run_dir, manifest, query_scheduler=False)
    return state
