"""A tiny, real, randomly initialised Qwen2 causal LM that the CPU build of vLLM can serve.

Everything is built offline and deterministically (same seed, same bytes):

* ``config.json`` / ``generation_config.json``: a 2-layer ``Qwen2ForCausalLM`` (hidden 128, 2 heads of 64,
  tied embeddings);
* ``model.safetensors``: bfloat16 weights drawn from a seeded numpy generator, shaped so that the padded
  vocabulary ids are never sampled and ``<|im_end|>`` (eos) is sampled now and then (some samples ``stop``,
  most hit ``length``);
* a fast byte-level BPE tokenizer (``tokenizer.json``, plus ``vocab.json``/``merges.txt``) with Qwen2's
  normalizer and pre-tokenizer, whose vocabulary is the 256 byte symbols plus 256 merges learned
  deterministically from a fixed corpus, plus the ChatML special tokens; a ChatML chat template in
  ``tokenizer_config.json``.  transformers loads it as a fast ``Qwen2Tokenizer`` with the same ids.

``build_tiny_model(out_dir)`` is idempotent: a stamp file written last marks a complete build of this builder
(its version and a hash of this file's source, so an edited builder rebuilds).
CLI: ``python -m hpcgen_dev.tiny_model OUT_DIR [--seed N] [--force]``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

BUILDER_VERSION = "1"
STAMP = ".hpcgen-tiny-model"

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
NUM_MERGES = 256
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 2
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
MAX_POS = 4096
TORCH_DTYPE = "bfloat16"
BIAS_FEATURE = 2.0
EOS_BOOST = 6.0

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Fixed text the merges are learned from: math word-problem English, so prompts tokenize a bit shorter.
_CORPUS = """\
Let's think step by step and output the final answer after "####".
Let's think step by step and output the final answer within \\boxed{}.
How many apples does she have left? How much money does he earn in total? What is the value of x?
Compute the sum of the fractions. Express your answer as a common fraction in lowest terms.
Simplify the square root. Solve for x in the equation. What is the least common multiple of the numbers?
The first term of an arithmetic sequence is given and the common difference is given. What is the term?
A bag contains red marbles and blue marbles. One marble is drawn at random. What is the probability?
A train travels at miles per hour for hours, then at miles per hour for hours. How many miles in total?
Each pack has stickers. She gives away some of them to her friends. There are students in the class.
The answer is the number of dollars. Therefore the final answer is 12. We have 3 + 4 = 7 and 2 * 6 = 12.
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode symbol map (the one ``ByteLevel`` uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _pre_tokenizer() -> Any:
    """Qwen2's pre-tokenizer (what transformers' ``Qwen2Tokenizer`` rebuilds), so every loader agrees."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _learn_merges(num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE over the fixed corpus; ties broken by the pair itself, so the result is deterministic."""
    pre = _pre_tokenizer()
    words: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in _CORPUS.splitlines():
        for piece, _ in pre.pre_tokenize_str(line):
            words[tuple(piece)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        new_words: collections.Counter[tuple[str, ...]] = collections.Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return merges


def build_tokenizer_json() -> tuple[str, dict[str, int], list[tuple[str, str]]]:
    """The fast tokenizer serialized as JSON, its full vocabulary (specials included) and its merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab: dict[str, int] = {}
    for _, sym in sorted(_bytes_to_unicode().items()):
        vocab[sym] = len(vocab)
    merges = _learn_merges(NUM_MERGES)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    for t in SPECIAL_TOKENS:
        tid = tok.token_to_id(t)
        if tid is None:
            raise RuntimeError(f"special token {t} was not added")
        vocab[t] = tid
    return tok.to_str(pretty=True), vocab, merges


def padded_vocab_size(n_tokens: int, multiple: int = 64) -> int:
    return -(-n_tokens // multiple) * multiple


def model_config(vocab_size: int, special: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": special[PAD_TOKEN],
        "eos_token_id": special[EOS_TOKEN],
        "pad_token_id": special[PAD_TOKEN],
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POS,
        "max_window_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "torch_dtype": TORCH_DTYPE,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def make_weights(
    vocab_size: int,
    seed: int,
    *,
    n_real: int | None = None,
    eos_id: int | None = None,
    eos_boost: float = EOS_BOOST,
) -> dict[str, np.ndarray]:
    """Seeded Qwen2 weights (names as in transformers / vLLM; stored as bf16); lm_head is tied to the embedding.

    Hidden coordinate 0 is a constant "bias" feature: every real token embeds it as ``+BIAS_FEATURE`` and no
    layer writes to it, so after the final norm it is always clearly positive.  The padding rows
    (``n_real..vocab_size``) embed it as a large negative value, which makes their logits hugely negative:
    the model never samples an id the tokenizer does not know.  ``eos_id`` gets a little extra on it, so some
    samples finish with ``stop`` rather than all with ``length``.
    """
    rng = np.random.Generator(np.random.PCG64(seed))

    def normal(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float64) * std).astype(np.float32)

    n_real = vocab_size if n_real is None else n_real
    kv = KV_HEADS * HEAD_DIM
    embed = normal(vocab_size, HIDDEN, std=0.2)
    embed[:, 0] = BIAS_FEATURE
    embed[n_real:, :] = 0.0
    embed[n_real:, 0] = -50.0 * BIAS_FEATURE
    if eos_id is not None:  # eos logit = (bias + boost) * feature: steady and tunable
        embed[eos_id, :] = 0.0
        embed[eos_id, 0] = BIAS_FEATURE + eos_boost
    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": embed}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        w[p + "self_attn.q_proj.weight"] = normal(HIDDEN, HIDDEN, std=0.1)
        w[p + "self_attn.q_proj.bias"] = normal(HIDDEN)
        w[p + "self_attn.k_proj.weight"] = normal(kv, HIDDEN, std=0.1)
        w[p + "self_attn.k_proj.bias"] = normal(kv)
        w[p + "self_attn.v_proj.weight"] = normal(kv, HIDDEN, std=0.1)
        w[p + "self_attn.v_proj.bias"] = normal(kv)
        w[p + "self_attn.o_proj.weight"] = normal(HIDDEN, HIDDEN, std=0.1)
        w[p + "mlp.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN, std=0.1)
        w[p + "mlp.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN, std=0.1)
        w[p + "mlp.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE, std=0.1)
        w[p + "self_attn.o_proj.weight"][0, :] = 0.0  # keep the bias feature constant
        w[p + "mlp.down_proj.weight"][0, :] = 0.0
    w["model.norm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    return w


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file of BF16 tensors (numpy has no bfloat16; the format is simple enough to write)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        blob = to_bf16_bits(tensors[name]).astype("<u2").tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as fh:
        fh.write(len(head).to_bytes(8, "little"))
        fh.write(head)
        for blob in blobs:
            fh.write(blob)


def tokenizer_config(special: dict[str, int]) -> dict[str, Any]:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(special[t]): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": MAX_POS,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_model(d: Path, seed: int) -> None:
    tok_json, vocab, merges = build_tokenizer_json()
    (d / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    special = {t: vocab[t] for t in SPECIAL_TOKENS}
    # vocab.json + merges.txt as in real Qwen2 checkpoints (older transformers' slow/fast loaders use them).
    _dump(d / "vocab.json", {k: v for k, v in vocab.items() if k not in special})
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (d / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab_size = padded_vocab_size(len(vocab))
    _dump(d / "config.json", model_config(vocab_size, special))
    _dump(
        d / "generation_config.json",
        {
            "bos_token_id": special[PAD_TOKEN],
            "eos_token_id": special[EOS_TOKEN],
            "pad_token_id": special[PAD_TOKEN],
        },
    )
    _dump(d / "tokenizer_config.json", tokenizer_config(special))
    _dump(
        d / "special_tokens_map.json",
        {
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
        },
    )
    weights = make_weights(vocab_size, seed, n_real=len(vocab), eos_id=special[EOS_TOKEN])
    write_bf16_safetensors(d / "model.safetensors", weights)


def _source_digest() -> str:
    """Hash of this builder's source: an edited builder never reuses an older build by mistake."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _stamp_text(seed: int) -> str:
    stamp = {
        "builder": "hpcgen-tiny-model",
        "version": BUILDER_VERSION,
        "source": _source_digest(),
        "seed": seed,
    }
    return json.dumps(stamp, sort_keys=True)


def is_complete(out_dir: Path, *, seed: int = 0) -> bool:
    stamp = Path(out_dir) / STAMP
    try:
        return stamp.read_text(encoding="utf-8").strip() == _stamp_text(seed)
    except OSError:
        return False


def build_tiny_model(out_dir: Path, *, seed: int = 0, force: bool = False) -> Path:
    """Build the tiny model into ``out_dir`` (atomically) unless a complete build is already there."""
    out_dir = Path(out_dir).absolute()
    if not force and is_complete(out_dir, seed=seed):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_model(tmp, seed)
        (tmp / STAMP).write_text(_stamp_text(seed) + "\n", encoding="utf-8")
        if out_dir.exists():  # stale, incomplete or forced: move it aside first
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(out_dir, old)
            except FileNotFoundError:
                pass
            else:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Another process finished the same build first; use theirs.
            if not is_complete(out_dir, seed=seed):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcgen_dev.tiny_model", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if a complete build is there")
    args = ap.parse_args(argv)
    print(build_tiny_model(args.out_dir, seed=args.seed, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
