"""A throwaway SLURM cluster on this one machine, for development and tests.

Everything lives under one state dir: a munge key and ``munged`` with its own socket, a private MariaDB,
``slurmdbd``, ``slurmctld`` and two ``slurmd`` "nodes" (``n1``, ``n2``: 4 CPUs, 8000 MB, 4 fake GPUs each).
Ports are non-default (base ``$HPCGEN_CLUSTER_PORT_BASE``, default 16800). Clients only need ``SLURM_CONF``.

    python -m hpcgen_dev.cluster up|down|status|env
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template

from hpcgen.task import guard

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLUSTER, PARTITION, NODES = "hpcgen", "gpu", ("n1", "n2")
MARKER = "HPCGEN_CLUSTER_STATE"  # set in the env of every daemon we start: how we recognise ours
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = ("slurm-wlm", "slurmdbd", "munge", "mariadb-server", "bubblewrap")  # bwrap: the Apptainer stand-in
GOOD = {"idle", "mix", "alloc", "comp"}  # sinfo %t of a responding, usable node
DB_USER, DB_PASS, DB_NAME = "slurm", "hpcgen-dev", "slurm_acct_db"
_Proc = subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class ClusterInfo:
    state_dir: Path
    slurm_conf: Path
    env: dict[str, str]
    partition: str = PARTITION
    nodes: tuple[str, ...] = NODES


@dataclass(frozen=True)
class _Daemon:
    name: str
    exes: tuple[str, ...]  # accepted basenames of argv[0]
    argv: tuple[str, ...]
    pidfile: Path
    log: Path
    node: str | None = None


def whoami(x: object) -> tuple[object, str | None, str | None]:
    """Tiny importable job function for tests: (x, node, array task id)."""
    return x, os.environ.get("SLURMD_NODENAME"), os.environ.get("SLURM_ARRAY_TASK_ID")


def info(state_dir: Path | str | None = None) -> ClusterInfo:
    """Where the cluster lives and what clients need, without starting anything."""
    s = Path(state_dir or os.environ.get("HPCGEN_CLUSTER_DIR") or REPO / ".cluster").resolve()
    conf = s / "etc" / "slurm.conf"
    return ClusterInfo(state_dir=s, slurm_conf=conf, env={"SLURM_CONF": str(conf)})


def _ports() -> dict[str, int]:
    base = int(os.environ.get("HPCGEN_CLUSTER_PORT_BASE", "16800"))
    return {"ctld": base + 17, "dbd": base + 19, "n1": base + 21, "n2": base + 22, "mysql": base + 36}


def _which(*names: str) -> str | None:
    return next((p for n in names if (p := shutil.which(n, path=PATH))), None)


def _fail(what: str, *logs: Path) -> RuntimeError:
    parts = [what]
    for log in logs:
        try:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            tail = "(missing)"
        parts.append(f"--- tail of {log} ---\n{tail}")
    return RuntimeError("\n".join(parts))


def _env(s: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{PATH}:{os.environ.get('PATH', '')}", MARKER: str(s),
            "SLURM_CONF": str(s / "etc" / "slurm.conf")}


def _run(argv: list[str], s: Path, timeout: float = 60, check: bool = False) -> _Proc:
    """Run a client command against this cluster; a timeout becomes exit code 124."""
    try:
        proc = subprocess.run(argv, env=_env(s), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout}s")
    if check and proc.returncode != 0:
        err = proc.stderr.strip() or proc.stdout
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return proc


def _wait(ok: Callable[[], object], timeout: float, what: str | Callable[[], str], *logs: Path) -> None:
    end = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > end:
            text = what if isinstance(what, str) else what()
            raise _fail(f"timed out after {timeout:.0f}s waiting for {text}", *logs)
        time.sleep(0.5)


# ---------------------------------------------------------------- host and files


def _ensure_packages() -> None:
    bins = ["slurmctld", "slurmd", "slurmdbd", "munged", "sacctmgr", "mariadb-install-db", "bwrap"]
    if all(_which(b) for b in bins) and _which("mariadbd", "mysqld"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", *PACKAGES], env=env, check=True)


def _ensure_hosts(hosts: Path = Path("/etc/hosts")) -> None:
    """Make the node names resolve (to this machine)."""
    names = {t for line in hosts.read_text().splitlines() for t in line.split("#")[0].split()[1:]}
    if not set(NODES) <= names:
        with hosts.open("a") as fh:
            fh.write(f"127.0.0.1 {' '.join(NODES)}  # hpcgen dev cluster\n")


def _write_files(s: Path) -> bool:
    """Create the tree, munge key, fake GPUs and configs; True when a config file changed."""
    for d in ("etc", "munge", "mysql", "run", "log", "ctld", *(f"spool/{n}" for n in NODES)):
        (s / d).mkdir(parents=True, exist_ok=True)
    for n in NODES:
        (s / "gres" / n).mkdir(parents=True, exist_ok=True)
        for i in range(4):  # slurmd insists on character devices
            if not (dev := s / "gres" / n / f"gpu{i}").is_symlink():
                dev.unlink(missing_ok=True)
                dev.symlink_to("/dev/null")
    key = s / "munge" / "munge.key"
    if not key.exists():
        with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as fh:
            fh.write(os.urandom(1024))
    p = _ports()
    subs = {"state": str(s), "cluster": CLUSTER, "partition": PARTITION,
            "host": socket.gethostname().split(".")[0],
            "munge_socket": str(s / "munge" / "munge.socket"), "ctld_port": p["ctld"], "dbd_port": p["dbd"],
            "n1_port": p["n1"], "n2_port": p["n2"], "mysql_port": p["mysql"],
            "db_user": DB_USER, "db_pass": DB_PASS, "db_name": DB_NAME}
    changed = False
    for name in ("slurm.conf", "slurmdbd.conf", "gres.conf"):
        path, text = s / "etc" / name, Template((HERE / f"{name}.in").read_text()).substitute(subs)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed = True
    (s / "etc" / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a readable one
    return changed


def _daemons(s: Path) -> list[_Daemon]:
    p, conf, run, log, m = _ports(), str(s / "etc" / "slurm.conf"), s / "run", s / "log", s / "mysql"
    munge = s / "munge"
    mysqld = (
        "setsid", "-f", _which("mariadbd", "mysqld") or "mariadbd", "--no-defaults",
        f"--datadir={m / 'data'}", f"--socket={m / 'mysqld.sock'}", f"--port={p['mysql']}",
        "--bind-address=127.0.0.1", "--user=root",
        f"--pid-file={run / 'mysqld.pid'}", f"--log-error={log / 'mysqld.log'}", "--skip-name-resolve",
        "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900", "--innodb-use-native-aio=0")
    munged = ("munged", f"--socket={munge / 'munge.socket'}", f"--key-file={munge / 'munge.key'}",
              f"--pid-file={run / 'munged.pid'}", f"--log-file={log / 'munged.log'}",
              f"--seed-file={munge / 'munged.seed'}", "--num-threads=10")
    return [
        _Daemon("munged", ("munged",), munged, run / "munged.pid", log / "munged.log"),
        _Daemon("mysqld", ("mariadbd", "mysqld"), mysqld, run / "mysqld.pid", log / "mysqld.log"),
        _Daemon("slurmdbd", ("slurmdbd",), ("slurmdbd",), run / "slurmdbd.pid", log / "slurmdbd.log"),
        _Daemon("slurmctld", ("slurmctld",), ("slurmctld", "-f", conf), run / "slurmctld.pid",
                log / "slurmctld.log"),
    ] + [_Daemon(f"slurmd-{n}", ("slurmd",), ("slurmd", "-f", conf, "-N", n), run / f"slurmd-{n}.pid",
                 log / f"slurmd-{n}.log", n) for n in NODES]


# ---------------------------------------------------------------- processes


def _read_proc(pid: int) -> tuple[list[str], str] | None:
    """(argv, raw environ) of a live, non-zombie process, else None."""
    d = Path(f"/proc/{pid}")
    try:
        if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        argv = [a for a in (d / "cmdline").read_bytes().decode(errors="replace").split("\0") if a]
        return argv, (d / "environ").read_bytes().decode(errors="replace") + "\0"
    except (OSError, IndexError):
        return None


def _procs() -> Iterator[tuple[int, list[str], str]]:
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (found := _read_proc(int(d.name))):
            yield int(d.name), *found


def _is_ours(s: Path, environ: str) -> bool:
    return f"{MARKER}={s}\0" in environ


def _matches(d: _Daemon, argv: list[str]) -> bool:
    if not argv or os.path.basename(argv[0]) not in d.exes:
        return False
    return d.node is None or any(a == "-N" and b == d.node for a, b in zip(argv, argv[1:], strict=False))


def _alive(s: Path) -> dict[str, int]:
    """Daemon name -> pid, for the daemons of this cluster that are running."""
    found: dict[str, int] = {}
    daemons = _daemons(s)
    for pid, argv, environ in _procs():
        if _is_ours(s, environ):
            for d in daemons:
                if _matches(d, argv):
                    found.setdefault(d.name, pid)
    return found


def _kill(pids: set[int], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL what is still there after `timeout`."""
    guard.kill(lambda: pids & set(guard.procs()), timeout)


