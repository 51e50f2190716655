"""``hpcgen doctor``: every check passes on the throwaway cluster; broken one thing at a time, it names it.

Cluster scenarios (one short test job each, or none): all pass; accounting stopped (slurmdbd killed, restored
in a finally); a run directory the nodes cannot see (the doctor runs in a private mount namespace with a tmpfs
over the run root, so what it writes there exists only on the "login" side — the same as a run directory on a
login-node-local disk: the job cannot open its log there and fails); a missing GPU (more GPUs per node than the
nodes have: refused before any job, naming the key). A GPU that is allocated but not visible in the job cannot
be produced on placeholder gres honestly, so its judgement is tested on probe results in the fast tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need
from helpers import hpcgen, write_job

from hpcgen.login import doctor

slurm = pytest.mark.slurm


def _lines(out: str) -> dict[str, list[str]]:
    """check name -> the tags of its lines (PASS/FAIL/SKIP)."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        tag, _, rest = line.partition("  ")
        if tag in ("PASS", "FAIL", "SKIP"):
            found.setdefault(rest.split(":")[0], []).append(tag)
    return found


@pytest.fixture
def job(tmp_path: Path) -> Path:
    # doctor reads the job's slurm, trainer and output keys; the dataset and model are not opened
    return write_job(tmp_path / "job.yaml", data=tmp_path / "prompts.parquet", model=tmp_path / "model")


