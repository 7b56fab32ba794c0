"""A loopback stand-in for the Hugging Face hub HTTP API, for tests that run the real
`huggingface_hub`/`datasets` clients up to the network boundary.

It keeps repositories in memory (branches -> commits -> files), answers the endpoints that
`create_repo`, `create_branch`, `create_commit`, `repo_info`, `HfFileSystem` (tree, paths-info,
resolve) and `DatasetDict.push_to_hub` use, and records every request (method, path, query, headers,
body) for the test to inspect. Binary files go through the basic Git LFS protocol (batch + PUT),
text files inside the commit; the client must run with HF_HUB_DISABLE_XET=1 (Xet storage is a
separate service this stand-in does not emulate).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

ROOT_SHA = "0" * 40
_API = re.compile(
    r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|branch|preupload|commit|tree|paths-info)/([^/]+)(/.*)?)?$"
)
_LFS_BATCH = re.compile(r"^/(?:datasets/)?[^/]+/[^/]+\.git/info/lfs/objects/batch$")
_LFS_SUFFIXES = (".parquet", ".arrow", ".safetensors", ".bin", ".gguf", ".pt", ".gz")
_RESOLVE = re.compile(r"^/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class Repo:
    def __init__(self, private: bool):
        self.private = private
        self.commits: dict[str, dict[str, bytes]] = {ROOT_SHA: {}}
        self.branches = {"main": ROOT_SHA}
        self.messages: list[tuple[str, str]] = []  # (branch, summary) per commit

    def files(self, rev: str) -> dict[str, bytes]:
        return self.commits[self.branches.get(rev, rev)]


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[dict] = []
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                hub._serve(self, "GET")

            def do_HEAD(self) -> None:
                hub._serve(self, "HEAD")

            def do_POST(self) -> None:
                hub._serve(self, "POST")

            def do_PUT(self) -> None:
                hub._serve(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- request handling -------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method in ("POST", "PUT") else b""
        record = {
            "method": method,
            "path": path,
            "query": parts.query,
            "headers": {k.lower(): v for k, v in h.headers.items()},
            "body": body,
        }
        self.requests.append(record)
        try:
            status, payload, headers = self._route(method, path, parts.query, body, h.headers)
        except KeyError as exc:
            status, payload, headers = 404, {"error": f"not found: {exc}"}, {"X-Error-Code": "EntryNotFound"}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(data)

    def _route(self, method: str, path: str, query: str, body: bytes, headers) -> tuple[int, object, dict]:
        if path == "/api/repos/create":
            req = json.loads(body)
            kind = req.get("type") or "model"
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            self.repos.setdefault(
                (kind, repo_id),
                Repo(req.get("visibility", "private" if req.get("private") else "public") == "private"),
            )
            prefix = "datasets/" if kind == "dataset" else ""
            return 200, {"url": f"{self.url}/{prefix}{repo_id}", "name": repo_id}, {}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, {}
        if _LFS_BATCH.match(path):
            objects = json.loads(body)["objects"]
            actions = [
                {**o, "actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}", "header": {}}}}
                for o in objects
            ]
            return 200, {"transfer": "basic", "objects": actions}, {}
        if method == "PUT" and path.startswith("/lfs-upload/"):
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return 400, {"error": "sha256 mismatch"}, {}
            self.lfs[oid] = body
            return 200, {}, {}
        if m := _RESOLVE.match(path):
            kind = "dataset" if m[1] else "model"
            files, sha = self._files(kind, m[2], m[3])
            content = files[m[4]]
            return self._bytes(content, sha, headers.get("Range"))
        m = _API.match(path)
        if not m:
            return 404, {"error": f"unhandled {method} {path}"}, {}
        kind, repo_id, action, rev, rest = m[1][:-1], m[2], m[3], m[4], (m[5] or "").lstrip("/")
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if action in (None, "revision"):
            files, sha = self._files(kind, repo_id, rev or "main")
            siblings = [{"rfilename": p} for p in sorted(files)]
            return 200, {"id": repo_id, "sha": sha, "private": repo.private, "siblings": siblings}, {}
        if action == "branch":
            repo.branches.setdefault(rev, repo.branches["main"])
            return 200, {}, {}
        if action == "preupload":
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(_LFS_SUFFIXES) else "regular",
                 "shouldIgnore": False}
                for f in files
            ]  # fmt: skip
            return 200, {"files": modes}, {}
        if action == "commit":
            repo_url = f"{self.url}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
            return self._commit(repo, rev, body, repo_url)
        files, _ = self._files(kind, repo_id, rev)
        if action == "tree":
            prefix = f"{rest}/" if rest else ""
            under = [p for p in files if p.startswith(prefix)]
            if rest and not under:
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            return 200, self._entries(files, under, prefix, "recursive=true" in query.lower()), {}
        req = json.loads(body) if headers.get("Content-Type", "").startswith("application/json") else {}
        wanted = req.get("paths") or re.findall(r"paths=([^&]+)", body.decode())
        wanted = [unquote(p) for p in wanted]
        return 200, [self._entry(p, files[p]) for p in wanted if p in files], {}

    def _files(self, kind: str, repo_id: str, rev: str) -> tuple[dict[str, bytes], str]:
        repo = self.repos[(kind, repo_id)]
        sha = repo.branches.get(rev, rev)
        return repo.commits[sha], sha

    def _commit(self, repo: Repo, branch: str, body: bytes, repo_url: str) -> tuple[int, object, dict]:
        lines = [json.loads(ln) for ln in body.splitlines() if ln.strip()]
        files = dict(repo.commits[repo.branches[branch]])
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                files[value["path"]] = self.lfs[value["oid"]]
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
        sha = hashlib.sha1(repo.branches[branch].encode() + body).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        repo.messages.append((branch, lines[0]["value"]["summary"]))
        return 200, {"commitUrl": f"{repo_url}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}, {}

    @staticmethod
    def _entry(path: str, content: bytes) -> dict:
        oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        return {"type": "file", "path": path, "size": len(content), "oid": oid}

    def _entries(self, files: dict[str, bytes], paths: list[str], prefix: str, recursive: bool) -> list[dict]:
        out, dirs = [], set()
        for p in sorted(paths):
            parents = p[len(prefix) :].split("/")[:-1]
            dirs.update(prefix + "/".join(parents[: i + 1]) for i in range(len(parents) if recursive else 1))
            if recursive or not parents:
                out.append(self._entry(p, files[p]))
        return [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(dirs)] + out

    @staticmethod
    def _bytes(content: bytes, sha: str, range_header: str | None) -> tuple[int, object, dict]:
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": '"' + hashlib.sha1(content).hexdigest() + '"',
            "Accept-Ranges": "bytes",
        }
        if range_header and (m := re.match(r"bytes=(\d+)-(\d*)", range_header)):
            start = int(m[1])
            end = int(m[2]) if m[2] else len(content) - 1
            end = min(end, len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return 206, content[start : end + 1], headers
        return 200, content, headers

    # -- what tests inspect -------------------------------------------------------------------
    def files(self, kind: str, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        return self._files(kind, repo_id, rev)[0]
