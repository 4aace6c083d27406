"""A catalogue of bad inputs across data, model, CLI and Hub, and tl-hub's answer to each.

Every case expects ONE of:

- one clear error: a `TlHubError` subclass whose message names the problem (the file, column, value, folder) and,
  where there is one, the fix; through the CLI, exit status 2, exactly one ``error:`` line and no traceback;
- a documented graceful handling: converted to RGB, skipped with a warning that counts, mapped by name.

Where files are written, nothing is lost or half-written: an existing output is untouched and no temporary
``.<name>.tmp-*`` folder is left behind.  Tiny models and Python calls keep it fast; the CLI runs in-process
(``tl_hub.cli.main``) except for a handful of real ``tl-hub`` subprocesses.
"""

import glob
import io
import logging
import os
import shutil
import subprocess
import sys
import traceback
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from support.tiny import COLOURS, capture_backbone, colour_dataset, colour_images, write_image_folder
from test_cli import assert_one_line_error
from test_cli import tl_hub as tl_hub_cli

import tl_hub
from tl_hub import (
    ConfigError,
    DataError,
    FeatureExtractionRecipe,
    FineTuneRecipe,
    ModelError,
    OutputError,
    TlHubError,
    TrainingError,
)
from tl_hub.data import ImageClassificationDataset, to_rgb

# the head trains by gradient epochs (not the one-step solve) where these tests count epochs, steps and checkpoints
FAST = dict(epochs=1, batch_size=16, eval_batch_size=32, augment=False, feature_cache="memory", seed=0,
            head_solver="adamw")


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def fit(model_dir, data, validation=None, recipe=FeatureExtractionRecipe, **settings):
    r = recipe(model_dir, **{**FAST, **settings})
    r.fit(data, validation, progress=False)
    return r


def run_main(capsys, *args):
    """``tl-hub ARGS`` in this process: ``(returncode, stdout, stderr)`` as a console would show them; an exception
    that escapes ``main`` is shown as the traceback a user would see."""
    from tl_hub.cli import main

    capsys.readouterr()
    try:
        rc, tb = main([str(a) for a in args]), ""
    except SystemExit as e:  # argparse
        rc, tb = e.code, ""
    except BaseException:
        rc, tb = 1, traceback.format_exc()
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=captured.out, stderr=captured.err + tb)


def temp_leftovers(parent):
    """Temporary or displaced folders that a write left next to its output (``.<name>.tmp-*``, ``.<name>.old-*``)."""
    return sorted(glob.glob(os.path.join(str(parent), ".*.tmp-*")) + glob.glob(os.path.join(str(parent), ".*.old-*")))


