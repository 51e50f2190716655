"""OpenAI batch files (vLLM ``run-batch``'s input) as a dataset, and its output format: per-request sampling
values reach the engine, every custom_id comes back once in input order, and each output line is what vLLM's own
pydantic models read and write (``BatchRequestOutput`` from vllm/entrypoints/launchers/run_batch.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SeedEngine

from hpcgen.login.merge import merge_run
from hpcgen.login.plan import create_run_dir, make_plan
from hpcgen.spec.batch import BatchLineError, chat_messages, parse_request, sampling_overrides
from hpcgen.spec.loader import load_job
from hpcgen.task.worker import run_shards
from hpcgen_dev.evaldata import batch_request, write_batch

MSG = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]


def requests() -> list[dict]:
    """Seven requests: defaults, each honoured body value, and an image the text model cannot take (that
    request's error, as vLLM reports a request it refuses)."""
    return [batch_request("req-a", MSG),
            batch_request("req-b", MSG, max_tokens=4, temperature=0.7),
            batch_request("req-c", [{"role": "user", "content": [{"type": "text", "text": "part one"},
                                                                   {"type": "text", "text": "part two"}]}], n=3),
            batch_request("req-d", MSG, seed=1234, top_p=0.5, top_k=20, stop=["\n"]),
            batch_request("req-e", MSG, max_completion_tokens=6, max_tokens=2, min_tokens=1),
            batch_request("req-f", MSG, n=2, temperature=0.25, stream=False, logprobs=False),
            batch_request("req-g", [{"role": "user", "content": [{"type": "image_url",
                                                                   "image_url": {"url": "http://x/y.png"}}]}])]


def run_batch(tmp: Path, model: Path, path: Path, *overrides: str) -> tuple[Path, SeedEngine]:
    engines: list[SeedEngine] = []

    def factory(spec, p):
        engines.append(SeedEngine(spec, p))
        return engines[-1]

    spec = load_job(None, ["rollout.response_length=16", *overrides], data={
        "data": {"path": str(path)}, "model": {"path": str(model)}, "sharding": {"num_shards": 2},
        "rollout": {"max_num_seqs": 8}})
    plan = make_plan(spec, job_file=None, overrides=[])
    assert plan.datasets[0].kind == "openai_batch"  # detected from the first line
    layout = create_run_dir(tmp / "run", plan.manifest)
    run_shards(layout.root, [0, 1], engine_factory=factory, job="9_0")
    return layout.root, engines[0]


def test_batch_file_round_trips_with_its_sampling_values(tmp_path, fake_model):
    src = write_batch(tmp_path / "requests.jsonl", requests())
    run, engine = run_batch(tmp_path, fake_model, src)
    out = merge_run(run).output
    assert out.endswith("merged.jsonl")
    lines = [json.loads(x) for x in Path(out).read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == [r["custom_id"] for r in requests()]  # each once, input order
    by_id = {x["custom_id"]: x for x in lines}
    choices = {cid: x["response"]["body"]["choices"] for cid, x in by_id.items() if x["error"] is None}
    assert [len(choices[c]) for c in ("req-a", "req-b", "req-c", "req-d", "req-e", "req-f")] == [1, 1, 3, 1, 1, 2]
    texts = {cid: [c["message"]["content"] for c in ch] for cid, ch in choices.items()}
    assert "'max_tokens': 4" in texts["req-b"][0] and "'temperature': 0.7" in texts["req-b"][0]
    assert texts["req-d"][0].startswith("seed 1234 ") and "'top_k': 20" in texts["req-d"][0]
    assert "'stop': ['\\n']" in texts["req-d"][0] and "'top_p': 0.5" in texts["req-d"][0]
    assert "'max_tokens': 6" in texts["req-e"][0] and "'min_tokens': 1" in texts["req-e"][0]
    assert "'temperature': 0.25" in texts["req-f"][0]
    assert texts["req-a"][0].startswith("seed ") and "{" not in texts["req-a"][0]  # the job's values
    assert by_id["req-g"]["response"] == {"status_code": 400, "request_id": by_id["req-g"]["response"]["request_id"],
                                          "body": None}
    assert "message 0 content must be a string" in by_id["req-g"]["error"]
    again = merge_run(run, output=tmp_path / "again.jsonl").output
    assert Path(again).read_bytes() == Path(out).read_bytes()  # derived ids: merging twice writes the same bytes
    from helpers import hpcgen

    res = hpcgen("score", str(run))
    assert res.returncode == 2 and "not graded" in res.stderr and "no ground truth" in res.stderr


def test_output_lines_are_what_vllms_batch_models_write(tmp_path, fake_model, vllm_ok):
    """The oracle: each line read by vLLM's BatchRequestOutput and dumped again is the same object."""
    from vllm.entrypoints.launchers.run_batch import BatchRequestInput, BatchRequestOutput

    reqs = requests()
    for r in reqs:  # the input is a valid vLLM batch input too
        BatchRequestInput.model_validate(r)
    src = write_batch(tmp_path / "requests.jsonl", reqs)
    run, _ = run_batch(tmp_path, fake_model, src)
    for line in Path(merge_run(run).output).read_text().splitlines():
        parsed = BatchRequestOutput.model_validate_json(line)
        assert json.loads(parsed.model_dump_json()) == json.loads(line)


def test_per_request_values_are_honoured_or_refused():
    assert sampling_overrides({"messages": [], "max_tokens": 5, "temperature": 0.2, "n": 2, "seed": 7,
                               "stop": "x", "model": "gpt-4o", "user": "u"}) == {
        "max_tokens": 5, "temperature": 0.2, "n": 2, "seed": 7, "stop": ["x"]}
    assert sampling_overrides({"max_tokens": 3, "max_completion_tokens": 9}) == {"max_tokens": 9}
    for body, field in (({"response_format": {"type": "json_object"}}, "body.response_format"),
                        ({"tools": [{"type": "function"}]}, "body.tools"), ({"logit_bias": {"1": 2}}, "body.logit_bias"),
                        ({"temperature": "hot"}, "body.temperature"), ({"n": 0}, "body.n=0"),
                        ({"top_p": 0}, "body.top_p=0"), ({"stream": True}, "body.stream=True"),
                        ({"best_of": 2}, "body.best_of")):
        with pytest.raises(BatchLineError, match=field.replace(".", r"\.")):
            sampling_overrides(body)
    with pytest.raises(BatchLineError, match="url '/v1/embeddings' is not supported"):
        parse_request({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"messages": MSG}})
    with pytest.raises(BatchLineError, match="custom_id 'a': body.messages must be a non-empty list"):
        parse_request({"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": []}})
    assert chat_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
                         ) == [{"role": "user", "content": "a\nb"}]


