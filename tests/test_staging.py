"""Model staging: a hub id is pinned to a commit and downloaded once on the login node; tasks run offline.

The hub is a stand-in on 127.0.0.1 (``hpcgen_dev.hub_standin``) serving model folders through the endpoints
``huggingface_hub`` uses, reached with ``HF_ENDPOINT``: the real ``snapshot_download`` talks to it. The cluster
test closes the stand-in right after ``submit``: the tasks could not reach a hub even if they tried.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import hpcgen, write_job

from hpcgen.errors import ModelError
from hpcgen.login import staging
from hpcgen.login.plan import make_plan
from hpcgen.spec.loader import load_job
from hpcgen_dev.hub_standin import HubStandIn

REPO_ID = "hpcgen-test/tiny"


@pytest.fixture
def hub(fake_model, monkeypatch):
    with HubStandIn({REPO_ID: fake_model}) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield h


def _downloads(hub: HubStandIn) -> list[str]:
    return [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]


def test_hub_cache_is_the_one_the_tasks_see(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "env-home"))
    assert staging.hub_cache({}) == tmp_path / "env-home" / "hub"
    assert staging.hub_cache({"HF_HOME": str(tmp_path / "job")}) == tmp_path / "job" / "hub"
    assert staging.hub_cache({"HF_HUB_CACHE": str(tmp_path / "c"), "HF_HOME": "x"}) == tmp_path / "c"
    monkeypatch.delenv("HF_HOME")
    assert staging.hub_cache({}) == Path("~/.cache/huggingface/hub").expanduser()


def test_is_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert staging.is_hub_id("Qwen/Qwen2.5-7B-Instruct")
    assert not staging.is_hub_id("./org/name") and not staging.is_hub_id("/abs/path")
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not staging.is_hub_id("org/name")  # a local directory of that name wins


def test_pinned_downloaded_once_then_found(hub, tmp_path, capfd):
    cache = tmp_path / "hf" / "hub"
    first = staging.stage(REPO_ID, "main", cache)
    assert "Fetching 2 files" in capfd.readouterr().err  # huggingface_hub's progress bar, on stderr
    sha = hub.repos[REPO_ID].sha
    assert first.revision == sha and first.downloaded_bytes > 0
    assert Path(first.snapshot) == cache / "models--hpcgen-test--tiny" / "snapshots" / sha
    assert (Path(first.snapshot) / "config.json").read_text() == "{}"
    n = len(_downloads(hub))
    again = staging.stage(REPO_ID, "main", cache)
    assert again.revision == sha and again.downloaded_bytes == 0 and len(_downloads(hub)) == n  # no file fetched
    assert "already in the cache" in again.describe()
    hub.close()  # hub gone (a login node without internet): the cached revision of main, said so
    offline = staging.stage(REPO_ID, "main", cache)
    assert offline.revision == sha and "could not be reached" in offline.note


def test_plan_records_the_revision_and_tasks_run_offline(hub, tmp_path, small_dataset):
    hf_home = tmp_path / "hf"
    spec = load_job(None, [], data={"data": {"path": str(small_dataset)}, "model": {"path": REPO_ID},
                                    "env": {"HF_HOME": str(hf_home)}})
    plan = make_plan(spec, job_file=None, overrides=[])
    sha = hub.repos[REPO_ID].sha
    src = plan.manifest["model_source"]["model"]
    assert (src["hub_id"], src["requested"], src["revision"]) == (REPO_ID, "main", sha)
    assert plan.spec.model.path == src["snapshot"] == str(hf_home / "hub" / "models--hpcgen-test--tiny" /
                                                          "snapshots" / sha)
    assert plan.manifest["job"]["model"]["path"] == src["snapshot"]  # what the tasks load
    env = plan.manifest["job"]["env"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HUB_CACHE"] == str(hf_home / "hub")
    assert any(f"pinned to revision {sha}" in n for n in plan.notes)


def test_a_hub_tokenizer_is_staged_too(hub, tmp_path, small_dataset, fake_model):
    spec = load_job(None, [], data={"data": {"path": str(small_dataset)},
                                    "model": {"path": str(fake_model), "tokenizer_path": REPO_ID},
                                    "env": {"HF_HOME": str(tmp_path / "hf")}})
    plan = make_plan(spec, job_file=None, overrides=[])
    src = plan.manifest["model_source"]
    assert list(src) == ["tokenizer"] and src["tokenizer"]["revision"] == hub.repos[REPO_ID].sha
    assert plan.spec.model.path == str(fake_model) and plan.spec.model.tokenizer_path == src["tokenizer"]["snapshot"]


def test_dry_run_downloads_nothing(hub, tmp_path, small_dataset):
    spec = load_job(None, [], data={"data": {"path": str(small_dataset)}, "model": {"path": REPO_ID},
                                    "env": {"HF_HOME": str(tmp_path / "hf")}})
    plan = make_plan(spec, job_file=None, overrides=[], download=False)
    assert plan.spec.model.path == REPO_ID and "model_source" not in plan.manifest
    assert any("submit will pin its revision and download it" in n for n in plan.notes)
    job = write_job(tmp_path / "job.yaml", data=small_dataset, model=Path(REPO_ID))
    res = hpcgen("submit", str(job), "--dry-run", env={"HF_HOME": str(tmp_path / "hf")})  # HF_ENDPOINT: hub
    assert res.returncode == 0 and "#SBATCH" in res.stdout and "submit will pin its revision" in res.stderr
    assert hub.requests == []


def test_hub_errors_name_the_key(hub, tmp_path):
    cache = tmp_path / "hub"
    with pytest.raises(ModelError, match=r"^model.path hpcgen-test/nope: no such model on the hub"):
        staging.stage("hpcgen-test/nope", "main", cache)
    with pytest.raises(ModelError, match=r"^model.revision v9 is not a branch, tag or commit of hpcgen-test/tiny"):
        staging.stage(REPO_ID, "v9", cache)
    hub.close()
    with pytest.raises(ModelError, match=r"cannot be reached from this node .* has no snapshot of it"):
        staging.stage(REPO_ID, "main", cache)


def test_offline_login_node_uses_the_cache_only(hub, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    staging.stage(REPO_ID, "main", cache)
    n = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = staging.stage(REPO_ID, "main", cache)
    assert found.revision == hub.repos[REPO_ID].sha and len(hub.requests) == n
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        staging.stage(REPO_ID, "main", tmp_path / "empty")
    assert staging.stage(REPO_ID, "main", tmp_path / "empty", download=False) is None  # a dry run notes it


def test_cli_refuses_an_unknown_hub_model_in_one_line(hub, tmp_path, small_dataset):
    job = write_job(tmp_path / "job.yaml", data=small_dataset, model=Path("x"))
    res = hpcgen("submit", str(job), "model.path=hpcgen-test/nope", "--executor", "local",
                 "--run-dir", str(tmp_path / "run"), env={"HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("hpcgen: error: model.path hpcgen-test/nope: no such")
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()
    res = hpcgen("submit", str(job), "model.revision=main", "--dry-run", env={"HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2 and "model.revision=main applies to hub ids only" in res.stderr


# --- on the throwaway cluster, real vLLM --------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.vllm
def test_a_hub_id_job_runs_offline_on_the_cluster(cluster, tiny_model, tmp_path):
    """Acceptance: the tiny model named by a hub id runs on the cluster with the tasks offline (the stand-in
    hub is closed before any task starts, HF_HUB_OFFLINE=1 is exported in the sbatch script) and the manifest
    records the pinned revision."""
    from hpcgen.login import ops
    from hpcgen_dev.datasets import make_dataset

    data = make_dataset(tmp_path / "p.parquet", 6)
    job = write_job(tmp_path / "job.yaml", data=data, model=Path(REPO_ID), sharding={"num_shards": 1},
                    rollout={"temperature": 1.0, "response_length": 8}, env={"HF_HOME": str(tmp_path / "hf")})
    run_dir = tmp_path / "run"
    with HubStandIn({REPO_ID: tiny_model}) as hub:
        res = hpcgen("submit", str(job), "data.n_samples=1", "--run-dir", str(run_dir),
                     env={**cluster.env, "HF_ENDPOINT": hub.url})
        sha = hub.repos[REPO_ID].sha
    assert res.returncode == 0, res.stderr
    assert f"pinned to revision {sha}, downloaded" in res.stderr
    served = list(hub.requests)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["model_source"]["model"]["revision"] == sha
    snapshot = manifest["model_source"]["model"]["snapshot"]
    assert manifest["job"]["model"]["path"] == snapshot and Path(snapshot).name == sha
    os.environ.update(cluster.env)
    state = ops.wait(run_dir, poll_seconds=2, timeout=600)
    assert state.counts == {"done": 1}, state.counts
    scripts = list((run_dir / "logs").rglob("*_submission.sh"))
    assert scripts and all("export HF_HUB_OFFLINE=1" in s.read_text() for s in scripts)
    assert hub.requests == served  # nothing reached the hub after submit
    merged = hpcgen("merge", str(run_dir))
    assert merged.returncode == 0, merged.stderr