def tree(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def image_dataset(images, labels, names=COLOURS):
    """A ``Dataset`` with an ``Image`` column (PIL images or file paths) and a ``ClassLabel`` column."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"image": images, "label": [list(names).index(l) for l in labels]},
                                      features=features)


def jpeg_bytes(img, **kw):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One trained feature-extraction ViT (3 colours), saved once: ``(recipe, output folder)``."""
    recipe = fit(tiny_model_dir("vit"), colour_dataset(60, seed=1), colour_dataset(15, seed=2), epochs=2, lr=0.02)
    out = str(tmp_path_factory.mktemp("trained") / "model")
    recipe.save(out)
    return recipe, out


@pytest.fixture(scope="module")
def clf(trained):
    return tl_hub.load(trained[1])


# ---------------------------------------------------------------------------------------------------------------------
# Data: broken image files are skipped with one warning that counts them


def _good_image():
    return colour_images(1, seed=5, size=48)[0][0]


BAD_FILES = {
    "corrupt-file": ("broken.png", lambda: b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(0).integers(
        0, 256, 500, dtype=np.uint8))),
    "truncated-png": ("truncated.png", lambda: png_bytes(_good_image())[:300]),
    "truncated-jpeg": ("truncated.jpg", lambda: (lambda b: b[: len(b) // 2])(jpeg_bytes(_good_image()))),
    "text-with-image-extension": ("notes.jpg", lambda: b"this is a text file, not a JPEG\n"),
    "empty-file": ("empty.png", lambda: b""),
}


@pytest.mark.parametrize("kind", list(BAD_FILES), ids=list(BAD_FILES))
def test_broken_image_file_is_skipped_with_a_count(tiny_model_dir, tmp_path, caplog, kind):
    name, make = BAD_FILES[kind]
    data = write_image_folder(tmp_path / "images", n=30)
    with open(os.path.join(data, "green", name), "wb") as f:
        f.write(make())
    with caplog.at_level(logging.WARNING, logger="tl_hub"):
        recipe = fit(tiny_model_dir("vit"), data)
    skipped = [r.getMessage() for r in caplog.records if "Skipped" in r.getMessage()]
    assert skipped == ["Skipped 1 of 31 training images that could not be decoded (corrupt or not an image)."]
    assert recipe.result.run.data.skipped == 1 and recipe.info()["skipped_images"] == 1
    assert len(recipe.result.run.data.train) + len(recipe.result.run.data.validation) == 30  # every good image kept
    # the damaged file is also a clear error when predicted on directly
    with pytest.raises(DataError) as info:
        recipe.predict(os.path.join(data, "green", name))
    assert name in str(info.value) and "Cannot read image" in str(info.value)


def test_no_readable_image_at_all_is_a_data_error(tiny_model_dir, tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "bad" / c).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "bad" / c / f"{i}.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as info:
        fit(tiny_model_dir("vit"), str(tmp_path / "bad"))
    assert "None of the 6 training images could be decoded" in str(info.value) and "check the files" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Data: unusual image modes and sizes are converted to upright 8-bit RGB, and train and predict


def _cmyk(path):
    Image.new("RGB", (24, 16), (230, 20, 20)).convert("CMYK").save(path, format="JPEG", quality=95)
    return (24, 16), lambda rgb: rgb[..., 0].mean() > 180 and rgb[..., 1:].mean() < 80  # still red


def _rgba(path):
    a = np.zeros((16, 24, 4), dtype=np.uint8)
    a[..., 0], a[..., 3] = 200, 255  # opaque red ...
    a[:, :12, 3] = 0  # ... with a fully transparent left half
    Image.fromarray(a, "RGBA").save(path)
    return (24, 16), lambda rgb: (rgb[:, :12] == 255).all() and (rgb[:, 12:, 0] == 200).all()


def _palette(path):
    p = Image.new("P", (24, 16), 1)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    p.paste(0, (0, 0, 12, 16))
    p.save(path, transparency=0)  # index 0 is transparent
    return (24, 16), lambda rgb: (rgb[:, :12] == 255).all() and (rgb[:, 12:] == [0, 0, 255]).all()


def _gray16(path):
    a = np.tile(np.linspace(1000, 60000, 24).astype(np.uint16), (16, 1))
    Image.fromarray(a).save(path)  # a 16-bit grayscale PNG (I;16)
    return (24, 16), lambda rgb: rgb.min() == 0 and rgb.max() == 255  # full 8-bit range, not clipped to white


def _one_pixel(path):
    Image.new("RGB", (1, 1), (0, 200, 0)).save(path)
    return (1, 1), lambda rgb: (rgb == [0, 200, 0]).all()


def _large(path):
    small = np.asarray(colour_images(1, seed=3, size=40)[0][0])
    Image.fromarray(small).resize((4000, 3000), Image.Resampling.NEAREST).save(path, quality=85)
    return (4000, 3000), lambda rgb: True


MODES = {"cmyk-jpeg": ("x.jpg", _cmyk), "rgba-png": ("x.png", _rgba), "palette-with-transparency": ("x.png", _palette),
         "16-bit-grayscale": ("x.png", _gray16), "1x1-pixel": ("x.png", _one_pixel),
         "4000x3000-jpeg": ("x.jpg", _large)}


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_unusual_image_is_converted_to_rgb_and_predicted(clf, tmp_path, mode):
    name, make = MODES[mode]
    path = str(tmp_path / name)
    size, looks_right = make(path)
    rgb = to_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == size
    assert looks_right(np.asarray(rgb).astype(int))
    preds = clf.predict(path, top_k=3)
    assert sorted(p["label"] for p in preds) == sorted(COLOURS)
    assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-5)


def test_unusual_images_in_the_training_data_train(tiny_model_dir, tmp_path, caplog):
    """CMYK, RGBA, palette, 16-bit, 1x1 and 4000x3000 images among the training images: none is skipped, and they
    go through augmentation (random resized crop, flip) and the encoder like any other."""
    data = write_image_folder(tmp_path / "images", n=30)
    for i, (name, make) in enumerate(MODES.values()):
        make(os.path.join(data, COLOURS[i % 3], f"special{i}{os.path.splitext(name)[1]}"))
    with caplog.at_level(logging.WARNING, logger="tl_hub"):
        recipe = fit(tiny_model_dir("vit"), data, augment=True, feature_cache="off")
    assert not [r for r in caplog.records if "Skipped" in r.getMessage()]
    assert recipe.result.run.data.skipped == 0 and len(recipe.result.run.data.train) + len(recipe.result.run.data.validation) == 36
    assert np.isfinite(recipe.result.metrics["loss"])


def test_exif_rotated_jpeg_is_predicted_upright(clf, tmp_path):
    a = np.zeros((32, 48, 3), dtype=np.uint8)  # stored 48 wide x 32 high
    a[:, :24] = [230, 10, 10]  # left half red
    a[:, 24:] = [10, 10, 230]  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: 32 wide x 48 high, red on top
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(a).save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    raw = Image.open(path)
    assert raw.size == (48, 32)
    upright = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    assert upright.shape == (48, 32, 3) and upright[:8].mean(axis=(0, 1)).argmax() == 0

    from_file = clf.predict_proba(path)
    assert torch.equal(from_file, clf.predict_proba(upright))  # numpy arrays carry no EXIF: exactly the upright pixels
    assert not torch.allclose(from_file, clf.predict_proba(np.asarray(raw.convert("RGB"))), atol=1e-7)
    # training preprocessing reads the same upright image
    ds = datasets.Dataset.from_dict({"image": [path], "label": [0]}).cast_column("image", datasets.Image())
    image, _ = ImageClassificationDataset(ds, "image", "label")[0]
    assert image.size == (32, 48) and np.array_equal(np.asarray(image), upright)


# ---------------------------------------------------------------------------------------------------------------------
# Data: labels, classes, splits and columns


@pytest.mark.parametrize("build", [
    lambda: datasets.Dataset.from_dict({"image": colour_images(12)[0], "label": ["red", None, "green", None] * 3}
                                       ).cast_column("image", datasets.Image()),
    lambda: image_dataset(*colour_images(12)).map(lambda r, i: {"label": -1 if i in (1, 3, 5, 7, 9, 11) else r["label"]},
                                                  with_indices=True),
], ids=["string-label-None", "ClassLabel-minus-one"])
def test_missing_labels_are_a_data_error(tiny_model_dir, build):
    with pytest.raises(DataError) as info:
        fit(tiny_model_dir("vit"), build())
    msg = str(info.value)
    assert "6 of 12 examples have no value in label column 'label'" in msg and "remove or label them" in msg


def test_labels_outside_the_training_set_at_evaluation_are_a_data_error(trained, tmp_path, capsys):
    data = write_image_folder(tmp_path / "eval", n=12, classes=["red", "green", "yellow"])
    proc = run_main(capsys, "evaluate", trained[1], "--dataset", data)
    assert_one_line_error(proc, "['yellow']", "not among the 3 training labels", "same label set")


def test_evaluation_data_with_more_classes_than_the_model(clf):
    names = COLOURS + ["purple"]
    images, labels = colour_images(12, classes=names)
    with pytest.raises(DataError) as info:
        clf.evaluate(image_dataset(images, labels, names))
    assert "['purple']" in str(info.value) and "3 training labels" in str(info.value)
    assert "evaluate on data with the same label set" in str(info.value)


def test_evaluation_labels_are_matched_by_name_not_by_id(clf):
    """Graceful: a ClassLabel with the same classes in another order, or with extra classes that have no examples,
    is mapped onto the model's labels by name."""
    images, labels = colour_images(30, seed=7)
    reference = clf.evaluate(image_dataset(images, labels))
    reordered = clf.evaluate(image_dataset(images, labels, names=["blue", "red", "green"]))
    superset = clf.evaluate(image_dataset(images, labels, names=["purple"] + COLOURS))
    scalars = ("accuracy", "f1", "loss")
    for other in (reordered, superset):
        assert {k: other[k] for k in scalars} == pytest.approx({k: reference[k] for k in scalars})
        # the per-class report and the confusion matrix follow the model's labels, whatever the data's ids
        assert other["per_class"] == reference["per_class"] and list(other["per_class"]) == clf.labels
        assert other["confusion_matrix"] == reference["confusion_matrix"]
        assert [e["index"] for e in other["errors"]] == [e["index"] for e in reference["errors"]]


def test_class_label_with_a_class_without_examples_still_trains(tiny_model_dir):
    """The ClassLabel's classes are the model's labels, in their order, even one with no example: training works,
    label ids stay those of the dataset, and the unseen class is a (never learned) output."""
    names = COLOURS + ["purple"]
    images, labels = colour_images(45)  # red, green, blue only
    recipe = fit(tiny_model_dir("vit"), image_dataset(images, labels, names))
    assert recipe.result.run.data.labels == names
    assert recipe.result.run.backbone.model.config.id2label == dict(enumerate(names))
    assert np.isfinite(recipe.result.metrics["loss"])
    preds = recipe.predict(images[0], top_k=4)
    assert sorted(p["label"] for p in preds) == sorted(names)


@pytest.mark.parametrize("build", [
    lambda: datasets.Dataset.from_dict({"image": colour_images(10)[0], "label": ["red"] * 10}
                                       ).cast_column("image", datasets.Image()),
    lambda: image_dataset(colour_images(10)[0], ["red"] * 10),  # ClassLabel with 3 names, one used
], ids=["one-label-value", "ClassLabel-one-class-present"])
def test_one_class_is_a_data_error(tiny_model_dir, build):
    with pytest.raises(DataError) as info:
        fit(tiny_model_dir("vit"), build())
    msg = str(info.value)
    assert "1 class(es)" in msg and "['red']" in msg and "needs at least two" in msg and "add images" in msg


def _empty_split(split):
    full, empty = colour_dataset(30), colour_dataset(3).select([])
    splits = {"train": full, "validation": colour_dataset(9, seed=1), "test": colour_dataset(9, seed=2)}
    splits[split] = empty
    return datasets.DatasetDict(splits)


@pytest.mark.parametrize("split,expected", [
    ("train", "The training split is empty; give a dataset with labelled images."),
    ("validation", "The validation split is empty"),
    ("test", "The test split is empty"),
], ids=["empty-train-split", "empty-validation-split", "empty-test-split"])
def test_empty_split_is_a_data_error(tiny_model_dir, tmp_path, split, expected):
    out = tmp_path / "out"
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), **FAST)
    with pytest.raises(DataError) as info:
        recipe.fit(_empty_split(split), progress=False)
    assert expected in str(info.value)
    with pytest.raises(TlHubError, match="not been trained yet"):  # nothing half-trained to save
        recipe.save(str(out))
    assert not out.exists()


