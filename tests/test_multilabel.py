"""Multi-label tasks end to end: training (solve and fine-tune), thresholds chosen and saved, predict, the
transformers pipeline, evaluate, the Space, and the bad inputs."""

import json
import os

import numpy as np
import pytest
import torch
from support.tiny import CHANNELS, multilabel_dataset, multilabel_images

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe, load
from tl_hub.errors import ConfigError
from tl_hub.tasks import MULTI_LABEL


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, tmp_path_factory):
    """A feature-extraction recipe fitted on a multi-label task, and its saved folder."""
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), seed=0)
    result = recipe.fit(multilabel_dataset(120, seed=1), multilabel_dataset(60, seed=2), progress=False)
    folder = str(tmp_path_factory.mktemp("ml") / "model")
    recipe.save(folder)
    return recipe, result, folder


def test_a_list_column_trains_a_multi_label_head_with_its_metrics(fitted):
    recipe, result, _ = fitted
    model = recipe.classifier.model
    assert model.config.problem_type == MULTI_LABEL
    assert set(result.metrics) >= {"mAP", "f1", "f1_micro", "accuracy", "loss", "per_label"}
    assert result.metrics["mAP"] > 0.8  # bright channels are easy; chance is about 0.5
    assert set(result.metrics["per_label"]) == set(CHANNELS)
    assert result.history[0]["solver"] == "lbfgs" and "C" in result.history[0]  # one-vs-rest solve, C on mAP
    assert "multi-label" in result.data_summary


def test_thresholds_are_chosen_on_validation_saved_and_used(fitted):
    recipe, result, folder = fitted
    thresholds = recipe.classifier.info["thresholds"]
    assert set(thresholds) == set(CHANNELS) and all(0 < t < 1 for t in thresholds.values())
    saved = json.load(open(os.path.join(folder, "tl_hub.json")))
    assert saved["thresholds"] == pytest.approx(thresholds) and saved["multi_label"] is True
    loaded = load(folder)
    assert loaded.thresholds == pytest.approx([thresholds[c] for c in loaded.labels])
    images, _ = multilabel_images(12, seed=9)
    probs = loaded.predict_proba(images)
    predictions = loaded.predict(images)
    for row, predicted in zip(probs, predictions):
        expected = {loaded.labels[j] for j in range(len(loaded.labels)) if row[j] >= loaded.thresholds[j]}
        assert {p["label"] for p in predicted} == expected
        assert [p["score"] for p in predicted] == sorted((p["score"] for p in predicted), reverse=True)
    # the saved thresholds decide: all at 0 gives every label, all at 1 none
    loaded.info["thresholds"] = dict.fromkeys(loaded.labels, 0.0)
    assert all(len(p) == 3 for p in loaded.predict(images))
    loaded.info["thresholds"] = dict.fromkeys(loaded.labels, 1.0)
    assert all(len(p) == 0 for p in loaded.predict(images))


def test_probabilities_are_sigmoids_and_the_pipeline_gives_the_same(fitted):
    from transformers import pipeline

    _, _, folder = fitted
    loaded = load(folder)
    images, _ = multilabel_images(4, seed=5)
    probs = loaded.predict_proba(images)
    assert not torch.allclose(probs.sum(-1), torch.ones(len(images)))  # not a softmax
    pipe = pipeline("image-classification", model=folder, image_processor=folder)
    for image, row in zip(images, probs):
        scores = {p["label"]: p["score"] for p in pipe(image, top_k=3)}
        assert [scores[label] for label in loaded.labels] == pytest.approx(row.tolist(), abs=1e-5)


def test_evaluate_reports_map_and_per_label_at_the_saved_thresholds(fitted, tmp_path):
    _, _, folder = fitted
    loaded = load(folder)
    metrics = loaded.evaluate(multilabel_dataset(40, seed=3), output_dir=str(tmp_path / "eval"))
    assert metrics["mAP"] > 0.8
    assert {m["threshold"] for m in metrics["per_label"].values()} == set(loaded.thresholds)
    assert os.path.exists(tmp_path / "eval" / "per_label.png")
    assert os.path.exists(os.path.join(folder, "per_label.png"))
    card = open(os.path.join(folder, "README.md")).read()
    assert "Per label (validation)" in card and "mAP" in card


def test_fine_tune_trains_multi_label(tiny_model_dir):
    recipe = FineTuneRecipe(tiny_model_dir("vit"), epochs=2, head_epochs=1, seed=0, batch_size=16)
    result = recipe.fit(multilabel_dataset(64, seed=1), multilabel_dataset(32, seed=2), progress=False)
    assert [h["period"] for h in result.history][-1] == "fine-tune"
    assert all("mAP" in h for h in result.history)
    assert recipe.classifier.info["thresholds"]
    assert recipe.evaluate(multilabel_dataset(20, seed=4))["mAP"] > 0.5


