"""Shared helpers for the benchmark scripts: cache dir, tiny model, big datasets, PATH shims, measured
subprocesses and the one-line result records that ``run_all.py`` collects.

Every figure is printed as a human line and as ``BENCH_RESULT {json}`` (parsed by run_all).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # hpcgen_dev (tiny model, datasets, cluster) lives in the checkout, not the wheel
    sys.path.append(str(REPO))
BENCH_DIR = Path(os.environ.get("HPCGEN_BENCH_DIR", "/tmp/hpcgen-bench"))
PY = sys.executable
MARK = "BENCH_RESULT "


def bench_dir(*parts: str) -> Path:
    p = BENCH_DIR.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def fresh_dir(*parts: str) -> Path:
    p = BENCH_DIR.joinpath(*parts)
    shutil.rmtree(p, ignore_errors=True)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def tiny_model() -> Path:
    from hpcgen_dev.tiny_model import build_tiny_model

    return build_tiny_model(BENCH_DIR / "tiny-model")


def cluster_env() -> dict[str, str]:
    """SLURM_CONF of the throwaway cluster (same as ``python -m hpcgen_dev.cluster env``)."""
    from hpcgen_dev.cluster import info

    return dict(info().env)


def report(bench: str, figure: str, value: float | int | str, unit: str = "", goal: str = "",
           ok: bool | None = None, note: str = "") -> None:
    """Print one figure against its goal, and the machine-readable record for run_all."""
    shown = f"{value:.3f}" if isinstance(value, float) else str(value)
    verdict = "" if ok is None else (" OK" if ok else " MISSED")
    goal_txt = f"  (goal {goal}){verdict}" if goal else ""
    print(f"[{bench}] {figure}: {shown} {unit}{goal_txt}{'  -- ' + note if note else ''}", flush=True)
    rec = {"bench": bench, "figure": figure, "value": value, "unit": unit, "goal": goal, "ok": ok, "note": note}
    print(MARK + json.dumps(rec), flush=True)


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 1800,
                 echo: bool = False) -> dict[str, Any]:
    """Run ``cmd``; return wall seconds, return code, stdout, stderr and ``maxrss_mb`` from wait4 (which
    is at least the parent's RSS at fork time: children report ``vmhwm_mb()`` for real figures)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})}, cwd=REPO)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        res = {"wall_s": wall, "rc": proc.returncode, "maxrss_mb": usage.ru_maxrss / 1024,
               "stdout": out.read(), "stderr": err.read()}
    if res["rc"] != 0:
        sys.stderr.write(res["stderr"][-4000:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {res['rc']}")
    if echo and res["stdout"].strip():
        print(res["stdout"].rstrip(), flush=True)
    return res


def child_json(res: dict[str, Any]) -> dict[str, Any]:
    """The last ``CHILD {json}`` line a child printed."""
    lines = [x for x in res["stdout"].splitlines() if x.startswith("CHILD ")]
    return json.loads(lines[-1][6:])


def emit_child(data: dict[str, Any]) -> None:
    print("CHILD " + json.dumps(data), flush=True)


def vmhwm_mb() -> float:
    """This process's own peak RSS (VmHWM). Unlike ru_maxrss, it does not inherit the parent's peak across
    fork+exec, so children measure themselves with it."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its live descendants (vLLM's engine processes)."""
    import psutil

    me = psutil.Process()
    own = sum(me.cpu_times()[:2])
    kids = 0.0
    for c in me.children(recursive=True):
        try:
            kids += sum(c.cpu_times()[:2])
        except psutil.Error:
            pass
    return own, kids


def make_shim(shim_dir: Path, name: str) -> Path:
    """A ``name`` script for PATH that logs each call (args, stdout) to ``shim_dir/name.log``, then runs the
    real command found on the current PATH and passes its output and exit code through."""
    real = shutil.which(name)
    if real is None:
        raise RuntimeError(f"{name} not found on PATH")
    shim_dir.mkdir(parents=True, exist_ok=True)
    log = shim_dir / f"{name}.log"
    log.write_text("")
    shim = shim_dir / name
    shim.write_text(
        "#!/bin/bash\n"
        f'echo "CALL $*" >> "{log}"\n'
        f'out=$("{real}" "$@"); rc=$?\n'
        f'printf "%s\\n" "$out" | sed "s/^/OUT /" >> "{log}"\n'
        'printf "%s\\n" "$out"\n'
        "exit $rc\n"
    )
    shim.chmod(0o755)
    return log


def shim_calls(log: Path) -> list[str]:
    return [x[5:] for x in log.read_text().splitlines() if x.startswith("CALL ")]


def shim_output(log: Path) -> list[str]:
    return [x[4:] for x in log.read_text().splitlines() if x.startswith("OUT ")]


def big_prompt_parquet(rows: int = 10_000_000, row_group: int = 100_000) -> Path:
    """A parquet of ``rows`` tiny prompts ``q{i}`` (string column ``prompt``), built once and cached."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = bench_dir("data") / f"prompts-{rows}.parquet"
    if path.is_file():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    schema = pa.schema([("prompt", pa.string())])
    with pq.ParquetWriter(tmp, schema) as w:
        for lo in range(0, rows, row_group):
            ids = pc.cast(pa.array(np.arange(lo, min(rows, lo + row_group))), pa.string())
            w.write_table(pa.table({"prompt": pc.binary_join_element_wise("q", ids, "")}, schema=schema))
    os.replace(tmp, path)
    return path


def part_name(shard: int, chunk: int, seq: int, rows: int, tag: str = "bench0") -> Any:
    """A PartName with a placeholder checksum (for listings only: such a part does not verify)."""
    from hpcgen.rundir.layout import PartName

    return PartName(shard, chunk, seq, rows, tag, "0" * 64)


def squeue_jobs(job_ids: list[str]) -> list[str]:
    """squeue lines (id state reason) still queued or running for these job/array ids."""
    if not job_ids:
        return []
    res = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r", "-t", "PD,R,CG,CF,S,RQ",
                          "-j", ",".join(job_ids)],
                         capture_output=True, text=True, env={**os.environ, **cluster_env()})
    return [x for x in res.stdout.splitlines() if x.strip()]


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, text=True,
                       env={**os.environ, **cluster_env()})


def wait_gone(job_ids: list[str], timeout: float = 30) -> list[str]:
    """Poll squeue until none of ``job_ids`` is listed; returns what is left at the timeout."""
    left = squeue_jobs(job_ids)
    t0 = time.monotonic()
    while left and time.monotonic() - t0 < timeout:
        time.sleep(1)
        left = squeue_jobs(job_ids)
    return left