def test_empty_evaluation_data_is_a_data_error(clf):
    with pytest.raises(DataError, match="The evaluation data is empty"):
        clf.evaluate(colour_dataset(3).select([]))


@pytest.mark.parametrize("setting,column", [
    ({"image_column": "photo"}, "'photo' does not exist"),
    ({"label_column": "species"}, "'species' does not exist"),
], ids=["wrong-image-column", "wrong-label-column"])
def test_wrong_column_name_is_a_data_error(tiny_model_dir, setting, column):
    with pytest.raises(DataError) as info:
        fit(tiny_model_dir("vit"), colour_dataset(12), **setting)
    msg = str(info.value)
    kind = next(iter(setting)).split("_")[0]
    assert column in msg and "['image', 'label']" in msg and f"--{kind}-column" in msg


def test_no_detectable_columns_is_a_data_error(tiny_model_dir):
    ds = datasets.Dataset.from_dict({"pixels_b64": ["x", "y"], "y": [0, 1]})
    with pytest.raises(DataError) as info:
        fit(tiny_model_dir("vit"), ds)
    assert "Found no image column among ['pixels_b64', 'y']" in str(info.value) and "image_column" in str(info.value)


@pytest.mark.parametrize("source,expected", [
    ("file", "is a file; pass a folder of images"),
    ("folder-without-images", "contains no images"),
    ("unknown-dataset-id", "Could not load dataset 'no-such-org/no-such-dataset'"),
], ids=["dataset-is-a-file", "folder-without-images", "unknown-dataset-id-offline"])
def test_bad_dataset_source_is_a_data_error(tiny_model_dir, tmp_path, source, expected):
    if source == "file":
        path = tmp_path / "data.csv"
        path.write_text("a,b\n1,2\n")
    elif source == "folder-without-images":
        path = tmp_path / "empty"
        (path / "cats").mkdir(parents=True)
        (path / "cats" / "notes.txt").write_text("no images")
    else:
        path = "no-such-org/no-such-dataset"
    with pytest.raises(DataError) as info:
        fit(tiny_model_dir("vit"), str(path))
    assert expected in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Models