def test_the_space_shows_every_label_over_its_threshold(fitted):
    from tl_hub.space import NO_LABEL, SpaceApp

    _, _, folder = fitted
    app = SpaceApp(load(folder))
    assert app.multi_label and app.top_k == 3
    image, labels = multilabel_images(40, seed=11)
    shown = [app.predict(img) for img in image]
    assert any(isinstance(s, dict) and len(s) >= 2 for s in shown)  # several labels for some images
    for s in shown:
        assert s == NO_LABEL or all(isinstance(v, float) for v in s.values())


def test_a_declared_multi_label_task_splits_text_labels(tiny_model_dir):
    import datasets

    images, labels = multilabel_images(60, seed=1)
    ds = datasets.Dataset.from_dict({"image": images, "label": [";".join(ls) for ls in labels]}).cast_column(
        "image", datasets.Image())
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), multi_label=True, seed=0)
    result = recipe.fit(ds, progress=False)
    assert sorted(recipe.classifier.labels) == sorted(CHANNELS)
    assert "mAP" in result.metrics


@pytest.mark.parametrize("setting", [{"class_weighting": "heavy"}, {"sampler": "weighted"}])
def test_bad_imbalance_settings_are_refused(tiny_model_dir, setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        FeatureExtractionRecipe(tiny_model_dir("vit"), **setting)


def test_one_vs_rest_solve_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    from tl_hub.probe import fit_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    y = (x[:, :3] + rng.normal(scale=0.7, size=(80, 3)) > 0).astype(float)
    w, b, _ = fit_logistic(torch.tensor(x), torch.tensor(y), 3, C=0.5, tol=1e-9)
    for k in range(3):
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(x, y[:, k])
        assert w[k].numpy() == pytest.approx(ref.coef_[0], abs=1e-4)
        assert float(b[k]) == pytest.approx(ref.intercept_[0], abs=1e-4)


def _wait_for(url: str, proc, seconds: float = 120) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read()[-3000:])
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s")


@pytest.mark.browser
def test_cli_trains_on_a_metadata_folder_evaluates_predicts_and_serves_several_labels(tiny_model_dir, tmp_path):
    from support.tiny import write_multilabel_folder
    from test_cli import tl_hub

    data = write_multilabel_folder(tmp_path / "images", n=90, seed=1, metadata="csv")
    held_out = write_multilabel_folder(tmp_path / "held-out", n=40, seed=2, metadata="jsonl")
    out = tmp_path / "out"
    proc = tl_hub("train", "--recipe", "feature-extraction", "--multi-label", "--model", tiny_model_dir("vit"),
                  "--dataset", data, "--output-dir", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation mAP" in proc.stdout
    info = json.load(open(out / "tl_hub.json"))
    assert info["thresholds"] and info["multi_label"] and "multi-label" in info["data"]
    assert info["settings"]["multi_label"] is True

    ev = tl_hub("evaluate", out, "--dataset", held_out)
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    assert metrics["mAP"] > 0.8 and set(metrics["per_label"]) == set(CHANNELS)
    assert "threshold" in ev.stdout and "mAP" in ev.stdout

    images = sorted(os.path.join(held_out, f) for f in os.listdir(held_out) if f.endswith(".png"))[:12]
    pred = tl_hub("predict", out, *images)
    assert pred.returncode == 0, pred.stderr[-3000:]
    lines = pred.stdout.strip().splitlines()
    assert len(lines) == 12 and any(line.count("(") >= 2 for line in lines)  # several labels on some images

    several = next(path for path, line in zip(images, lines) if line.count("(") >= 2)
    expected = [part.split(" (")[0] for part in lines[images.index(several)].split(": ", 1)[1].split(", ")]
    text, page = _served_prediction(out, several)
    shown = [line.strip() for line in text.splitlines()]  # the box's title "Prediction" contains "red": whole lines
    assert all(label in shown for label in expected), (text, expected)
    assert "every label whose score reaches its threshold" in page


def _served_prediction(model_dir, image: str) -> tuple[str, str]:
    """``tl-hub serve MODEL`` in a process, an image uploaded and classified in headless Chromium: the prediction
    box's text and the page."""
    import subprocess
    import sys

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from support.browser import chrome
    from support.launch import free_port

    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tl-hub")
    server = subprocess.Popen([exe, "serve", str(model_dir), "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/", server)
        driver = chrome()
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            wait = WebDriverWait(driver, 60)
            upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]")))
            upload.send_keys(image)
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image img")))
            driver.find_element(By.CSS_SELECTOR, "#submit").click()
            # the text that showed the labels, read once: a later read may catch the box re-rendering
            text = wait.until(lambda d: (lambda t: t if t.count("%") >= 2 else False)(
                d.find_element(By.CSS_SELECTOR, "#prediction").text))
            return text, driver.page_source
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_streamed_multi_label_data_is_refused_clearly(tiny_model_dir):
    from tl_hub.errors import DataError

    stream = multilabel_dataset(20, seed=1).to_iterable_dataset()
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), train_examples=20)
    with pytest.raises(DataError, match="holds a set of labels per image .*streamed data is single-label only"):
        recipe.fit(stream, multilabel_dataset(10, seed=2).to_iterable_dataset(), progress=False)
    with pytest.raises(ConfigError, match="streamed data is single-label only"):
        FeatureExtractionRecipe(tiny_model_dir("vit"), multi_label=True, train_examples=20).fit(
            stream, multilabel_dataset(10, seed=2).to_iterable_dataset(), progress=False)


