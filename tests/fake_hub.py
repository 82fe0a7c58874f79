"""
A small fake Hugging Face Hub on loopback: enough of the API for create_repo, upload_folder and snapshot_download.

Repositories live in memory. Uploads are "regular" (base64 in the commit payload), never LFS or Xet, which
the real hub also accepts for small files. Tests point huggingface_hub at it with ``endpoint=`` / ``HF_ENDPOINT``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


class Repo:
    def __init__(self, repo_id: str, private: bool) -> None:
        self.repo_id = repo_id
        self.private = private
        self.files: dict[str, bytes] = {}
        self.sha = "0" * 40
        self.commits: list[str] = []

    def commit(self, files: dict[str, bytes], summary: str) -> str:
        self.files.update(files)
        digest = hashlib.sha1(self.sha.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + files[path])
        self.sha = digest.hexdigest()
        self.commits.append(summary)
        return self.sha


class FakeHub:
    """``with FakeHub() as hub: HfApi(endpoint=hub.url)``; ``hub.repos`` holds what was pushed."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.validated: list[dict] = []
        """The README metadata blocks the hub was asked to validate (what the hub page would show)."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes | dict | list | None = None, headers: dict | None = None) -> None:
                is_json = isinstance(body, dict | list)
                data = json.dumps(body).encode() if is_json else (body or b"")
                self.send_response(status)
                content_type = "application/json" if is_json else "application/octet-stream"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _not_found(self, what: str) -> None:
                self._send(404, {"error": f"{what} not found"}, {"X-Error-Code": "RepoNotFound"})

            def do_POST(self) -> None:  # noqa: N802
                path = unquote(self.path.split("?", 1)[0])
                hub.requests.append(("POST", path))
                if path == "/api/repos/create":
                    spec = json.loads(self._body())
                    repo_id = f"{spec['organization']}/{spec['name']}" if spec.get("organization") else spec["name"]
                    if repo_id in hub.repos:
                        self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                        return
                    private = bool(spec.get("private")) or spec.get("visibility") == "private"  # 1.x / 2.x clients
                    hub.repos[repo_id] = Repo(repo_id, private)
                    self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
                    return
                if path == "/api/validate-yaml":  # the README's metadata block must be a YAML mapping
                    import yaml

                    content = json.loads(self._body())["content"]
                    match = re.match(r"---\n(.*?)\n---\n", content, re.S)
                    meta = yaml.safe_load(match.group(1)) if match else None
                    if not isinstance(meta, dict):
                        self._send(400, {"errors": [{"message": "no YAML metadata block"}]})
                        return
                    hub.validated.append(meta)
                    self._send(200, {"errors": [], "warnings": []})
                    return
                match = re.fullmatch(r"/api/models/(.+?)/(preupload|commit)/([^/]+)", path)
                if match is None or match.group(1) not in hub.repos:
                    self._not_found(path)
                    return
                repo = hub.repos[match.group(1)]
                body = self._body()
                if match.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files], "commitOid": repo.sha})
                    return
                files, summary = {}, ""
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        summary = item["value"].get("summary", "")
                    elif item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                sha = repo.commit(files, summary)
                self._send(200, {"commitUrl": f"{hub.url}/{repo.repo_id}/commit/{sha}", "commitOid": sha,
                                 "pullRequestUrl": None, "success": True})

            def do_GET(self) -> None:  # noqa: N802
                path = unquote(self.path.split("?", 1)[0])
                hub.requests.append((self.command, path))
                match = re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)(?:/.*)?", path)
                if match is not None:
                    repo = hub.repos.get(match.group(1))
                    if repo is None:
                        self._not_found(path)
                        return
                    entries = [{"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                               for f, data in sorted(repo.files.items())]
                    self._send(200, entries)
                    return
                match = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
                if match is not None:
                    repo = hub.repos.get(match.group(1))
                    if repo is None:
                        self._not_found(path)
                        return
                    self._send(200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha,
                                     "private": repo.private, "siblings": [{"rfilename": f} for f in sorted(repo.files)]})
                    return
                match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
                repo = hub.repos.get(match.group(1)) if match is not None else None
                if match is None or repo is None or match.group(3) not in repo.files:
                    self._send(404, {"error": "entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    return
                data = repo.files[match.group(3)]
                self._send(200, data, {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})

            do_HEAD = do_GET  # noqa: N815

        return Handler