def _bert(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(tmp_path / "bert"))
    return str(tmp_path / "bert")


@pytest.mark.parametrize("model,expected", [
    ("no-such-org/no-such-model", ["Could not load model 'no-such-org/no-such-model'", "Check the name"]),
    ("/no/such/model/folder", ["model folder not found: '/no/such/model/folder'", "folder of a saved model"]),
    ("bert", ["is a 'bert' model", "no image-classification architecture", "Use an image classification checkpoint"]),
], ids=["unknown-model-id", "missing-model-folder", "non-image-model-bert"])
def test_unusable_model_is_a_model_error(tmp_path, model, expected):
    if model == "bert":
        model = _bert(tmp_path)
    with pytest.raises(ModelError) as info:
        fit(model, colour_dataset(12))
    for fragment in expected:
        assert fragment in str(info.value)


def test_pickle_only_checkpoint_needs_allow_pickle(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    path = str(tmp_path / "pickled")
    shutil.copytree(tiny_model_dir("vit"), path)
    torch.save(load_file(os.path.join(path, "model.safetensors")), os.path.join(path, "pytorch_model.bin"))
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(ModelError) as info:
        fit(path, colour_dataset(12))
    assert "no safetensors weights" in str(info.value) and "allow_pickle=True (--allow-pickle)" in str(info.value)
    assert fit(path, colour_dataset(12), allow_pickle=True).result is not None  # opting in works


def test_corrupt_pretrained_weights_are_a_model_error(tiny_model_dir, tmp_path):
    """A truncated model.safetensors (an interrupted download or copy)."""
    path = str(tmp_path / "truncated")
    shutil.copytree(tiny_model_dir("vit"), path)
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "rb") as f:
        data = f.read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ModelError) as info:
        fit(path, colour_dataset(12))
    assert path in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize("recipe,settings,fragment", [
    ("feature-extraction", ["--lr", "0"], "`--lr` should be positive, got 0.0"),
    ("fine-tune", ["--unfreeze", "top"], "`--unfreeze` should be 'all' or a positive number of blocks, got 'top'"),
    ("feature-extraction", ["--scheduler", "nope"], "`--scheduler` should be one of cosine, linear, constant; got 'nope'"),
    ("feature-extraction", ["--batch-size", "0"], "`--batch-size` should be positive"),
    ("feature-extraction", ["--crop-scale", "1.5"], "`--crop-scale` should be in (0, 1]"),
    ("fine-tune", ["--epochs", "2", "--head-epochs", "2"], "to train only the head use FeatureExtractionRecipe"),
    ("feature-extraction", ["--head-epochs", "1"], "--head-epochs is not a setting of the feature-extraction recipe"),
], ids=["lr-0", "unfreeze-top", "scheduler-nope", "batch-size-0", "crop-scale-1.5", "head-epochs-eq-epochs",
        "head-epochs-with-feature-extraction"])
def test_bad_setting_through_the_cli(tiny_model_dir, tmp_path, image_folder, capsys, recipe, settings, fragment):
    out = tmp_path / "out"
    proc = run_main(capsys, "train", "--recipe", recipe, "--model", tiny_model_dir("vit"), "--dataset", image_folder,
                    "--output-dir", out, "--no-progress", *settings)
    assert_one_line_error(proc, fragment)
    assert not out.exists() and temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("make,fragment", [
    (lambda m: FeatureExtractionRecipe(m, lr=0), "`lr` should be positive"),
    (lambda m: FineTuneRecipe(m, unfreeze="top"), "`unfreeze` should be 'all'"),
    (lambda m: FeatureExtractionRecipe(m, scheduler="nope"), "`scheduler` should be one of"),
    (lambda m: FeatureExtractionRecipe(m, head_epochs=1), "FeatureExtractionConfig has no setting head_epochs"),
    (lambda m: FeatureExtractionRecipe(m, feature_views=2, augment=False), "turn augment on or set feature_views=1"),
], ids=["lr-0", "unfreeze-top", "scheduler-nope", "head-epochs-with-feature-extraction", "views-without-augment"])
def test_bad_setting_in_python_is_a_config_error(tiny_model_dir, make, fragment):
    with pytest.raises(ConfigError) as info:
        make(tiny_model_dir("vit"))
    assert fragment in str(info.value)


