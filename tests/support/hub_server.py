"""A local Hugging Face Hub-compatible HTTP server for tests (standard library only: http.server + threading).

It speaks enough of the Hub's HTTP API for the real `huggingface_hub` client (2.x) to create repos, push commits
(regular files inline in the commit; LFS files through the git-lfs batch API + PUT, which the client only uses when
`HF_HUB_DISABLE_XET=1` is set before import) and read them back: repo info, refs, commits, tree, paths-info and
HEAD/GET `resolve` at a branch or at any older commit sha. Xet storage is not implemented: never send X-Xet-Hash.

Like the real Hub, a new repo starts with one "initial commit" holding a `.gitattributes` file, so it has a sha
from the start. File contents live on disk under `root_dir/objects/<sha256>`; repo metadata lives in memory.

    with LocalHub(tmp_path) as hub:          # or hub.start() / hub.stop()
        env = {"HF_ENDPOINT": hub.url, ...}   # HF_ENDPOINT is read once, when huggingface_hub is imported
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"".join(
    b"*.%s filter=lfs diff=lfs merge=lfs -text\n" % ext
    for ext in (b"bin", b"safetensors", b"pt", b"pth", b"ckpt", b"h5", b"onnx", b"msgpack", b"zip", b"gz", b"tar")
)
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_API = r"/api/(?P<kind>models|datasets|spaces)/" + _REPO
_GIT = r"/(?:(?P<kind>datasets|spaces)/)?" + _REPO


def git_oid(data: bytes) -> str:
    """The git blob id of `data` (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (sha256.encode(), size)


@dataclass(frozen=True)
class Blob:
    sha256: str  # of the content; the content is stored at root_dir/objects/<sha256>
    size: int
    oid: str  # git blob id (of the LFS pointer for LFS files, as on the Hub)
    lfs: bool


@dataclass
class Commit:
    sha: str
    message: str
    description: str
    parent: str | None
    files: dict[str, Blob]  # the full file map at this commit
    date: str


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    sdk: str | None = None
    commits: list[Commit] = field(default_factory=list)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})
        if code:
            self.headers["X-Error-Code"] = code