def test_requests_asking_different_n_verify_per_row(tmp_path, fake_model):
    """Different n per request: the manifest records them (n_runs) and parts are checked against each row's."""
    src = write_batch(tmp_path / "r.jsonl", [batch_request(f"q{i}", MSG, n=1 + i % 3) for i in range(9)])
    run, _ = run_batch(tmp_path, fake_model, src)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["datasets"][0]["n_runs"][:3] == [[0, 1], [1, 2], [2, 3]]
    lines = [json.loads(x) for x in Path(merge_run(run).output).read_text().splitlines()]
    assert [len(x["response"]["body"]["choices"]) for x in lines] == [1 + i % 3 for i in range(9)]


def test_engine_builds_each_rows_sampling_params(tmp_path):
    """The real vLLM SamplingParams of a batch row and of a dataset row (tiny tokenizer, no engine)."""
    from types import SimpleNamespace

    from hpcgen.task.engine import Engine, row_seed

    spec = load_job(None, ["rollout.top_k=50", "rollout.response_length=32"],
                    data={"data": {"path": "x", "n_samples": 4}, "model": {"path": "m"}})
    eng = Engine(spec, "m", llm=SimpleNamespace(llm_engine=None, get_tokenizer=lambda: None))
    sp = eng.sampling_params(3, {"n": 2, "seed": row_seed(1, 3, 2)})
    assert (sp.n, sp.seed, sp.top_k, sp.max_tokens) == (2, row_seed(1, 3, 2), 50, 32)
    sp = eng.sampling_params(3, {"n": 1, "seed": 9, "max_tokens": 5, "temperature": 0.0, "top_k": -1,
                                 "stop": ["\n"], "min_tokens": 2})
    assert (sp.n, sp.seed, sp.max_tokens, sp.temperature, sp.top_k, sp.stop, sp.min_tokens) == (
        1, 9, 5, 0.0, 0, ["\n"], 2)
