"""Installable without the checkout: build the wheel, install it into a fresh venv outside the repository, and
run ``--help``, ``--version`` and a dry run of a job that uses the bundled presets. No SLURM, no vLLM.

Offline and fast: the wheel is built without build isolation (setuptools from the dev environment) from a copy
of the sources (the build writes build/ and *.egg-info next to them), installed with ``--no-deps --no-index``,
and the login-node dependencies (pyarrow, pydantic, submitit, ...) come from this environment's site-packages
through a .pth file appended after the fresh venv's own (so hpcgen itself can only come from the wheel).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import REPO

VERSION = "0.0.1+wheeltest"  # stamped into the copy, so the version shown can only come from this wheel


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPCGEN_TEMPLATES")}
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**clean, **(env or {})})


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("hpcgen", "hpcgen_dev", "jobs"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    init = src / "hpcgen" / "__init__.py"
    text = init.read_text()
    assert '__version__ = "' in text
    init.write_text("\n".join(f'__version__ = "{VERSION}"' if line.startswith("__version__") else line
                              for line in text.splitlines()) + "\n")
    dist = base / "dist"
    res = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
              "-w", dist, src, cwd=base)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = next(dist.glob("hpcgen-*.whl"))
    venv = base / "venv"
    res = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=base)
    assert res.returncode == 0, res.stderr
    py = venv / "bin" / "python"
    res = run(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel,
              cwd=base)
    assert res.returncode == 0, res.stderr[-3000:]
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=base).stdout.strip())
    (site / "_login_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "elsewhere"  # outside the repository: no templates/ or jobs/ nearby
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "py": py, "site": site, "work": work}


def test_wheel_holds_presets_and_examples_but_no_dev_helpers(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert not [n for n in names if n.startswith("hpcgen_dev")]
    for preset in ("model/tiny", "model/deepseek-llm-7b-chat", "cluster/dev", "cluster/gpu-8x"):
        assert f"hpcgen/presets/{preset}.yaml" in names
    shipped = {Path(n).name for n in names if n.startswith("hpcgen/examples/")}
    assert shipped == {p.name for p in (REPO / "jobs").glob("*.yaml")} and "demo.yaml" in shipped


def test_installed_hpcgen_runs_from_the_wheel(installed):
    w, py = installed["work"], installed["py"]
    res = run(py, "-c", "import hpcgen, importlib.metadata as m; print(hpcgen.__file__); print(m.version('hpcgen'))",
              cwd=w)
    where, meta_version = res.stdout.split()
    assert Path(where).is_relative_to(installed["site"]) and meta_version == VERSION
    assert run(py, "-c", "import hpcgen_dev", cwd=w).returncode != 0
    res = run(installed["venv"] / "bin" / "hpcgen", "--help", cwd=w)
    assert res.returncode == 0 and "submit" in res.stdout
    res = run(installed["venv"] / "bin" / "hpcgen", "--version", cwd=w)
    assert res.returncode == 0 and res.stdout.strip() == f"hpcgen {VERSION}"


def test_installed_hpcgen_resolves_presets_in_a_dry_run(installed):
    w = installed["work"]
    model = w / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    pq.write_table(pa.table({"prompt": ["a", "b", "c", "d"]}), w / "prompts.parquet")
    (w / "job.yaml").write_text(yaml.safe_dump({
        "defaults": ["model/tiny", "cluster/dev"],
        "data": {"path": "prompts.parquet", "n_samples": 1},
        "model": {"path": "model"},
        "sharding": {"num_shards": 2},
    }))
    res = run(installed["venv"] / "bin" / "hpcgen", "submit", "job.yaml", "--dry-run", cwd=w,
              env={"HPCGEN_SITE": "none"})
    assert res.returncode == 0, res.stderr
    bundled = installed["site"] / "hpcgen" / "presets"
    assert f"(preset cluster/dev: {bundled / 'cluster' / 'dev.yaml'})" in res.stdout
    assert f"(preset model/tiny: {bundled / 'model' / 'tiny.yaml'})" in res.stdout
    assert "#SBATCH --partition=gpu" in res.stdout and "#SBATCH --array=0-1%2" in res.stdout
    assert not (w / "runs").exists()