def test_fp16_on_the_cpu_is_refused_instead_of_silently_running_fp32(tiny_model_dir):
    with pytest.raises(ConfigError, match="fp16' needs a GPU.*Use bf16"):
        fit(tiny_model_dir("vit"), colour_dataset(12), mixed_precision="fp16")


def test_real_cli_rejects_a_bad_setting_before_loading_anything(tiny_model_dir, tmp_path, image_folder):
    out = tmp_path / "out"
    proc = tl_hub_cli("train", "--recipe", "fine-tune", "--model", tiny_model_dir("vit"), "--dataset", image_folder,
                      "--output-dir", out, "--unfreeze", "top")
    assert_one_line_error(proc, "`--unfreeze`", "'top'")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------------
# Training that cannot go on


def test_nan_loss_is_a_training_error(tiny_model_dir):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), **{**FAST, "epochs": 2}, lr=1e30, max_grad_norm=None)
    loaded = capture_backbone(recipe)
    with pytest.raises(TrainingError) as info:
        recipe.fit(colour_dataset(48), progress=False)
    assert "Training diverged in epoch" in str(info.value) and "the loss or its gradient is not finite" in \
        str(info.value) and "Lower the learning rate (now 1e+30)" in str(info.value)
    # the message tells the truth about the weights: untouched by the bad step, or already overflowed by an
    # absurd update before it (lr=1e30 with weight decay does that here)
    broken = [n for n, p in loaded[0].model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        assert "had already made some weights non-finite" in str(info.value)
    else:
        assert "the weights are those of the last good step" in str(info.value)


def test_nan_loss_through_the_cli_writes_nothing(tiny_model_dir, tmp_path, image_folder, capsys):
    out = tmp_path / "out"
    proc = run_main(capsys, "train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset",
                    image_folder, "--output-dir", out, "--no-progress", "--no-augment", "--epochs", "2",
                    "--lr", "1e30", "--max-grad-norm", "none", "--head-solver", "adamw")
    assert_one_line_error(proc, "Training diverged in epoch 1", "is not finite", "Lower the learning rate")
    assert not out.exists() and temp_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints and resuming


@pytest.fixture(scope="module")
def checkpointed(tiny_model_dir, tmp_path_factory):
    """A finished 2-epoch run that left its checkpoints: (model, data, checkpoint folder, settings)."""
    root = tmp_path_factory.mktemp("checkpointed")
    data = datasets.DatasetDict({"train": colour_dataset(48, seed=1), "validation": colour_dataset(15, seed=2)})
    data.save_to_disk(str(root / "data"))
    settings = {**FAST, "epochs": 2, "checkpoint_dir": str(root / "ck")}
    FeatureExtractionRecipe(tiny_model_dir("vit"), **settings).fit(str(root / "data"), progress=False)
    assert sorted(os.listdir(root / "ck")) == ["checkpoint-3", "checkpoint-6"]
    return tiny_model_dir("vit"), str(root / "data"), str(root / "ck"), settings


def copied_checkpoints(checkpointed, tmp_path):
    model, data, ck, settings = checkpointed
    copy = str(tmp_path / "ck")
    shutil.copytree(ck, copy)
    return model, data, copy, {**settings, "checkpoint_dir": copy}


def test_resume_latest_without_checkpoints_is_a_config_error(tiny_model_dir, tmp_path, image_folder, capsys):
    out = tmp_path / "out"
    proc = run_main(capsys, "train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset",
                    image_folder, "--output-dir", out, "--resume-from-checkpoint", "latest")
    assert_one_line_error(proc, f"There is no complete checkpoint in '{out}-checkpoints'",
                          "start the run without resume_from_checkpoint")
    assert not out.exists()


def test_resume_latest_without_a_checkpoint_dir_in_python(tiny_model_dir):
    with pytest.raises(ConfigError, match="'latest' needs checkpoint_dir"):
        FeatureExtractionRecipe(tiny_model_dir("vit"), **FAST).fit(colour_dataset(12), resume_from_checkpoint="latest")


@pytest.mark.parametrize("make,fragment", [
    (lambda tmp: str(tmp / "nowhere"), "does not exist; pass 'latest' or the path of a checkpoint-N folder"),
    (lambda tmp: str(tmp), "is not a tl-hub checkpoint (no tl_hub_state.json) and holds none"),
], ids=["missing-path", "not-a-checkpoint"])
def test_resume_from_a_path_that_is_no_checkpoint(tiny_model_dir, tmp_path, make, fragment):
    with pytest.raises(ConfigError) as info:
        FeatureExtractionRecipe(tiny_model_dir("vit"), **FAST).fit(colour_dataset(12),
                                                                    resume_from_checkpoint=make(tmp_path))
    assert fragment in str(info.value)


@pytest.mark.parametrize("change,fragment", [
    ({"lr": 2e-3}, "settings.lr: 0.001 -> 0.002"),
    ({"seed": 1}, "settings.seed: 0 -> 1"),
    ({"data": "other"}, "data.train: "),
], ids=["other-lr", "other-seed", "other-data"])
def test_resume_of_a_different_run_is_refused_and_names_the_difference(checkpointed, tmp_path, change, fragment):
    model, data, ck, settings = copied_checkpoints(checkpointed, tmp_path)
    if change.pop("data", None):
        other = tmp_path / "other"
        datasets.DatasetDict({"train": colour_dataset(48, seed=5), "validation": colour_dataset(15, seed=2)}) \
            .save_to_disk(str(other))
        data = str(other)
    before = tree(ck)
    with pytest.raises(ConfigError) as info:
        FeatureExtractionRecipe(model, **{**settings, **change}).fit(data, progress=False,
                                                                     resume_from_checkpoint="latest")
    assert "was written by a different run" in str(info.value) and fragment in str(info.value)
    assert tree(ck) == before


def test_resume_after_the_local_base_model_changed_is_refused(tiny_model_dir, tmp_path):
    """A local model folder has no revision to pin: its weights are fingerprinted instead."""
    from safetensors.torch import load_file, save_file

    model = shutil.copytree(tiny_model_dir("vit"), tmp_path / "model")
    settings = {**FAST, "epochs": 2, "checkpoint_dir": str(tmp_path / "ck")}
    data = colour_dataset(32)
    FeatureExtractionRecipe(str(model), **settings).fit(data, progress=False)
    weights = load_file(str(model / "model.safetensors"))
    name = next(k for k in sorted(weights) if "encoder" in k)
    weights[name] = weights[name] + 0.01  # the same folder, retrained or replaced in between
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError) as info:
        FeatureExtractionRecipe(str(model), **settings).fit(data, progress=False, resume_from_checkpoint="latest")
    message = str(info.value)
    assert "was written by a different run (initial_weights: " in message and "model: " not in message