def _doctor(job: Path, tmp_path: Path, *args: str, env: dict[str, str], prefix: list[str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    argv = [*(prefix or []), sys.executable, "-m", "hpcgen", "doctor", str(job), "--run-dir",
            str(tmp_path / "runs"), "--timeout", "90", *args]
    if prefix is None:
        return hpcgen(*argv[3:], cwd=tmp_path, env=env, timeout=300)
    import os

    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


# --- fast: judging the probe's results ----------------------------------------------------------------


def _probe(visible: int = 1, smi: int | None = None, hpcgen_v: str | None = None, vllm: str | None = "x",
           err: str | None = None) -> dict:
    import hpcgen as pkg

    return {"node": "n1", "host": "h", "token": "t",
            "gpus": {"env": {"CUDA_VISIBLE_DEVICES": ",".join(map(str, range(visible))) or None},
                     "visible": visible, "nvidia_smi": smi},
            "versions": {"hpcgen": hpcgen_v or pkg.__version__, "vllm": vllm, "vllm_error": err},
            "output": {"path": "/out", "ok": True}}


def _judge(results: list[dict], asked: int, monkeypatch) -> dict[str, doctor.Check]:
    monkeypatch.setattr(doctor, "login_versions", lambda: {"hpcgen": __import__("hpcgen").__version__,
                                                           "vllm": "x"})
    d = doctor.Doctor(spec=None, run_root=Path("/r"), output_dir=Path("/out"))  # type: ignore[arg-type]
    doctor.judge_probe(d, results, asked)
    return {c.name: c for c in d.checks}


def test_gpus_seen_against_asked(monkeypatch):
    assert _judge([_probe(visible=2)], 2, monkeypatch)["GPUs"].ok is True
    c = _judge([_probe(visible=0)], 2, monkeypatch)["GPUs"]
    assert c.ok is False and "asked for 2 GPU(s) per node and sees 0" in c.detail and "gres.conf" in c.fix
    c = _judge([_probe(visible=4, smi=1)], 2, monkeypatch)["GPUs"]  # SLURM says 4, the driver shows 1
    assert c.ok is False and "sees 1" in c.detail
    assert _judge([_probe(visible=0)], 0, monkeypatch)["GPUs"].ok is None


def test_versions_compared_with_the_login_node(monkeypatch):
    assert _judge([_probe()], 1, monkeypatch)["versions"].ok is True
    c = _judge([_probe(hpcgen_v="0.0.1")], 1, monkeypatch)["versions"]
    assert c.ok is False and "hpcgen 0.0.1 there" in c.detail
    c = _judge([_probe(vllm="y")], 1, monkeypatch)["versions"]
    assert c.ok is False and "vLLM y there vs x here" in c.detail
    c = _judge([_probe(vllm=None, err="ImportError: libcuda.so.1")], 1, monkeypatch)["versions"]
    assert c.ok is False and "vLLM does not import there (ImportError: libcuda.so.1)" in c.detail


def test_login_versions_do_not_import_vllm():
    code = ("import sys; from hpcgen.login.doctor import login_versions; v = login_versions(); "
            "assert 'vllm' not in sys.modules; print(v)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "'hpcgen': " in res.stdout


def test_without_slurm_commands_doctor_says_so(tmp_path, job):
    res = hpcgen("doctor", str(job), "--run-dir", str(tmp_path / "runs"), cwd=tmp_path,
                 env={"PATH": str(Path(sys.executable).parent)})
    assert res.returncode == 7, res.stderr
    assert "FAIL  slurm commands: not on PATH: sbatch, srun, squeue, sacct" in res.stdout
    assert res.stderr.strip().splitlines()[-1] == "hpcgen: error: 1 check(s) failed: slurm commands"


def test_accounting_off_and_a_down_partition_are_named(monkeypatch, tmp_path):
    from hpcgen.login import partition as part

    d = doctor.Doctor(spec=doctor.doctor_spec(None, [], partition="gpu", gpus=1), run_root=tmp_path,
                      output_dir=tmp_path)
    assert doctor.check_accounting(d, {"AccountingStorageType": "accounting_storage/none"}) is False
    assert d.checks[-1].ok is False and "sacct knows no jobs" in d.checks[-1].detail
    node = part.Node("n1", 4, 8000, 4, "DOWN*")
    down = part.Cluster({"gpu": part.Partition("gpu", True, "DOWN", None, None, None, None, None, [node])})
    monkeypatch.setattr(part, "read_cluster", lambda: down)
    doctor.check_partition(d, {"MaxArraySize": "1001"})
    c = next(c for c in d.checks if c.name == "partition")
    assert c.ok is False and "state DOWN; 0 of 1 nodes usable" in c.detail


def test_the_test_job_uses_the_site_file_and_its_container(monkeypatch, tmp_path):
    """Without a job file the stand-in still takes the site file's partition, account and container; the
    probe's sbatch text is the job's own header with the probe as command (the folder mounted)."""
    import yaml

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"slurm": {"partition": "batch", "account": "proj1", "container": {
        "runtime": "pyxis", "image": "/images/vllm.sqsh"}}, "env": {"HF_HOME": "/scratch/hf"}}))
    monkeypatch.setenv("HPCGEN_SITE", str(site))
    spec = doctor.doctor_spec(None, [], partition=None, gpus=2)
    assert (spec.slurm.partition, spec.slurm.account, spec.slurm.gpus_per_node) == ("batch", "proj1", 2)
    folder = tmp_path / "runs" / ".hpcgen-doctor-x"
    text = doctor.probe_script(spec, folder, tmp_path / "runs")
    assert "#SBATCH --partition=batch" in text and "#SBATCH --account=proj1" in text
    assert "#SBATCH --gpus-per-node=2" in text and "#SBATCH --time=3" in text and "--requeue" not in text
    assert "--container-image=/images/vllm.sqsh" in text and f"{folder}:{folder}" in text
    assert text.rstrip().endswith(f"-u -m hpcgen.task.probe {folder} {tmp_path / 'runs'}")


# --- on the throwaway cluster -------------------------------------------------------------------------


@slurm
def test_every_check_passes_on_the_throwaway_cluster(cluster, tmp_path, job):
    res = _doctor(job, tmp_path, env=cluster.env)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = _lines(res.stdout)
    for name in ("slurm commands", "scheduler", "accounting", "MaxArraySize", "partition", "request", "test job",
                 "shared filesystem", "GPUs", "versions", "output path", "output path (login node)",
                 "accounting records jobs"):
        assert lines.get(name) == ["PASS"], (name, res.stdout)
    assert "sees the 1 GPU(s) it asked for (CUDA_VISIBLE_DEVICES=0" in res.stdout
    assert "no nvidia-smi on the node" in res.stdout  # placeholder gres: SLURM's variables only, and said so
    assert not list((tmp_path / "runs").glob(".hpcgen-doctor-*"))  # cleaned up after a pass


