"""What the cluster offers, as SLURM reports it: MaxArraySize, each partition's limits and node shapes, and the
check of a job's request against them that names the key that does not fit (before sbatch's "Requested node
configuration is not available" does, without saying which key).

Two read-only calls per check (``scontrol show partition -o`` and ``scontrol show node -o``) and one
``scontrol show config`` per process. No vLLM, nothing written.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field

from hpcgen.errors import ConfigError, SchedulerError
from hpcgen.spec.schema import JobSpec, time_minutes

DEFAULT_MAX_ARRAY_SIZE = 1001
_KV = re.compile(r"(?:^|\s)([A-Za-z][\w/.:]*)=(.*?)(?=\s+[A-Za-z][\w/.:]*=|\s*$)")
_UNLIMITED = ("UNLIMITED", "INFINITE", "NONE", "N/A", "(null)", "")


def _run(argv: list[str], timeout: float = 30) -> str:
    """stdout of a SLURM client command; SchedulerError (one line) when it fails."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{' '.join(argv)} timed out after {timeout:.0f}s (is slurmctld up?)") from None
    except OSError as exc:
        raise SchedulerError(f"{argv[0]} cannot run: {exc}") from None
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise SchedulerError(f"{' '.join(argv)} failed: {lines[-1] if lines else f'exit {res.returncode}'}")
    return res.stdout


def have_slurm_clients() -> bool:
    return shutil.which("scontrol") is not None


def parse_kv_line(line: str) -> dict[str, str]:
    """``Key=value Key2=value with spaces ...`` (scontrol's one-line format) into a dict."""
    return {m[1]: m[2].strip() for m in _KV.finditer(line)}


@functools.lru_cache(maxsize=1)
def slurm_config() -> dict[str, str]:
    """``scontrol show config`` as a dict (once per process); {} when SLURM's commands are absent."""
    if not have_slurm_clients():
        return {}
    out = _run(["scontrol", "show", "config"])
    conf = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            conf[key.strip()] = value.strip()
    return conf


def max_array_size() -> int:
    """The cluster's MaxArraySize (default 1001 when it cannot be read)."""
    try:
        value = slurm_config().get("MaxArraySize", "")
    except SchedulerError:
        return DEFAULT_MAX_ARRAY_SIZE
    return int(value) if value.isdigit() else DEFAULT_MAX_ARRAY_SIZE


def gpu_count(gres: str) -> int:
    """GPUs in a node's Gres string: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:h100:8,shard:16``, ``(null)``."""
    total = 0
    for entry in re.split(r",(?![^(]*\))", gres or ""):
        fields = re.sub(r"\(.*?\)", "", entry).strip().split(":")
        if fields[0] == "gpu":
            count = fields[-1] if len(fields) > 1 else "1"
            total += int(count) if count.isdigit() else 1
    return total


