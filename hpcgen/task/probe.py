"""``hpcgen doctor``'s test job, run on each node of a one-minute job: what the task side sees.

    python -m hpcgen.task.probe DOCTOR_DIR [OUTPUT_DIR]

Reads the token the login node wrote into DOCTOR_DIR (the run directory's filesystem), records the GPUs the
job was given (SLURM's ``CUDA_VISIBLE_DEVICES`` / ``SLURM_JOB_GPUS``, and ``nvidia-smi -L`` where it exists),
the hpcgen and vLLM versions it imports, and whether OUTPUT_DIR is writable, into
``DOCTOR_DIR/probe-<node rank>.json``. It judges nothing: the login node compares.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpcgen.rundir import atomic

TOKEN = "token"


def _gpus() -> dict[str, Any]:
    env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS",
                                           "SLURM_GPUS_ON_NODE", "ROCR_VISIBLE_DEVICES")}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    out: dict[str, Any] = {"env": env,
                           "visible": len([d for d in visible.split(",") if d.strip()]) if visible else 0,
                           "nvidia_smi": None}
    if shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
            out["nvidia_smi"] = len([ln for ln in res.stdout.splitlines() if ln.startswith("GPU ")])
        except (OSError, subprocess.TimeoutExpired) as exc:
            out["nvidia_smi_error"] = str(exc)
    return out


def _versions() -> dict[str, Any]:
    import hpcgen

    out: dict[str, Any] = {"hpcgen": hpcgen.__version__, "hpcgen_file": hpcgen.__file__,
                           "python": sys.executable}
    t0 = time.monotonic()
    try:  # a real import: it fails here when the node's CUDA/driver/libraries do not match the build
        import vllm

        out["vllm"] = getattr(vllm, "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001 - reported, judged on the login node
        out["vllm"] = None
        out["vllm_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    out["vllm_import_s"] = round(time.monotonic() - t0, 1)
    return out


def _writable(path: str | None) -> dict[str, Any]:
    """Can a file be created in ``path``, or in its nearest existing parent (merge creates the rest)?"""
    if not path:
        return {"path": None}
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".hpcgen-doctor-"):
            pass
        return {"path": path, "tested": str(where), "ok": True}
    except OSError as exc:
        return {"path": path, "tested": str(where), "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0])
    rank = os.environ.get("SLURM_NODEID") or os.environ.get("SLURM_PROCID") or "0"
    result: dict[str, Any] = {"host": socket.gethostname(), "node": os.environ.get("SLURMD_NODENAME"),
                              "job_id": os.environ.get("SLURM_JOB_ID"), "rank": rank}
    try:
        result["token"] = (folder / TOKEN).read_text()
    except OSError as exc:
        result["token"] = None
        result["token_error"] = f"{type(exc).__name__}: {exc}"
    result["gpus"] = _gpus()
    result["versions"] = _versions()
    result["output"] = _writable(args[1] if len(args) > 1 else None)
    atomic.write_json(folder / f"probe-{rank}.json", result)
    print(f"hpcgen doctor probe: wrote {folder / f'probe-{rank}.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