@slurm
def test_a_missing_gpu_is_named_before_any_job(cluster, tmp_path, job):
    res = _doctor(job, tmp_path, "slurm.gpus_per_node=5", env=cluster.env)
    assert res.returncode == 7
    assert ("FAIL  request: slurm.gpus_per_node=5 does not fit partition gpu: its nodes have at most 4 GPUs"
            in res.stdout), res.stdout
    assert "SKIP  test job: not queued" in res.stdout
    res = hpcgen("doctor", "--gpus", "5", "--run-dir", str(tmp_path / "runs"), cwd=tmp_path, env=cluster.env)
    assert res.returncode == 7 and "at most 4 GPUs" in res.stdout, res.stdout  # no job file: --gpus
    assert doctor.doctor_spec(None, [], partition=None, gpus=None).slurm.gpus_per_node == 1  # GPUs here: one


@slurm
def test_accounting_stopped_is_named(cluster, tmp_path, job):
    from hpcgen_dev import cluster as cl

    with cl.daemon_stopped("slurmdbd"):
        res = _doctor(job, tmp_path, env=cluster.env)
    assert res.returncode == 7, res.stdout + res.stderr
    lines = _lines(res.stdout)
    assert lines["accounting"] == ["FAIL"] and "slurmdbd" in res.stdout, res.stdout
    assert lines["accounting records jobs"] == ["SKIP"]
    assert lines["test job"] == ["PASS"] and lines["GPUs"] == ["PASS"]  # jobs still run without accounting
    assert res.stderr.strip().splitlines()[-1] == "hpcgen: error: 1 check(s) failed: accounting"
    assert subprocess.run(["sacct", "-n", "-X", "-S", "now-1hours"], capture_output=True,
                          env={**__import__("os").environ, **cluster.env}).returncode == 0  # restored


@slurm
def test_a_run_directory_the_nodes_cannot_see_is_named(cluster, tmp_path, job):
    need(shutil.which("unshare") is not None, "unshare (util-linux)")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    need(probe.returncode == 0, f"a private mount namespace (root): {probe.stderr.decode().strip()}")
    runs = tmp_path / "runs"
    runs.mkdir()
    # Inside: a tmpfs over the run root, so the doctor's files exist only on this ("login") side.
    ns = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
          'mount -t tmpfs hpcgen-login-only "$0" && exec "$@"', str(runs)]
    res = _doctor(job, tmp_path, env=cluster.env, prefix=ns)
    assert res.returncode == 7, res.stdout + res.stderr
    lines = _lines(res.stdout)
    assert lines["shared filesystem"] == ["FAIL"] and lines["test job"] == ["FAIL"], res.stdout
    assert f"the compute nodes do not see {runs}" in res.stdout
    assert "use a run directory on a shared filesystem" in res.stdout
    assert lines["accounting"] == ["PASS"] and lines["partition"] == ["PASS"]
    assert not list(runs.iterdir())  # nothing reached the nodes' side of the run root


@slurm
def test_a_job_environment_without_hpcgen_is_named(cluster, tmp_path, job):
    """The compute node's python is not the login node's (no hpcgen there): the job's own error line is shown."""
    need(Path("/usr/bin/python3").exists(), "a system python at /usr/bin/python3")
    res = _doctor(job, tmp_path, "slurm.python=/usr/bin/python3", "+slurm.setup=[unset PYTHONPATH]",
                  env=cluster.env)
    assert res.returncode == 7, res.stdout + res.stderr
    lines = _lines(res.stdout)
    assert lines["test job"] == ["FAIL"] and "No module named 'hpcgen'" in res.stdout, res.stdout
    assert "install hpcgen where the job runs" in res.stdout
    assert lines["shared filesystem"] == ["PASS"]  # its log reached the run directory
    kept = list((tmp_path / "runs").glob(".hpcgen-doctor-*"))
    assert len(kept) == 1 and f"the test job's files are in {kept[0]}" in res.stdout