def mem_mb(text: str | None) -> int | None:
    """SLURM memory (``8000``, ``8000M``, ``32G``, ``1T``; default unit MB) in MB; None if unparsable."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", str(text or ""), re.I)
    if not m:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m[2].upper()]
    return int(int(m[1]) * scale)


def _limit(value: str | None) -> int | None:
    value = (value or "").strip()
    return None if value.upper() in _UNLIMITED or not value.isdigit() else int(value)


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int
    state: str

    @property
    def usable(self) -> bool:
        bad = ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING", "FUTURE", "POWERED_DOWN", "INVAL")
        return not any(b in self.state.upper() for b in bad) and not self.state.endswith("*")


@dataclass
class Partition:
    name: str
    default: bool
    state: str
    max_time_min: int | None  # None: unlimited
    max_nodes: int | None
    max_cpus_per_node: int | None
    max_mem_per_node_mb: int | None
    max_mem_per_cpu_mb: int | None
    nodes: list[Node] = field(default_factory=list)

    def shapes(self) -> str:
        """'2 nodes with 4 CPUs, 8000 MB, 4 GPUs' (one clause per distinct shape)."""
        counts = Counter((n.cpus, n.mem_mb, n.gpus) for n in self.nodes)
        return "; ".join(f"{k} node{'s' if k > 1 else ''} with {c} CPUs, {m} MB, {g} GPUs"
                         for (c, m, g), k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def limits(self) -> str:
        def show(v: int | None, unit: str = "") -> str:
            return "unlimited" if v is None else f"{v}{unit}"

        return (f"MaxTime {show(self.max_time_min, ' min')}, MaxNodes {show(self.max_nodes)}, "
                f"state {self.state}")


@dataclass
class Cluster:
    partitions: dict[str, Partition]

    @property
    def default(self) -> str | None:
        return next((p.name for p in self.partitions.values() if p.default), None)

    def partition(self, name: str | None, key: str = "slurm.partition") -> Partition:
        names = ", ".join(self.partitions) or "none"
        if not name:
            if self.default is None:
                raise ConfigError(f"{key} is not set and the cluster has no default partition (partitions: {names})")
            return self.partitions[self.default]
        if name not in self.partitions:
            raise ConfigError(f"{key}={name} is not a partition of this cluster (partitions: {names})")
        return self.partitions[name]


def read_cluster() -> Cluster:
    """Partitions with their limits and node shapes: two ``scontrol`` calls."""
    parts: dict[str, Partition] = {}
    for line in _run(["scontrol", "show", "partition", "-o"]).splitlines():
        kv = parse_kv_line(line)
        if "PartitionName" not in kv:
            continue
        max_time = kv.get("MaxTime", "UNLIMITED")
        parts[kv["PartitionName"]] = Partition(
            name=kv["PartitionName"], default=kv.get("Default") == "YES", state=kv.get("State", "UP"),
            max_time_min=None if max_time.upper() in _UNLIMITED else time_minutes(max_time),
            max_nodes=_limit(kv.get("MaxNodes")), max_cpus_per_node=_limit(kv.get("MaxCPUsPerNode")),
            max_mem_per_node_mb=_limit(kv.get("MaxMemPerNode")), max_mem_per_cpu_mb=_limit(kv.get("MaxMemPerCPU")))
    for line in _run(["scontrol", "show", "node", "-o"]).splitlines():
        kv = parse_kv_line(line)
        if "NodeName" not in kv:
            continue
        cpus = kv.get("CPUTot") or kv.get("CPUEfctv") or "0"
        node = Node(kv["NodeName"], int(cpus) if cpus.isdigit() else 0, mem_mb(kv.get("RealMemory")) or 0,
                    gpu_count(kv.get("Gres", "")), kv.get("State", ""))
        for p in kv.get("Partitions", "").split(","):
            if p in parts:
                parts[p].nodes.append(node)
    return Cluster(parts)


# --- the job's request ----------------------------------------------------------------------------


def cpus_per_task(spec: JobSpec) -> int:
    """CPUs per node of one task (one task per node): ``cpus_per_task``, else ``cpus_per_gpu`` x GPUs."""
    s = spec.slurm
    return s.cpus_per_task or max(1, s.cpus_per_gpu * max(1, spec.gpus_per_task_node))


@dataclass
class Request:
    cpus: int
    cpus_key: str
    mem_mb: int | None  # None: not set (SLURM's default) or whole node ("0")
    mem_key: str
    gpus: int
    gpus_key: str
    nodes: int
    minutes: int


def request_of(spec: JobSpec) -> Request:
    s, gpus = spec.slurm, spec.gpus_per_task_node
    cpus = cpus_per_task(spec)
    cpus_key = (f"slurm.cpus_per_task={s.cpus_per_task}" if s.cpus_per_task else
                f"slurm.cpus_per_gpu={s.cpus_per_gpu} x {max(1, gpus)} GPU(s) = {cpus} CPUs")
    if s.gpus_per_node is not None:
        gpus_key = f"slurm.gpus_per_node={gpus}"
    elif spec.multi_node:
        gpus_key = f"trainer.n_gpus_per_node={gpus}"
    else:
        gpus_key = f"rollout.tensor_model_parallel_size x pipeline_model_parallel_size = {gpus} GPUs"
    mem = mem_mb(s.mem) if s.mem else None
    return Request(cpus, cpus_key, mem or None, f"slurm.mem={s.mem}", gpus, gpus_key, spec.trainer.nnodes,
                   time_minutes(s.time))


def _skipped(spec: JobSpec) -> set[str]:
    """Dimensions that ``slurm.additional`` sets itself: sbatch, not this check, judges those."""
    extra = set(spec.slurm.additional)
    skip = set()
    if extra & {"mem", "mem-per-cpu", "mem-per-gpu"}:
        skip.add("mem")
    if extra & {"gres", "gpus", "gpus-per-node", "gpus-per-task"}:
        skip.add("gpus")
    if extra & {"cpus-per-task", "cpus-per-gpu", "ntasks-per-node"}:
        skip.add("cpus")
    skip |= extra & {"nodes", "time"}
    return skip


def check_request(spec: JobSpec, cluster: Cluster) -> Partition:
    """Raise ConfigError naming the first key that does not fit the partition(s); return the partition used.

    ``slurm.partition`` may list several partitions (``a,b``): the job fits if it fits one of them.
    """
    names: list[str | None] = [p for p in (spec.slurm.partition or "").split(",") if p] or [None]
    errors: list[ConfigError] = []
    for name in names:
        part = cluster.partition(name)
        try:
            _fits(spec, part)
            return part
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0]


def _fits(spec: JobSpec, part: Partition) -> None:
    req, skip, where = request_of(spec), _skipped(spec), f"partition {part.name}"
    nodes = part.nodes
    if not nodes:
        raise ConfigError(f"slurm.partition={part.name} has no nodes")
    shapes = f"({part.shapes()})"
    most_cpus, most_mem, most_gpus = (max(getattr(n, a) for n in nodes) for a in ("cpus", "mem_mb", "gpus"))
    if "cpus" not in skip:
        if req.cpus > most_cpus:
            raise ConfigError(f"{req.cpus_key} does not fit {where}: its nodes have at most {most_cpus} CPUs {shapes}")
        if part.max_cpus_per_node is not None and req.cpus > part.max_cpus_per_node:
            raise ConfigError(f"{req.cpus_key} does not fit {where}: it allows at most {part.max_cpus_per_node} "
                              "CPUs per node (MaxCPUsPerNode)")
    if "gpus" not in skip and req.gpus > most_gpus:
        have = f"at most {most_gpus} GPUs" if most_gpus else "no GPUs"
        raise ConfigError(f"{req.gpus_key} does not fit {where}: its nodes have {have} {shapes}")
    if "mem" not in skip and req.mem_mb is not None:
        if req.mem_mb > most_mem:
            raise ConfigError(f"{req.mem_key} ({req.mem_mb} MB) does not fit {where}: its nodes have at most "
                              f"{most_mem} MB {shapes}")
        if part.max_mem_per_node_mb is not None and req.mem_mb > part.max_mem_per_node_mb:
            raise ConfigError(f"{req.mem_key} ({req.mem_mb} MB) does not fit {where}: it allows at most "
                              f"{part.max_mem_per_node_mb} MB per node (MaxMemPerNode)")
        if part.max_mem_per_cpu_mb is not None and req.mem_mb > part.max_mem_per_cpu_mb * req.cpus:
            raise ConfigError(f"{req.mem_key} ({req.mem_mb} MB) does not fit {where}: it allows at most "
                              f"{part.max_mem_per_cpu_mb} MB per CPU x {req.cpus} CPUs (MaxMemPerCPU)")
    if "nodes" not in skip:
        if part.max_nodes is not None and req.nodes > part.max_nodes:
            raise ConfigError(f"trainer.nnodes={req.nodes} does not fit {where}: it allows at most "
                              f"{part.max_nodes} nodes per job (MaxNodes)")
        fitting = [n for n in nodes if ("cpus" in skip or n.cpus >= req.cpus) and
                   ("gpus" in skip or n.gpus >= req.gpus) and
                   ("mem" in skip or req.mem_mb is None or n.mem_mb >= req.mem_mb)]
        if len(fitting) < req.nodes:
            asked = f"{req.cpus} CPUs, {req.gpus} GPUs" + (f", {req.mem_mb} MB" if req.mem_mb else "")
            if len(nodes) < req.nodes:
                raise ConfigError(f"trainer.nnodes={req.nodes} does not fit {where}: it has {len(nodes)} "
                                  f"node(s) {shapes}")
            raise ConfigError(f"trainer.nnodes={req.nodes} does not fit {where}: only {len(fitting)} of its "
                              f"nodes have {asked} together {shapes}; lower slurm.cpus_per_task/slurm.mem "
                              "or the GPUs per node")
    if "time" not in skip and part.max_time_min is not None and req.minutes > part.max_time_min:
        raise ConfigError(f"slurm.time={spec.slurm.time} ({req.minutes} min) exceeds {where}'s MaxTime "
                          f"({part.max_time_min} min)")


def check_before_queueing(spec: JobSpec, *, dry_run: bool = False) -> str | None:
    """``submit``'s pre-queue check: raises ConfigError naming the key that does not fit (a dry run gets it
    as a warning and still shows the script, which may be meant for another cluster). Returns a note for
    stderr when the check could not run or warned, None when it passed."""
    if not have_slurm_clients() or shutil.which("sbatch") is None:
        return "note: SLURM's commands (scontrol, sbatch) are not on PATH: the request was not checked " \
               "against the partition's nodes"
    try:
        cluster = read_cluster()
    except SchedulerError as exc:
        return f"note: the partition's limits could not be read ({exc}); the request was not checked"
    try:
        check_request(spec, cluster)
    except ConfigError as exc:
        if not dry_run:
            raise
        return f"warning: {exc} (submit would refuse it on this cluster)"
    return None
