"""The typed job spec (pydantic): every key, its type, default and cross-checks.

Key names follow verl's ``main_generation`` config so that verl task orders translate one to one;
hpcgen's own sections are ``sharding``, ``seed``, ``checkpoint``, ``slurm``, ``env``, ``merge``, ``score``.
Everything is validated here, on the login node, before anything is queued. No torch, no vllm.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from hpcgen.spec.datasets import (
    DatasetConfig,
    DatasetEntry,
    Format,
    check_entries,
    check_names,
    check_seeds,
    datasets_from_list,
    resolve,
)

# One line, no control characters: anything that ends up in the sbatch script or a shell.
_SAFE_LINE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:@+,=/%-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SBATCH_OPT = re.compile(r"^[a-z][a-z0-9_-]*$")
# Container settings end up on the srun line (quoted): single tokens, and no ',' or ':' inside mount paths,
# which separate mount entries and their fields. '$VAR' and '~' are expanded on the login node.
_IMAGE = re.compile(r"^[A-Za-z0-9_.:@+/%#=~${}-]+$")
_MOUNT_PATH = re.compile(r"^[A-Za-z0-9_.@+/%=~${}-]+$")
_RUNTIME_FLAG = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.:@+,/%=~-]*)?$")
_COMMAND = re.compile(r"^[A-Za-z0-9_./+-]+$")
# Flags hpcgen writes itself from the keys above (set those keys instead).
_OWN_FLAGS = {"pyxis": ("--container-image", "--container-mounts", "--container-workdir"),
              "apptainer": ("--bind", "--mount", "--pwd", "--nv")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    path: str | list[str] | None = None  # a file, a list of files, a directory or a glob (read as one dataset)
    format: Format = "auto"  # parquet | jsonl | arrow (datasets.save_to_disk) | openai_batch; auto: from the files
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
    batch_invariant: bool = False  # vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT=1 in the task; GPU only)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class TrainerConfig(_Section):
    nnodes: int = Field(1, ge=1)
    n_gpus_per_node: int = Field(8, ge=1)


class ShardingConfig(_Section):
    num_shards: int | None = Field(None, ge=1)
    rows_per_shard: int | None = Field(None, ge=1)
    shards_per_task: int = Field(1, ge=1)
    num_tasks: int | None = Field(None, ge=1)  # group the shards into this many tasks (instead of shards_per_task)
    rows_per_chunk: int | None = Field(None, ge=1)  # default: from the shard size (hpcgen.rundir.chunks)
    steal: bool = True  # a task that finished its own shards takes over others' remaining chunks
    lease_timeout_s: float = Field(120.0, ge=30)  # a claim's holder silent this long (heartbeats: 10 s) is gone

    @model_validator(mode="after")
    def _one_of(self) -> ShardingConfig:
        if self.num_shards is not None and self.rows_per_shard is not None:
            raise ValueError("set sharding.num_shards or sharding.rows_per_shard, not both")
        if self.num_tasks is not None and self.shards_per_task != 1:
            raise ValueError("set sharding.num_tasks or sharding.shards_per_task, not both")
        return self


class CheckpointConfig(_Section):
    every_rows: int = Field(256, ge=1)
    every_seconds: float = Field(60.0, gt=0)


class ContainerConfig(_Section):
    """``slurm.container``: run the task's Python inside an image (pyxis/enroot or Apptainer).

    The run directory, the dataset, the model (and tokenizer), the output directory and ``env.HF_HOME`` /
    ``env.HF_HUB_CACHE`` are mounted at the same paths without being listed; ``mounts`` adds more.
    """

    runtime: Literal["pyxis", "apptainer"]
    image: str  # pyxis: enroot URI or .sqsh file; apptainer: .sif file or docker:// URI
    mounts: list[str] = Field(default_factory=list)  # extra "SRC", "SRC:DST" or "SRC:DST:ro|rw"
    workdir: str | None = None  # working directory inside the container (default: the run directory)
    python: str = "python3"  # the interpreter inside the image (it needs hpcgen and vLLM installed)
    nv: bool = True  # apptainer only: --nv (NVIDIA GPUs); set false and add --rocm to options for AMD
    executable: str = "apptainer"  # apptainer only: the command (e.g. singularity, or a full path)
    options: list[str] = Field(default_factory=list)  # extra runtime flags, e.g. --no-container-mount-home

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not _IMAGE.match(v):
            raise ValueError(f"image {v!r} must be one word of letters, digits and _.:@+/%#=~- (no spaces or shell characters)")
        return v

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, v: list[str]) -> list[str]:
        for entry in v:
            parse_mount(entry)
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and not _MOUNT_PATH.match(v):
            raise ValueError(f"workdir {v!r} must be a path without spaces, ',' ':' or shell characters")
        return v

    @field_validator("python", "executable")
    @classmethod
    def _command(cls, v: str) -> str:
        if not _COMMAND.match(v):
            raise ValueError(f"{v!r} must be a command name or path (letters, digits and _./+-)")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        for flag in v:
            if not _RUNTIME_FLAG.match(flag):
                raise ValueError(f"option {flag!r} must look like --flag or --flag=value (no spaces or shell characters)")
        return v

    @model_validator(mode="after")
    def _not_own_flags(self) -> ContainerConfig:
        for flag in self.options:
            if flag.split("=", 1)[0] in _OWN_FLAGS[self.runtime]:
                raise ValueError(f"option {flag.split('=', 1)[0]} is written by hpcgen: set slurm.container's "
                                 "image / mounts / workdir / nv keys instead")
        return self


def parse_mount(entry: str) -> tuple[str, str, str | None]:
    """``SRC``, ``SRC:DST`` or ``SRC:DST:ro|rw`` -> (src, dst, mode); paths without ',' ':' or spaces."""
    fields = entry.split(":")
    if len(fields) > 3 or not all(fields) or any(not _MOUNT_PATH.match(f) for f in fields[:2]):
        raise ValueError(f"mount {entry!r} must look like SRC, SRC:DST or SRC:DST:ro with paths that hold no "
                         "spaces, ',' ':' or shell characters")
    if len(fields) == 3 and fields[2] not in ("ro", "rw"):
        raise ValueError(f"mount {entry!r}: the third field must be ro or rw")
    src = fields[0]
    return src, fields[1] if len(fields) > 1 else src, fields[2] if len(fields) == 3 else None


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
    container: ContainerConfig | None = None

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

    @model_validator(mode="after")
    def _python_or_container(self) -> SlurmConfig:
        if self.container is not None and self.python is not None:
            raise ValueError("slurm.python is the interpreter outside a container: with slurm.container set, "
                             "name the one inside the image in slurm.container.python")
        return self


class MergeConfig(_Section):
    metadata: bool = True
    response_key: str = Field("responses", pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")  # rename on a clash
    metadata_prefix: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$")


class ScoreConfig(_Section):
    after_merge: bool = False
    grader: Literal["verl", "math-verify"] = "verl"  # verl's default_compute_score rules, or lenient
    custom_path: str | None = None
    custom_name: str = "compute_score"


class JobSpec(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
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
    seeds: list[StrictInt] | None = None  # several seeds in one run (default: [seed]); see hpcgen.spec.datasets
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)  # several datasets in one run

    @field_validator("datasets", mode="before")
    @classmethod
    def _datasets(cls, v: Any) -> Any:
        v = datasets_from_list(v)
        if isinstance(v, dict):
            check_names([str(k) for k in v])
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        return check_seeds(v)

    @field_validator("env", mode="before")  # numbers (env.OMP_NUM_THREADS=4, YAML's 4) become strings
    @classmethod
    def _env(cls, v: Any) -> Any:
        return check_env(v) if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _cross(self) -> JobSpec:
        r, t = self.rollout, self.trainer
        if self.data.path is None and not self.datasets:
            raise ValueError("missing required key 'data.path' (or a 'datasets' section)")
        if self.data.path is not None and self.datasets:
            raise ValueError("data.path is given together with a 'datasets' section, where it would be ignored: "
                             "move it into datasets.<name>.path")
        check_entries(self.dataset_entries(), self.data.output_path, not r.do_sample or r.temperature == 0)
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
        if r.batch_invariant and self.env.get(BATCH_INVARIANT_ENV, "1") != "1":
            raise ValueError(f"env.{BATCH_INVARIANT_ENV}={self.env[BATCH_INVARIANT_ENV]!r} contradicts "
                             "rollout.batch_invariant: true (drop the env key)")
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

    def task_env(self) -> dict[str, str]:
        """Environment of every task: ``env`` plus what hpcgen settings turn on (batch-invariant mode)."""
        if self.rollout.batch_invariant:
            return {**self.env, BATCH_INVARIANT_ENV: "1"}
        return dict(self.env)

    def dataset_entries(self) -> list[DatasetEntry]:
        """The run's datasets, every key resolved (``datasets`` entries fall back to ``data.*``)."""
        return resolve(self.data, self.datasets)

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    @property
    def feed_window(self) -> int:
        """Rows a task keeps in flight: what the engine runs at once (max_num_seqs sequences, n per row), twice
        (with several datasets, the smallest n: rows of larger n only queue a little longer in the engine)."""
        n = min(e.n_samples for e in self.dataset_entries())
        return max(8, -(-2 * self.rollout.max_num_seqs // n))

    @property
    def temperature(self) -> float:
        return self.rollout.temperature if self.rollout.do_sample else 0.0

    def generation_settings(self) -> dict[str, Any]:
        """What decides a row's samples: resume refuses when any of this changes."""
        r = self.rollout
        settings = {
            "model": self.model.path,
            "datasets": {e.name: {"prompt_key": e.prompt_key, "n_samples": e.n_samples, "format": e.format,
                                  "apply_chat_template_kwargs": e.apply_chat_template_kwargs}
                         for e in self.dataset_entries()},
            "seeds": self.run_seeds,
            "temperature": self.temperature,
            "top_k": r.top_k,
            "top_p": r.top_p,
            "prompt_length": r.prompt_length,
            "response_length": r.response_length,
            "prompt_overflow": r.prompt_overflow,
            "dtype": r.dtype,
        }
        if r.batch_invariant:  # only when on: manifests written before the key existed still match
            settings["batch_invariant"] = True
        return settings


BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"  # read by vLLM (vllm/envs.py) in every engine process


def check_env(v: dict[str, Any]) -> dict[str, str]:
    """``env``: valid variable names, one-line values (exported, quoted, in the sbatch script)."""
    out = {}
    for key, val in v.items():
        if not _ENV_NAME.match(str(key)):
            raise ValueError(f"environment variable name {key!r} is not valid")
        if not _SAFE_LINE.match(str(val)):
            raise ValueError(f"environment variable {key} must be one line")
        out[str(key)] = str(val)
    return out


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
