"""Test-time augmentation (`tl_hub.tta`): the views each training augmentation allows, the mean probabilities over
them in predict and evaluate (one process and two), on a model in memory, loaded, and pushed and pulled back, the
CLI flag and the bad inputs."""

import json
import tempfile

import datasets
import pytest
import torch
from PIL import ImageOps
from support.hub_server import LocalHub
from support.launch import accelerate_launch, launch_env, run
from support.tiny import COLOURS, colour_dataset, colour_images, multilabel_dataset
from test_hub_push import TOKEN, client_env, run_python, tl_hub_cli

from tl_hub import Classifier, ConfigError, FeatureExtractionRecipe, load
from tl_hub.data import preprocess
from tl_hub.structure import logits_of
from tl_hub.tasks import MULTI_LABEL, probabilities
from tl_hub.tta import DEFAULT_TTA, View, apply_view, check_tta, tta_views, view_box

CORNERS = ["centre", "top-left", "top-right", "bottom-left", "bottom-right"]


def tiny_classifier(model_dir, settings=None, multi_label=False):
    """An untrained classifier on the tiny model (3 labels), with ``settings`` as its training record."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir, num_labels=3, ignore_mismatched_sizes=True)
    if multi_label:
        model.config.problem_type = MULTI_LABEL
    info = {} if settings is None else {"settings": settings}
    return Classifier(model, AutoImageProcessor.from_pretrained(model_dir), labels=COLOURS, info=info)


def plain_probabilities(clf, images):
    """What predict_proba gave before TTA: one forward on the plain images."""
    with torch.inference_mode():
        logits = logits_of(clf.model(**preprocess(clf.processor, images)))
    return probabilities(logits, clf.multi_label)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, tmp_path_factory):
    """A head trained with hflip (12 views), and its saved folder."""
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, batch_size=16, seed=0, hflip=True,
                                     feature_cache="memory")
    recipe.fit(colour_dataset(30), progress=False)
    folder = str(tmp_path_factory.mktemp("tta") / "model")
    recipe.save(folder)
    return recipe, folder


def test_without_hflip_the_views_are_the_plain_image_and_five_unflipped_crops(tiny_model_dir):
    views = tta_views({"augment": True, "hflip": False, "crop_scale": 0.6})
    assert views == [View()] + [View(p, 0.8) for p in CORNERS]
    assert not any(v.flip for v in views)
    assert tta_views(None) == views  # a model without a record: TrainingConfig's defaults
    # a 32 x 32 image: crops of 80% of the area are 29 x 29 (round(32 * sqrt(0.8)))
    boxes = [(0, 0, 32, 32), (1, 1, 30, 30), (0, 0, 29, 29), (3, 0, 32, 29), (0, 3, 29, 32), (3, 3, 32, 32)]
    assert [view_box((32, 32), v) for v in views] == boxes
    clf = tiny_classifier(tiny_model_dir("vit"), {"hflip": False, "crop_scale": 0.6})
    images, _ = colour_images(5, seed=3)
    expected = torch.stack([plain_probabilities(clf, [im.crop(b) for b in boxes]).mean(0) for im in images])
    assert torch.allclose(clf.predict_proba(images, tta=6), expected, atol=1e-6)
    first_three = torch.stack([plain_probabilities(clf, [im.crop(b) for b in boxes[:3]]).mean(0) for im in images])
    assert torch.allclose(clf.predict_proba(images, tta=3, batch_size=4), first_three, atol=1e-6)


def test_with_hflip_each_view_is_followed_by_its_mirror(tiny_model_dir):
    views = tta_views({"hflip": True, "crop_scale": 0.5})
    assert len(views) == 12
    assert views[0::2] == [View()] + [View(p, 0.75) for p in CORNERS]
    assert views[1::2] == [View(v.position, v.area, flip=True) for v in views[0::2]]
    image = colour_images(1, seed=4)[0][0]
    assert apply_view(image, views[0]) is image
    assert list(apply_view(image, views[1]).getdata()) == list(ImageOps.mirror(image).getdata())
    clf = tiny_classifier(tiny_model_dir("vit"), {"hflip": True})
    images, _ = colour_images(4, seed=5)
    expected = torch.stack([plain_probabilities(clf, [im, ImageOps.mirror(im)]).mean(0) for im in images])
    assert torch.allclose(clf.predict_proba(images, tta=2), expected, atol=1e-6)


def test_crops_keep_an_aspect_ratio_training_allows_and_fit_the_image():
    for size in [(64, 32), (32, 64), (100, 90), (7, 5)]:
        for view in tta_views({"crop_scale": 0.3})[1:]:
            left, top, right, bottom = view_box(size, view)
            assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
            assert 3 / 4 - 0.05 <= (right - left) / (bottom - top) <= 4 / 3 + 0.05 or min(size) < 10
    assert tta_views({"crop_scale": 1.0}) == [View()] and len(tta_views({"crop_scale": 1.0, "hflip": True})) == 2
    assert tta_views({"augment": False, "hflip": True}) == [View()]


def test_tta_1_is_no_tta_bit_for_bit(tiny_model_dir):
    clf = tiny_classifier(tiny_model_dir("vit"), {"hflip": True})
    images, _ = colour_images(12, seed=6)
    assert torch.equal(clf.predict_proba(images, tta=1), plain_probabilities(clf, images))
    assert DEFAULT_TTA == 1 and torch.equal(clf.predict_proba(images), clf.predict_proba(images, tta=1))
    assert clf.predict(images, tta=1) == clf.predict(images)
    data = colour_dataset(12, seed=6)
    with_tta, without = clf.evaluate(data, tta=1, batch_size=8), clf.evaluate(data, batch_size=8)
    assert with_tta == without and with_tta["tta"] == 1


def test_evaluate_gives_the_metrics_of_the_mean_probabilities(tiny_model_dir):
    clf = tiny_classifier(tiny_model_dir("vit"), {"hflip": True})
    data = colour_dataset(21, seed=7)
    metrics = clf.evaluate(data, tta=4, batch_size=8)  # 2 images (8 views) a batch, a short last batch
    probs = clf.predict_proba(data["image"], tta=4)
    refs = torch.tensor(data["label"])
    assert metrics["tta"] == 4
    assert metrics["accuracy"] == pytest.approx(float((probs.argmax(-1) == refs).float().mean()))
    assert metrics["loss"] == pytest.approx(float(-probs[torch.arange(len(refs)), refs].log().mean()), abs=1e-5)
    logits, _, _, _ = clf.outputs(data, tta=4)
    assert torch.allclose(logits.softmax(-1), probs, atol=1e-6)
    streamed = clf.evaluate(data.to_iterable_dataset(num_shards=2), tta=4, batch_size=8)  # a streamed dataset
    assert streamed["tta"] == 4 and streamed["accuracy"] == metrics["accuracy"]
    assert streamed["loss"] == pytest.approx(metrics["loss"], abs=1e-6)


def test_a_multi_label_model_averages_its_sigmoids(tiny_model_dir):
    clf = tiny_classifier(tiny_model_dir("vit"), {"hflip": True}, multi_label=True)
    data = multilabel_dataset(10, seed=8).rename_column("labels", "label")
    probs = clf.predict_proba(data["image"], tta=3)
    assert not torch.allclose(probs.sum(-1), torch.ones(len(probs)))
    logits, _, _, _ = clf.outputs(data, tta=3)
    assert torch.allclose(logits.sigmoid(), probs, atol=1e-5)
    metrics = clf.evaluate(data, tta=3)
    assert metrics["tta"] == 3 and "mAP" in metrics and torch.isfinite(torch.tensor(metrics["loss"]))


def test_predict_and_evaluate_with_tta_on_a_loaded_model(fitted):
    recipe, folder = fitted
    loaded = load(folder)
    assert loaded.info["settings"]["hflip"] is True
    images, _ = colour_images(9, seed=10)
    assert torch.allclose(loaded.predict_proba(images, tta=12), recipe.classifier.predict_proba(images, tta=12),
                          atol=1e-6)
    assert [p[0]["label"] for p in loaded.predict(images, tta=5)] == \
        [p[0]["label"] for p in recipe.classifier.predict(images, tta=5)]
    data = colour_dataset(15, seed=11)
    here, there = recipe.classifier.evaluate(data, tta=4), loaded.evaluate(data, tta=4)
    assert there["tta"] == 4 and there["accuracy"] == here["accuracy"]
    assert there["loss"] == pytest.approx(here["loss"], abs=1e-6)
    # the figures without the temperature are those of one view only: not given over averaged views
    assert loaded.info["calibration"]["folded_into_head"]
    assert "calibration" not in there and "calibration" in loaded.evaluate(data)


@pytest.mark.parametrize("settings, tta, expected", [
    ({"hflip": True}, 0, "`tta` should be a whole number of views, at least 1"),
    ({"hflip": True}, -2, "got -2"),
    ({"hflip": True}, 2.5, "got 2.5"),
    ({"hflip": True}, "3", "got '3'"),
    ({"hflip": True}, 13, "allows 12 views: the plain image and 5 crops of 80% of its area (centre and corners), "
                          "each also mirrored (hflip is on); set `tta` to 12 or fewer."),
    ({"hflip": False}, 7, "allows 6 views: the plain image and 5 crops of 80% of its area (centre and corners), "
                          "no mirrors (hflip is off); set `tta` to 6 or fewer."),
    ({"augment": False}, 2, "trained with augment off, so its only view is the plain image; set `tta` to 1"),
    ({"crop_scale": 1.0, "hflip": True}, 3, "crop_scale=1), so its views are the plain image and its mirror"),
], ids=["zero", "negative", "float", "text", "too-many-hflip", "too-many", "augment-off", "whole-image-crops"])
def test_bad_tta_is_a_clear_config_error(tiny_model_dir, settings, tta, expected):
    with pytest.raises(ConfigError, match="`tta`") as error:
        check_tta(tta, settings)
    assert expected in str(error.value)
    clf = tiny_classifier(tiny_model_dir("vit"), settings)
    image = colour_images(1)[0][0]
    for call in (lambda: clf.predict(image, tta=tta), lambda: clf.evaluate(colour_dataset(3), tta=tta)):
        with pytest.raises(ConfigError) as error:
            call()
        assert expected in str(error.value)


def test_the_cli_flag(fitted, tmp_path, capsys):
    from tl_hub.cli import main

    recipe, folder = fitted
    images, _ = colour_images(3, seed=12)
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    for image, path in zip(images, paths):
        image.save(path)
    assert main(["-q", "predict", folder, *paths, "--tta", "6", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    expected = load(folder).predict(paths, tta=6)
    assert [r["predictions"][0]["label"] for r in rows] == [p[0]["label"] for p in expected]
    assert [r["predictions"][0]["score"] for r in rows] == pytest.approx([p[0]["score"] for p in expected])
    colour_dataset(12, seed=13).save_to_disk(str(tmp_path / "data"))
    assert main(["-q", "evaluate", folder, "--dataset", str(tmp_path / "data"), "--tta", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tta"] == 3
    assert main(["-q", "predict", folder, paths[0], "--tta", "13"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: `--tta` is 13") and "set `--tta` to 12" in lines[0]


@pytest.mark.slow
def test_a_pushed_and_pulled_model_gives_the_same_tta_predictions(fitted, tiny_model_dir, tmp_path):
    recipe, folder = fitted
    images, _ = colour_images(6, seed=14)
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for i, image in enumerate(images):
        image.save(images_dir / f"{i}.png")
    colour_dataset(12, seed=15).save_to_disk(str(tmp_path / "data"))
    code = f'''
import json, os, tl_hub
from PIL import Image
clf = tl_hub.load("me/tta", base_model={tiny_model_dir("vit")!r})
images = [Image.open(os.path.join({str(images_dir)!r}, f)) for f in sorted(os.listdir({str(images_dir)!r}))]
metrics = clf.evaluate({str(tmp_path / "data")!r}, tta=4)
print("RESULT:" + json.dumps([clf.predict_proba(images, tta=12).tolist(), metrics["accuracy"], metrics["tta"]]))
'''
    with LocalHub(str(tmp_path / "hub-store"), token=TOKEN) as hub:
        pushed = tl_hub_cli(["push", folder, "me/tta"], client_env(hub, tmp_path / "pusher"), tmp_path)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        pulled = run_python(code, client_env(hub, tempfile.mkdtemp(dir=tmp_path)), tmp_path)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    line = [line for line in pulled.stdout.splitlines() if line.startswith("RESULT:")][-1]
    remote, accuracy, tta = json.loads(line[len("RESULT:"):])
    local = [im.convert("RGB") for im in images]
    assert torch.allclose(torch.tensor(remote), recipe.classifier.predict_proba(local, tta=12), atol=1e-6)
    assert tta == 4 and accuracy == recipe.classifier.evaluate(datasets.load_from_disk(str(tmp_path / "data")),
                                                               tta=4)["accuracy"]


@pytest.mark.distributed
def test_two_processes_evaluate_with_tta_as_one(fitted, tmp_path):
    recipe, folder = fitted
    data = colour_dataset(21, seed=16)  # 16 views a batch: 4 images, 2 per process; the last batch is short
    data.save_to_disk(str(tmp_path / "data"))
    proc = run(accelerate_launch("tl_hub.cli", "-q", "evaluate", folder, "--dataset", str(tmp_path / "data"),
                                 "--tta", "4", "--batch-size", "16", module=True), launch_env())
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    one = recipe.classifier.evaluate(data, tta=4, batch_size=16)
    assert len(lines) == 2 and all(m["tta"] == 4 and m["confusion_matrix"] == one["confusion_matrix"] for m in lines)
    assert all(m["loss"] == pytest.approx(one["loss"], abs=1e-5) for m in lines)
    assert sum(map(sum, lines[0]["confusion_matrix"])) == 21
