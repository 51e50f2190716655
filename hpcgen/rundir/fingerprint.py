"""Content fingerprints of the model and the dataset, cheap enough to take at every task start and every merge.

A checkpoint overwritten in place with weights of the same shapes keeps its file names, sizes and safetensors
headers, so those alone cannot tell it changed. A fingerprint here also hashes sampled content: for every
file larger than ``SMALL`` bytes, its size, its first and last ``BLOCK`` bytes, a parquet footer or
safetensors header whole, and ``SAMPLES`` blocks spread evenly through it (about 4 MiB read per file,
whatever its size); smaller files are hashed whole. Changed weights change almost every byte, so a changed
file is caught unless the change spares every sampled block. A file in a Hugging Face cache snapshot is a
symlink to ``blobs/<sha256 of its content>``: that name is its hash, and nothing is read.

Modification times are not used: a copy that keeps them (``cp -p``, rsync) or a rewrite within the
filesystem's time resolution would fool them, and a ``touch`` of an unchanged file would refuse a resume.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

BLOCK = 64 * 1024
SAMPLES = 62
SMALL = 4 * 1024 * 1024
_BLOB = re.compile(r"^[0-9a-f]{64}$")
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken", ".py", ".jinja")


def _header(fh: object, path: Path, size: int) -> bytes:
    """A safetensors header or a parquet footer, whole (names, shapes, dtypes, offsets, statistics)."""
    read, seek = fh.read, fh.seek  # type: ignore[attr-defined]
    if path.suffix == ".safetensors" and size >= 8:
        seek(0)
        n = int.from_bytes(read(8), "little")
        if 0 < n <= min(size - 8, 100 * 1024 * 1024):
            return bytes(read(n))
    if path.suffix in (".parquet", ".pq") and size >= 12:
        seek(size - 8)
        n = int.from_bytes(read(4), "little")
        if 0 < n <= min(size - 12, 100 * 1024 * 1024):
            seek(size - 8 - n)
            return bytes(read(n))
    return b""


def file_digest(path: Path) -> str:
    """sha256 of a file's sampled content (see the module docstring); whole for small files."""
    path = Path(path)
    target = os.path.realpath(path)
    if os.path.basename(os.path.dirname(target)) == "blobs" and _BLOB.match(os.path.basename(target)):
        return "blob:" + os.path.basename(target)
    size = os.path.getsize(path)
    h = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        if size <= SMALL:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
        h.update(_header(fh, path, size))
        step = (size - BLOCK) // (SAMPLES + 1)
        for offset in [0, *(step * i for i in range(1, SAMPLES + 1)), size - BLOCK]:
            fh.seek(offset)
            h.update(fh.read(BLOCK))
    return h.hexdigest()


def model_fingerprint(model_path: str) -> str:
    """The model directory's files (names, sizes, sampled content); a hub id stands for itself."""
    p = Path(model_path)
    if not p.is_dir():
        return "hub:" + model_path
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.suffix in MODEL_SUFFIXES and not any(part.startswith(".") for part in
                                                                  f.relative_to(p).parts):
            h.update(f"{f.relative_to(p)}:{file_digest(f)}\n".encode())
    return h.hexdigest()


def dataset_sample(path: str) -> str:
    """A dataset file's sampled-content digest, checked by every task and by merge."""
    return file_digest(Path(path))


def changed_dataset(entry: dict) -> str | None:
    """Which file of a dataset (manifest entry) changed since the plan, in one line, or None."""
    for f in entry["files"]:
        try:
            if f.get("sample") and dataset_sample(f["path"]) != f["sample"]:
                return f"dataset {f['path']} changed since the plan (its content differs)"
        except OSError as exc:
            return f"dataset {f['path']} cannot be read any more ({exc.strerror or exc})"
    return None


def changed_inputs(manifest: dict, *, model: bool = True, datasets: list[int] | None = None) -> str | None:
    """What changed since the plan (a dataset file's or the model's content), in one line, or None.
    ``datasets``: only these (indices), e.g. the one being merged."""
    for i, entry in enumerate(manifest["datasets"]):
        if datasets is None or i in datasets:
            problem = changed_dataset(entry)
            if problem:
                return problem
    path = manifest["job"]["model"]["path"]
    if model and os.path.isdir(path) and model_fingerprint(path) != manifest["model_fingerprint"]:
        return f"model {path} changed since the plan (its files differ)"
    return None
