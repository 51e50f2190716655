"""rollout.batch_invariant: how it is set (the task's environment, shown by the dry run) and the CPU build's
refusal. The cluster run is in test_site_cluster.py. No SLURM, no vLLM here."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcgen.errors import ConfigError
from hpcgen.login import launch
from hpcgen.rundir.layout import RunLayout
from hpcgen.spec.loader import load_job
from hpcgen.task.engine import cpu_build_adjustments

BASE = {"data": {"path": "/d.parquet"}, "model": {"path": "/m"}, "env": {"A": "1"}}


def test_task_env_and_generation_settings():
    off = load_job(None, [], data=BASE)
    on = load_job(None, ["rollout.batch_invariant=true"], data=BASE)
    assert off.task_env() == {"A": "1"} and on.task_env() == {"A": "1", "VLLM_BATCH_INVARIANT": "1"}
    assert on.env == {"A": "1"}  # the job's own env is left as written
    assert "batch_invariant" not in off.generation_settings()  # older manifests, without the key, still match
    assert on.generation_settings()["batch_invariant"] is True
    with pytest.raises(ConfigError, match=r"env.VLLM_BATCH_INVARIANT='0' contradicts rollout.batch_invariant"):
        load_job(None, ["rollout.batch_invariant=true", "env.VLLM_BATCH_INVARIANT=0"], data=BASE)


def test_dry_run_says_how_it_is_set(monkeypatch):
    monkeypatch.setattr(launch, "max_array_size", lambda: 1001)
    on = launch.dry_run_text(RunLayout(Path("/runs/r")), load_job(None, ["rollout.batch_invariant=true"], data=BASE), 2)
    lines = on.splitlines()
    assert "export VLLM_BATCH_INVARIANT=1" in lines
    assert lines.index("export VLLM_BATCH_INVARIANT=1") < next(i for i, x in enumerate(lines) if x.startswith("srun "))
    assert any(x.startswith("# rollout.batch_invariant: vLLM's batch-invariant mode, set by "
                            "'export VLLM_BATCH_INVARIANT=1'") for x in lines)
    off = launch.dry_run_text(RunLayout(Path("/runs/r")), load_job(None, [], data=BASE), 2)
    assert "VLLM_BATCH_INVARIANT" not in off


def test_cpu_build_refuses_batch_invariant_mode(monkeypatch):
    kwargs = {"max_model_len": 64, "max_num_batched_tokens": 32}
    monkeypatch.delenv("VLLM_BATCH_INVARIANT", raising=False)
    assert cpu_build_adjustments(kwargs)["enable_chunked_prefill"] is False
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "0")
    cpu_build_adjustments(kwargs)
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    with pytest.raises(RuntimeError, match="rollout.batch_invariant: .* does not run on the CPU build"):
        cpu_build_adjustments(kwargs)