def test_a_fresh_run_does_not_delete_an_earlier_runs_checkpoints(checkpointed, tmp_path, capsys):
    model, data, ck, settings = copied_checkpoints(checkpointed, tmp_path)
    before = tree(ck)
    out = tmp_path / "out"
    proc = run_main(capsys, "train", "--recipe", "feature-extraction", "--model", model, "--dataset", data,
                    "--output-dir", out, "--checkpoint-dir", ck, "--no-progress")
    assert_one_line_error(proc, "holds checkpoints of an earlier run", "--resume-from-checkpoint latest", "--overwrite")
    assert tree(ck) == before and not out.exists()
    # --overwrite starts again: the old checkpoints go, the new run's come
    proc = run_main(capsys, "train", "--recipe", "feature-extraction", "--model", model, "--dataset", data,
                    "--output-dir", out, "--checkpoint-dir", ck, "--no-progress", "--overwrite", "--epochs", "1",
                    "--batch-size", "48", "--head-solver", "adamw")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(ck)) == ["checkpoint-1"]


def _truncate_optimizer(ck):
    path = os.path.join(ck, "checkpoint-6", "optimizer.bin")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _bad_state(ck):
    open(os.path.join(ck, "checkpoint-6", "tl_hub_state.json"), "w").write("{not json")


def _missing_weights(ck):
    os.remove(os.path.join(ck, "checkpoint-6", "model.safetensors"))


@pytest.mark.parametrize("damage,fragment", [
    (_truncate_optimizer, "cannot be loaded"),
    (_bad_state, "is not valid JSON"),
    (_missing_weights, "cannot be loaded"),
], ids=["truncated-optimizer", "invalid-state-json", "missing-weights"])
def test_resume_from_a_damaged_checkpoint_is_one_clear_error(checkpointed, tmp_path, capsys, damage, fragment):
    model, data, ck, settings = copied_checkpoints(checkpointed, tmp_path)
    damage(ck)
    out = tmp_path / "out"
    proc = run_main(capsys, "train", "--recipe", "feature-extraction", "--model", model, "--dataset", data,
                    "--output-dir", out, "--checkpoint-dir", ck, "--no-progress", "--no-augment", "--epochs", "2",
                    "--batch-size", "16", "--eval-batch-size", "32", "--seed", "0", "--feature-cache", "memory",
                    "--head-solver", "adamw", "--resume-from-checkpoint", "latest")
    assert_one_line_error(proc, os.path.join(ck, "checkpoint-6"), fragment)
    assert not out.exists()


