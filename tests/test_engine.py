"""The vLLM adapter's prompt handling with the tiny model's real tokenizer (no engine needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcgen.spec.loader import load_job
from hpcgen.task.engine import Engine, PromptError, cpu_build_adjustments, engine_kwargs


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory) -> Path:
    from hpcgen_dev.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def engine(model: Path, *overrides: str) -> Engine:
    from transformers import AutoTokenizer

    spec = load_job(None, list(overrides), data={"data": {"path": "x"}, "model": {"path": str(model)}})
    tok = AutoTokenizer.from_pretrained(model)
    return Engine(spec, str(model), llm=SimpleNamespace(llm_engine=None, get_tokenizer=lambda: tok))


def test_chat_template_with_generation_prompt(tokenizer_model):
    eng = engine(tokenizer_model)
    ids, truncated = eng.encode([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ça va? 你好"}])
    text = eng.tokenizer.decode(ids)
    assert not truncated
    assert text.endswith("<|im_start|>assistant\n") and "Ça va? 你好" in text and "Be brief." in text
    assert eng.encode("plain string")[0] == eng.encode([{"role": "user", "content": "plain string"}])[0]


def test_overlong_prompt_policies(tokenizer_model):
    long = "word " * 400
    with pytest.raises(PromptError, match=r"over rollout.prompt_length=64"):
        engine(tokenizer_model, "rollout.prompt_length=64").encode(long)
    eng = engine(tokenizer_model, "rollout.prompt_length=64", "rollout.prompt_overflow=truncate_left")
    ids, truncated = eng.encode(long)
    assert truncated and len(ids) == 64
    assert eng.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")  # the generation prompt survives


def test_sampling_params_and_engine_kwargs(tokenizer_model):
    eng = engine(tokenizer_model, "data.n_samples=4", "rollout.top_k=50", "seed=3")
    sp = eng.sampling_params(10)
    assert sp.n == 4 and sp.top_k == 50 and sp.max_tokens == 512 and sp.seed == eng.sampling_params(10).seed
    assert eng.sampling_params(11).seed - sp.seed == 4  # rows spaced by n
    kw = engine_kwargs(eng.spec, "/m")
    assert kw["max_model_len"] == 1536 + 512 and kw["enable_chunked_prefill"] is True
    cpu = cpu_build_adjustments(kw)
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] >= cpu["max_model_len"]
