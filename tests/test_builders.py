"""The offline builders: the tiny model (bytes, tokenizer, chat template) and the synthetic verl datasets."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import need

from hpcgen_dev import datasets as ds
from hpcgen_dev import tiny_model as tm

# ----------------------------------------------------------------------------------------------- model

NON_ASCII = "Zoë's café — naïve façade, 中文测试, さくら, Łukasz, 🎉🍎🚀 ✅ ¿Listo?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_tiny_model_files(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    for required in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        tm.STAMP,
    ):
        assert required in names
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".model.")], "temp dir left behind"
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64
    assert cfg["vocab_size"] % 64 == 0
    assert tm.is_complete(model_dir)


def test_tiny_model_deterministic(tmp_path: Path, model_dir: Path) -> None:
    other = tm.build_tiny_model(tmp_path / "again")
    files = sorted(p.name for p in model_dir.iterdir())
    assert files == sorted(p.name for p in other.iterdir())
    for name in files:
        assert (model_dir / name).read_bytes() == (other / name).read_bytes(), name
    different = tm.build_tiny_model(tmp_path / "seed1", seed=1)
    assert (different / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (different / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_tiny_model_idempotent_and_repairs(tmp_path: Path) -> None:
    out = tm.build_tiny_model(tmp_path / "m")
    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns, weights.stat().st_ino
    assert tm.build_tiny_model(out) == out
    assert (weights.stat().st_mtime_ns, weights.stat().st_ino) == before  # not rebuilt
    # An incomplete build (no stamp, e.g. an interrupted copy) is replaced by a complete one.
    (out / tm.STAMP).unlink()
    (out / "tokenizer.json").write_text("garbage")
    tm.build_tiny_model(out)
    assert tm.is_complete(out)
    json.loads((out / "tokenizer.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_tiny_model_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tm.main([str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "cli").absolute())
    assert tm.is_complete(tmp_path / "cli")


def test_tokenizer_fast_and_chat_template(model_dir: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.is_fast
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    cfg = json.loads((model_dir / "config.json").read_text())
    assert len(tok) <= cfg["vocab_size"]
    assert cfg["eos_token_id"] == tok.eos_token_id
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": NON_ASCII},
    ]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        f"<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n{NON_ASCII}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False).endswith(
        "assistant\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # special tokens are single ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 4
    assert tok.decode(ids) == text
    # The raw tokenizer.json and the transformers loader agree on ids (digits, whitespace, non-ASCII).
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    for s in [text, "We have 3 + 4 = 7 and 1234567.", "  two  spaces\n\n\ttab", NON_ASCII]:
        assert raw.encode(s, add_special_tokens=False).ids == tok(s, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    "text",
    [NON_ASCII, "é", "中文", "🎉", "Let's think step by step \\boxed{\\frac{3}{4}}"],
    ids=["mixed", "accent", "cjk", "emoji", "latex"],
)
def test_tokenizer_round_trip(model_dir: Path, text: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_weights_load_in_transformers(model_dir: Path) -> None:
    need(importlib.util.find_spec("torch") is not None, "torch (comes with vLLM)")  # fails in CI, never skips silently
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits.float()
    probs = logits.softmax(-1)[0, -1]
    n_real = len(json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]) + 3
    assert float(probs[n_real:].sum()) < 1e-9  # padded ids are never sampled
    assert float(probs.max()) < 0.9  # not degenerate: sampling gives varied text


# -------------------------------------------------------------------------------------------- datasets


def _question(row: dict) -> str:
    """The problem text: last paragraph of the last user message, instruction removed."""
    content = [m for m in row["prompt"] if m["role"] == "user"][-1]["content"]
    last = content.split("\n\n")[-1]
    for instr in (ds.GSM8K_INSTRUCTION, ds.MATH_INSTRUCTION):
        if last.endswith(instr):
            return last[: -len(instr)].strip()
    raise AssertionError(f"no instruction at the end of {content[-200:]!r}")


def _frac_latex(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else f"\\frac{{{f.numerator}}}{{{f.denominator}}}"


def recompute(question: str) -> tuple[str, str]:
    """Independent solver for every template, from the question text alone: (template, answer)."""
    n = [int(v) for v in re.findall(r"\d+", question)]
    if "packs of" in question:
        return "packs", str(n[0] * n[1] - n[2])
    if "per hour and works" in question:
        return "wage", str(n[0] * n[1] * n[2])
    if "A train travels" in question:
        return "train", str(n[0] * n[1] + n[2] * n[3])
    if "shares them equally" in question:
        return "share", str(n[0] // n[1] + n[2])
    if "% off" in question:
        return "discount", str(n[0] - n[0] * n[1] // 100)
    if "years older than twice" in question:
        return "ages", str(2 * n[0] + n[1] + n[2])
    if question.startswith("Compute $\\frac"):
        return "frac", _frac_latex(Fraction(n[0], n[1]) + Fraction(n[2], n[3]))
    if question.startswith("Simplify $\\sqrt"):
        k = max(i for i in range(1, n[0] + 1) if n[0] % (i * i) == 0)
        return "sqrt", f"{k}\\sqrt{{{n[0] // (k * k)}}}"
    if m := re.search(r"\$(\d+)x ([+-]) (\d+) = (-?\d+)\$", question):
        a, b, c = int(m[1]), int(m[3]) * (1 if m[2] == "+" else -1), int(m[4])
        assert (c - b) % a == 0
        return "linear", str((c - b) // a)
    if "least common multiple" in question:
        return "lcm", str(math.lcm(n[0], n[1]))
    if "arithmetic sequence" in question:
        a, d, k = (int(v) for v in re.findall(r"\$(-?\d+)\$", question))
        return "arith", str(a + (k - 1) * d)
    if "probability" in question:
        return "prob", _frac_latex(Fraction(n[0], n[0] + n[1]))
    raise AssertionError(f"unknown template: {question!r}")


@pytest.mark.parametrize("variety", [False, True])
def test_ground_truths_correct(variety: bool) -> None:
    rows = ds.make_rows(400, style="mixed", seed=7, variety=variety, overlong_rows=[5, 6])
    seen = set()
    for row in rows:
        template, answer = recompute(_question(row))
        seen.add(template)
        assert ds.ground_truth(row) == answer, row
        assert "," not in ds.ground_truth(row)
    assert len(seen) == 12  # every template exercised


def test_rows_shape_and_styles() -> None:
    rows = ds.make_rows(12, style="mixed")
    assert [r["data_source"] for r in rows[:2]] == [ds.GSM8K_SOURCE, ds.MATH_SOURCE]
    for i, r in enumerate(rows):
        assert r["ability"] == "math" and r["reward_model"]["style"] == "rule"
        assert r["extra_info"] == {"split": "test", "index": i}
        assert r["prompt"] == [r["prompt"][0]] and r["prompt"][0]["role"] == "user"
        instr = ds.GSM8K_INSTRUCTION if r["data_source"] == ds.GSM8K_SOURCE else ds.MATH_INSTRUCTION
        assert r["prompt"][0]["content"].endswith(" " + instr)
        assert r["prompt"][0]["content"].isascii()
    assert {r["data_source"] for r in ds.make_rows(6, style="gsm8k")} == {ds.GSM8K_SOURCE}
    assert {r["data_source"] for r in ds.make_rows(6, style="math")} == {ds.MATH_SOURCE}
    with pytest.raises(ValueError):
        ds.make_rows(3, style="nope")
    # Row i does not depend on how many rows are made.
    assert ds.make_rows(30, seed=3, variety=True)[:10] == ds.make_rows(10, seed=3, variety=True)


def test_variety_and_overlong() -> None:
    rows = ds.make_rows(60, variety=True, overlong_rows=[0, 7])
    roles = [tuple(m["role"] for m in r["prompt"]) for r in rows]
    assert ("system", "user") in roles
    assert ("user", "assistant", "user") in roles
    assert any(not m["content"].isascii() for r in rows for m in r["prompt"])
    assert any(r["meta"]["tags"] == [] for r in rows) and any(r["meta"]["tags"] for r in rows)
    assert all({"split", "index", "question", "answer"} <= set(r["extra_info"]) for r in rows)
    lengths = [len(r["prompt"][-1]["content"]) for r in rows]
    assert lengths[0] >= ds.OVERLONG_CHARS and lengths[7] >= ds.OVERLONG_CHARS
    assert max(v for i, v in enumerate(lengths) if i not in (0, 7)) < 2000


VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64())])),
    ]
)


def test_parquet_schema_exact(tmp_path: Path) -> None:
    path = ds.make_dataset(tmp_path / "plain.parquet", 25, row_group_size=10)
    assert pq.read_schema(path).equals(VERL_SCHEMA)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert pq.read_table(path).to_pylist() == ds.make_rows(25)

    vpath = ds.make_dataset(tmp_path / "variety.parquet", 25, variety=True)
    schema = pq.read_schema(vpath)
    for field in VERL_SCHEMA:
        if field.name != "extra_info":
            assert schema.field(field.name).type == field.type
    extra = schema.field("extra_info").type
    assert extra.field("split").type == pa.string() and extra.field("index").type == pa.int64()
    meta = pa.struct([("tags", pa.list_(pa.string())), ("difficulty", pa.struct([("level", pa.int64())]))])
    assert schema.field("meta").type == meta
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_datasets_deterministic(tmp_path: Path) -> None:
    kw = {"style": "mixed", "seed": 11, "variety": True, "overlong_rows": [2]}
    a = ds.make_dataset(tmp_path / "a.parquet", 40, **kw)
    b = ds.make_dataset(tmp_path / "b.parquet", 40, **kw)
    assert pq.read_table(a).equals(pq.read_table(b))
    c = ds.make_dataset(tmp_path / "c.parquet", 40, **{**kw, "seed": 12})
    assert not pq.read_table(a).equals(pq.read_table(c))
    ja = ds.make_dataset(tmp_path / "a.jsonl", 40, **kw)
    jb = ds.make_dataset(tmp_path / "b.jsonl", 40, **kw)
    assert ja.read_bytes() == jb.read_bytes()


def test_jsonl_line_by_line(tmp_path: Path) -> None:
    path = ds.make_dataset(tmp_path / "d.jsonl", 30, variety=True)
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert rows == ds.make_rows(30, variety=True)
    assert "🎉" in path.read_text(encoding="utf-8") or "中" in path.read_text(encoding="utf-8")  # raw UTF-8


def test_datasets_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli.parquet"
    assert ds.main([str(out), "--rows", "9", "--style", "math", "--seed", "2", "--variety"]) == 0
    assert pq.read_table(out).to_pylist() == ds.make_rows(9, style="math", seed=2, variety=True)
