"""``hpcgen doctor``: check a site before the first real run, one line per check, pass or fail with the fix.

SLURM's commands and controller, accounting, MaxArraySize and the partition's limits, the job's request
against the partition's nodes, then one short test job (the job's own sbatch header: partition, account,
GPUs, setup lines, environment, python) running ``hpcgen.task.probe`` on each node: it reads a token written
here into the run directory's filesystem, reports the GPUs it was given, the hpcgen and vLLM it imports, and
whether the output directory is writable. The login node never imports vLLM: its version comes from package
metadata. Judgements are made here, from the probe's files.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import HpcgenError, SchedulerError, UserError
from hpcgen.login import partition as part
from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout, check_writable
from hpcgen.spec.schema import JobSpec

PROBE_MINUTES = 3
COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scontrol", "sinfo", "scancel")


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not run (a check it depends on failed, or nothing to check)
    detail: str
    fix: str = ""

    def line(self) -> str:
        tag = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"{tag}  {self.name}: {self.detail}" + (f" -> fix: {self.fix}" if self.ok is False and self.fix else "")


@dataclass
class Doctor:
    spec: JobSpec
    run_root: Path
    output_dir: Path
    timeout: float = 180.0
    report: Callable[[Check], None] = lambda c: None
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool | None, detail: str, fix: str = "") -> Check:
        c = Check(name, ok, " ".join(detail.split()), fix)
        self.checks.append(c)
        self.report(c)
        return c

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]


def login_versions() -> dict[str, str | None]:
    """hpcgen's and vLLM's versions here, from package metadata (vLLM is never imported on the login node)."""
    from importlib import metadata

    import hpcgen

    vllm = None
    for dist in metadata.packages_distributions().get("vllm", []):
        try:
            vllm = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return {"hpcgen": hpcgen.__version__, "vllm": vllm}


def _slurm(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:.0f}s")
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = (res.stderr or res.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {res.returncode}"


# --- checks ----------------------------------------------------------------------------------------------


def check_scheduler(d: Doctor) -> bool:
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        d.add("slurm commands", False, f"not on PATH: {', '.join(missing)}",
              "run doctor on the login node, or load SLURM's client module (e.g. 'module load slurm')")
        return False
    ver = _last_line(_slurm(["sbatch", "--version"]))
    d.add("slurm commands", True, f"{', '.join(COMMANDS)} found ({ver})")
    res = _slurm(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i"])
    if res.returncode != 0:
        d.add("scheduler", False, f"squeue failed: {_last_line(res)}",
              "slurmctld is unreachable from here: check SLURM_CONF and that the controller is up")
        return False
    d.add("scheduler", True, f"squeue answered ({len(res.stdout.split())} job(s) of {getpass.getuser()} queued)")
    return True


def check_accounting(d: Doctor, config: dict[str, str]) -> bool:
    storage = config.get("AccountingStorageType", "")
    if not storage or storage.endswith("/none"):
        d.add("accounting", False, f"AccountingStorageType={storage or 'unset'}: sacct knows no jobs",
              "ask the site for slurmdbd accounting; without it hpcgen status cannot tell a lost job from a "
              "finished one except by its files")
        return False
    res = _slurm(["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now-1hours"])
    if res.returncode != 0:
        d.add("accounting", False, f"{storage}, but sacct fails: {_last_line(res)}",
              "the accounting daemon (slurmdbd) or its database is down or unreachable: ask the site to "
              "start it; queued jobs still run, but sacct (and hpcgen status's scheduler view) is blind")
        return False
    d.add("accounting", True, f"{storage}; sacct answered")
    return True


def check_partition(d: Doctor, config: dict[str, str]) -> part.Partition | None:
    mas = config.get("MaxArraySize", "")
    d.add("MaxArraySize", True if mas.isdigit() else False,
          f"{mas} (runs with more tasks are queued as several arrays)" if mas.isdigit() else
          f"not readable from scontrol show config ({mas!r})", "check 'scontrol show config'")
    try:
        cluster = part.read_cluster()
        p = cluster.partition(d.spec.slurm.partition.split(",")[0] if d.spec.slurm.partition else None)
    except HpcgenError as exc:
        d.add("partition", False, str(exc), "pick one with --partition or slurm.partition")
        return None
    usable = [n for n in p.nodes if n.usable]
    ok = p.state == "UP" and bool(usable)
    d.add("partition", ok, f"{p.name}{' (default)' if p.default else ''}: {p.shapes() or 'no nodes'}; "
          f"{p.limits()}; {len(usable)} of {len(p.nodes)} nodes usable",
          f"partition {p.name} is {p.state} or has no usable node: ask the site or pick another with --partition")
    try:
        part.check_request(d.spec, cluster)
    except UserError as exc:
        d.add("request", False, str(exc), "change that key, or pick another partition (--partition)")
        return None
    r = part.request_of(d.spec)
    d.add("request", True, f"{r.nodes} node(s) x {r.cpus} CPUs, {r.gpus} GPUs"
          f"{f', {r.mem_mb} MB' if r.mem_mb else ''}, {d.spec.slurm.time} fit partition {p.name}")
    return p


def probe_script(spec: JobSpec, folder: Path, output_dir: Path) -> str:
    """The job's own sbatch header (launch.make_executor's parameters) running the probe for a few minutes."""
    from submitit.slurm.slurm import _make_sbatch_string

    from hpcgen.login.launch import make_executor

    ex = make_executor("slurm", RunLayout(folder), spec, dry_run=True)  # only its sbatch text is used
    params = dict(ex.parameters)
    params.update(job_name="hpcgen-doctor", time=PROBE_MINUTES, signal_delay_s=10)
    params["additional_parameters"] = {k: v for k, v in params.get("additional_parameters", {}).items()
                                       if k != "requeue"}
    params.pop("array_parallelism", None)
    command = f"{ex.python} -u -m hpcgen.task.probe {shlex.quote(str(folder))} {shlex.quote(str(output_dir))}"
    return str(_make_sbatch_string(command=command, folder=str(folder), map_count=None, **params))


def _queue_state(job_id: str) -> tuple[str, str] | None:
    """(state, reason) while the job is in squeue, else None."""
    res = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T|%r"])
    line = res.stdout.strip().splitlines()
    if res.returncode != 0 or not line:
        return None
    state, _, reason = line[0].partition("|")
    return state, reason


def _telling(lines: list[str]) -> str:
    """The line of a job's error log that says why: the last exception line, else the last line that is not
    srun's own epilogue ('srun: error: n1: task 0: Exited with exit code 1')."""
    exc = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*:", ln.strip())]
    own = [ln for ln in lines if not ln.startswith(("srun:", "slurmstepd:"))]
    return (exc or own or lines)[-1].strip()


