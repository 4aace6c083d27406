"""The data audit (`tl_hub.audit`) on planted cases: flipped labels, exact and resized copies (inside the training
split and leaked into the test split), an outlier; the files it writes, the command, and bad inputs."""

import json
import os

import datasets
import numpy as np
import pytest
from PIL import Image
from support.tiny import COLOURS, colour_images

import tl_hub
from tl_hub import DataError, OutputError
from tl_hub.audit import PIXEL_THRESHOLD
from tl_hub.cli import main

FLIPS = {5: 1, 17: 0, 40: 2}  # training index -> the wrong label given (the colour is the true class)
TRAIN_COPIES = {90: (3, "exact"), 91: (10, "half")}  # the copy's index -> (the original's, how it was copied)
TEST_COPIES = {30: (20, "exact"), 31: (21, "half")}
OUTLIER = 92  # a flat grey image, labelled red


def features():
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=COLOURS)})


def copy_of(image, how):
    return image.copy() if how == "exact" else image.resize((image.width // 2, image.height // 2))


def planted_data():
    """90 learnable colour images with 3 labels flipped, 2 copies and an outlier appended; a test split of 30
    distinct images with 2 copies of training images appended."""
    images, names = colour_images(90, seed=0)
    labels = [COLOURS.index(n) for n in names]
    for i, wrong in FLIPS.items():
        labels[i] = wrong
    for _, (original, how) in sorted(TRAIN_COPIES.items()):
        images.append(copy_of(images[original], how))
        labels.append(labels[original])
    grey = np.full((32, 32, 3), 128, np.uint8) + np.random.default_rng(5).integers(0, 10, (32, 32, 3)).astype(np.uint8)
    images.append(Image.fromarray(grey))
    labels.append(0)
    test_images, test_names = colour_images(30, seed=7)
    test_labels = [COLOURS.index(n) for n in test_names]
    for _, (original, how) in sorted(TEST_COPIES.items()):
        test_images.append(copy_of(images[original], how))
        test_labels.append(labels[original])
    return datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"image": images, "label": labels}, features=features()),
        test=datasets.Dataset.from_dict({"image": test_images, "label": test_labels}, features=features()))


