"""slurm.container: the exact sbatch scripts for pyxis and Apptainer, single- and multi-node (golden files),
the automatic mounts, and the validation of everything that reaches the srun line. No SLURM needed."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from hpcgen.errors import ConfigError
from hpcgen.login import container, launch
from hpcgen.rundir.layout import RunLayout
from hpcgen.spec.loader import load_job

GOLDEN = Path(__file__).resolve().parent / "golden"
RUN = Path("/shared/runs/r1")


def spec(container_cfg: dict | None, *overrides: str, **sections):
    data = {
        "data": {"path": "/shared/data/prompts.parquet", "output_path": "/shared/out/gen.parquet", "n_samples": 2},
        "model": {"path": "/shared/models/m"},
        "trainer": {"n_gpus_per_node": 8},
        "slurm": {"partition": "gpu", "time": "01:00:00", **({"container": container_cfg} if container_cfg else {})},
        "env": {"HF_HOME": "/shared/hf"},
        **sections,
    }
    return load_job(None, list(overrides), data=data)


PYXIS = {"runtime": "pyxis", "image": "nvcr.io#nvidia/vllm:25.09-py3",
         "mounts": ["/shared/scratch", "/opt/site/lib:/site/lib:ro"], "options": ["--no-container-mount-home"]}
APPTAINER = {"runtime": "apptainer", "image": "/shared/images/vllm.sif", "mounts": ["/shared/scratch"]}
CASES = {
    "pyxis-1node": (PYXIS, []),
    "pyxis-2node": (PYXIS, ["trainer.nnodes=2", "rollout.tensor_model_parallel_size=16"]),
    "apptainer-1node": (APPTAINER, []),
    "apptainer-2node": (APPTAINER, ["trainer.nnodes=2", "rollout.tensor_model_parallel_size=16"]),
}


@pytest.fixture(autouse=True)
def _fixed_array_size(monkeypatch):
    monkeypatch.setattr(launch, "max_array_size", lambda: 1001)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_sbatch_scripts(case):
    """The dry run's exact text (container notes + sbatch script); HPCGEN_UPDATE_GOLDEN=1 rewrites the files."""
    cfg, overrides = CASES[case]
    text = launch.dry_run_text(RunLayout(RUN), spec(cfg, *overrides), n_tasks=4)
    golden = GOLDEN / f"{case}.sbatch"
    if os.environ.get("HPCGEN_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def _srun_line(text: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith("srun "))
    return shlex.split(line)


@pytest.mark.parametrize("case", sorted(CASES))
def test_srun_line_parses_and_mounts_what_the_task_touches(case):
    cfg, overrides = CASES[case]
    s = spec(cfg, *overrides)
    argv = _srun_line(launch.dry_run_text(RunLayout(RUN), s, n_tasks=4))
    if cfg["runtime"] == "pyxis":
        flags = dict(a.split("=", 1) for a in argv if a.startswith("--container-"))
        assert flags["--container-image"] == cfg["image"] and flags["--container-workdir"] == str(RUN)
        binds = flags["--container-mounts"]
        assert "--no-container-mount-home" in argv
        assert argv[-5:-1] == ["python3", "-u", "-m", "submitit.core._submit"]
    else:
        i = argv.index("apptainer")
        assert argv[i:i + 3] == ["apptainer", "exec", "--nv"]
        binds = argv[argv.index("--bind") + 1]
        assert argv[argv.index("--pwd") + 1] == str(RUN)
        assert argv[-6:-1] == [cfg["image"], "python3", "-u", "-m", "submitit.core._submit"]
    entries = binds.split(",")
    for needed in (f"{RUN}:{RUN}", "/shared/data/prompts.parquet:/shared/data/prompts.parquet:ro",
                   "/shared/models/m:/shared/models/m:ro", "/shared/out:/shared/out", "/shared/hf:/shared/hf",
                   "/shared/scratch:/shared/scratch"):
        assert needed in entries, (needed, entries)
    multi = s.trainer.nnodes > 1
    assert ("--kill-on-bad-exit=1" in argv) == multi  # one srun task per node: every node gets the same lines


def test_mounts_covered_by_a_user_mount_are_not_repeated():
    s = spec({"runtime": "apptainer", "image": "/i.sif", "mounts": ["/shared"]})
    texts = [m.text for m in container.mounts(s, RUN)]
    assert texts == ["/shared:/shared"]  # run dir, data, model, output, HF cache all live under /shared
    s = spec({"runtime": "apptainer", "image": "/i.sif", "mounts": ["/shared:/shared:ro"]})
    texts = [m.text for m in container.mounts(s, RUN)]
    # read-only parent: what the task writes gets its own read-write mount, after the parent
    assert texts == ["/shared:/shared:ro", "/shared/hf:/shared/hf", "/shared/out:/shared/out",
                     f"{RUN}:{RUN}"]


def test_hub_model_is_not_mounted_but_the_cache_is():
    s = spec({"runtime": "pyxis", "image": "img.sqsh"}, "model.path=org/model")
    texts = [m.text for m in container.mounts(s, RUN)]
    assert not any("org/model" in t for t in texts) and "/shared/hf:/shared/hf" in texts


def test_a_model_whose_files_link_elsewhere_gets_the_targets_mounted(tmp_path):
    """A Hugging Face cache snapshot: every file links to ../../blobs, which must be visible inside too."""
    repo = tmp_path / "hub" / "models--org--m"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for name in ("config.json", "model.safetensors"):
        (blobs / f"sha-{name}").write_text("x")
        (snap / name).symlink_to(Path("../../blobs") / f"sha-{name}")
    s = spec({"runtime": "apptainer", "image": "/i.sif"}, f"model.path={snap}")
    texts = [m.text for m in container.mounts(s, RUN)]
    assert f"{snap}:{snap}:ro" in texts and f"{blobs}:{blobs}:ro" in texts


def test_workdir_python_executable_and_nv():
    s = spec({"runtime": "apptainer", "image": "/i.sif", "workdir": "/shared/work", "python": "/opt/venv/bin/python",
              "executable": "singularity", "nv": False, "options": ["--rocm", "--cleanenv"]})
    params: dict = {}
    cmd = shlex.split(container.apply(params, s, RUN))
    assert cmd[:2] == ["singularity", "exec"] and "--nv" not in cmd
    assert cmd[cmd.index("--pwd") + 1] == "/shared/work"
    assert cmd[-4:] == ["--rocm", "--cleanenv", "/i.sif", "/opt/venv/bin/python"]
    assert params == {}  # apptainer changes the interpreter, not srun


def test_image_and_mount_paths_expand_on_the_login_node(monkeypatch):
    monkeypatch.setenv("SITE_IMAGES", "/shared/images")
    s = spec({"runtime": "apptainer", "image": "$SITE_IMAGES/vllm.sif", "mounts": ["$SITE_IMAGES"]})
    cmd = shlex.split(container.apply({}, s, RUN))
    assert "/shared/images/vllm.sif" in cmd and "/shared/images:/shared/images" in cmd[cmd.index("--bind") + 1]
    monkeypatch.setenv("SITE_IMAGES", "/shared/my images")
    with pytest.raises(ConfigError, match="cannot be mounted"):
        container.apply({}, s, RUN)


@pytest.mark.parametrize("key, value, pattern", [
    ("image", "img.sqsh\n#SBATCH --wrap=x", "image"),
    ("image", "img;reboot", "image"),
    ("image", "$(reboot)", "image"),
    ("image", "a b", "image"),
    ("mounts", ["/a,/b"], "mount"),
    ("mounts", ["/a:/b:/c:/d"], "mount"),
    ("mounts", ["/a:/b:rx"], "ro or rw"),
    ("mounts", ["/a b"], "mount"),
    ("mounts", ["/a;reboot"], "mount"),
    ("workdir", "/w`reboot`", "workdir"),
    ("python", "python3 -c evil", "command name"),
    ("executable", "apptainer;reboot", "command name"),
    ("options", ["--env=A=$(reboot)"], "option"),
    ("options", ["--bind=/etc:/x"], "written by hpcgen"),
    ("runtime", "docker", "runtime"),
])
def test_unsafe_container_values_are_refused(key, value, pattern):
    cfg = {"runtime": "apptainer", "image": "/i.sif", key: value}
    with pytest.raises(ConfigError, match=pattern) as exc:
        spec(cfg)
    assert "\n" not in str(exc.value) and "slurm.container" in str(exc.value)


def test_pyxis_own_flags_and_python_conflict():
    with pytest.raises(ConfigError, match="--container-mounts is written by hpcgen"):
        spec({"runtime": "pyxis", "image": "i", "options": ["--container-mounts=/x:/x"]})
    with pytest.raises(ConfigError, match="slurm.container.python"):
        spec({"runtime": "pyxis", "image": "i"}, "slurm.python=/usr/bin/python3")
    with pytest.raises(ConfigError, match=r"unknown key 'slurm.container.imag'; did you mean 'slurm.container.image'"):
        spec({"runtime": "pyxis", "imag": "i"})


def test_a_run_dir_that_cannot_be_mounted_is_named():
    s = spec({"runtime": "pyxis", "image": "i"})
    with pytest.raises(ConfigError, match=r"run directory /shared/runs/a,b cannot be mounted"):
        launch.dry_run_text(RunLayout(Path("/shared/runs/a,b")), s, 1)


def test_local_executor_runs_without_the_container(tmp_path):
    ex = launch.make_executor("local", RunLayout(tmp_path / "run"), spec(APPTAINER))
    assert type(ex).__name__ == "LocalExecutor"


def test_no_container_leaves_the_script_alone():
    text = launch.dry_run_text(RunLayout(RUN), spec(None), 1)
    assert "container" not in text and "apptainer" not in text
