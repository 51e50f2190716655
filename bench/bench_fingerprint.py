"""What a content fingerprint of the model costs (taken by every task at start, by resume and by merge).

A checkpoint of 4 safetensors files of 512 MiB each (random bytes, real headers) is fingerprinted with
``hpcgen.rundir.fingerprint.model_fingerprint`` and, as the baseline, hashed whole with sha256, both from the
page cache (the files were just written) and after ``posix_fadvise(DONTNEED)`` (best effort: cold reads from
disk where the kernel honours it). Figures: seconds for each, their ratio, bytes read per file, and the
extrapolation to a 100 GB checkpoint in 5 GB files (what the sampling reads does not grow with file size).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

B = "fingerprint"
FILES, SIZE = 4, 512 * 1024 * 1024


def build(root: Path) -> Path:
    model = root / "model"
    stamp = model / ".complete"
    if stamp.is_file():
        return model
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "bench"}))
    for i in range(FILES):
        header = json.dumps({"w": {"dtype": "BF16", "shape": [SIZE // 2], "data_offsets": [0, SIZE]}}).encode()
        with open(model / f"model-{i:05d}-of-{FILES:05d}.safetensors", "wb") as fh:
            fh.write(len(header).to_bytes(8, "little") + header)
            for _ in range(SIZE // (16 << 20)):
                fh.write(os.urandom(16 << 20))
    stamp.write_text("ok")
    return model


def full_hash(model: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def drop_cache(model: Path) -> None:
    for f in model.iterdir():
        with open(f, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def timed(fn, model: Path, cold: bool) -> float:
    if cold:
        drop_cache(model)
    t0 = time.perf_counter()
    fn(model)
    return time.perf_counter() - t0


def main() -> None:
    from hpcgen.rundir.fingerprint import BLOCK, SAMPLES, model_fingerprint

    model = build(common.bench_dir(B))
    fp = lambda m: model_fingerprint(str(m))  # noqa: E731
    for cold in (False, True):
        what = "cold (fadvise DONTNEED)" if cold else "page cache"
        ours = min(timed(fp, model, cold) for _ in range(3))
        base = min(timed(full_hash, model, cold) for _ in range(1 if cold else 2))
        common.report(B, f"model fingerprint of {FILES} x 512 MiB, {what}", ours, "s", "info", None,
                      f"full sha256 of the same files {base:.2f} s")
        common.report(B, f"fingerprint time / full sha256 time, {what}", ours / base, "", "< 0.05",
                      ours / base < 0.05)
    per_file = (SAMPLES + 2) * BLOCK
    common.report(B, "bytes read per large file", per_file / 2**20, "MiB", "info", None,
                  "plus its safetensors header; independent of the file's size")
    common.report(B, "read for a 100 GB checkpoint in 5 GB files", 20 * per_file / 2**20, "MiB", "info", None,
                  "vs 100 GB for a full hash")


if __name__ == "__main__":
    main()