@pytest.fixture(scope="module")
def audited(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "new" / "out"  # a parent that does not exist yet is created
    result = tl_hub.audit(planted_data(), tiny_model_dir("vit"), output_dir=str(out), feature_cache="memory")
    return result, out


def test_flipped_labels_are_flagged_with_the_true_label_suggested(audited):
    result, _ = audited
    found = {f["index"]: f for f in result.label_issues}
    assert set(found) == set(FLIPS)  # every flip, and nothing else
    for i, f in found.items():
        assert f["label"] == COLOURS[FLIPS[i]] and f["suggested"] == COLOURS[i % 3]
        assert f["suggested_probability"] > f["self_confidence"]
    margins = [f["margin"] for f in result.label_issues]
    assert margins == sorted(margins, reverse=True)


def test_exact_and_resized_copies_are_found_inside_train_and_leaked_into_test(audited):
    result, _ = audited
    pairs = {(d["split_b"], d["index_a"], d["index_b"]) for d in result.duplicates}
    planted = {("train", a, b) for b, (a, _) in TRAIN_COPIES.items()} | {("test", a, b) for b, (a, _) in
                                                                         TEST_COPIES.items()}
    assert pairs == planted  # recall 1, and no two distinct images of a class
    assert all(d["similarity"] >= PIXEL_THRESHOLD for d in result.duplicates)
    assert result.counts()["duplicates_in_train"] == 2 and result.counts()["leakage_pairs"] == 2


def test_the_outlier_is_flagged_first(audited):
    result, _ = audited
    assert result.outliers and result.outliers[0]["index"] == OUTLIER and result.outliers[0]["split"] == "train"
    assert result.outliers[0]["distance"] > result.rules["outliers"]["fence"]
    assert len(result.outliers) <= 2


def test_the_json_and_one_png_per_finding_are_written(audited):
    result, out = audited
    assert sorted(os.listdir(out)) == ["audit.json", "duplicates.png", "label_issues.png", "outliers.png"]
    for name in ("duplicates.png", "label_issues.png", "outliers.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "audit.json").read_text())
    assert saved["counts"] == {"label_issues": 3, "duplicates_in_train": 2, "leakage_pairs": 2,
                               "outliers": len(result.outliers)}
    assert saved["encoder_passes"] == 1.0 and saved["seconds"]["total"] > 0
    assert saved["rules"]["duplicates"]["pixel_threshold"] == PIXEL_THRESHOLD
    assert "features" not in saved
    assert str(out) in result.summary() and "likely mislabelled: 3" in result.summary()


def test_a_second_audit_reads_the_cached_features(tiny_model_dir, tmp_path):
    data = planted_data()
    first = tl_hub.audit(data, tiny_model_dir("vit"), feature_cache_dir=str(tmp_path))
    again = tl_hub.audit(data, tiny_model_dir("vit"), feature_cache_dir=str(tmp_path))
    assert first.encoder_passes == 1.0 and again.encoder_passes == 0.0
    assert [f["index"] for f in again.label_issues] == [f["index"] for f in first.label_issues]


def test_the_command_prints_a_summary_and_refuses_an_existing_folder(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    planted_data().save_to_disk(str(data))
    argv = ["audit", "--model", tiny_model_dir("vit"), "--dataset", str(data), "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "likely mislabelled: 3" in printed and "audit.json" in printed and "encoder passes" in printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not empty" in err[0] and "--overwrite" in err[0]
    assert main(argv + ["--overwrite", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["label_issues"] == 3


def test_a_dataset_with_one_class_is_refused(tiny_model_dir):
    images, _ = colour_images(10)
    one = datasets.Dataset.from_dict({"image": images, "label": ["red"] * 10})
    with pytest.raises(DataError, match="1 class"):
        tl_hub.audit(one, tiny_model_dir("vit"))


def test_a_class_with_one_image_is_refused_and_fewer_than_folds_reduces_them(tiny_model_dir):
    images, names = colour_images(30)
    keep = [i for i, n in enumerate(names) if n != "blue"][:18] + [2]  # one blue image
    single = datasets.Dataset.from_dict({"image": [images[i] for i in keep], "label": [names[i] for i in keep]})
    with pytest.raises(DataError, match="'blue' has a single training image.*Add images"):
        tl_hub.audit(single, tiny_model_dir("vit"), feature_cache="memory")
    keep = [i for i, n in enumerate(names) if n != "blue"][:18] + [2, 5, 8]  # three blue images
    few = datasets.Dataset.from_dict({"image": [images[i] for i in keep], "label": [names[i] for i in keep]})
    result = tl_hub.audit(few, tiny_model_dir("vit"), feature_cache="memory")
    assert result.rules["label_issues"]["folds"] == 3
    assert result.rules["label_issues"]["smallest_class"] == {"label": "blue", "images": 3, "folds": 3}


def test_multi_label_data_and_a_file_as_output_are_refused(tiny_model_dir, tmp_path):
    from support.tiny import multilabel_dataset

    with pytest.raises(DataError, match="multi-label"):
        tl_hub.audit(multilabel_dataset(30), tiny_model_dir("vit"))
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        tl_hub.audit(planted_data(), tiny_model_dir("vit"), output_dir=str(tmp_path / "file"))


def test_a_trained_model_folder_audits_with_its_own_encoder(tiny_model_dir, tmp_path):
    data = planted_data()
    recipe = tl_hub.FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, feature_cache="memory",
                                            checkpoint_dir=None)
    recipe.fit(data["train"], progress=False)
    recipe.save(str(tmp_path / "model"))
    result = tl_hub.audit(data, str(tmp_path / "model"), feature_cache="memory")
    assert result.data["model"] == str(tmp_path / "model")
    assert {f["index"] for f in result.label_issues} == set(FLIPS)
