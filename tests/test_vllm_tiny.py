"""Real vLLM (CPU build) generating from the tiny model: n>1 samples, per-request seeds, continuous feeding.

vLLM spawns its engine-core process, so the engine runs in a child Python (one engine start for the whole
module) that prints its observations as JSON; the tests assert on that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.vllm

MARK = "@@HPCGEN-JSON@@"
N_PROMPTS = 8

SCRIPT = r"""
import json, os, sys, time


def completions(out):
    return [
        {"index": c.index, "text": c.text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason}
        for c in sorted(out.outputs, key=lambda c: c.index)
    ]


def main():
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from hpcgen_dev.datasets import make_rows

    model, n_prompts = sys.argv[1], int(sys.argv[2])
    t0 = time.monotonic()
    llm = LLM(model=model, enforce_eager=True, dtype="bfloat16", max_model_len=2048, enable_chunked_prefill=False,
              max_num_seqs=64, max_num_batched_tokens=4096, seed=0)
    start_s = time.monotonic() - t0
    tok = llm.get_tokenizer()
    rows = make_rows(n_prompts, style="mixed", seed=0, variety=True)
    prompts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]

    def params(seed, n=3, kind=None):
        sp = SamplingParams(n=n, max_tokens=16, temperature=1.0, seed=seed)
        if kind is not None:
            sp.output_kind = kind
        return sp

    t0 = time.monotonic()
    run_a = llm.generate(prompts, [params(1000 + i) for i in range(n_prompts)], use_tqdm=False)
    gen_s = time.monotonic() - t0
    run_b = llm.generate(prompts, [params(1000 + i) for i in range(n_prompts)], use_tqdm=False)
    run_other = llm.generate(prompts, [params(5000 + i) for i in range(n_prompts)], use_tqdm=False)
    # Child i of an n>1 request with seed s samples like an n=1 request with seed s+i.
    child = {i: llm.generate(prompts, [params(1000 + p + i, n=1) for p in range(n_prompts)], use_tqdm=False)
             for i in range(3)}

    # Continuous feeding of the V1 engine: add requests while others run, step until all are done.
    eng = llm.llm_engine
    feeds = {}
    for kind_name, kind in (("final_only", RequestOutputKind.FINAL_ONLY), ("cumulative", None)):
        pending = list(range(n_prompts))
        finished, events, steps, internal_ids = {}, [], 0, []
        while pending or eng.has_unfinished_requests():
            if pending and (steps % 2 == 0 or not eng.has_unfinished_requests()):
                i = pending.pop(0)
                prompt = {"prompt_token_ids": tok.encode(prompts[i], add_special_tokens=False)}
                internal_ids.append(eng.add_request(f"row-{i}", prompt, params(1000 + i, kind=kind)))
            for out in eng.step():
                events.append([steps, out.request_id, out.finished, [c.index for c in out.outputs]])
                if out.finished:
                    finished[out.request_id] = out
            steps += 1
        feeds[kind_name] = {
            "steps": steps,
            "internal_ids": internal_ids,
            "events": events[:40],
            "finished": {rid: completions(o) for rid, o in finished.items()},
        }

    # Prompt-length limits: too long fails at add_request (VLLMValidationError, not a ValueError); a prompt
    # that fits but leaves fewer than max_tokens positions is cut at max_model_len with finish "length".
    limits = {}
    long_row = make_rows(1, style="gsm8k", seed=0, overlong_rows=[0])[0]
    long_ids = tok.apply_chat_template(long_row["prompt"], add_generation_prompt=True, tokenize=False)
    long_ids = tok.encode(long_ids, add_special_tokens=False)
    try:
        eng.add_request("too-long", {"prompt_token_ids": long_ids}, params(1, n=3))
    except Exception as exc:  # noqa: BLE001 - reported
        limits["error_type"] = f"{type(exc).__module__}.{type(exc).__name__}"
        limits["error_is_value_error"] = isinstance(exc, ValueError)
        limits["error"] = str(exc)
    limits["long_prompt_tokens"] = len(long_ids)
    limits["unfinished_after_error"] = eng.has_unfinished_requests()
    near = long_ids[: 2048 - 5]
    (out,) = llm.generate([{"prompt_token_ids": near}], [params(7, n=2)], use_tqdm=False)
    limits["near_limit"] = completions(out)

    result = {
        "limits": limits,
        "start_s": start_s,
        "gen_s": gen_s,
        "prompt_token_ids": [list(o.prompt_token_ids) for o in run_a],
        "run_a": [completions(o) for o in run_a],
        "run_b": [completions(o) for o in run_b],
        "run_other": [completions(o) for o in run_other],
        "child": {str(i): [completions(o)[0] for o in outs] for i, outs in child.items()},
        "feeds": feeds,
        "eos_token_id": tok.eos_token_id,
        "vocab_len": len(tok),
    }
    print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def vllm_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    script = tmp_path_factory.mktemp("vllm") / "run_tiny_vllm.py"
    script.write_text(f"MARK = {MARK!r}\n" + SCRIPT, encoding="utf-8")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_model), str(N_PROMPTS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    assert proc.returncode == 0 and lines, (
        f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return json.loads(lines[-1][len(MARK) :])


def test_n3_outputs_with_token_ids(vllm_run: dict[str, Any]) -> None:
    run = vllm_run["run_a"]
    assert len(run) == N_PROMPTS
    reasons = set()
    for prompt_ids, outs in zip(vllm_run["prompt_token_ids"], run, strict=True):
        assert prompt_ids and prompt_ids[-1] == ord("\n")  # "...<|im_start|>assistant\n"
        assert [o["index"] for o in outs] == [0, 1, 2]
        for o in outs:
            assert 1 <= len(o["token_ids"]) <= 16
            assert o["finish_reason"] in ("stop", "length")
            assert all(0 <= t < vllm_run["vocab_len"] for t in o["token_ids"])
            if o["finish_reason"] == "stop":  # eos is the last token id (even at the 16th), not in the text
                assert o["token_ids"][-1] == vllm_run["eos_token_id"]
                assert vllm_run["eos_token_id"] not in o["token_ids"][:-1]
            else:
                assert len(o["token_ids"]) == 16
            reasons.add(o["finish_reason"])
    assert reasons == {"stop", "length"}  # the tiny model is tuned to stop now and then
    # n samples of one prompt differ from each other.
    assert all(len({tuple(o["token_ids"]) for o in outs}) > 1 for outs in run)


def test_same_seed_same_text(vllm_run: dict[str, Any]) -> None:
    assert vllm_run["run_a"] == vllm_run["run_b"]
    assert vllm_run["run_a"] != vllm_run["run_other"]


def test_child_i_uses_seed_plus_i(vllm_run: dict[str, Any]) -> None:
    for i in range(3):
        got = [outs[i]["token_ids"] for outs in vllm_run["run_a"]]
        assert got == [o["token_ids"] for o in vllm_run["child"][str(i)]]


def test_continuous_feeding(vllm_run: dict[str, Any]) -> None:
    expected = {f"row-{i}": outs for i, outs in enumerate(vllm_run["run_a"])}
    final = vllm_run["feeds"]["final_only"]
    assert final["finished"] == expected
    assert all(e[2] and e[3] == [0, 1, 2] for e in final["events"])  # one event per request, all n outputs
    assert all(rid.startswith("row-") and rid != "row-" for rid in final["internal_ids"])
    cumulative = vllm_run["feeds"]["cumulative"]
    # Default output kind: one event per child per step, each carrying only that child's output; the
    # request's last event (finished=True) holds only the last child to finish.
    assert any(not e[2] for e in cumulative["events"])
    assert all(len(e[3]) == 1 for e in cumulative["events"])
    for rid, outs in cumulative["finished"].items():
        assert len(outs) == 1 and outs[0] in expected[rid]


def test_prompt_length_limits(vllm_run: dict[str, Any]) -> None:
    limits = vllm_run["limits"]
    assert limits["long_prompt_tokens"] > 2048
    assert limits["error_type"] == "vllm.exceptions.VLLMValidationError"
    assert "maximum context length is 2048" in limits["error"]
    assert not limits["unfinished_after_error"]
    for o in limits["near_limit"]:  # 2043 prompt tokens + at most 5 generated = max_model_len
        assert len(o["token_ids"]) <= 5
        assert o["finish_reason"] in ("length", "stop")
