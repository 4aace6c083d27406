"""The Gradio app: prediction functions, the app over HTTP with gradio_client, a real headless Chromium, bad
input, and `tl-hub push --space` against the local Hub."""

import json
import os
import struct
import tempfile
import zlib

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="gradio_tmp_"))

import gradio as gr
import pytest
from PIL import Image
from support.launch import free_port
from support.tiny import colour_dataset

from tl_hub import FeatureExtractionRecipe
from tl_hub.space import SpaceApp, build_app, example_images, launch

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("space") / "model"
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=4, lr=5e-2, batch_size=16, augment=False)
    recipe.fit(colour_dataset(60), progress=False)
    recipe.save(str(out))
    return str(out)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    red = colour_dataset(3, seed=11)["image"][0]  # class 0 = red
    red.save(d / "red.png")
    (d / "notes.png").write_bytes(b"this is not an image")
    Image.new("RGB", (2000, 1500)).save(d / "big.png")

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    (d / "bomb.png").write_bytes(bomb)
    return {name: str(d / f"{name}.png") for name in ("red", "notes", "big", "bomb")}


@pytest.fixture(scope="module")
def server(model_dir):
    port = free_port()
    demo = build_app(model_dir, examples=example_images(), max_pixels=1_000_000)
    launch(demo, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_predict_function_directly(model_dir, files):
    from tl_hub import load

    app = SpaceApp(load(model_dir), top_k=2, max_pixels=1_000_000)
    scores = app.predict(files["red"])
    assert list(scores)[0] == "red" and len(scores) == 2 and abs(sum(scores.values()) - 1) < 0.05
    rows = app.predict_batch([files["red"], files["red"]])
    assert [r[:2] for r in rows] == [["red.png", "red"], ["red.png", "red"]]
    for bad, message in ((None, "No image"), (files["notes"], "not an image"), (files["big"], "over the limit"),
                         (files["bomb"], "decompression bomb")):
        with pytest.raises(gr.Error, match=message):
            app.predict(bad)
    with pytest.raises(gr.Error, match="No images"):
        app.predict_batch([])
    assert "Recipe**: feature-extraction" in app.describe(model_dir)


def test_app_over_http_with_gradio_client(server, files):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)
    assert {"/predict", "/predict_batch"} <= set(api["named_endpoints"])
    result = client.predict(handle_file(files["red"]), api_name="/predict")
    assert result["label"] == "red"
    table = client.predict([handle_file(files["red"])], api_name="/predict_batch")
    assert table["data"][0][1] == "red"
    for bad, message in (("notes", "not an image"), ("big", "over the limit"), ("bomb", "decompression bomb")):
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(files[bad]), api_name="/predict")
    too_big = os.path.join(os.path.dirname(files["red"]), "huge-upload.png")
    with open(too_big, "wb") as f:
        f.write(os.urandom(21 * 1024 * 1024))  # over max_file_size (20 MB)
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(too_big), api_name="/predict")
    assert client.predict(handle_file(files["red"]), api_name="/predict")["label"] == "red"  # still serving


@pytest.mark.browser
def test_real_browser_upload_click_and_read(server, files, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from support.browser import chrome

    driver = chrome(log_network=True)
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]")))
        upload.send_keys(os.path.abspath(files["red"]))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image img")))
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        # the text that showed the prediction, read once (a later read may catch the box re-rendering); the box's
        # title "Prediction" contains "red", so the wait is for a line that is the label itself
        label_text = wait.until(lambda d: (lambda t: t if "red" in t.splitlines() else False)(
            d.find_element(By.CSS_SELECTOR, "#prediction").text))
        shot = tmp_path / "space.png"
        driver.save_screenshot(str(shot))
        lines = [line for line in label_text.splitlines() if line.strip() and line.strip() != "Prediction"]
        assert lines[0] == "red", label_text  # the top label first
        assert shot.stat().st_size > 10_000
        urls = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
    finally:
        driver.quit()
    assert urls
    outside = [u for u in urls if not u.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))]
    assert outside == [], outside


def test_space_files_and_header():
    from huggingface_hub import RepoCard

    card = RepoCard.load(os.path.join(ROOT, "spaces", "README.md"))
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert os.path.exists(os.path.join(ROOT, "spaces", "app.py"))
    assert "gradio" in open(os.path.join(ROOT, "spaces", "requirements.txt")).read()
    assert len(example_images()) >= 3


@pytest.mark.slow
def test_push_space_to_the_local_hub(tmp_path):
    from support.hub_server import LocalHub
    from test_hub_push import client_env, tl_hub_cli

    with LocalHub(str(tmp_path / "store"), token="hf_tlhubTestSecretToken0123456789") as hub:
        proc = tl_hub_cli(["push", "--space", "me/demo-space", "--model", "me/model"],
                          client_env(hub, tmp_path / "home"), tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        commit = hub.commits("me/demo-space", repo_type="space")[-1]
        assert {"app.py", "requirements.txt", "README.md"} <= set(commit.files)
        app = hub.read_file("me/demo-space", "app.py", repo_type="space").decode()
        assert "DEFAULT_MODEL_ID = 'me/model'" in app
        bad = tl_hub_cli(["push", "--space", "me/demo-space"], client_env(hub, tmp_path / "home"), tmp_path)
        assert bad.returncode == 2 and "--model" in bad.stderr


def _serve_and_predict(cmd, port, image, env, cwd, timeout=240):
    import subprocess
    import time

    from gradio_client import Client, handle_file

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                return client.predict(handle_file(image), api_name="/predict")
            except Exception:
                time.sleep(1)
        raise AssertionError("the app did not come up")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_tl_hub_serve(model_dir, files, tmp_path):
    import sys

    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tl-hub")
    result = _serve_and_predict([exe, "serve", model_dir, "--port", str(port)], port, files["red"],
                                dict(os.environ), tmp_path)
    assert result["label"] == "red"


@pytest.mark.slow
def test_space_app_runs_offline_with_the_demo_model(tmp_path):
    """`python spaces/app.py` with no model given: the offline demo's model, made on first use, no network."""
    import sys

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PORT": str(port), "TL_HUB_CACHE": str(tmp_path / "cache")}
    env.pop("MODEL_ID", None)
    result = _serve_and_predict([sys.executable, os.path.join(ROOT, "spaces", "app.py")], port,
                                example_images()[0], env, tmp_path)
    assert result["label"] == "3"  # spaces/examples/digit-3.png
