"""``slurm.container``: the task's Python runs inside an image, through pyxis (srun flags) or Apptainer
(``apptainer exec`` in front of the interpreter). Knows nothing of vLLM.

Everything a task touches is mounted at the same path inside as outside, so the paths in the manifest and the
job pickle hold in the container: the run directory (parts, markers, submitit's folder), the dataset, the model
and tokenizer, the output directory and the Hugging Face cache named in ``env``. The mounts are on the srun
line of the task, so a multi-node task (one srun task per node) gets the same on every node.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcgen.errors import ConfigError
from hpcgen.spec.schema import ContainerConfig, JobSpec, parse_mount

# After '$VAR'/'~' expansion: what may stand in a mount list or on the srun line (quoted there anyway).
_PATH = re.compile(r"^/[A-Za-z0-9_.@+/%=~-]*$")
_IMAGE = re.compile(r"^[A-Za-z0-9_.:@+/%#=~-]+$")
_CACHE_ENV = ("HF_HOME", "HF_HUB_CACHE")


@dataclass(frozen=True)
class Mount:
    src: str
    dst: str
    mode: str | None  # ro | rw | None (the runtime's default, read-write)
    why: str

    @property
    def text(self) -> str:
        return ":".join([self.src, self.dst] + ([self.mode] if self.mode else []))


def _expand(value: str) -> str:
    return os.path.expanduser(os.path.expandvars(value))


def _path(value: str, what: str) -> str:
    p = os.path.normpath(_expand(value))
    if not _PATH.match(p):
        raise ConfigError(f"slurm.container: {what} {p} cannot be mounted: a mounted path must be absolute and "
                          "hold no spaces, ',' ':' or shell characters")
    return p


def auto_mounts(spec: JobSpec, run_dir: Path) -> list[Mount]:
    """What the task reads or writes, from the resolved spec (absolute paths after the plan)."""
    out = [Mount(str(run_dir), str(run_dir), None, "run directory")]
    for path, what in dataset_paths(spec):
        out.append(Mount(path, path, "ro", what))
    for key, value in (("model", spec.model.path), ("tokenizer", spec.model.tokenizer_path)):
        if value and os.path.isabs(_expand(value)):  # a hub id is not a path: the cache below holds it
            out.append(Mount(value, value, "ro", key))
            for target in _link_targets(Path(_expand(value))):
                out.append(Mount(target, target, "ro", f"{key} file links"))
    for e in spec.dataset_entries():
        output = e.output_path or (spec.data.output_path if len(spec.dataset_entries()) == 1 else None)
        if output:
            parent = str(Path(output).parent)
            out.append(Mount(parent, parent, None, "output directory"))
    for name in _CACHE_ENV:
        value = spec.env.get(name)
        if value and os.path.isabs(_expand(value)):
            out.append(Mount(value, value, None, f"env.{name}"))
    return out


def dataset_paths(spec: JobSpec) -> list[tuple[str, str]]:
    """What to mount for each dataset: a file or folder itself, a glob's folder (the part before the first
    wildcard), each file of a list."""
    out = []
    for e in spec.dataset_entries():
        what = "dataset" if not e.named else f"dataset {e.name}"
        for p in ([e.path] if isinstance(e.path, str) else list(e.path)):
            if any(c in p for c in "*?["):
                head = p[:min(p.index(c) for c in "*?[" if c in p)]
                p = head if head.endswith("/") else os.path.dirname(head)
                p = p.rstrip("/") or "/"
            out.append((p, what))
    return out


def _link_targets(directory: Path) -> list[str]:
    """Directories outside ``directory`` that its files link to (a Hugging Face cache snapshot links every file
    to ``../../blobs``): mounted too, or the links would dangle inside the container."""
    if not directory.is_dir():
        return []
    inside = os.path.realpath(directory)
    targets = {os.path.dirname(os.path.realpath(f)) for f in directory.iterdir() if f.is_symlink()}
    return sorted(t for t in targets if t != inside and not t.startswith(inside + "/"))


def mounts(spec: JobSpec, run_dir: Path) -> list[Mount]:
    """The user's mounts, then the automatic ones not already covered, parents before children."""
    c = spec.slurm.container
    assert c is not None  # noqa: S101 - callers check
    user = []
    for entry in c.mounts:
        src, dst, mode = parse_mount(entry)
        user.append(Mount(_path(src, "mount"), _path(dst, "mount"), mode, "slurm.container.mounts"))
    auto = [Mount(_path(m.src, m.why), _path(m.dst, m.why), m.mode, m.why) for m in auto_mounts(spec, run_dir)]

    def covered(m: Mount, by: list[Mount]) -> bool:  # already visible at the same path, writable if need be
        return any(o.src == o.dst and (m.src == o.src or m.src.startswith(o.src.rstrip("/") + "/"))
                   and (o.mode != "ro" or m.mode == "ro") for o in by)

    chosen = list(user)
    for m in sorted(auto, key=lambda m: (m.src, m.mode == "ro")):  # parents first; read-write before read-only
        if not covered(m, chosen):
            chosen.append(m)
    return sorted(chosen, key=lambda m: m.dst)


def _image(c: ContainerConfig) -> str:
    image = _expand(c.image)
    if not _IMAGE.match(image):
        raise ConfigError(f"slurm.container.image {image!r} must be one word without spaces or shell characters")
    return image


def apply(params: dict[str, Any], spec: JobSpec, run_dir: Path) -> str:
    """Add the container to submitit's parameters (pyxis: srun flags) and return submitit's ``python``:
    the command that starts the task's interpreter (apptainer: ``apptainer exec ... IMAGE python3``)."""
    c = spec.slurm.container
    assert c is not None  # noqa: S101 - callers check
    binds = ",".join(m.text for m in mounts(spec, run_dir))
    workdir = _path(c.workdir, "workdir") if c.workdir else str(run_dir)
    if c.runtime == "pyxis":
        params["srun_args"] = [f"--container-image={_image(c)}", f"--container-mounts={binds}",
                               f"--container-workdir={workdir}", *c.options, *params.get("srun_args", [])]
        return c.python  # found on the image's PATH; submitit appends "-u -m submitit.core._submit FOLDER"
    argv = [c.executable, "exec", *(["--nv"] if c.nv else []), "--bind", binds, "--pwd", workdir, *c.options,
            _image(c), c.python]
    return shlex.join(argv)  # submitit writes this unquoted in front of its arguments: every word quoted here


def describe(spec: JobSpec, run_dir: Path) -> list[str]:
    """Comment lines for the dry run: the runtime, the image, each mount and why it is there."""
    c = spec.slurm.container
    if c is None:
        return []
    nodes = spec.trainer.nnodes
    lines = [f"# container: {c.runtime} image {_image(c)}; the task's srun line starts it on "
             + (f"each of the {nodes} nodes" if nodes > 1 else "the node") + " with these mounts (same path inside):"]
    lines += [f"#   {m.text}  ({m.why})" for m in mounts(spec, run_dir)]
    return lines