@pytest.mark.parametrize("settings,fragment", [
    ({"save_total_limit": 0}, "`save_total_limit` should be positive"),
    ({"save_steps": -1}, "`save_steps` should be >= 0"),
], ids=["keep-0", "save-steps-negative"])
def test_bad_checkpoint_settings(tiny_model_dir, settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        FeatureExtractionRecipe(tiny_model_dir("vit"), **settings)


def test_checkpoint_dir_that_is_a_file_is_refused_and_kept(tiny_model_dir, tmp_path):
    target = tmp_path / "notes"
    target.write_text("mine")
    with pytest.raises(OutputError, match="Checkpoint path '.*notes' is a file; pass a folder path"):
        FeatureExtractionRecipe(tiny_model_dir("vit"), **FAST, checkpoint_dir=str(target)).fit(colour_dataset(12))
    assert target.read_text() == "mine"


def test_disk_full_while_checkpointing_keeps_the_earlier_checkpoints(tiny_model_dir, tmp_path, monkeypatch):
    """The second checkpoint's optimizer state cannot be written (ENOSPC, as on a full disk): one error naming the
    kept checkpoint, no temporary folder left, and the run resumes from that checkpoint once there is space."""
    import errno

    import accelerate.checkpointing

    save, calls = accelerate.checkpointing.save, []

    def full_disk(obj, path, *args, **kwargs):
        calls.append(path)
        if str(path).endswith("optimizer.bin") and len([c for c in calls if str(c).endswith("optimizer.bin")]) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", full_disk)
    ck = tmp_path / "ck"
    settings = {**FAST, "epochs": 3, "checkpoint_dir": str(ck)}
    data = colour_dataset(48)
    with pytest.raises(OutputError) as info:
        FeatureExtractionRecipe(tiny_model_dir("vit"), **settings).fit(data, progress=False)
    assert sorted(os.listdir(ck)) == ["checkpoint-3"]
    assert f"Could not write checkpoint {ck / 'checkpoint-6'} (No space left on device)" in str(info.value)
    assert f"the last complete one, {ck / 'checkpoint-3'}, is kept" in str(info.value)
    monkeypatch.setattr(accelerate.checkpointing, "save", save)
    resumed = FeatureExtractionRecipe(tiny_model_dir("vit"), **settings)
    resumed.fit(data, progress=False, resume_from_checkpoint="latest")
    assert [h["epoch"] for h in resumed.result.history] == [1, 2, 3]


def test_nan_loss_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    """The head period trains and checkpoints; fine-tuning at an absurd LR turns the loss NaN: training stops, the
    message names the newest checkpoint, which holds only finite weights and loads for resuming."""
    from safetensors.torch import load_file

    ck = tmp_path / "ck"
    recipe = FineTuneRecipe(tiny_model_dir("vit"), **{**FAST, "epochs": 3}, head_epochs=1, head_lr=1e-2, lr=1e30,
                            max_grad_norm=None, checkpoint_dir=str(ck))
    with pytest.raises(TrainingError) as info:
        recipe.fit(colour_dataset(48), progress=False)
    kept = sorted(os.listdir(ck))
    assert kept and all(name.startswith("checkpoint-") for name in kept)
    assert f"the last good checkpoint, {ck / kept[-1]}, is kept" in str(info.value)
    for name in kept:
        weights = load_file(str(ck / name / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())


# ---------------------------------------------------------------------------------------------------------------------
# Output locations


def test_output_path_that_is_a_file_is_refused_and_kept(trained, tmp_path):
    recipe, _ = trained
    target = tmp_path / "out"
    target.write_text("my notes")
    with pytest.raises(OutputError) as info:
        recipe.save(str(target))
    assert str(target) in str(info.value) and "is a file; pass a folder path" in str(info.value)
    assert target.read_text() == "my notes" and temp_leftovers(tmp_path) == []


def test_real_cli_output_path_that_is_a_file(tiny_model_dir, tmp_path, image_folder):
    target = tmp_path / "out"
    target.write_text("my notes")
    proc = tl_hub_cli("train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset",
                      image_folder, "--output-dir", target, "--epochs", "1", "--no-progress")
    assert_one_line_error(proc, str(target), "is a file")
    assert target.read_text() == "my notes" and temp_leftovers(tmp_path) == []


def run_unprivileged(*args):
    """``tl-hub ARGS`` in a forked child that cannot bypass permission bits: as root it first becomes the user
    'nobody' (uid 65534).  The modules it needs are imported before the fork, since 'nobody' may not read them."""
    import sys

    from tl_hub.cli import main
    from tl_hub.runtime import make_accelerator

    make_accelerator()  # imports accelerate and sets up its state in the parent
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        rc = 1
        try:
            os.close(read_end)
            sys.stdout = sys.stderr = os.fdopen(write_end, "w")
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            rc = main([str(a) for a in args])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(rc)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    return SimpleNamespace(returncode=os.waitstatus_to_exitcode(status), stdout="", stderr=output)


@pytest.mark.parametrize("where", ["output", "checkpoints"])
def test_folder_without_write_permission_is_refused_before_training(tiny_model_dir, where):
    import pathlib
    import tempfile

    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="tl_hub_permissions_"))  # pytest's folders are private to root
    os.chmod(tmp_path, 0o777)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o555)
    out = readonly / "out" if where == "output" else tmp_path / "out"
    extra = ["--checkpoint-dir", readonly / "ck"] if where == "checkpoints" else []
    proc = run_unprivileged("train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset",
                            tmp_path / "images", "--output-dir", out, "--epochs", "1", "--no-progress", *extra)
    assert_one_line_error(proc, f"Cannot write to '{readonly}' (permission denied)")
    assert os.listdir(readonly) == [] and not os.path.exists(out)
    shutil.rmtree(tmp_path)


def test_non_empty_output_folder_is_refused_and_kept(trained, tmp_path):
    recipe, _ = trained
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "results.txt").write_text("earlier work")
    (out / "sub" / "model.safetensors").write_bytes(b"\x00" * 100)
    before = tree(out)
    with pytest.raises(OutputError) as info:
        recipe.save(str(out))
    assert "exists and is not empty" in str(info.value) and "overwrite=True (--overwrite)" in str(info.value)
    assert tree(out) == before and temp_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------------