def _start(d: _Daemon, s: Path) -> None:
    """Start a daemon (they all fork into the background themselves) with our marker in its env."""
    out = s / "log" / f"{d.name}.out"
    with out.open("ab") as fh:
        rc = subprocess.run(list(d.argv), env=_env(s), stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, cwd=s,
                            timeout=120, check=False).returncode
    if rc != 0:
        raise _fail(f"{d.name} failed to start (exit {rc})", d.log, out)


# ---------------------------------------------------------------- bring-up


def _sql(s: Path, query: str) -> _Proc:
    client = _which("mariadb", "mysql") or "mysql"
    sock = s / "mysql" / "mysqld.sock"
    return _run([client, "--no-defaults", f"--socket={sock}", "-uroot", "-e", query], s)


def _node_states(s: Path) -> dict[str, str]:
    out = _run(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t"], s, timeout=20).stdout
    return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)


def _healthy(s: Path) -> bool:
    states = _node_states(s)
    return all(states.get(n) in GOOD for n in NODES)


def _start_db(s: Path, d: _Daemon) -> None:
    data = s / "mysql" / "data"
    if not (data / "mysql").is_dir():
        shutil.rmtree(data, ignore_errors=True)
        r = _run([_which("mariadb-install-db", "mysql_install_db") or "mariadb-install-db", "--no-defaults",
                  f"--datadir={data}", "--user=root", "--skip-test-db",
                  "--auth-root-authentication-method=socket"], s, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    _start(d, s)


def _bring_up(s: Path, changed: bool) -> None:
    by_name, alive = {d.name: d for d in _daemons(s)}, _alive(s)
    if changed and alive:  # new config: restart everything that runs with the old one
        _kill(set(alive.values()))
        alive = _alive(s)
    sock = s / "munge" / "munge.socket"
    if "munged" not in alive:
        sock.unlink(missing_ok=True)
        _start(by_name["munged"], s)
    _wait(sock.exists, 20, "munged", by_name["munged"].log)
    if "mysqld" not in alive:
        _start_db(s, by_name["mysqld"])
    _wait(lambda: _sql(s, "SELECT 1").returncode == 0, 120, "MariaDB", by_name["mysqld"].log)
    for h in ("127.0.0.1", "localhost"):
        _sql(s, f"CREATE USER IF NOT EXISTS '{DB_USER}'@'{h}' IDENTIFIED BY '{DB_PASS}'; "
                f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'{h}';")
    if "slurmdbd" not in alive:
        _start(by_name["slurmdbd"], s)
    clusters = ["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"]
    _wait(lambda: _run(clusters, s).returncode == 0, 120, "slurmdbd", by_name["slurmdbd"].log)
    if CLUSTER not in _run(clusters, s).stdout.split():  # also creates the root account and user
        _run(["sacctmgr", "-i", "add", "cluster", CLUSTER], s, check=True)
        if "slurmctld" in alive:  # it must register again
            _kill({alive.pop("slurmctld")})
    if "slurmctld" not in alive:
        _start(by_name["slurmctld"], s)
    ctld_log = by_name["slurmctld"].log
    _wait(lambda: "is UP" in _run(["scontrol", "ping"], s, timeout=20).stdout, 60, "slurmctld", ctld_log)
    for n in NODES:
        if f"slurmd-{n}" not in alive:
            _start(by_name[f"slurmd-{n}"], s)
    resume_at = time.monotonic() + 10

    def nodes_ok() -> bool:
        nonlocal resume_at
        states = _node_states(s)
        bad = [n for n in NODES if states.get(n, "").rstrip("*~#!%$@^-") in ("down", "drain", "drng", "fail")]
        if bad and time.monotonic() > resume_at:  # e.g. left DOWN by an earlier run: give it back
            _run(["scontrol", "update", f"NodeName={','.join(bad)}", "State=RESUME"], s)
            resume_at = time.monotonic() + 10
        return all(states.get(n) in GOOD for n in NODES)

    logs = [ctld_log] + [by_name[f"slurmd-{n}"].log for n in NODES]
    _wait(nodes_ok, 90, lambda: f"nodes to be idle (sinfo: {_node_states(s)})", *logs)


@contextmanager
def _locked(s: Path) -> Iterator[None]:
    s.mkdir(parents=True, exist_ok=True)
    with (s / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- public API


def up(state_dir: Path | str | None = None) -> ClusterInfo:
    """Bring the cluster up and wait for both nodes; returns quickly when it is already healthy."""
    ci = info(state_dir)
    _ensure_packages()
    _ensure_hosts()
    with _locked(ci.state_dir):
        changed = _write_files(ci.state_dir)
        if changed or len(_alive(ci.state_dir)) < len(_daemons(ci.state_dir)) or not _healthy(ci.state_dir):
            _bring_up(ci.state_dir, changed)
    return ci


def down(state_dir: Path | str | None = None) -> None:
    """Stop every daemon and job process of this cluster, then remove its state dir."""
    s = info(state_dir).state_dir
    if not s.exists():
        return
    with _locked(s):
        alive = _alive(s)
        squeue = ["squeue", "-h", "-o", "%A"]
        if "slurmctld" in alive and (jobs := _run(squeue, s, timeout=20).stdout.split()):
            _run(["scancel", *jobs], s, timeout=20)
            end = time.monotonic() + 15  # let slurmd end the job processes cleanly
            while _run([*squeue, "-t", "R,CG"], s, timeout=20).stdout.strip() and time.monotonic() < end:
                time.sleep(0.5)
        pids = set()
        for d in _daemons(s):  # pid files first ...
            try:
                pid = int(d.pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if (found := _read_proc(pid)) and _matches(d, found[0]) and _is_ours(s, found[1]):
                pids.add(pid)
        _kill(pids)
        # ... then whatever else is ours (strays, steps, job processes), sparing this process and its parents
        mine, pid, table = set(), os.getpid(), guard.procs()
        while pid > 1 and pid not in mine:
            mine.add(pid)
            pid = table.get(pid, (0, 0))[0]
        conf = f"SLURM_CONF={s / 'etc' / 'slurm.conf'}\0"
        _kill({p for p, _, env in _procs()
               if p not in mine and (_is_ours(s, env) or (conf in env and "\0SLURM_JOB_ID=" in env))})
        shutil.rmtree(s, ignore_errors=True)


@contextmanager
def daemon_stopped(name: str, state_dir: Path | str | None = None) -> Iterator[None]:
    """Stop one daemon of this cluster (e.g. ``slurmdbd``: accounting down) for the body of the ``with``;
    afterwards, whatever happened, bring the cluster back up and wait until it is healthy."""
    ci = info(state_dir)
    if name not in {d.name for d in _daemons(ci.state_dir)}:
        raise ValueError(f"unknown daemon {name!r}")
    try:
        with _locked(ci.state_dir):
            if (pid := _alive(ci.state_dir).get(name)) is not None:
                _kill({pid})
        yield
    finally:
        up(state_dir)


def status(state_dir: Path | str | None = None) -> str:
    """Human-readable: which daemons are alive, and sinfo."""
    ci = info(state_dir)
    if not ci.slurm_conf.exists():
        return f"no cluster at {ci.state_dir}"
    alive = _alive(ci.state_dir)
    lines = [f"state dir:  {ci.state_dir}", f"SLURM_CONF: {ci.slurm_conf}", f"ports:      {_ports()}"]
    lines += [f"  {d.name:<10} {f'up (pid {alive[d.name]})' if d.name in alive else 'DOWN'}"
              for d in _daemons(ci.state_dir)]
    if "slurmctld" in alive:
        r = _run(["sinfo", "-N", "-o", "%N %P %t %c %m %G"], ci.state_dir, timeout=20)
        lines += ["", r.stdout.rstrip() or r.stderr.rstrip()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcgen_dev.cluster", description="Throwaway SLURM cluster.")
    ap.add_argument("command", choices=["up", "down", "status", "env"])
    ap.add_argument("--dir", type=Path, help="state dir (default: $HPCGEN_CLUSTER_DIR or <repo>/.cluster)")
    a = ap.parse_args(argv)
    if a.command == "up":
        t0 = time.monotonic()
        ci = up(a.dir)
        print(f"cluster up in {time.monotonic() - t0:.1f}s; config: {ci.slurm_conf}\n"
              f'use it with: eval "$({sys.executable} -m hpcgen_dev.cluster env)"')
    elif a.command == "down":
        down(a.dir)
    elif a.command == "status":
        print(status(a.dir))
    else:
        print("\n".join(f"export {k}={v}" for k, v in info(a.dir).env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