def _sacct_state(job_id: str) -> str | None:
    res = _slurm(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"])
    lines = res.stdout.strip().splitlines() if res.returncode == 0 else []
    return lines[0].replace("|", " exit ") if lines else None


def run_probe(d: Doctor, folder: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """Queue the probe job and wait (with a deadline) for every node's result file. (job id, results)"""
    token = secrets.token_hex(16)
    atomic.write_bytes(folder / "token", token.encode())
    script = folder / "probe.sbatch"
    script.write_text(probe_script(d.spec, folder, d.output_dir))
    res = _slurm(["sbatch", "--parsable", str(script)], timeout=60)
    if res.returncode != 0:
        d.add("test job", False, f"sbatch refused it: {_last_line(res)}",
              "the request does not fit the partition (see 'request' above) or the account/QOS is wrong")
        return None, []
    job_id = res.stdout.strip().split(";")[0]
    nodes = d.spec.trainer.nnodes
    deadline, t0 = time.monotonic() + d.timeout, time.monotonic()
    left_at: float | None = None
    results: list[dict[str, Any]] = []
    try:
        while True:
            results = [json.loads(p.read_text()) for p in sorted(folder.glob("probe-*.json"))]
            if len(results) >= nodes:  # let the job end by itself, so sacct shows how it ended
                end = time.monotonic() + 30
                while _queue_state(job_id) is not None and time.monotonic() < end:
                    time.sleep(0.5)
                break
            q = _queue_state(job_id)
            if q is None:  # left the queue: give the result files a moment (shared filesystems lag)
                left_at = left_at or time.monotonic()
                if time.monotonic() - left_at > 5:
                    break
            elif time.monotonic() > deadline:
                d.add("test job", False, f"job {job_id} still {q[0].lower()} after {d.timeout:.0f}s "
                      f"(reason: {q[1]})", "the partition is busy or cannot start this request: try again "
                      "later, raise --timeout, or pick another partition")
                return job_id, results
            time.sleep(0.5)
    finally:
        if _queue_state(job_id) is not None:
            _slurm(["scancel", job_id])
    tokens_ok = [r for r in results if r.get("token") == token]
    if len(results) < nodes:
        state = _sacct_state(job_id) or "unknown state"
        logs = [p for p in sorted(folder.glob(f"{job_id}_*_log.*")) if p.stat().st_size]
        if logs:  # the node wrote its log here: the filesystem is shared, the probe itself failed
            err = [ln for p in logs if p.suffix == ".err" for ln in p.read_text(errors="replace").splitlines()
                   if ln.strip()]
            d.add("test job", False, f"job {job_id} ended ({state}) without a result: "
                  f"{_telling(err) if err else 'see ' + str(logs[0])}",
                  "the job's python cannot run 'python -m hpcgen.task.probe': install hpcgen where the job runs "
                  f"(slurm.python, slurm.setup or the container); logs in {folder}")
            d.add("shared filesystem", True, f"the job wrote its log into {folder}")
            return job_id, results
        d.add("test job", False, f"job {job_id} ended ({state}) without writing its result or its log "
              f"into {folder}", "see 'shared filesystem'")
        d.add("shared filesystem", False, f"no result and no log from the job in {folder}: the compute nodes "
              f"do not see {d.run_root} (or cannot write there)", "use a run directory on a shared "
              "filesystem (e.g. under $HOME or /scratch), not a disk local to the login node")
        return job_id, results
    hosts = ", ".join(sorted({str(r.get("node") or r.get("host")) for r in results}))
    d.add("test job", True, f"job {job_id} ran on {hosts} in {time.monotonic() - t0:.0f}s")
    if len(tokens_ok) < len(results):
        bad = next(r for r in results if r.get("token") != token)
        d.add("shared filesystem", False, f"the job on {bad.get('node')} read {bad.get('token')!r} from "
              f"{folder}/token, not what this node wrote ({bad.get('token_error', 'different content')})",
              "the nodes see another filesystem at this path: use a run directory the nodes share")
    else:
        d.add("shared filesystem", True, f"the job read the token written here into {folder} and wrote back")
    return job_id, results


def judge_probe(d: Doctor, results: list[dict[str, Any]], asked_gpus: int) -> None:
    """GPUs seen, versions imported and output writability, from the probe's results."""
    for r in results:
        g, where = r["gpus"], r.get("node") or r.get("host")
        smi = g.get("nvidia_smi")
        seen = g["visible"] if smi is None else min(g["visible"], smi)
        how = (f"CUDA_VISIBLE_DEVICES={g['env'].get('CUDA_VISIBLE_DEVICES')!s}, SLURM_JOB_GPUS="
               f"{g['env'].get('SLURM_JOB_GPUS')!s}; " + (f"nvidia-smi lists {smi}" if smi is not None else
                                                          "no nvidia-smi on the node: device count from SLURM's "
                                                          "variables only (placeholder gres are not checked)"))
        if asked_gpus == 0:
            d.add("GPUs", None, f"the job asked for no GPUs ({how})")
        elif seen < asked_gpus:
            d.add("GPUs", False, f"the job on {where} asked for {asked_gpus} GPU(s) per node and sees {seen} ({how})",
                  "check the site's gres.conf / the container's GPU access (--nv, --container-image), and "
                  "slurm.gpus_per_node")
        else:
            d.add("GPUs", True, f"the job on {where} sees the {asked_gpus} GPU(s) it asked for ({how})")
    here = login_versions()
    for r in results:
        v, where = r["versions"], r.get("node") or r.get("host")
        problems = []
        if v.get("hpcgen") != here["hpcgen"]:
            problems.append(f"hpcgen {v.get('hpcgen')} there vs {here['hpcgen']} here")
        if v.get("vllm") is None:
            problems.append(f"vLLM does not import there ({v.get('vllm_error')})")
        elif here["vllm"] is not None and v["vllm"] != here["vllm"]:
            problems.append(f"vLLM {v['vllm']} there vs {here['vllm']} here")
        seen = (f"hpcgen {v.get('hpcgen')} ({v.get('hpcgen_file')}), vLLM {v.get('vllm')} "
                f"(import {v.get('vllm_import_s')}s) with {v.get('python')}")
        if problems:
            d.add("versions", False, f"on {where}: {'; '.join(problems)}",
                  "install the same hpcgen and vLLM in the job's environment (slurm.python, slurm.setup or the "
                  "container) as on the login node")
        else:
            note = "" if here["vllm"] else " (no vLLM installed on the login node: hpcgen compared only)"
            d.add("versions", True, f"the job imports {seen}{note}")
    for r in results:
        out = r.get("output", {})
        if out.get("path") is None:
            continue
        if out.get("ok"):
            d.add("output path", True, f"{out['path']} is writable from {r.get('node') or r.get('host')}")
        else:
            d.add("output path", False, f"{out['path']} is not writable from {r.get('node')}: {out.get('error')}",
                  "choose a data.output_path on a shared, writable filesystem")


def check_sacct_knows(d: Doctor, job_id: str, accounting_ok: bool) -> None:
    """Accounting records jobs: the test job appears in sacct (the controller sends records asynchronously)."""
    if not accounting_ok:
        d.add("accounting records jobs", None, "skipped: accounting is not working (see above)")
        return
    deadline = time.monotonic() + 30
    while (state := _sacct_state(job_id)) is None and time.monotonic() < deadline:
        time.sleep(1)
    if state is None:
        d.add("accounting records jobs", False, f"sacct does not know the test job {job_id} after 30s",
              "slurmctld is not sending job records to slurmdbd: ask the site to check AccountingStorage*")
    else:
        d.add("accounting records jobs", True, f"sacct knows the test job {job_id} ({state})")


def run(spec: JobSpec, *, run_root: Path, output_path: str | None, timeout: float,
        report: Callable[[Check], None]) -> list[Check]:
    """Every check, in order; returns them (the CLI turns failures into the exit code)."""
    output_dir = Path(output_path).parent if output_path else run_root
    d = Doctor(spec, run_root, output_dir, timeout, report)
    if output_path:
        try:
            check_writable(Path(output_path), "data.output_path")
            d.add("output path (login node)", True, f"{output_path} is writable here")
        except UserError as exc:
            d.add("output path (login node)", False, str(exc), "choose a writable data.output_path")
    if not check_scheduler(d):
        return d.checks
    try:
        part.slurm_config.cache_clear()
        config = part.slurm_config()
    except SchedulerError as exc:
        d.add("slurm config", False, str(exc), "scontrol show config must work from this node")
        return d.checks
    accounting_ok = check_accounting(d, config)
    if check_partition(d, config) is None:
        d.add("test job", None, "not queued: the request does not fit (see above)")
        return d.checks
    try:
        run_root.mkdir(parents=True, exist_ok=True)
        folder = Path(os.path.abspath(run_root)) / f".hpcgen-doctor-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        folder.mkdir()
    except OSError as exc:
        d.add("run directory", False, f"cannot create a folder in {run_root}: {exc}", "pick a writable --run-dir")
        return d.checks
    job_id, results = run_probe(d, folder)
    if results:
        judge_probe(d, results, spec.gpus_per_task_node)
    if job_id:
        check_sacct_knows(d, job_id, accounting_ok)
    if not d.failed():
        shutil.rmtree(folder, ignore_errors=True)
    else:
        d.add("kept", None, f"the test job's files are in {folder}")
    return d.checks


def doctor_spec(job_file: Path | None, overrides: list[str], *, partition: str | None,
                gpus: int | None) -> JobSpec:
    """The job's spec as ``submit`` would build it (presets, the site file, overrides; paths made absolute as
    the plan makes them, so container mounts hold), or without a job file a one-CPU stand-in that still takes
    the site file's partition, account, setup, python and container. ``--partition``/``--gpus`` override."""
    from hpcgen.login.staging import is_hub_id
    from hpcgen.spec.loader import expand_path, load_job
    from hpcgen.spec.site import load_site, site_path

    site_file, _ = site_path()
    stand_in = None if job_file else {"data": {"path": os.devnull}, "model": {"path": "-"},
                                      "slurm": {"cpus_per_task": 1}}
    spec = load_job(job_file, overrides, data=stand_in, site=load_site(site_file) if site_file else None)
    if job_file:
        from hpcgen.login.plan import absolute_data_paths

        spec = absolute_data_paths(spec)
        for attr in ("path", "tokenizer_path"):
            value = getattr(spec.model, attr)
            if value and not is_hub_id(value):
                setattr(spec.model, attr, str(expand_path(value)))
    elif gpus is None:  # one GPU where the partition has GPUs
        try:
            p = part.read_cluster().partition(partition or spec.slurm.partition)
            gpus = 1 if any(n.gpus for n in p.nodes) else 0
        except HpcgenError:
            gpus = 0
    if partition:
        spec.slurm.partition = partition
    if gpus is not None:
        spec.slurm.gpus_per_node = gpus
        spec.trainer.n_gpus_per_node = max(spec.trainer.n_gpus_per_node, gpus, 1)
    return spec