# Predict


def test_predict_on_a_missing_file(trained, tmp_path, capsys):
    proc = run_main(capsys, "predict", trained[1], tmp_path / "nowhere.jpg")
    assert_one_line_error(proc, "nowhere.jpg", "does not exist")


@pytest.mark.slow
def test_real_cli_predict_on_a_non_image_file(trained, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("a text file with an image extension")
    good = tmp_path / "good.png"
    colour_images(1)[0][0].save(good)
    proc = tl_hub_cli("predict", trained[1], good, notes)
    assert_one_line_error(proc, str(notes), "Cannot read image", "cannot identify image file")
    assert proc.stdout == ""  # no partial answer for the good image


# ---------------------------------------------------------------------------------------------------------------------
# Loading trained models (tl_hub.load) and the Hub


@pytest.mark.parametrize("make,expected", [
    (lambda tmp: "/no/such/folder", "is not a folder written by tl-hub"),
    (lambda tmp: "./no/such/folder", "is not a folder written by tl-hub"),
    (lambda tmp: "not a repo id!!", "nor a valid Hub repo id"),
    (lambda tmp: "no-such-org/no-such-model", "Could not download 'no-such-org/no-such-model'"),
    (lambda tmp: (tmp / "f.txt").write_text("x") and str(tmp / "f.txt"), "is not a folder written by tl-hub"),
    (lambda tmp: (tmp / "empty").mkdir() or str(tmp / "empty"), "has no config.json; pass the output folder"),
], ids=["missing-absolute-path", "missing-relative-path", "invalid-repo-id", "unknown-repo-offline", "a-file",
        "empty-folder"])
def test_load_of_a_nonsense_path_is_a_model_error(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(ModelError) as info:
        tl_hub.load(path)
    assert path in str(info.value) and expected in str(info.value)


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [
    lambda d: _truncate(os.path.join(d, "model.safetensors")),
    lambda d: open(os.path.join(d, "tl_hub.json"), "w").write("{not json"),
    lambda d: open(os.path.join(d, "config.json"), "w").write("{not json"),
], ids=["truncated-model-safetensors", "invalid-tl_hub.json", "invalid-config.json"])
def test_load_of_a_damaged_output_folder_is_a_model_error(trained, tmp_path, damage):
    folder = str(tmp_path / "model")
    shutil.copytree(trained[1], folder)
    damage(folder)
    with pytest.raises(ModelError) as info:
        tl_hub.load(folder)
    assert folder in str(info.value)


def test_real_cli_push_of_a_folder_that_is_not_a_tl_hub_output(tmp_path):
    folder = tmp_path / "my-notes"
    folder.mkdir()
    (folder / "README.md").write_text("not a model")
    proc = tl_hub_cli("push", folder, "someone/some-model")  # HF_HUB_OFFLINE=1: the folder is checked first
    assert_one_line_error(proc, str(folder), "tl-hub train")
    assert os.listdir(folder) == ["README.md"]


def test_push_while_the_hub_cannot_be_reached(trained, capsys):
    """HF_HUB_OFFLINE=1 here, as on an air-gapped machine: the failed upload is one line naming the repository."""
    before = tree(trained[1])
    proc = run_main(capsys, "push", trained[1], "someone/some-model")
    assert_one_line_error(proc, "someone/some-model")
    assert tree(trained[1]) == before


def test_push_without_a_repo_id(trained, capsys):
    proc = run_main(capsys, "push", trained[1])
    assert_one_line_error(proc, "tl-hub push OUTPUT_DIR REPO_ID")


@pytest.mark.parametrize("typed", ["data/sqaures", "./data/sqaures", "data/sqaures/train", "~/no-such-tl-hub-folder",
                                   "/no/such/folder"])
def test_a_local_looking_path_that_does_not_exist_is_folder_not_found_without_the_hub(tmp_path, monkeypatch, typed):
    """A typo in a folder path: 'folder not found' with the closest name, and no Hub request (was 25 s of retries)."""
    from tl_hub.data import load_source

    (tmp_path / "data" / "squares" / "red").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub was asked for a local path"))
    with pytest.raises(DataError) as info:
        load_source(typed)
    assert str(info.value).startswith(f"folder not found: '{os.path.expanduser(typed)}'")
    if typed.lstrip("./").startswith("data/"):
        assert "did you mean 'data/squares'?" in str(info.value)


@pytest.mark.parametrize("name", ["beans", "owner/dataset"])
def test_hub_ids_still_go_to_the_hub(tmp_path, monkeypatch, name):
    from tl_hub.data import load_source

    monkeypatch.chdir(tmp_path)  # no folder named like the id's owner here
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **k: asked.append(path) or {"train": None})
    load_source(name)
    assert asked == [name]


def test_a_typo_on_the_command_line_is_one_line(tiny_model_dir, tmp_path):
    (tmp_path / "data" / "squares").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "tl_hub.cli", "train", "--recipe", "feature-extraction", "--model",
                           tiny_model_dir("vit"), "--dataset", "data/sqaures", "--output-dir", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: folder not found: 'data/sqaures' ({tmp_path / 'data' / 'sqaures'}); did you mean 'data/squares'?"]
