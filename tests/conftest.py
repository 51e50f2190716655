"""Shared fixtures: one throwaway SLURM cluster and one tiny model for the whole test run.

In CI (``CI=true``) a missing SLURM or vLLM fails the test; elsewhere it skips.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("HPCGEN_TEST_CACHE", REPO / ".cache"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The machine's own site file (~/.config/hpcgen/site.yaml) must not change what tests submit: tests that want
# one name it through HPCGEN_SITE themselves.
os.environ["HPCGEN_SITE"] = "none"


def need(ok: bool, what: str) -> None:
    """Fail in CI, skip elsewhere, when a real part is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but missing")
    pytest.skip(f"{what} missing")


@pytest.fixture(scope="session")
def cluster():
    """The throwaway SLURM cluster (brought up once, idempotently); its env is exported to this process."""
    from hpcgen_dev import cluster as cl

    try:
        info = cl.up()
    except Exception as exc:  # noqa: BLE001 - reported as skip/fail below
        need(False, f"throwaway SLURM cluster ({exc})")
        raise
    os.environ.update(info.env)
    return info


@pytest.fixture(autouse=True)
def _cluster_whole(request):
    """Before each test on the cluster: both nodes up (a test that failed mid-fault must not take the next ones
    down with it); cl.up() returns in well under a second when the cluster is healthy."""
    if "cluster" in request.fixturenames:
        from hpcgen_dev import cluster as cl

        cl.up()
    yield


@pytest.fixture(scope="session")
def vllm_ok() -> None:
    need(importlib.util.find_spec("vllm") is not None, "vLLM")


@pytest.fixture(scope="session")
def tiny_model(vllm_ok) -> Path:
    """Directory of the tiny HF causal LM, built once per cache."""
    from hpcgen_dev.tiny_model import build_tiny_model

    return build_tiny_model(CACHE / "tiny-model")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """100 verl-schema rows with system prompts, multi-turn chats, non-ASCII text and nested extra columns."""
    from hpcgen_dev.datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "prompts.parquet", 100, variety=True, row_group_size=16)


@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    """A model directory that passes the login-node checks (config + tokenizer), for stand-in engines."""
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "tokenizer.json").write_text("{}")
    return m




@pytest.fixture(scope="session")
def fault_data(tmp_path_factory) -> Path:
    """96 mixed rows shared by the fault and stealing tests on the cluster."""
    from faultkit import make_fault_data

    return make_fault_data(tmp_path_factory)


@pytest.fixture(scope="session")
def reference(cluster, tiny_model, fault_data, tmp_path_factory) -> list[list[str]]:
    """The uninterrupted reference run's responses for ``fault_data`` (3 shards, one local task)."""
    from faultkit import make_reference

    return make_reference(tiny_model, fault_data, tmp_path_factory)
