"""The OpenAI batch request format, as vLLM's ``run-batch`` reads it (``vllm/entrypoints/launchers/run_batch.py``:
``BatchRequestInput``): one JSON object per line with ``custom_id``, ``method`` (POST), ``url``
(``/v1/chat/completions``) and ``body`` (a chat completion request: ``messages``, ``max_tokens``, ``temperature``,
``top_p``, ``n``, ``seed``, ...).

Every sampling value in ``body`` is either honoured (it becomes that row's vLLM ``SamplingParams`` value, as
vLLM's ``ChatCompletionRequest.to_sampling_params`` maps it) or refused with one line naming the custom_id and
the field; nothing is dropped silently. Values left out take the job's ``rollout.*`` (what a server's defaults
are to vLLM). Pure Python: the plan checks every line with it, the task turns each body into sampling values.
"""

from __future__ import annotations

import math
from typing import Any

CHAT_URL = "/v1/chat/completions"

# body key -> SamplingParams argument (vLLM's names; max_completion_tokens wins over max_tokens, as in vLLM)
HONOURED = {
    "max_tokens": "max_tokens", "max_completion_tokens": "max_tokens", "temperature": "temperature",
    "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "n": "n", "seed": "seed", "stop": "stop",
    "stop_token_ids": "stop_token_ids", "min_tokens": "min_tokens", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "repetition_penalty": "repetition_penalty",
    "ignore_eos": "ignore_eos", "include_stop_str_in_output": "include_stop_str_in_output",
    "skip_special_tokens": "skip_special_tokens", "spaces_between_special_tokens": "spaces_between_special_tokens",
}
# Keys that change nothing about sampling when they hold these values (the request's own defaults).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "stream": (False, None), "logprobs": (False, None), "top_logprobs": (0, None), "echo": (False, None),
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}), "stream_options": (None,), "logit_bias": (None, {}),
    "add_generation_prompt": (True,), "continue_final_message": (False,), "use_beam_search": (False,),
}
PASSED = ("messages", "model", "user", "metadata", "store", "service_tier")  # not sampling values (README)


class BatchLineError(ValueError):
    """One line of a batch file is not usable: the message names the field."""


def _number(v: Any, name: str, lo: float | None = None, hi: float | None = None, *, integer: bool = False,
            lo_open: bool = False) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)) or (
            isinstance(v, float) and not math.isfinite(v)):
        raise BatchLineError(f"body.{name} must be {'an integer' if integer else 'a number'}, not {v!r}")
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        raise BatchLineError(f"body.{name}={v!r} is out of range")
    return v


def _check_value(key: str, v: Any) -> Any:
    if key in ("max_tokens", "max_completion_tokens", "n"):
        return _number(v, key, 1, integer=True)
    if key == "min_tokens":
        return _number(v, key, 0, integer=True)
    if key == "temperature":
        return _number(v, key, 0, 2)  # OpenAI's and vLLM's range
    if key == "top_p":
        return _number(v, key, 0, 1, lo_open=True)
    if key == "top_k":
        return _number(v, key, -1, integer=True)
    if key == "min_p":
        return _number(v, key, 0, 1)
    if key in ("presence_penalty", "frequency_penalty"):
        return _number(v, key, -2, 2)
    if key == "repetition_penalty":
        return _number(v, key, 0, lo_open=True)
    if key == "seed":
        return _number(v, key, -(2**63), 2**63 - 1, integer=True)
    if key == "stop":
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return list(v)
        raise BatchLineError("body.stop must be a string or a list of strings")
    if key == "stop_token_ids":
        if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return list(v)
        raise BatchLineError("body.stop_token_ids must be a list of integers")
    if not isinstance(v, bool):
        raise BatchLineError(f"body.{key} must be true or false")
    return v


def sampling_overrides(body: dict[str, Any]) -> dict[str, Any]:
    """The SamplingParams values a request's body sets (keys missing: the job's values apply).

    Raises BatchLineError naming the field for a value hpcgen would otherwise have to ignore."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in HONOURED:
            if value is None:
                continue
            if key == "max_tokens" and body.get("max_completion_tokens") is not None:
                continue
            out[HONOURED[key]] = _check_value(key, value)
        elif key in NEUTRAL:
            if value not in NEUTRAL[key]:
                raise BatchLineError(f"body.{key}={_short(value)} is not supported here (it would be ignored); "
                                     "remove it")
        elif key not in PASSED:
            raise BatchLineError(f"body.{key} is not supported here (it would be ignored); remove it")
    return out


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_request(obj: Any) -> tuple[str, dict[str, Any]]:
    """(custom_id, body) of one line, checked; raises BatchLineError (the message names the field)."""
    if not isinstance(obj, dict):
        raise BatchLineError("a line must be a JSON object")
    cid = obj.get("custom_id")
    if cid is None:
        raise BatchLineError("no custom_id")
    if not isinstance(cid, str) or not cid:
        raise BatchLineError(f"custom_id must be a non-empty string, not {cid!r}")
    method = obj.get("method", "POST")
    if method != "POST":
        raise BatchLineError(f"custom_id {cid!r}: method {method!r} is not supported (only POST)")
    url = obj.get("url")
    if url != CHAT_URL:
        raise BatchLineError(f"custom_id {cid!r}: url {url!r} is not supported (only {CHAT_URL})")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise BatchLineError(f"custom_id {cid!r}: body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BatchLineError(f"custom_id {cid!r}: body.messages must be a non-empty list of messages")
    return cid, body


def chat_messages(messages: Any) -> Any:
    """OpenAI message content given as text parts (``[{"type": "text", "text": ...}]``) joined into one string,
    as vLLM does for text-only content (parts joined by newlines); other parts are left for the prompt check to
    refuse as that row's error."""
    if not isinstance(messages, list):
        return messages
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and content and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            m = {**m, "content": "\n".join(p["text"] for p in content)}
        out.append(m)
    return out