class LocalHub:
    def __init__(self, root_dir, token: str | None = None, lfs_threshold: int | None = None):
        """`token`: if set, writes and reads of private repos need `Authorization: Bearer <token>` (else 401).
        `lfs_threshold`: files strictly bigger than this many bytes are answered "lfs" by preupload (needs
        `HF_HUB_DISABLE_XET=1` in the client); None (default) = every file is "regular"."""
        self.root = Path(root_dir)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self.token, self.lfs_threshold = token, lfs_threshold
        # every request: {"method", "path" (with query), "headers" (lower-case keys), "route" (None = unknown), "status"}
        self.requests: list[dict] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._fail: list[int] = []  # statuses for the next commit POSTs
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self.url: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self): hub._dispatch(self, "GET")
            def do_HEAD(self): hub._dispatch(self, "HEAD")
            def do_POST(self): hub._dispatch(self, "POST")
            def do_PUT(self): hub._dispatch(self, "PUT")
            def do_DELETE(self): hub._dispatch(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False  # don't wait for idle keep-alive connections on stop()
        threading.Thread(target=self._server.serve_forever, name="LocalHub", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LocalHub":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers
    def fail_next_commits(self, n: int = 1, status: int = 500) -> None:
        """The next `n` commit POSTs answer `status` (JSON error body) and change nothing."""
        with self._lock:
            self._fail.extend([status] * n)

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """Linear history of the repo's main branch, oldest first (the first one is the "initial commit")."""
        with self._lock:
            return list(self._get(repo_type, repo_id).commits)

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        with self._lock:
            blob = self._rev(self._get(repo_type, repo_id), revision).files[path]
        return (self.root / "objects" / blob.sha256).read_bytes()

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False, sdk: str | None = None):
        """Server-side seeding (no HTTP). Raises HubError(409) if it exists."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, "You already created this repo")
            repo = self._repos[(repo_type, repo_id)] = _Repo(repo_id, repo_type, private, sdk)
            self._commit(repo, {".gitattributes": self._store(GITATTRIBUTES)}, "initial commit")

    def commit_files(self, repo_id: str, files: dict[str, bytes], message: str = "seed",
                     repo_type: str = "model", lfs: bool = False) -> str:
        """Server-side seeding: add/overwrite `files` in one commit; returns the commit sha."""
        with self._lock:
            repo = self._get(repo_type, repo_id)
            new = dict(repo.commits[-1].files)
            new.update({p: self._store(d, lfs) for p, d in files.items()})
            return self._commit(repo, new, message).sha

    # ------------------------------------------------------------------ storage
    def _store(self, data: bytes, lfs: bool = False) -> Blob:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / "objects" / sha
        if not path.exists():
            tmp = path.with_name(f"{sha}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return Blob(sha, len(data), git_oid(lfs_pointer(sha, len(data)) if lfs else data), lfs)

    def _commit(self, repo: _Repo, files: dict[str, Blob], message: str, description: str = "") -> Commit:
        self._counter += 1
        parent = repo.commits[-1].sha if repo.commits else None
        seed = f"{repo.repo_type}/{repo.repo_id}|{parent}|{message}|{self._counter}|{time.time_ns()}"
        seed += "".join(f"|{p}:{b.oid}" for p, b in sorted(files.items()))
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), message, description, parent, files, date)
        repo.commits.append(commit)
        return commit

    def _get(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _rev(self, repo: _Repo, rev: str) -> Commit:
        if rev in ("main", "refs/heads/main"):
            return repo.commits[-1]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            for c in reversed(repo.commits):
                if c.sha.startswith(rev):
                    return c
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # ------------------------------------------------------------------ HTTP plumbing
    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(h.path)
        record = {"method": method, "path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()},
                  "route": None}
        status = 500
        try:
            body = self._read_body(h)
            for meth, regex, fn in self._ROUTES:
                m = re.fullmatch(regex, split.path)
                if m and (meth == method or (meth == "GET" and method == "HEAD")):
                    args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                    record["route"] = fn.__name__.strip("_")
                    status, payload, headers = fn(self, h, args, parse_qs(split.query), body)
                    break
            else:
                raise HubError(404, f"No route for {method} {split.path}")
        except HubError as e:
            status, payload, headers = e.status, {"error": e.message}, {"X-Error-Message": e.message, **e.headers}
        except Exception as e:  # a bug in this server: answer 500 rather than dropping the connection
            status, payload, headers = 500, {"error": f"LocalHub internal error: {e!r}"}, {}
        record["status"] = status
        with self._lock:
            self.requests.append(record)
        if isinstance(payload, (bytes, bytearray)):
            data, ctype = bytes(payload), "application/octet-stream"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json; charset=utf-8"
        h.send_response(status)
        h.send_header("Content-Type", headers.pop("Content-Type", ctype))
        h.send_header("Content-Length", headers.pop("Content-Length", str(len(data))))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(data)

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            body = b"".join(chunks)
        else:
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if h.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def _check(self, h, kind: str, repo_id: str, write: bool = False) -> _Repo:
        """The repo, or 404 if missing / 401 if the token is required but missing or wrong."""
        repo = self._get(KINDS.get(kind, kind), repo_id)
        if self.token is not None and (write or repo.private):
            self._require_token(h)
        return repo

    def _require_token(self, h) -> None:
        if self.token is None:
            return
        auth = h.headers.get("Authorization")
        if auth is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        if auth != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _entry(self, path: str, blob: Blob) -> dict:
        entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size,
                            "pointerSize": len(lfs_pointer(blob.sha256, blob.size))}
        return entry

    @staticmethod
    def _dir(commit: Commit, path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(f"{commit.sha}/{path}".encode()).hexdigest(), "path": path}

    # ------------------------------------------------------------------ endpoints
    def _whoami(self, h, a, q, body):
        self._require_token(h)
        return 200, {"type": "user", "name": "local-user", "fullname": "Local User", "orgs": [],
                     "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}}, {}

    def _create(self, h, a, q, body):
        self._require_token(h)
        p = json.loads(body or b"{}")
        repo_type, name, org = p.get("type") or "model", p["name"], p.get("organization")
        repo_id = f"{org}/{name}" if org and "/" not in name else name
        url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"
        private = bool(p.get("private")) or p.get("visibility") == "private"
        with self._lock:
            try:
                self.create_repo(repo_id, repo_type, private, p.get("sdk"))
            except HubError:  # the client needs "url" in the 409 body too (create_repo(exist_ok=True))
                return 409, {"error": "You already created this repo", "url": url}, {}
        return 200, {"url": url, "name": repo_id}, {}

    def _delete(self, h, a, q, body):
        p = json.loads(body or b"{}")
        repo_id = f"{p['organization']}/{p['name']}" if p.get("organization") else p["name"]
        with self._lock:
            self._check(h, p.get("type") or "model", repo_id, write=True)
            del self._repos[(p.get("type") or "model", repo_id)]
        return 200, {}, {}

    def _validate_yaml(self, h, a, q, body):
        return 200, {"errors": [], "warnings": []}, {}

    def _info(self, h, a, q, body):
        with self._lock:
            repo = self._check(h, a["kind"], a["repo"])
            c = self._rev(repo, a.get("rev", "main"))
        siblings = [{"rfilename": p, "size": b.size, "blobId": b.oid,
                     **({"lfs": {"sha256": b.sha256, "size": b.size, "pointerSize": len(lfs_pointer(b.sha256, b.size))}}
                        if b.lfs else {})} for p, b in sorted(c.files.items())]
        info = {"id": repo.repo_id, "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "author": repo.repo_id.split("/")[0], "sha": c.sha, "lastModified": c.date,
                "createdAt": repo.commits[0].date, "private": repo.private, "disabled": False, "gated": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings}
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return 200, info, {}

    def _refs(self, h, a, q, body):
        with self._lock:
            head = self._check(h, a["kind"], a["repo"]).commits[-1].sha
        branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": head}
        return 200, {"branches": [branch], "converts": [], "tags": [], "pullRequests": []}, {}

    def _list_commits(self, h, a, q, body):
        with self._lock:
            repo = self._check(h, a["kind"], a["repo"])
            c, out = self._rev(repo, a["rev"]), []
            for commit in reversed(repo.commits[: repo.commits.index(c) + 1]):
                out.append({"id": commit.sha, "title": commit.message, "message": commit.description,
                            "date": commit.date, "authors": [{"user": "local-user"}]})
        return 200, out, {}

    def _tree(self, h, a, q, body):
        recursive = q.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self._lock:
            c = self._rev(self._check(h, a["kind"], a["repo"]), a["rev"])
        base = a.get("path", "").strip("/")
        prefix = base + "/" if base else ""
        under = sorted(p for p in c.files if p.startswith(prefix))
        if base and not under:
            raise HubError(404, f"{base} does not exist on {a['rev']}", "EntryNotFound")
        dirs, files = set(), []
        for p in under:
            parts = p[len(prefix):].split("/")
            if recursive or len(parts) == 1:
                files.append(self._entry(p, c.files[p]))
            dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts) if recursive else min(2, len(parts))))
        return 200, [self._dir(c, d) for d in sorted(dirs)] + files, {}

    def _paths_info(self, h, a, q, body):
        ctype = h.headers.get("Content-Type", "")
        paths = json.loads(body)["paths"] if "json" in ctype else parse_qs(body.decode()).get("paths", [])
        with self._lock:
            c = self._rev(self._check(h, a["kind"], a["repo"]), a["rev"])
        out = []
        for p in (p.strip("/") for p in paths):
            if p in c.files:
                out.append(self._entry(p, c.files[p]))
            elif any(f.startswith(p + "/") for f in c.files):
                out.append(self._dir(c, p))
        return 200, out, {}

    def _preupload(self, h, a, q, body):
        with self._lock:
            c = self._rev(self._check(h, a["kind"], a["repo"], write=True), a["rev"])
        out = []
        for f in json.loads(body)["files"]:
            lfs = self.lfs_threshold is not None and f["size"] > self.lfs_threshold
            old = c.files.get(f["path"])  # the client skips unchanged files: oid = git sha1, or sha256 for LFS
            oid = None if old is None else (old.sha256 if old.lfs else old.oid)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        return 200, {"files": out, "commitOid": c.sha}, {}

    def _commit_endpoint(self, h, a, q, body):
        with self._lock:
            repo = self._check(h, a["kind"], a["repo"], write=True)
            if self._fail:
                status = self._fail.pop(0)
                raise HubError(status, f"LocalHub: injected failure ({status})")
            if a["rev"] not in ("main", "refs/heads/main"):
                raise HubError(404, f"Invalid rev id: {a['rev']} (LocalHub only commits to main)", "RevisionNotFound")
            if "create_pr" in q:
                raise HubError(400, "LocalHub does not support create_pr")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next((x["value"] for x in lines if x["key"] == "header"), {})
            head = repo.commits[-1]
            if header.get("parentCommit") not in (None, head.sha):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for item in lines:
                key, v = item["key"], item.get("value", {})
                if key == "file":
                    files[v["path"]] = self._store(base64.b64decode(v["content"]))
                elif key == "lfsFile":
                    obj = self.root / "objects" / v["oid"]
                    if not obj.exists():
                        raise HubError(400, f"LFS object {v['oid']} for {v['path']} was never uploaded")
                    size = obj.stat().st_size
                    files[v["path"]] = Blob(v["oid"], size, git_oid(lfs_pointer(v["oid"], size)), True)
                elif key == "deletedFile":
                    if files.pop(v["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    files = {p: b for p, b in files.items() if not p.startswith(v["path"].rstrip("/") + "/")}
            c = self._commit(repo, files, header.get("summary", ""), header.get("description", ""))
        url = f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{c.sha}"
        return 200, {"success": True, "commitUrl": url, "commitOid": c.sha, "pullRequestUrl": None}, {}

    def _lfs_batch(self, h, a, q, body):
        with self._lock:
            self._check(h, a.get("kind", "model"), a["repo"], write=True)
        objects = []
        for o in json.loads(body)["objects"]:
            obj = self.root / "objects" / o["oid"]
            entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if not (obj.exists() and obj.stat().st_size == o["size"]):  # no "actions" = already uploaded
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"},
                                    "verify": {"href": f"{self.url}/lfs-verify"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_put(self, h, a, q, body):  # the client sends no auth header here (it's meant for a signed S3 URL)
        if hashlib.sha256(body).hexdigest() != a["oid"]:
            raise HubError(400, "sha256 of the uploaded bytes does not match the oid")
        self._store(body, lfs=True)
        return 200, b"", {"ETag": f'"{a["oid"]}"'}

    def _lfs_verify(self, h, a, q, body):
        p = json.loads(body)
        obj = self.root / "objects" / p["oid"]
        if not (obj.exists() and obj.stat().st_size == p["size"]):
            raise HubError(404, f"LFS object {p['oid']} not found")
        return 200, {"message": "ok"}, {}

    def _resolve(self, h, a, q, body):
        with self._lock:
            c = self._rev(self._check(h, a.get("kind", "model"), a["repo"]), a["rev"])
        blob = c.files.get(a["path"])
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": c.sha})
        headers = {"X-Repo-Commit": c.sha, "ETag": f'"{blob.sha256 if blob.lfs else blob.oid}"',
                   "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        if h.command == "HEAD":  # no body: don't read the file, but announce its length
            return 200, b"", {**headers, "Content-Length": str(blob.size)}
        data = (self.root / "objects" / blob.sha256).read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if m:
            start, end = int(m.group(1)), int(m.group(2) or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start:end + 1], headers
        return 200, data, headers

    _ROUTES = [
        ("GET", r"/api/whoami-v2", _whoami),
        ("POST", r"/api/repos/create", _create),
        ("DELETE", r"/api/repos/delete", _delete),
        ("POST", r"/api/validate-yaml", _validate_yaml),
        ("GET", _API + r"/refs", _refs),
        ("GET", _API + r"/commits/(?P<rev>[^/]+)", _list_commits),
        ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", _tree),
        ("POST", _API + r"/paths-info/(?P<rev>[^/]+)", _paths_info),
        ("POST", _API + r"/preupload/(?P<rev>[^/]+)", _preupload),
        ("POST", _API + r"/commit/(?P<rev>[^/]+)", _commit_endpoint),
        ("GET", _API + r"(?:/revision/(?P<rev>[^/]+))?", _info),
        ("POST", _GIT + r"\.git/info/lfs/objects/batch", _lfs_batch),
        ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", _lfs_put),
        ("POST", r"/lfs-verify", _lfs_verify),
        ("GET", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _resolve),
    ]