def test_rank_refuses_a_multi_label_dataset_clearly(tiny_model_dir):
    from tl_hub import rank
    from tl_hub.errors import DataError

    with pytest.raises(DataError, match="multi-label task.*ranking scores models for single-label targets"):
        rank([tiny_model_dir("vit")], multilabel_dataset(30, seed=1), recommend=False)


@pytest.mark.slow
def test_push_and_load_round_trip_keeps_thresholds_and_sigmoids(fitted, tmp_path):
    from support.hub_server import LocalHub
    from test_hub_push import TOKEN, client_env, run_python, tl_hub_cli

    recipe, _, folder = fitted
    images, _ = multilabel_images(5, seed=7)
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    with LocalHub(str(tmp_path / "store"), token=TOKEN) as hub:
        proc = tl_hub_cli(["push", folder, "me/channels"], client_env(hub, tmp_path / "pusher"), tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        code = f"""
import json, tl_hub
from PIL import Image
clf = tl_hub.load("me/channels", base_model={recipe.source.id!r})
images = [Image.open({str(tmp_path)!r} + f"/{{i}}.png") for i in range(5)]
print("RESULT:" + json.dumps({{"thresholds": clf.thresholds, "probs": clf.predict_proba(images).tolist(),
                              "predict": clf.predict(images)}}))
"""
        out = run_python(code, client_env(hub, tmp_path / "loader"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    remote = json.loads([line for line in out.stdout.splitlines() if line.startswith("RESULT:")][-1][7:])
    local = load(folder)
    assert remote["thresholds"] == pytest.approx(local.thresholds)
    assert torch.allclose(torch.tensor(remote["probs"]), local.predict_proba(images), atol=1e-6)
    assert remote["predict"] == local.predict(images)


@pytest.mark.parametrize("recipe", ["lora", "train-all", "scratch"])
def test_every_recipe_trains_multi_label(tiny_model_dir, tmp_path, recipe):
    from tl_hub import get_recipe

    r = get_recipe(recipe)(tiny_model_dir("vit"), epochs=2, batch_size=16, seed=0)
    result = r.fit(multilabel_dataset(48, seed=1), multilabel_dataset(24, seed=2), progress=False)
    assert "mAP" in result.metrics and r.classifier.info["thresholds"]
    r.save(str(tmp_path / "out"))
    loaded = load(str(tmp_path / "out"))
    images, _ = multilabel_images(4, seed=3)
    assert loaded.multi_label and torch.allclose(loaded.predict_proba(images), r.classifier.predict_proba(images),
                                                 atol=1e-6)


def test_the_trainer_integration_trains_multi_label(tiny_model_dir, tmp_path):
    """A Trainer script: the model's own BCE loss on float multi-hot labels, head period then fine-tune."""
    from transformers import AutoModelForImageClassification

    import tl_hub
    from tl_hub.backbone import load_image_processor

    folder = tiny_model_dir("vit")
    processor = load_image_processor(folder)
    model = AutoModelForImageClassification.from_pretrained(
        folder, num_labels=3, id2label=dict(enumerate(CHANNELS)), label2id={n: i for i, n in enumerate(CHANNELS)},
        problem_type=MULTI_LABEL, ignore_mismatched_sizes=True)

    class Images(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            self.images, self.labels = multilabel_images(n, seed)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            pixels = processor(images=self.images[i], return_tensors="pt")["pixel_values"][0]
            target = torch.tensor([float(c in self.labels[i]) for c in CHANNELS])
            return {"pixel_values": pixels, "labels": target}

    args = tl_hub.TransferArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                                    learning_rate=1e-2, report_to="none", save_strategy="no", logging_steps=1,
                                    use_cpu=True, seed=0, num_train_epochs=3, head_epochs=1)
    trainer = tl_hub.TransferTrainer(model=model, args=args, train_dataset=Images(48, 1), eval_dataset=Images(16, 2))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    logits = trainer.predict(Images(16, 2)).predictions
    assert logits.shape == (16, 3)
