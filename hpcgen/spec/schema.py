"""The typed job spec (pydantic): every key, its type, default and cross-checks.

Key names follow verl's ``main_generation`` config so that verl task orders translate one to one;
hpcgen's own sections are ``sharding``, ``seed``, ``checkpoint``, ``slurm``, ``env``, ``merge``, ``score``.
Everything is validated here, on the login node, before anything is queued. No torch, no vllm.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# One line, no control characters: anything that ends up in the sbatch script or a shell.
_SAFE_LINE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:@+,=/%-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SBATCH_OPT = re.compile(r"^[a-z][a-z0-9_-]*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    path: str
    prompt_key: str = "prompt"
    n_samples: int = Field(5, ge=1)
    output_path: str | None = None
    trust_remote_code: bool = False
    apply_chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    batch_size: int | None = None  # accepted for verl compatibility; the engine is fed continuously


class ModelConfig(_Section):
    path: str
    trust_remote_code: bool = False
    tokenizer_path: str | None = None
    revision: str | None = None  # hub ids only: branch, tag or commit to pin (default: main)

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        if v is not None and not _SAFE_NAME.match(v):
            raise ValueError(f"{v!r} must be a branch, tag or commit name")
        return v


class RolloutConfig(_Section):
    name: Literal["vllm"] = "vllm"
    temperature: float = Field(1.0, ge=0.0)
    top_k: int = Field(-1, ge=-1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    do_sample: bool = True
    prompt_length: int = Field(1536, ge=1)
    response_length: int = Field(512, ge=1)
    prompt_overflow: Literal["error", "truncate_left"] = "error"
    tensor_model_parallel_size: int = Field(1, ge=1)
    pipeline_model_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    dtype: Literal["auto", "bfloat16", "float16", "float32", "half", "float"] = "bfloat16"
    enforce_eager: bool = True
    max_model_len: int | None = Field(None, ge=1)
    max_num_seqs: int = Field(1024, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    distributed_backend: Literal["mp", "ray"] = "mp"
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class TrainerConfig(_Section):
    nnodes: int = Field(1, ge=1)
    n_gpus_per_node: int = Field(8, ge=1)


class ShardingConfig(_Section):
    num_shards: int | None = Field(None, ge=1)
    rows_per_shard: int | None = Field(None, ge=1)
    shards_per_task: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> ShardingConfig:
        if self.num_shards is not None and self.rows_per_shard is not None:
            raise ValueError("set sharding.num_shards or sharding.rows_per_shard, not both")
        return self


class CheckpointConfig(_Section):
    every_rows: int = Field(256, ge=1)
    every_seconds: float = Field(60.0, gt=0)


class SlurmConfig(_Section):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    array_parallelism: int = Field(256, ge=1)
    job_name: str = "hpcgen"
    cpus_per_task: int | None = Field(None, ge=1)
    cpus_per_gpu: int = Field(8, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    mem: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    setup: list[str] = Field(default_factory=list)
    additional: dict[str, str | int | bool] = Field(default_factory=dict)
    python: str | None = None
    signal_delay_s: int = Field(120, ge=0)
    max_requeues: int = Field(3, ge=0)
    local_timeout_min: int = Field(24 * 60, ge=1)

    @field_validator("partition", "account", "qos", "job_name", "mem", "constraint", "exclude", "python")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _SAFE_NAME.match(v):
            raise ValueError(f"{v!r} may only hold letters, digits and _.:@+,=/%- (no spaces or shell characters)")
        return v

    @field_validator("setup")
    @classmethod
    def _lines(cls, v: list[str]) -> list[str]:
        for line in v:
            if not _SAFE_LINE.match(line) or line.lstrip().upper().startswith("#SBATCH"):
                raise ValueError(f"setup line {line!r} must be one line without control characters or #SBATCH")
        return v

    @field_validator("additional")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, val in v.items():
            if not _SBATCH_OPT.match(key):
                raise ValueError(f"sbatch option name {key!r} must look like 'mail-type'")
            if not isinstance(val, bool) and not _SAFE_NAME.match(str(val)):
                raise ValueError(f"sbatch option {key}={val!r} holds characters that are not allowed")
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        time_minutes(v)
        return v


class MergeConfig(_Section):
    metadata: bool = True


class ScoreConfig(_Section):
    after_merge: bool = False
    custom_path: str | None = None
    custom_name: str = "compute_score"


class JobSpec(_Section):
    data: DataConfig
    model: ModelConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    env: dict[str, str] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, lt=2**31)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, Any]) -> dict[str, str]:
        out = {}
        for key, val in v.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"environment variable name {key!r} is not valid")
            if not _SAFE_LINE.match(str(val)):
                raise ValueError(f"environment variable {key} must be one line")
            out[key] = str(val)
        return out

    @model_validator(mode="after")
    def _cross(self) -> JobSpec:
        r, t = self.rollout, self.trainer
        if not r.do_sample or r.temperature == 0:
            if self.data.n_samples > 1:
                raise ValueError("greedy decoding (temperature 0 / do_sample false) needs data.n_samples=1")
        world = r.tensor_model_parallel_size * r.pipeline_model_parallel_size
        if world > t.nnodes * t.n_gpus_per_node:
            raise ValueError(
                f"rollout.tensor_model_parallel_size x pipeline_model_parallel_size = {world} exceeds "
                f"trainer.nnodes x trainer.n_gpus_per_node = {t.nnodes * t.n_gpus_per_node}"
            )
        if t.nnodes == 1 and world > t.n_gpus_per_node:
            raise ValueError(f"TP x PP = {world} does not fit trainer.n_gpus_per_node={t.n_gpus_per_node}")
        if r.max_model_len is not None and r.max_model_len < r.prompt_length + r.response_length:
            raise ValueError("rollout.max_model_len is smaller than prompt_length + response_length")
        return self

    # --- derived values -------------------------------------------------------------------------
    @property
    def multi_node(self) -> bool:
        return self.trainer.nnodes > 1

    @property
    def gpus_per_task_node(self) -> int:
        if self.slurm.gpus_per_node is not None:
            return self.slurm.gpus_per_node
        if self.multi_node:
            return self.trainer.n_gpus_per_node
        return self.rollout.tensor_model_parallel_size * self.rollout.pipeline_model_parallel_size

    @property
    def temperature(self) -> float:
        return self.rollout.temperature if self.rollout.do_sample else 0.0

    def generation_settings(self) -> dict[str, Any]:
        """What decides a row's samples: resume refuses when any of this changes."""
        r = self.rollout
        return {
            "model": self.model.path,
            "prompt_key": self.data.prompt_key,
            "n_samples": self.data.n_samples,
            "apply_chat_template_kwargs": self.data.apply_chat_template_kwargs,
            "temperature": self.temperature,
            "top_k": r.top_k,
            "top_p": r.top_p,
            "prompt_length": r.prompt_length,
            "response_length": r.response_length,
            "prompt_overflow": r.prompt_overflow,
            "dtype": r.dtype,
            "seed": self.seed,
        }


def time_minutes(value: str | int) -> int:
    """SLURM time ('MM', 'HH:MM:SS', 'D-HH:MM[:SS]') to whole minutes (at least 1)."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"time {text!r} is not a SLURM time such as '04:00:00' or '1-12:00:00'")
    days, a, b, c = (int(x) if x else 0 for x in m.groups())
    if m[1] is None and m[3] is None:  # plain minutes
        return max(1, a)
    if m[4] is None:  # D-HH:MM or MM:SS
        secs = days * 86400 + a * 3600 + b * 60 if m[1] is not None else a * 60 + b
    else:
        secs = days * 86400 + a * 3600 + b * 60 + c
    return max(1, (secs + 59) // 60)
