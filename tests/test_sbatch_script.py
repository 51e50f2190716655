"""What reaches the sbatch script from paths: the run directory (refused with a newline, a control character
or '%'; quoted when it has spaces or quotes: golden script), and presets (search order; never one that
another user could have written). The real sbatch reading a quoted script: test_scheduler.py."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import hpcgen

from hpcgen.errors import ConfigError
from hpcgen.login import launch
from hpcgen.rundir.layout import RunLayout
from hpcgen.spec.loader import load_job

GOLDEN = Path(__file__).resolve().parent / "golden"
QUOTED_RUN = Path("/shared/runs/it's a \"run\" dir")


@pytest.fixture
def job(tmp_path: Path, fake_model: Path) -> Path:
    pq.write_table(pa.table({"prompt": ["a", "b", "c"]}), tmp_path / "d.parquet")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "d.parquet"), "n_samples": 1},
                                    "model": {"path": str(fake_model)}, "trainer": {"n_gpus_per_node": 1}}))
    return path


@pytest.mark.parametrize("run_dir", ["x\ntouch /tmp/PWNED-hpcgen #", "x\rcr", "tab\there", "bell\x07", "del\x7f",
                                     "pct%j"])
@pytest.mark.parametrize("dry", [True, False])
def test_run_dir_that_would_break_the_script_is_refused(job, tmp_path, run_dir, dry):
    target = tmp_path / run_dir
    res = hpcgen("submit", str(job), "--run-dir", str(target), "--executor", "local", *(["--dry-run"] if dry else []))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcgen: error: --run-dir ") and "contains" in lines[0], res.stderr
    assert res.stdout == "" and not target.exists() and not Path("/tmp/PWNED-hpcgen").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "job.yaml", "model"]


def quoted_spec():
    return load_job(None, [], data={"data": {"path": "/shared/d.parquet", "n_samples": 1}, "model": {"path": "/m"},
                                    "trainer": {"n_gpus_per_node": 1},
                                    "slurm": {"partition": "gpu", "python": "python3", "time": "01:00:00"}})


def test_golden_sbatch_script_for_a_run_dir_with_spaces_and_quotes():
    """HPCGEN_UPDATE_GOLDEN=1 rewrites the file."""
    text = launch.dry_run_text(RunLayout(QUOTED_RUN), quoted_spec(), n_tasks=3)
    golden = GOLDEN / "quoted-run-dir.sbatch"
    if os.environ.get("HPCGEN_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    # what bash (srun line) and sbatch (#SBATCH lines, shell-like quoting) read back is the path itself
    srun = shlex.split(next(x for x in text.splitlines() if x.startswith("srun ")))
    assert srun[-1] == f"{QUOTED_RUN}/logs/%j" and srun[3] == f"{QUOTED_RUN}/logs/%A_%a/%A_%a_%t_log.out"
    out = next(x for x in text.splitlines() if x.startswith("#SBATCH --output="))
    assert shlex.split(out.removeprefix("#SBATCH --output=")) == [f"{QUOTED_RUN}/logs/%A_%a/%A_%a_0_log.out"]


# --- presets ------------------------------------------------------------------------------------------


def preset_job(folder: Path, fake_model: Path, tmp_path: Path) -> Path:
    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "d.parquet")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump({"defaults": ["model/tiny"], "data": {"path": str(tmp_path / "d.parquet")},
                                    "model": {"path": str(fake_model)}}))
    return path


def write_preset(templates: Path, temperature: float) -> Path:
    (templates / "model").mkdir(parents=True, exist_ok=True)
    p = templates / "model" / "tiny.yaml"
    p.write_text(yaml.safe_dump({"rollout": {"temperature": temperature}}))
    return p


def test_preset_search_order(tmp_path, fake_model, monkeypatch):
    """HPCGEN_TEMPLATES, then <job folder>/templates, then <job folder>/../templates, then the bundled ones."""
    job = preset_job(tmp_path / "proj" / "jobs", fake_model, tmp_path)
    monkeypatch.delenv("HPCGEN_TEMPLATES", raising=False)
    bundled = load_job(job).rollout.temperature
    write_preset(tmp_path / "proj" / "templates", 0.3)
    assert load_job(job).rollout.temperature == 0.3
    write_preset(tmp_path / "proj" / "jobs" / "templates", 0.2)
    assert load_job(job).rollout.temperature == 0.2
    write_preset(tmp_path / "env", 0.1)
    monkeypatch.setenv("HPCGEN_TEMPLATES", str(tmp_path / "env"))
    assert load_job(job).rollout.temperature == 0.1
    assert bundled not in (0.1, 0.2, 0.3)


def test_preset_in_a_folder_anyone_can_write_is_refused(tmp_path, fake_model, monkeypatch):
    monkeypatch.delenv("HPCGEN_TEMPLATES", raising=False)
    shared = tmp_path / "shared"
    job = preset_job(shared, fake_model, tmp_path)
    write_preset(shared / "templates", 0.2)
    shared.chmod(0o777)  # world-writable, not sticky: anyone could have put templates/ there
    with pytest.raises(ConfigError, match=r"preset 'model/tiny': .*shared is writable by every user"):
        load_job(job)
    shared.chmod(0o777 | stat.S_ISVTX)  # sticky (like /tmp): what we own in it is ours
    assert load_job(job).rollout.temperature == 0.2


def test_preset_owned_by_another_user_is_refused(tmp_path, fake_model, monkeypatch):
    """As in /tmp: another user created <job folder>/templates/model/tiny.yaml."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")  # CI and the dev machine run as root
    monkeypatch.delenv("HPCGEN_TEMPLATES", raising=False)
    job = preset_job(tmp_path / "jobs", fake_model, tmp_path)
    planted = write_preset(tmp_path / "jobs" / "templates", 0.2)
    os.chown(planted.parent.parent, 65534, 65534)
    res = hpcgen("submit", str(job), "--dry-run")
    assert res.returncode == 2 and "belongs to another user (uid 65534)" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
