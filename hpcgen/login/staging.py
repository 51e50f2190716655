"""Model staging: a ``model.path`` that is a Hugging Face hub id (``org/name``) is resolved once, on the login
node, to a pinned commit, downloaded into the shared Hugging Face cache (or found there), and the tasks then
load that snapshot folder with the hub switched off (``HF_HUB_OFFLINE=1``). Without this every array task
would download the model itself, all at once, on compute nodes that often have no internet, and a revision
pushed mid-run would mix two models in one output.

The cache is the one the tasks will see: ``HF_HUB_CACHE`` or ``HF_HOME``/hub from the job's ``env`` (where a
site file's environment lands too), else from this process's environment, else ``~/.cache/huggingface/hub``.
It must be on a filesystem the compute nodes share (``hpcgen doctor`` checks the run directory's).
``huggingface_hub`` is imported only when a hub id is staged.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import ModelError
from hpcgen.spec.loader import expand_path
from hpcgen.spec.schema import JobSpec

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = ("1", "true", "yes", "on")


def is_hub_id(path: str) -> bool:
    """``org/name`` that is not a local path (relative paths that exist win, as in transformers)."""
    return (bool(_HUB_ID.match(path)) and not path.startswith((".", "/", "~", "$"))
            and not expand_path(path).exists())


def hub_cache(job_env: dict[str, str]) -> Path:
    """The hub cache the tasks will use (see the module docstring for the order)."""
    for env in (job_env, os.environ):
        if env.get("HF_HUB_CACHE"):
            return Path(os.path.expandvars(env["HF_HUB_CACHE"])).expanduser()
        if env.get("HF_HOME"):
            return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


@dataclass
class Staged:
    hub_id: str
    requested: str  # what the job asked for: a branch, tag or commit
    revision: str  # the pinned commit hash
    snapshot: str  # the folder the tasks load
    cache: str
    downloaded_bytes: int
    note: str = ""  # e.g. "the hub was unreachable: the cached revision of 'main' is used"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        got = (f"downloaded {self.downloaded_bytes / 1e6:.1f} MB" if self.downloaded_bytes
               else "already in the cache")
        return (f"model {self.hub_id}@{self.requested}: pinned to revision {self.revision}, {got} "
                f"({self.snapshot}); tasks run offline{'; ' + self.note if self.note else ''}")


@dataclass
class StagedModels:
    model_path: str
    tokenizer_path: str | None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # "model"/"tokenizer" -> Staged.to_dict()
    task_env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def stage_models(spec: JobSpec, *, download: bool = True) -> StagedModels:
    """Stage ``model.path`` (and ``model.tokenizer_path``) when they are hub ids. ``download=False`` (dry run)
    only looks in the cache and leaves an uncached id as it is, with a note."""
    m = spec.model
    out = StagedModels(m.path, m.tokenizer_path)
    if m.revision and not is_hub_id(m.path):
        raise ModelError(f"model.revision={m.revision} applies to hub ids only; model.path {m.path} is a local path")
    cache = hub_cache(spec.env)
    for key, path, revision in (("model", m.path, m.revision), ("tokenizer", m.tokenizer_path, None)):
        if not path or not is_hub_id(path):
            continue
        staged = stage(path, revision or "main", cache, download=download, key=f"model.{key}_path"
                       if key == "tokenizer" else "model.path")
        if staged is None:
            out.notes.append(f"note: model {path} is not in the cache {cache}: submit will pin its revision "
                             "and download it there")
            continue
        out.sources[key] = staged.to_dict()
        out.notes.append(staged.describe())
        if key == "model":
            out.model_path = staged.snapshot
        else:
            out.tokenizer_path = staged.snapshot
    if out.sources:
        out.task_env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    return out


def _repo_dir(cache: Path, hub_id: str) -> Path:
    return cache / f"models--{hub_id.replace('/', '--')}"


def _blob_bytes(cache: Path, hub_id: str) -> int:
    blobs = _repo_dir(cache, hub_id) / "blobs"
    try:
        return sum(f.stat().st_size for f in blobs.iterdir() if f.is_file())
    except OSError:
        return 0


def stage(hub_id: str, requested: str, cache: Path, *, download: bool = True,
          key: str = "model.path") -> Staged | None:
    """Pin ``hub_id@requested`` to a commit and make sure its snapshot is complete in ``cache``."""
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.utils import (  # where 0.24 and 2.x both export them
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ModelError(f"{key} {hub_id} is a hub id, which needs huggingface_hub on the login node "
                         "(pip install huggingface_hub), or use a local model directory") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None

    def cached(revision: str) -> str | None:
        try:
            return str(snapshot_download(hub_id, revision=revision, cache_dir=str(cache), local_files_only=True))
        except (LocalEntryNotFoundError, OSError):
            return None

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
    if not download or offline:
        path = cached(requested)
        if path is None and offline and download:  # a dry run only notes it
            raise ModelError(f"{key} {hub_id}@{requested} is not in the cache {cache} and HF_HUB_OFFLINE is set "
                             "on this node: download it into that cache first, or unset HF_HUB_OFFLINE")
        return None if path is None else Staged(hub_id, requested, Path(path).name, path, str(cache), 0,
                                                "HF_HUB_OFFLINE is set here: the cached revision is used"
                                                if offline else "")
    note = ""
    try:
        sha = requested if _COMMIT.match(requested) else HfApi(endpoint=endpoint).model_info(
            hub_id, revision=requested).sha
    except RevisionNotFoundError:
        raise ModelError(f"model.revision {requested} is not a branch, tag or commit of {hub_id}") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{key} {hub_id}: no such model on the hub ({endpoint or 'huggingface.co'}), or it is "
                         "private/gated and no valid HF_TOKEN is set") from None
    except Exception as exc:  # noqa: BLE001 - connection errors differ across huggingface_hub/http clients
        path = cached(requested)
        if path is None:
            raise ModelError(f"{key} {hub_id}: the hub ({endpoint or 'huggingface.co'}) cannot be reached from "
                             f"this node ({type(exc).__name__}) and the cache {cache} has no snapshot of it; "
                             "download it into that cache where there is network, or use a local directory"
                             ) from None
        sha = Path(path).name
        note = f"the hub could not be reached ({type(exc).__name__}): the cached revision of '{requested}' is used"
    if not sha:
        raise ModelError(f"{key} {hub_id}: the hub did not report a commit for revision {requested}")
    before = _blob_bytes(cache, hub_id)
    try:
        path = str(snapshot_download(hub_id, revision=sha, cache_dir=str(cache), endpoint=endpoint))
    except RepositoryNotFoundError:
        raise ModelError(f"{key} {hub_id}: no such model on the hub, or no access (HF_TOKEN)") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{key} {hub_id}@{sha}: download into {cache} failed: {first}") from None
    if requested != sha:  # the cache's refs/<branch> (huggingface_hub's layout), so later offline lookups find it
        from hpcgen.rundir.atomic import write_bytes

        ref = _repo_dir(cache, hub_id) / "refs" / requested
        ref.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(ref, sha.encode())
    return Staged(hub_id, requested, sha, path, str(cache), max(0, _blob_bytes(cache, hub_id) - before), note)
