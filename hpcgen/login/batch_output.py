"""The OpenAI batch output format, as vLLM's ``run-batch`` writes it (``BatchRequestOutput.model_dump_json()`` in
``vllm/entrypoints/launchers/run_batch.py``): one line per request, in input order::

    {"id": "vllm-...", "custom_id": "...", "response": {"status_code": 200, "request_id": "vllm-batch-...",
     "body": {"id": "chatcmpl-...", "object": "chat.completion", "created": ..., "model": "...",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."}, "finish_reason": ...}],
              "usage": {"prompt_tokens": ..., "total_tokens": ..., "completion_tokens": ...}}},
     "error": null}

Every field vLLM's models dump is written, with vLLM's defaults, so that the line reads back through vLLM's own
pydantic models and dumps to the same object (``tests/test_batchfile.py`` checks it against vLLM's classes). A
row that failed (``gen_error``) is written as vLLM writes a failed request: status 400, no body, the message in
``error``. Ids are derived from the run id and the custom_id, so merging twice writes the same bytes. With
several seeds, the choices are the samples of each seed in seed order (indices 0..).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa


def _id(prefix: str, run_id: str, custom_id: str, kind: str) -> str:
    """vLLM's ids are a prefix and 16 hex digits (``vllm.utils.random_uuid``); these are derived, not random."""
    return prefix + hashlib.sha256(f"{run_id}\0{kind}\0{custom_id}".encode()).hexdigest()[:16]


def _message(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
            "function_call": None, "reasoning": None}


def _choice(i: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": i, "message": _message(text), "logprobs": None, "finish_reason": finish, "stop_reason": None,
            "token_ids": None, "routed_experts": None}


def response_line(custom_id: str, row: dict[str, Any], *, model: str, created: int, run_id: str) -> bytes:
    """One output line for one request (``row``: the merged generated columns of that request)."""
    line_id = _id("vllm-", run_id, custom_id, "line")
    request_id = _id("vllm-batch-", run_id, custom_id, "request")
    if row.get("gen_error"):
        out: dict[str, Any] = {"id": line_id, "custom_id": custom_id,
                               "response": {"status_code": 400, "request_id": request_id, "body": None},
                               "error": str(row["gen_error"])}
    else:
        texts = row.get("responses") or []
        reasons = row.get("finish_reasons") or [None] * len(texts)
        completion = int(sum(row.get("response_tokens") or []))
        prompt = int(row.get("prompt_tokens") or 0)
        body = {"id": _id("chatcmpl-", run_id, custom_id, "body"),
                "object": "chat.completion", "created": created, "model": model,
                "choices": [_choice(i, t, f) for i, (t, f) in enumerate(zip(texts, reasons, strict=True))],
                "service_tier": None, "system_fingerprint": None,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
                          "prompt_tokens_details": None, "completion_tokens_details": None},
                "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
                "ec_transfer_params": None, "metrics": None}
        out = {"id": line_id, "custom_id": custom_id,
               "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}
    return (json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def batch_lines(lines: list[bytes], gen: pa.Table, *, model: str, created: int, run_id: str) -> Iterator[bytes]:
    """The output lines of one shard's requests (``lines``: its input lines, in order; ``gen``: their rows)."""
    cols = {c: gen.column(c).to_pylist() for c in ("responses", "finish_reasons", "response_tokens",
                                                   "prompt_tokens", "gen_error")}
    for i, line in enumerate(lines):
        custom_id = json.loads(line)["custom_id"]
        yield response_line(custom_id, {c: v[i] for c, v in cols.items()}, model=model, created=created,
                            run_id=run_id)
