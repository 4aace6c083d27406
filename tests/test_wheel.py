"""tl-hub as a user installs it: a wheel built from the source tree, installed outside it (``pip --target``), run
from another folder with this environment's other packages (`support.site_view`).  README command 1 (the demo),
``tl-hub serve`` (HTTP 200 on ``/``) and ``tl-hub push --space`` to the local Hub server all work from it, and the
wheel carries what the package reads (the Space, the real base's class names, the Fashion-MNIST subset) and no
benchmark models."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest
from support.launch import free_port
from support.site_view import ROOT, python_in, site_view

pytestmark = pytest.mark.slow  # see pyproject.toml: the inner loop is -m "not slow"

NOT_SOURCE = ("build", "dist", ".venv", ".git", "runs", "__pycache__", ".pytest_cache", ".ruff_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """``(wheel file, install folder, view of the other packages)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so that a stale build/ folder in the tree cannot leak into the wheel
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE, "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w",
                            str(tmp / "dist")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel_file,) = (tmp / "dist").glob("tl_hub-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                                str(tmp / "install"), str(wheel_file)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    (tmp / "work").mkdir()
    return wheel_file, str(tmp / "install"), site_view(str(tmp / "view"))


def run_installed(wheel, code, env=None, timeout=600):
    _, install, view = wheel
    return python_in(view, install, ["-c", code], env=env, cwd=os.path.join(os.path.dirname(install), "work"),
                     timeout=timeout)


def cli_code(*args) -> str:
    return f"import sys; from tl_hub.cli import main; sys.exit(main({list(map(str, args))!r}))"


def test_the_wheel_carries_the_package_data_and_no_benchmark_models(wheel):
    names = zipfile.ZipFile(wheel[0]).namelist()
    for needed in ("tl_hub/space_template/app.py", "tl_hub/space_template/requirements.txt",
                   "tl_hub/space_template/README.md", "tl_hub/space_template/examples/digit-3.png",
                   "tl_hub/assets/imagenet/classes.txt", "tl_hub/assets/fashion-mnist/subset.npz",
                   "tl_hub/assets/fashion-mnist/NOTICE", "tl_hub/metrics/accuracy/accuracy.py"):
        assert needed in names, needed
    assert not [n for n in names if "glyph-vit" in n or n.startswith(("tests/", "benchmarks/", "recipes/"))]
    entry_points = [n for n in names if n.endswith("entry_points.txt")]
    assert "tl-hub = tl_hub.cli:main" in zipfile.ZipFile(wheel[0]).read(entry_points[0]).decode()


def test_the_installed_package_finds_its_files(wheel):
    proc = run_installed(wheel, "import json, tl_hub; from tl_hub.space import space_dir; "
                                "print(json.dumps([tl_hub.__file__, space_dir(), tl_hub.example_images()]))")
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, template, examples = json.loads(proc.stdout.strip().splitlines()[-1])
    assert module.startswith(wheel[1]) and template.startswith(wheel[1])  # not the source tree
    assert len(examples) == 3 and all(e.startswith(template) for e in examples)


def test_demo_serve_and_push_space_from_the_wheel(wheel, tmp_path):
    from support.hub_server import LocalHub
    from test_hub_push import GUARD, TOKEN, client_env

    env = {**os.environ, "TL_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    demo = run_installed(wheel, cli_code("demo", "--output-dir", tmp_path / "demo"), env=env, timeout=900)
    assert demo.returncode == 0 and "Traceback" not in demo.stderr, demo.stdout[-2000:] + demo.stderr[-3000:]
    results = json.load(open(tmp_path / "demo" / "results.json"))
    assert results["recipes"]["feature-extraction"]["test_accuracy"] >= results["recipes"]["scratch"][
        "test_accuracy"] + 0.15

    port = free_port()
    server = python_in(wheel[2], wheel[1], ["-c", cli_code("serve", tmp_path / "demo" / "model", "--port", port)],
                       env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status, deadline = None, time.time() + 180
        while status is None and time.time() < deadline:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    status = page.status
            except OSError:
                time.sleep(1)
        assert status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)

    with LocalHub(str(tmp_path / "store"), token=TOKEN) as hub:
        proc = run_installed(wheel, GUARD + cli_code("push", "--space", "me/space", "--model", "me/model"),
                             env=client_env(hub, tmp_path / "home"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = set(hub.commits("me/space", repo_type="space")[-1].files)
        assert {"app.py", "requirements.txt", "README.md", "examples/digit-3.png"} <= files
        assert "__init__.py" not in files
        app = hub.read_file("me/space", "app.py", repo_type="space").decode()
        assert "DEFAULT_MODEL_ID = 'me/model'" in app
