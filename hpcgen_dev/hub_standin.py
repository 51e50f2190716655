"""A stand-in for the Hugging Face hub on 127.0.0.1, serving local model folders as hub repos, for tests.

It answers the few requests ``huggingface_hub.snapshot_download`` makes (read in huggingface_hub's
``hf_api.py`` / ``file_download.py`` / ``_snapshot_download.py``):

* ``GET /api/models/{repo}[/revision/{rev}]`` -> ``{"id", "sha", "siblings"}`` (``HfApi.model_info``);
* ``GET /api/models/{repo}/tree/{rev}?recursive=...`` -> ``[{"type": "file", "path", "size", "oid"}]``
  (``list_repo_tree``; one page, no ``Link`` header);
* ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``
  (``get_hf_file_metadata``; no ``X-Xet-*`` headers, so the plain HTTP download path is used);
* 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` otherwise.

Each repo has one commit, ``main``: a sha1 of its files' names and bytes. Every request is logged in
``requests`` so tests can see what was asked, and when.

    with HubStandIn({"hpcgen-test/tiny": Path(".cache/tiny-model")}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


class _Repo:
    def __init__(self, folder: Path) -> None:
        self.files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
                      if p.is_file() and not p.name.startswith(".")}
        h = hashlib.sha1()  # noqa: S324 - a commit id, as git's
        self.blob: dict[str, str] = {}
        for name, path in self.files.items():
            data = path.read_bytes()
            self.blob[name] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324
            h.update(name.encode() + b"\0" + self.blob[name].encode())
        self.sha = h.hexdigest()


class HubStandIn:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = {name: _Repo(Path(folder)) for name, folder in repos.items()}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub._handle(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HubStandIn:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving: later requests get 'connection refused', as from a node without internet."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
            self._thread = None
        self.server.server_close()

    # --- routing ----------------------------------------------------------------------------------------

    def _find(self, parts: list[str]) -> tuple[str, _Repo] | None:
        if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in self.repos:
            name = f"{parts[0]}/{parts[1]}"
            return name, self.repos[name]
        return None

    def _handle(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append((h.command, path))
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"]:
            found = self._find(parts[2:])
            if found is None:
                return self._error(h, 404, "RepoNotFound", body)
            name, repo = found
            rest = parts[4:]
            if not rest or rest[0] == "revision":
                if rest and rest[1:] and rest[1] not in ("main", repo.sha):
                    return self._error(h, 404, "RevisionNotFound", body)
                return self._json(h, {"id": name, "sha": repo.sha, "private": False,
                                      "siblings": [{"rfilename": f} for f in repo.files]}, body)
            if rest[0] == "tree" and len(rest) >= 2:
                if rest[1] not in ("main", repo.sha):
                    return self._error(h, 404, "RevisionNotFound", body)
                return self._json(h, [{"type": "file", "path": f, "size": p.stat().st_size, "oid": repo.blob[f]}
                                      for f, p in repo.files.items()], body)
            return self._error(h, 404, "EntryNotFound", body)
        found = self._find(parts)
        if found is None or parts[2:3] != ["resolve"] or len(parts) < 5:
            return self._error(h, 404, "RepoNotFound", body)
        _, repo = found
        if parts[3] not in ("main", repo.sha):
            return self._error(h, 404, "RevisionNotFound", body)
        fname = "/".join(parts[4:])
        if fname not in repo.files:
            return self._error(h, 404, "EntryNotFound", body, commit=repo.sha)
        data = repo.files[fname].read_bytes()
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("ETag", f'"{repo.blob[fname]}"')
        h.send_header("X-Repo-Commit", repo.sha)
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, obj: Any, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int, code: str, body: bool, commit: str | None = None) -> None:
        data = json.dumps({"error": code}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", code)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
