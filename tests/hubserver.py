"""A small real HTTP server on 127.0.0.1 that speaks the parts of the Hugging Face hub protocol
huggingface_hub's ``snapshot_download`` uses: repo info, the recursive tree listing, and
``/resolve/`` file downloads with ETag, commit headers and byte ranges.

Used by the download tests instead of mocking the library: huggingface_hub runs unmodified
against it. It can hang part-way through a file once (``stall_after``) so a test can kill the
client mid-download and check that the next run resumes with a byte range.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before hanging, once
    declared_size: dict[str, int] = field(default_factory=dict)  # filename -> size the hub claims (disk checks)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, range header)
    stalled: threading.Event = field(default_factory=threading.Event)  # set to release hanging responses


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    state: HubState  # set on the subclass made per server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _json(self, payload, status: int = 200, error_code: str | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", payload.get("error", error_code))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo(self, repo_id: str, revision: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._json({"error": "Repository not found"}, 404, "RepoNotFound")
            return None
        if repo.gated:
            self._json({"error": "Access to this repo is restricted"}, 401, "GatedRepo")
            return None
        if revision not in ("main", repo.sha):
            self._json({"error": "Invalid rev id"}, 404, "RevisionNotFound")
            return None
        return repo

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.state.requests.append((self.command, path, self.headers.get("Range", "")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m:
            repo = self._repo(m.group(1), m.group(2))
            if repo:
                self._json({"id": m.group(1), "modelId": m.group(1), "sha": repo.sha, "private": False,
                            "siblings": [{"rfilename": f} for f in sorted(repo.files)]})
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m:
            repo = self._repo(m.group(1), m.group(2))
            if repo:
                self._json([{"type": "file", "path": f, "size": self.state.declared_size.get(f, len(d)),
                             "oid": hashlib.sha1(d).hexdigest()} for f, d in sorted(repo.files.items())])
            return
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = self._repo(m.group(1), m.group(2))
            if repo is None:
                return
            data = repo.files.get(m.group(3))
            if data is None:
                self._json({"error": "Entry not found"}, 404, "EntryNotFound")
                return
            self._send_file(m.group(3), data, repo.sha)
            return
        self._json({"error": "not found"}, 404)

    def _send_file(self, name: str, data: bytes, sha: str) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{_etag(data)}"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if name in self.state.declared_size:  # the hub reports LFS file sizes in this header
            self.send_header("X-Linked-Size", str(self.state.declared_size[name]))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        stall = self.state.stall_after.pop(name, None)
        if stall is not None and stall < len(body):
            # Send part of the file, then hang like a dead connection until the client goes away.
            self.wfile.write(body[:stall])
            self.wfile.flush()
            self.state.stalled.wait(timeout=60)
            self.close_connection = True
            return
        self.wfile.write(body)


class HubServer:
    """``with HubServer({"org/repo": Repo({...})}) as hub: hub.url``"""

    def __init__(self, repos: dict[str, Repo] | None = None) -> None:
        self.state = HubState(repos=dict(repos or {}))
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.state.stalled.set()
        self.httpd.shutdown()
        self.httpd.server_close()
