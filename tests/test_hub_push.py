"""Push trained models with `tl-hub push` (the real huggingface_hub client over HTTP to a local Hub on
127.0.0.1) and load them back with `tl_hub.load` in a fresh cache."""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from support.hub_server import LocalHub
from support.tiny import COLOURS, colour_dataset

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe, LoRARecipe, ScratchRecipe

pytestmark = pytest.mark.slow  # see pyproject.toml: the inner loop is -m "not slow"

TOKEN = "hf_tlhubTestSecretToken0123456789"
FAST = dict(batch_size=16, augment=False, seed=0, feature_cache="memory")
GUARD = '''
import socket
_connect = socket.socket.connect
def _guard(self, address, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
        raise OSError(f"test guard: refusing to connect to {address!r}")
    return _connect(self, address, *args)
socket.socket.connect = _guard
'''


def client_env(hub, home, xet=False):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_CACHE=str(Path(home) / "hub"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_TOKEN=TOKEN,
               NO_PROXY="127.0.0.1,localhost", TL_HUB_CACHE=os.environ["TL_HUB_CACHE"])
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    return env


def run_python(code, env, cwd):
    proc = subprocess.run([sys.executable, "-c", GUARD + code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    return proc


def tl_hub_cli(args, env, cwd):
    return run_python(f"import sys; from tl_hub.cli import main; sys.exit(main({list(map(str, args))!r}))", env, cwd)


def predictions_in_fresh_cache(hub, repo, images_dir, tmp_path, base=None):
    code = f'''
import json, os, tl_hub
from PIL import Image
clf = tl_hub.load({repo!r}, base_model={base!r})
images = [Image.open(os.path.join({str(images_dir)!r}, f)) for f in sorted(os.listdir({str(images_dir)!r}))]
print("RESULT:" + json.dumps(clf.predict_proba(images).tolist()))
'''
    proc = run_python(code, client_env(hub, tempfile.mkdtemp(dir=tmp_path)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT:")][-1]
    return torch.tensor(json.loads(line[len("RESULT:"):])), proc


@pytest.fixture
def hub(tmp_path):
    with LocalHub(str(tmp_path / "hub-store"), token=TOKEN) as server:
        yield server


def tree_digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in Path(folder).rglob("*") if p.is_file()}


@pytest.mark.parametrize("make", [
    lambda m: FeatureExtractionRecipe(m, epochs=1, **FAST),
    lambda m: FineTuneRecipe(m, head_epochs=1, epochs=2, unfreeze=1, **FAST),
    lambda m: ScratchRecipe(m, epochs=1, **FAST),
    lambda m: LoRARecipe(m, epochs=2, lr=5e-3, **FAST),
], ids=["feature-extraction", "fine-tune-top1", "scratch", "lora"])
def test_push_then_load_in_a_fresh_cache(hub, tiny_model_dir, tmp_path, make):
    recipe = make(tiny_model_dir("vit"))
    recipe.fit(colour_dataset(30), progress=False)
    out = tmp_path / "out"
    recipe.save(str(out))
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    images = colour_dataset(6, seed=9)["image"]
    for i, im in enumerate(images):
        im.save(images_dir / f"{i}.png")
    env = client_env(hub, tmp_path / "pusher")
    proc = tl_hub_cli(["push", out, "me/colours"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commits = hub.commits("me/colours")
    assert len(commits) == 2  # the repo's initial commit + ONE upload commit
    files = set(commits[-1].files)
    if recipe.result.trained["kind"] == "lora":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    elif recipe.result.trained["kind"] == "full":
        assert "model.safetensors" in files and "tl_hub_head.safetensors" not in files
    else:
        assert "tl_hub_head.safetensors" in files and "model.safetensors" not in files
    assert {"README.md", "tl_hub.json", "config.json", "preprocessor_config.json"} <= files
    from PIL import Image
    local = recipe.classifier.predict_proba([Image.open(images_dir / f) for f in sorted(os.listdir(images_dir))])
    base = None
    if recipe.result.trained["kind"] != "full":
        # the repo names a folder of this machine as its base: refused unless the caller names it
        base = tiny_model_dir("vit")
        refused = run_python("import tl_hub; tl_hub.load('me/colours')", client_env(hub, tmp_path / "other"), tmp_path)
        assert refused.returncode != 0 and "names the local folder" in refused.stderr, refused.stderr[-2000:]
    remote, load_proc = predictions_in_fresh_cache(hub, "me/colours", images_dir, tmp_path, base)
    assert torch.allclose(local, remote, atol=1e-6)
    # every request went to the local hub, and the writes carried the token
    writes = [r for r in hub.requests if r["method"] in ("POST", "PUT")]
    assert writes and all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in writes
                          if "/lfs-upload/" not in r["path"] and "objects/" not in r["path"])


def test_token_never_written_or_printed(hub, tiny_model_dir, tmp_path):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    out = tmp_path / "out"
    recipe.save(str(out))
    proc = tl_hub_cli(["push", out, "me/secret-scan"], client_env(hub, tmp_path / "pusher"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for name in hub.commits("me/secret-scan")[-1].files:
        assert TOKEN.encode() not in hub.read_file("me/secret-scan", name), name


def test_failed_commit_is_a_clear_error_and_a_retry_makes_one_commit(hub, tiny_model_dir, tmp_path):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    out = tmp_path / "out"
    recipe.save(str(out))
    before = tree_digest(out)
    env = client_env(hub, tmp_path / "pusher")
    hub.fail_next_commits(1, status=500)
    proc = tl_hub_cli(["push", out, "me/flaky"], env, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "me/flaky" in errors[0] and "push again" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree_digest(out) == before  # the local output is intact
    n = len(hub.commits("me/flaky"))
    proc = tl_hub_cli(["push", out, "me/flaky"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(hub.commits("me/flaky")) == n + 1


def test_card_parses_and_existing_readme_is_kept(hub, tiny_model_dir, tmp_path):
    from huggingface_hub import ModelCard

    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    out = tmp_path / "out"
    recipe.save(str(out))
    # the saved folder carries the card too, so any upload tool shows it
    local = ModelCard.load(str(out / "README.md"))
    assert "model-index" in local.data.to_dict() and "![learning curve](learning_curve.png)" in local.text
    # per-class diagnostics of the kept epoch: in the result, the card and the folder
    per_class = recipe.result.metrics["per_class"]
    assert set(per_class) == set(recipe.classifier.labels)
    assert "### Per class (validation)" in local.text and "![confusion matrix](confusion_matrix.png)" in local.text
    assert all(f"| {name} |" in local.text for name in per_class)
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert recipe.result.metrics["errors"] == [] and not (out / "errors.png").exists()  # no mistake to show
    env = client_env(hub, tmp_path / "pusher")
    assert tl_hub_cli(["push", out, "me/card"], env, tmp_path).returncode == 0
    card = ModelCard(hub.read_file("me/card", "README.md").decode())
    assert 'tl_hub.load("me/card")' in card.text  # the pushed card names the repository
    assert hub.read_file("me/card", "confusion_matrix.png")[:8] == b"\x89PNG\r\n\x1a\n"
    results = card.data.to_dict()["model-index"][0]["results"]
    metrics = {m["type"] for r in results for m in r["metrics"]}
    assert {"accuracy", "f1"} <= metrics
    assert "tl_hub.load" in card.text
    # a README written by the user is not replaced silently
    hub.commit_files("me/card", {"README.md": b"# my own notes\n"}, message="user edit")
    proc = tl_hub_cli(["push", out, "me/card"], env, tmp_path)
    assert proc.returncode == 0 and "keeping it" in proc.stderr
    assert hub.read_file("me/card", "README.md") == b"# my own notes\n"


def test_most_confident_mistakes_are_saved_shown_and_pushed(hub, tiny_model_dir, tmp_path):
    from huggingface_hub import ModelCard

    ds = colour_dataset(45)
    shuffled = np.random.default_rng(0).permutation(ds["label"]).tolist()  # labels the images cannot predict
    ds = ds.remove_columns("label").add_column("label", [COLOURS[y] for y in shuffled])
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(ds, progress=False)
    errors = recipe.result.metrics["errors"]  # the most confident mistakes, most confident first
    assert errors and [e["confidence"] for e in errors] == sorted((e["confidence"] for e in errors), reverse=True)
    assert all(e["label"] != e["predicted"] for e in errors) and len(errors) <= 16
    assert len(errors) == min(16, sum(m["support"] for m in recipe.result.metrics["per_class"].values())
                              - sum(recipe.result.metrics["confusion_matrix"][i][i] for i in range(3)))
    out = tmp_path / "out"
    recipe.save(str(out))
    assert (out / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![most confident mistakes](errors.png)" in ModelCard.load(str(out / "README.md")).text
    env = client_env(hub, tmp_path / "pusher")
    assert tl_hub_cli(["push", out, "me/errors"], env, tmp_path).returncode == 0  # push loads the folder again
    assert hub.read_file("me/errors", "errors.png") == (out / "errors.png").read_bytes()


def test_lora_adapter_loads_with_plain_peft(tiny_model_dir, tmp_path):
    """The documented PEFT route: the base model with a head of the new size, then PeftModel.from_pretrained."""
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    recipe = LoRARecipe(tiny_model_dir("vit"), epochs=2, lr=5e-3, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    recipe.save(str(tmp_path / "out"))
    labels = recipe.classifier.labels
    base = AutoModelForImageClassification.from_pretrained(
        tiny_model_dir("vit"), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, str(tmp_path / "out")).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).logits, recipe.classifier.model(pixel_values=x).logits, atol=1e-6)
    # what does not work: the adapter folder read as a plain transformers model (head size / no weights)
    with pytest.raises(Exception):
        AutoModelForImageClassification.from_pretrained(str(tmp_path / "out"), use_safetensors=True)


def test_base_model_is_pinned_and_full_models_work_with_pipeline(hub, tiny_model_dir, tmp_path):
    """Train on a base fetched from the (local) Hub; the pushed head records the base's commit, and loading it after
    the base repo moved on still gives the same predictions. A fully trained model loads with `pipeline`."""
    from support.tiny import write_image_folder

    base_files = {name: open(os.path.join(tiny_model_dir("vit"), name), "rb").read()
                  for name in os.listdir(tiny_model_dir("vit"))}
    hub.create_repo("org/base")
    first = hub.commit_files("org/base", base_files, message="base v1")
    data = write_image_folder(tmp_path / "images", n=30)
    env = client_env(hub, tmp_path / "trainer")
    for recipe, out, repo in (("feature-extraction", "fe", "me/fe-head"), ("scratch", "full", "me/full")):
        proc = tl_hub_cli(["train", "--recipe", recipe, "--model", "org/base", "--dataset", data, "--output-dir",
                           tmp_path / out, "--epochs", "1", "--no-augment", "--no-progress"], env, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert tl_hub_cli(["push", tmp_path / out, repo], env, tmp_path).returncode == 0
    info = json.loads(hub.read_file("me/fe-head", "tl_hub.json"))
    assert info["base_model"] == "org/base" and info["base_model_revision"] == first
    images_dir = tmp_path / "images" / "red"
    before, _ = predictions_in_fresh_cache(hub, "me/fe-head", images_dir, tmp_path)
    # the base repo moves on: different weights on main
    other = tmp_path / "other-vit"
    from support.tiny import save_tiny_model
    save_tiny_model("vit", str(other), seed=5)
    hub.commit_files("org/base", {"model.safetensors": (other / "model.safetensors").read_bytes()}, message="v2")
    after, _ = predictions_in_fresh_cache(hub, "me/fe-head", images_dir, tmp_path)
    assert torch.equal(before, after)
    # a fully trained model is a standard transformers repo
    code = f'''
import json, os
from transformers import pipeline
pipe = pipeline("image-classification", model="me/full")
files = sorted(os.listdir({str(images_dir)!r}))[:2]
print("RESULT:" + json.dumps([pipe(os.path.join({str(images_dir)!r}, f))[0]["label"] for f in files]))
'''
    proc = run_python(code, client_env(hub, tempfile.mkdtemp(dir=tmp_path)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT:")][-1][7:])
    assert all(l in ("blue", "green", "red") for l in labels)
