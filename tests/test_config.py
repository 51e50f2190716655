"""Job spec: verl keys, presets, overrides, validation with one-line messages, sbatch injection guards."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcgen.errors import ConfigError
from hpcgen.spec.loader import load_job, parse_overrides
from hpcgen.spec.schema import time_minutes

BASE = {"data": {"path": "d.parquet"}, "model": {"path": "m"}}


def job(**kw):
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for k, v in kw.items():
        data.setdefault(k, {}).update(v) if isinstance(v, dict) else data.__setitem__(k, v)
    return data


def test_verl_defaults_and_overrides():
    spec = load_job(None, ["data.n_samples=8", "rollout.temperature=0.6", "+model.trust_remote_code=True"],
                    data=job())
    assert spec.data.n_samples == 8
    assert spec.rollout.temperature == 0.6
    assert spec.model.trust_remote_code is True
    assert spec.rollout.prompt_length == 1536 and spec.rollout.response_length == 512  # verl's defaults


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'rollout.temprature'; did you mean 'rollout.temperature'"):
        load_job(None, ["rollout.temprature=0.5"], data=job())
    with pytest.raises(ConfigError, match=r"unknown key 'sharding.num_shard'.*sharding.num_shards"):
        load_job(None, [], data=job(sharding={"num_shard": 3}))


@pytest.mark.parametrize("override, pattern", [
    ("data.n_samples=0", r"data.n_samples.*greater than or equal to 1"),
    ("rollout.temperature=abc", r"rollout.temperature"),
    ("rollout.top_p=1.5", r"rollout.top_p"),
    ("rollout.tensor_model_parallel_size=16", r"= 16 exceeds trainer.nnodes x trainer.n_gpus_per_node = 8"),
    ("rollout.temperature=0", r"greedy decoding.*n_samples=1"),
    ("slurm.time=forever", r"slurm.time.*not a SLURM time"),
])
def test_bad_values_are_one_line_errors(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as exc:
        load_job(None, [override], data=job())
    assert "\n" not in str(exc.value)


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing required key 'model'"):
        load_job(None, [], data={"data": {"path": "x"}})


@pytest.mark.parametrize("override", [
    "slurm.partition='gpu\n#SBATCH --wrap=evil'",
    "slurm.partition='gpu;rm -rf /'",
    "slurm.account='$(reboot)'",
    "slurm.job_name='a b'",
])
def test_sbatch_injection_is_rejected(override):
    with pytest.raises(ConfigError):
        load_job(None, [override], data=job())


def test_setup_and_additional_and_env_are_guarded():
    with pytest.raises(ConfigError, match="setup line"):
        load_job(None, [], data=job(slurm={"setup": ["module load x\n#SBATCH --mem=1"]}))
    with pytest.raises(ConfigError, match="setup line"):
        load_job(None, [], data=job(slurm={"setup": ["#SBATCH --mem=1"]}))
    with pytest.raises(ConfigError, match="sbatch option name"):
        load_job(None, [], data=job(slurm={"additional": {"mem --wrap": "x"}}))
    with pytest.raises(ConfigError, match="not allowed"):
        load_job(None, [], data=job(slurm={"additional": {"comment": "a\nb"}}))
    with pytest.raises(ConfigError, match="environment variable name"):
        load_job(None, [], data=job(env={"BAD-NAME": "1"}))
    ok = load_job(None, [], data=job(slurm={"setup": ["module load cuda/12.4"], "additional": {"mail-type": "END"}}))
    assert ok.slurm.setup == ["module load cuda/12.4"]


def test_presets_and_job_file(tmp_path: Path):
    (tmp_path / "templates" / "model").mkdir(parents=True)
    (tmp_path / "templates" / "model" / "m.yaml").write_text("model: {path: /models/x}\nrollout: {dtype: float16}\n")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "j.yaml").write_text("defaults: [model/m]\ndata: {path: d.parquet}\nrollout: {temperature: 0.5}\n")
    spec = load_job(jobs / "j.yaml", ["rollout.dtype=bfloat16"])
    assert spec.model.path == "/models/x"
    assert spec.rollout.temperature == 0.5 and spec.rollout.dtype == "bfloat16"
    (jobs / "k.yaml").write_text("defaults: [model/nope]\ndata: {path: d}\n")
    with pytest.raises(ConfigError, match=r"preset 'model/nope' not found \(known model presets: .*\bm\b"):
        load_job(jobs / "k.yaml")


def test_yaml_errors_name_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  path: x\n  n_samples: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: YAML syntax error"):
        load_job(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_job(tmp_path / "list.yaml")
    # YAML is loaded safely: a python tag is an error, never executed
    (tmp_path / "evil.yaml").write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_job(tmp_path / "evil.yaml")


def test_override_syntax():
    assert parse_overrides(["a.b=1", "a.c=x y", "d=[1,2]"]) == {"a": {"b": 1, "c": "x y"}, "d": [1, 2]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_time_minutes():
    assert time_minutes("30") == 30
    assert time_minutes("04:00:00") == 240
    assert time_minutes("1-00:00:00") == 1440
    assert time_minutes("00:00:30") == 1
    with pytest.raises(ValueError):
        time_minutes("1h")


def test_multi_node_gpu_request():
    spec = load_job(None, ["trainer.nnodes=2", "rollout.tensor_model_parallel_size=16"], data=job())
    assert spec.multi_node and spec.gpus_per_task_node == 8
    with pytest.raises(ConfigError, match="exceeds"):
        load_job(None, ["trainer.nnodes=2", "rollout.tensor_model_parallel_size=32"], data=job())
