"""The site file: where it is found, what it may hold, the precedence presets < site < job < command line, and
the dry run naming where each value came from. No SLURM needed."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import REPO, hpcgen

from hpcgen.errors import ConfigError
from hpcgen.spec.loader import load_job_traced
from hpcgen.spec.site import default_path, load_site, site_path

SITE = {"slurm": {"partition": "batch", "account": "proj1", "qos": "normal", "time": "02:00:00",
                  "setup": ["module load cuda/12.4"],
                  "container": {"runtime": "pyxis", "image": "/images/vllm.sqsh"}},
        "env": {"HF_HOME": "/scratch/hf"}}


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def job(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    pq.write_table(pa.table({"prompt": ["a", "b", "c"]}), tmp_path / "d.parquet")
    return write(tmp_path / "job.yaml", {
        "defaults": ["model/tiny", "cluster/dev"],
        "data": {"path": str(tmp_path / "d.parquet"), "n_samples": 1},
        "model": {"path": str(model)},
        "slurm": {"time": "00:20:00"},
    })


def test_where_the_site_file_is_found(tmp_path, monkeypatch):
    monkeypatch.delenv("HPCGEN_SITE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_path() == tmp_path / "cfg" / "hpcgen" / "site.yaml"
    assert site_path()[0] is None and load_site() is None  # no default file: no site file
    (tmp_path / "cfg" / "hpcgen").mkdir(parents=True)
    write(default_path(), SITE)
    assert site_path() == (default_path(), "default location")
    assert load_site().data == SITE
    monkeypatch.setenv("HPCGEN_SITE", str(tmp_path / "other.yaml"))
    with pytest.raises(ConfigError, match=r"site file .*other.yaml does not exist"):
        load_site()  # named explicitly: missing is an error
    monkeypatch.setenv("HPCGEN_SITE", "none")
    assert site_path()[0] is None and load_site() is None
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".config" / "hpcgen" / "site.yaml"


def test_precedence_presets_site_job_command_line(tmp_path, job):
    site = load_site(write(tmp_path / "site.yaml", SITE))
    spec, sources = load_job_traced(job, ["slurm.qos=high", "env.OMP_NUM_THREADS=2"], site=site)
    s = spec.slurm
    assert s.partition == "batch"           # site over the cluster/dev preset's 'gpu'
    assert s.account == "proj1" and s.setup == ["module load cuda/12.4"]
    assert s.time == "00:20:00"             # job file over site
    assert s.qos == "high"                  # command line over site
    assert s.array_parallelism == 2         # preset, untouched by the site
    assert spec.env["HF_HOME"] == "/scratch/hf" and spec.env["TOKENIZERS_PARALLELISM"] == "false"  # key by key
    assert spec.env["OMP_NUM_THREADS"] == "2"  # a number on the command line is a string in the environment
    assert s.container is not None and s.container.runtime == "pyxis"
    where = {k: v[1] for k, v in sources.items()}
    assert where["slurm.partition"] == f"site file {tmp_path / 'site.yaml'}"
    assert where["slurm.time"] == f"job file {job}"
    assert where["slurm.qos"] == "command line"
    assert where["slurm.array_parallelism"].startswith("preset cluster/dev: ")
    assert where["slurm.container.image"].startswith("site file ")
    # a list is replaced whole by a later layer
    spec, sources = load_job_traced(job, ["slurm.setup=[source /opt/env.sh]"], site=site)
    assert spec.slurm.setup == ["source /opt/env.sh"] and sources["slurm.setup"][1] == "command line"
    # a job that sets a whole section replaces the site's leaves below it
    spec, sources = load_job_traced(job, ["slurm.container=null"], site=site)
    assert spec.slurm.container is None and sources["slurm.container"][1] == "command line"
    assert not [k for k in sources if k.startswith("slurm.container.")]


@pytest.mark.parametrize("content, pattern", [
    ({"slurm": {"partiton": "gpu"}}, r"site file .*site.yaml: unknown key 'slurm.partiton'; did you mean 'slurm.partition'"),
    ({"rollout": {"temperature": 0.5}}, r"site file .*site.yaml: key 'rollout' is not allowed in a site file"),
    ({"seed": 3}, r"site file .*: key 'seed' is not allowed"),
    ({"defaults": ["cluster/dev"]}, r"site file .*: unknown key 'defaults'"),
    ({"clusterr": {}}, r"site file .*: unknown key 'clusterr'"),
    ({"slurm": ["gpu"]}, r"site file .*: key 'slurm' must be a mapping"),
    ({"slurm": {"time": "forever"}}, r"site file .*: key 'slurm.time'.*not a SLURM time"),
    ({"slurm": {"partition": "gpu\n#SBATCH --wrap=x"}}, r"site file .*: key 'slurm.partition'"),
    ({"slurm": {"container": {"runtime": "pyxis", "image": "a;b"}}}, r"site file .*: key 'slurm.container.image'"),
    ({"env": {"BAD-NAME": "1"}}, r"site file .*: .*environment variable name 'BAD-NAME'"),
    ({"env": {"A": "x\ny"}}, r"site file .*: .*environment variable A must be one line"),
])
def test_bad_site_files_are_one_line_errors_naming_file_and_key(tmp_path, content, pattern):
    with pytest.raises(ConfigError, match=pattern) as exc:
        load_site(write(tmp_path / "site.yaml", content))
    assert "\n" not in str(exc.value)


def test_dry_run_names_the_source_of_each_value(tmp_path, job):
    site = write(tmp_path / "site.yaml", SITE)
    res = hpcgen("submit", str(job), "slurm.qos=high", "--dry-run", "--run-dir", str(tmp_path / "run"),
                 env={"HPCGEN_SITE": str(site)})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"# site file: {site} ($HPCGEN_SITE)" in out
    assert re.search(r'^# slurm\.partition = "batch" +\(site file ' + re.escape(str(site)) + r"\)$", out, re.M)
    assert re.search(r'^# slurm\.qos = "high" +\(command line\)$', out, re.M)
    assert re.search(r'^# slurm\.time = "00:20:00" +\(job file ' + re.escape(str(job)) + r"\)$", out, re.M)
    assert re.search(r"^# slurm\.cpus_per_task = 1 +\(preset cluster/dev: .*presets/cluster/dev\.yaml\)$", out, re.M)
    assert "#SBATCH --partition=batch" in out and "#SBATCH --account=proj1" in out and "#SBATCH --qos=high" in out
    assert "\nmodule load cuda/12.4\n" in out and "export HF_HOME=/scratch/hf" in out
    assert "--container-image=/images/vllm.sqsh" in out
    assert not (tmp_path / "run").exists()
    # without the site file the same job dry-runs with the preset's partition and no container
    res = hpcgen("submit", str(job), "--dry-run", env={"HPCGEN_SITE": "none"})
    assert res.returncode == 0 and "# site file: none (HPCGEN_SITE=none)" in res.stdout
    assert "#SBATCH --partition=gpu" in res.stdout and "container" not in res.stdout


def test_bad_site_file_fails_submit_with_one_line(tmp_path, job):
    site = write(tmp_path / "site.yaml", {"slurm": {"acount": "x"}})
    res = hpcgen("submit", str(job), "--dry-run", env={"HPCGEN_SITE": str(site)})
    assert res.returncode == 2
    assert res.stderr.strip() == (f"hpcgen: error: site file {site}: unknown key 'slurm.acount'; "
                                  "did you mean 'slurm.account'?")


def test_example_jobs_hold_no_site_values():
    """Partition, account, QOS, setup lines and containers come from the site file, not from jobs/ or the
    GPU preset (the dev cluster's preset keeps its partition so the demos run on the throwaway cluster)."""
    from hpcgen.spec.loader import load_job

    site_keys = ("partition", "account", "qos", "setup", "container")
    for path in sorted((REPO / "jobs").glob("*.yaml")) + [REPO / "hpcgen/presets/cluster/gpu-8x.yaml"]:
        slurm = (yaml.safe_load(path.read_text()) or {}).get("slurm", {})
        assert not [k for k in site_keys if k in slurm], path
    for path in sorted((REPO / "jobs").glob("*.yaml")):  # presets resolve; the demos keep the dev partition
        spec = load_job(path)
        assert spec.slurm.partition == ("gpu" if path.stem.startswith("demo") else None), path


def test_readme_site_file_example_is_valid(tmp_path):
    text = (REPO / "README.md").read_text()
    block = re.search(r"^### Site file\n.*?```yaml\n(.*?)```", text, re.S | re.M)
    assert block, "README has a '### Site file' section with a yaml example"
    site = load_site(write(tmp_path / "site.yaml", yaml.safe_load(block[1])))
    assert site is not None and site.data["slurm"]


def test_site_values_are_frozen_in_the_manifest(tmp_path, job):
    from hpcgen.login.plan import create_run_dir, make_plan
    from hpcgen.rundir.manifest import load_manifest, spec_from_manifest

    spec, _ = load_job_traced(job, [], site=load_site(write(tmp_path / "site.yaml", SITE)))
    run = create_run_dir(tmp_path / "run", make_plan(spec, job_file=str(job), overrides=[]).manifest)
    frozen = spec_from_manifest(load_manifest(run.root))  # what resume resubmits
    assert frozen.slurm.partition == "batch" and frozen.slurm.account == "proj1"
    assert frozen.slurm.container is not None and frozen.env["HF_HOME"] == "/scratch/hf"
