"""Drive the REAL huggingface_hub client against tests/hub_server.LocalHub.

The client reads HF_ENDPOINT (and HF_HUB_DISABLE_XET, HF_HUB_OFFLINE...) once, at import, so each scenario runs in a
child Python with its own environment and a fresh HF_HOME. The child refuses any socket connection that is not to
127.0.0.1 and prints its observations as JSON on a "RESULT:" line; the parent checks them against the server's state.
"""

import base64
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request

import pytest
from support.hub_server import LocalHub

PRELUDE = r'''
import hashlib, json, os, socket, sys
from pathlib import Path

BLOCKED = []
_connect = socket.socket.connect
def _guarded_connect(self, address, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
        BLOCKED.append(repr(address))
        raise OSError(f"test guard: refusing to connect to {address!r}")
    return _connect(self, address, *args)
socket.socket.connect = _guarded_connect

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
out = {}
def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
def snapshot_shas(folder):
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha(p) for p in folder.rglob("*") if p.is_file()}
'''
EPILOGUE = '\nout["blocked"] = BLOCKED\nprint("RESULT:" + json.dumps(out))\n'


def run_client(hub, code, cwd, *, xet=True, timeout=60):
    """Run `code` (after PRELUDE) in a child Python pointed at `hub`; return its `out` dict."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "TRANSFORMERS_OFFLINE" and "proxy" not in k.lower()}
    home = tempfile.mkdtemp(prefix="hf_home_", dir=cwd)
    env.update(HF_ENDPOINT=hub.url, HF_HOME=home, HF_HUB_CACHE=os.path.join(home, "hub"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost")
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code) + EPILOGUE], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT:")]
    assert proc.returncode == 0 and lines, f"child failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(lines[-1][len("RESULT:"):])
    assert out["blocked"] == [], out["blocked"]
    return out


def write_tree(root, files):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def sha_hex(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub(tmp_path):
    with LocalHub(tmp_path / "hub_store") as h:
        yield h


def commit_posts(hub):
    return [r for r in hub.requests if r["method"] == "POST" and "/commit/" in r["path"]]


def assert_all_routed(hub):
    assert [r for r in hub.requests if r["route"] is None] == []
    assert [r for r in hub.requests if r["status"] >= 500] == []


MODEL_FILES = {
    "README.md": b"---\nlicense: mit\ntags: [test]\n---\n# tiny\n",
    "config.json": b'{"hidden_size": 32}',
    "weights/model.bin": os.urandom(3000),
    "nested/deep/notes.txt": b"deep\n",
}


def test_push_pull_model(hub, tmp_path):
    expected = write_tree(tmp_path / "src", MODEL_FILES)
    out = run_client(hub, """
        api = HfApi()
        out["urls"] = [str(api.create_repo("alice/tiny", exist_ok=True)), str(api.create_repo("alice/tiny", exist_ok=True))]
        first = api.upload_folder(folder_path="src", repo_id="alice/tiny", commit_message="first push")
        out["first"] = first.oid
        out["sha"] = api.model_info("alice/tiny").sha
        out["files"] = api.list_repo_files("alice/tiny")
        out["single"] = {f: sha(hf_hub_download("alice/tiny", f, cache_dir="cache_a")) for f in out["files"]}
        out["snapshot"] = snapshot_shas(snapshot_download("alice/tiny", cache_dir="cache_b"))
        second = api.upload_file(path_or_fileobj=b'{"hidden_size": 64}', path_in_repo="config.json", repo_id="alice/tiny")
        out["second"] = second.oid
        out["old_config"] = Path(hf_hub_download("alice/tiny", "config.json", revision=first.oid, cache_dir="cache_c")).read_bytes().decode()
        out["new_config"] = Path(hf_hub_download("alice/tiny", "config.json", cache_dir="cache_c")).read_bytes().decode()
        out["old_snapshot"] = snapshot_shas(snapshot_download("alice/tiny", revision=first.oid, cache_dir="cache_d"))
        out["repo_exists"] = [api.repo_exists("alice/tiny"), api.repo_exists("alice/nope")]
        out["file_exists"] = [api.file_exists("alice/tiny", "nested/deep/notes.txt"), api.file_exists("alice/tiny", "nope.txt")]
        try:
            hf_hub_download("alice/tiny", "nope.txt", cache_dir="cache_e")
        except Exception as e:
            out["missing_file"] = type(e).__name__
        try:
            hf_hub_download("alice/tiny", "config.json", revision="0" * 40, cache_dir="cache_e")
        except Exception as e:
            out["missing_rev"] = type(e).__name__
        out["commits"] = [c.commit_id for c in api.list_repo_commits("alice/tiny")]
        out["main"] = api.list_repo_refs("alice/tiny").branches[0].target_commit
    """, tmp_path)
    assert out["urls"] == [f"{hub.url}/alice/tiny"] * 2
    commits = hub.commits("alice/tiny")
    assert [c.message for c in commits] == ["initial commit", "first push", "Upload config.json with huggingface_hub"]
    assert out["first"] == out["sha"] == commits[1].sha and out["second"] == commits[2].sha == out["main"]
    assert sorted(out["files"]) == sorted([".gitattributes", *MODEL_FILES])
    assert sorted(commits[1].files) == sorted(out["files"])
    assert out["single"] == out["snapshot"] == {**expected, ".gitattributes": sha_hex(hub.read_file("alice/tiny", ".gitattributes"))}
    assert out["old_config"] == '{"hidden_size": 32}' and out["new_config"] == '{"hidden_size": 64}'
    assert out["old_snapshot"] == out["snapshot"]
    assert hub.read_file("alice/tiny", "config.json", revision=commits[1].sha) == b'{"hidden_size": 32}'
    assert out["repo_exists"] == [True, False] and out["file_exists"] == [True, False]
    assert out["missing_file"] == "RemoteEntryNotFoundError" and out["missing_rev"] == "RevisionNotFoundError"
    assert out["commits"] == [c.sha for c in reversed(commits)]
    assert len(commit_posts(hub)) == 2  # upload_folder sent ONE commit for all four files
    assert_all_routed(hub)


def test_token_and_private_repo(tmp_path):
    with LocalHub(tmp_path / "store", token="hf_secret") as hub:
        out = run_client(hub, """
            api = HfApi(token="hf_secret")
            api.create_repo("bob/secret", private=True)
            api.upload_file(path_or_fileobj=b"top secret", path_in_repo="s.txt", repo_id="bob/secret")
            out["with_token"] = api.repo_exists("bob/secret")
            out["anonymous"] = HfApi(token=False).repo_exists("bob/secret")
            try:
                HfApi(token="hf_wrong").model_info("bob/secret")
            except HfHubHTTPError as e:
                out["wrong_token"] = e.response.status_code
            try:
                HfApi(token=False).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="bob/secret")
            except HfHubHTTPError as e:
                out["anonymous_write"] = e.response.status_code
            out["download"] = Path(hf_hub_download("bob/secret", "s.txt", token="hf_secret")).read_text()
        """, tmp_path)
        assert out["with_token"] is True and out["anonymous"] is False
        assert out["wrong_token"] == 401 and out["anonymous_write"] == 401 and out["download"] == "top secret"
        writes = [r for r in hub.requests if r["route"] in ("create", "preupload", "commit_endpoint") and r["status"] == 200]
        assert writes and all(r["headers"]["authorization"] == "Bearer hf_secret" for r in writes)
        assert len(hub.commits("bob/secret")) == 2
        assert_all_routed(hub)


def test_injected_commit_failures_without_xet(hub, tmp_path):
    """Without hf_xet, upload_folder/create_commit POST the commit once: an injected 500 surfaces as HfHubHTTPError."""
    write_tree(tmp_path / "src", {"a.txt": b"a", "b/c.txt": b"c"})
    hub.create_repo("carol/flaky")
    hub.fail_next_commits(2, status=500)
    out = run_client(hub, """
        from huggingface_hub import CommitOperationAdd
        api = HfApi()
        for name, push in [
            ("upload_folder", lambda: api.upload_folder(folder_path="src", repo_id="carol/flaky")),
            ("create_commit", lambda: api.create_commit("carol/flaky", [CommitOperationAdd("x.txt", b"x")], commit_message="x")),
        ]:
            try:
                push()
            except HfHubHTTPError as e:
                out[name] = [type(e).__name__, e.response.status_code, "injected" in str(e)]
        out["sha_after_failures"] = api.model_info("carol/flaky").sha
        out["retry"] = api.upload_folder(folder_path="src", repo_id="carol/flaky").oid
    """, tmp_path, xet=False)
    commits = hub.commits("carol/flaky")
    assert out["upload_folder"] == out["create_commit"] == ["HfHubHTTPError", 500, True]
    assert out["sha_after_failures"] == commits[0].sha  # nothing was committed by the failed calls
    assert len(commits) == 2 and out["retry"] == commits[-1].sha and sorted(commits[-1].files) == [".gitattributes", "a.txt", "b/c.txt"]
    assert [r["status"] for r in commit_posts(hub)] == [500, 500, 200]


def test_injected_commit_failures_with_xet(hub, tmp_path):
    """With hf_xet installed, upload_folder retries the commit POST (1 s backoff); create_commit does not."""
    write_tree(tmp_path / "src", {"a.txt": b"a"})
    hub.create_repo("carol/flaky")
    hub.fail_next_commits(2, status=500)
    out = run_client(hub, """
        from huggingface_hub import CommitOperationAdd
        api = HfApi()
        try:
            api.create_commit("carol/flaky", [CommitOperationAdd("x.txt", b"x")], commit_message="x")
        except HfHubHTTPError as e:
            out["create_commit"] = e.response.status_code
        out["upload_folder"] = api.upload_folder(folder_path="src", repo_id="carol/flaky").oid
    """, tmp_path)
    commits = hub.commits("carol/flaky")
    assert out["create_commit"] == 500
    assert len(commits) == 2 and out["upload_folder"] == commits[-1].sha  # exactly one new commit
    assert [r["status"] for r in commit_posts(hub)] == [500, 500, 200]  # create_commit: 1 try; upload_folder: 2


def test_lfs_roundtrip_without_xet(tmp_path):
    with LocalHub(tmp_path / "store", lfs_threshold=1024) as hub:
        big = os.urandom(200_000)
        expected = write_tree(tmp_path / "src", {"big.bin": big, "sub/also_big.bin": big[:5000], "small.txt": b"s"})
        out = run_client(hub, """
            api = HfApi()
            api.create_repo("dave/lfs")
            out["oid"] = api.upload_folder(folder_path="src", repo_id="dave/lfs").oid
            out["single"] = {f: sha(hf_hub_download("dave/lfs", f, cache_dir="cache_a")) for f in ["big.bin", "sub/also_big.bin", "small.txt"]}
            out["snapshot"] = snapshot_shas(snapshot_download("dave/lfs", cache_dir="cache_b"))
            out["tree"] = {f.path: f.lfs.sha256 if f.lfs else None for f in api.list_repo_tree("dave/lfs", recursive=True) if hasattr(f, "size")}
            out["again"] = api.upload_folder(folder_path="src", repo_id="dave/lfs").oid  # unchanged: no new commit
        """, tmp_path, xet=False)
        commits = hub.commits("dave/lfs")
        assert len(commits) == 2 and out["oid"] == out["again"] == commits[-1].sha
        files = commits[-1].files
        assert files["big.bin"].lfs and files["sub/also_big.bin"].lfs and not files["small.txt"].lfs
        assert hub.read_file("dave/lfs", "big.bin") == big
        assert out["single"] == expected and {k: v for k, v in out["snapshot"].items() if k != ".gitattributes"} == expected
        assert out["tree"] == {".gitattributes": None, "small.txt": None, "big.bin": expected["big.bin"],
                               "sub/also_big.bin": expected["sub/also_big.bin"]}
        routes = [r["route"] for r in hub.requests]
        assert routes.count("lfs_put") == 2 and "lfs_batch" in routes and "lfs_verify" in routes
        assert_all_routed(hub)


def test_space_repo(hub, tmp_path):
    expected = write_tree(tmp_path / "src", {"app.py": b"print('hi')\n", "README.md": b"---\nsdk: gradio\n---\n",
                                              "assets/logo.txt": b"logo"})
    out = run_client(hub, """
        api = HfApi()
        out["url"] = str(api.create_repo("erin/demo", repo_type="space", space_sdk="gradio", exist_ok=True))
        out["oid"] = api.upload_folder(folder_path="src", repo_id="erin/demo", repo_type="space").oid
        out["sha"] = api.space_info("erin/demo").sha
        out["exists"] = [api.repo_exists("erin/demo", repo_type="space"), api.repo_exists("erin/demo")]
        out["single"] = sha(hf_hub_download("erin/demo", "assets/logo.txt", repo_type="space", cache_dir="cache_a"))
        out["snapshot"] = snapshot_shas(snapshot_download("erin/demo", repo_type="space", cache_dir="cache_b"))
    """, tmp_path)
    commits = hub.commits("erin/demo", repo_type="space")
    assert out["url"] == f"{hub.url}/spaces/erin/demo" and out["oid"] == out["sha"] == commits[-1].sha
    assert out["exists"] == [True, False]
    assert out["single"] == expected["assets/logo.txt"]
    assert {k: v for k, v in out["snapshot"].items() if k != ".gitattributes"} == expected
    assert any(r["path"].startswith("/spaces/erin/demo/resolve/") for r in hub.requests)
    assert_all_routed(hub)


def test_raw_http_errors_and_lifecycle(tmp_path):
    hub = LocalHub(tmp_path / "store")
    url = hub.start()
    try:
        hub.create_repo("frank/raw")
        sha = hub.commit_files("frank/raw", {"w.bin": b"123"}, lfs=True)
        cases = [("/api/models/frank/none", "RepoNotFound"), ("/frank/raw/resolve/main/none.txt", "EntryNotFound"),
                 ("/frank/raw/resolve/" + "f" * 40 + "/w.bin", "RevisionNotFound")]
        for path, code in cases:
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url + path)
            assert err.value.code == 404 and err.value.headers["X-Error-Code"] == code
        req = urllib.request.Request(f"{url}/frank/raw/resolve/{sha}/w.bin", method="HEAD")
        with urllib.request.urlopen(req) as resp:
            assert resp.headers["X-Repo-Commit"] == sha and resp.headers["X-Linked-Size"] == "3"
            assert resp.headers["ETag"] == resp.headers["X-Linked-Etag"] == f'"{sha_hex(b"123")}"' and resp.read() == b""
        with urllib.request.urlopen(f"{url}/frank/raw/resolve/main/w.bin") as resp:
            assert resp.read() == b"123"
        ndjson = b"".join(json.dumps(x).encode() + b"\n" for x in [
            {"key": "header", "value": {"summary": "gz", "description": "", "parentCommit": sha}},
            {"key": "file", "value": {"path": "g.txt", "content": base64.b64encode(b"zipped").decode(), "encoding": "base64"}},
            {"key": "deletedFile", "value": {"path": "w.bin"}}])
        req = urllib.request.Request(f"{url}/api/models/frank/raw/commit/main", data=gzip.compress(ndjson), method="POST",
                                     headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
        with urllib.request.urlopen(req) as resp:
            assert json.loads(resp.read())["commitOid"] == hub.commits("frank/raw")[-1].sha
        assert hub.read_file("frank/raw", "g.txt") == b"zipped" and "w.bin" not in hub.commits("frank/raw")[-1].files
        with pytest.raises(urllib.error.HTTPError) as err:  # stale parentCommit
            urllib.request.urlopen(urllib.request.Request(req.full_url, data=ndjson, method="POST"))
        assert err.value.code == 412
    finally:
        hub.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/api/models/frank/raw", timeout=2)
