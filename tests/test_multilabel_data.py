"""Multi-label data in (a ``Sequence(ClassLabel)`` dataset, an image folder with ``metadata.csv``/``.jsonl``, a CSV
file of image paths, declared ``"cat;dog"`` strings), its multi-hot label column, the split that keeps every label
on both sides, imbalance figures, the batches, and one clear `DataError` per bad input."""

import json
import logging
import re

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from tl_hub.data import (
    ImageClassificationDataset,
    ImageCollator,
    PreparedData,
    load_source,
    prepare_data,
    prepare_eval_data,
    to_rgb,
)
from tl_hub.errors import DataError
from tl_hub.splits import multilabel_split, stratified_split

NAMES = ["cat", "dog", "bird"]
# 12 images: every label has >= 2 positives, two images show none
ROWS = [["cat"], ["dog"], ["cat", "dog"], ["bird"], [], ["cat", "bird"],
        ["cat"], ["dog"], ["cat", "dog"], ["bird"], [], ["dog", "bird"]]


def _image(i: int) -> Image.Image:
    """An 8x8 image of one colour that identifies image ``i``."""
    return Image.new("RGB", (8, 8), (i * 7 % 256, 40 + i, 200))


def _key(image) -> tuple:
    return to_rgb(image).getpixel((0, 0))


def _expected(rows, names=NAMES) -> dict:
    """Image colour -> the multi-hot vector image ``i`` should get."""
    return {_key(_image(i)): [float(n in labels) for n in names] for i, labels in enumerate(rows)}


def _check_multi_hot(ds, column: str, expected: dict, k: int = 3) -> None:
    assert ds.features[column] == datasets.Sequence(datasets.Value("float32"), length=k)
    for image, target in zip(ds["image"], ds[column]):
        assert target == expected[_key(image)]


def _sequence_dataset(rows=ROWS, offset: int = 0, names=NAMES):
    features = datasets.Features({"image": datasets.Image(),
                                  "labels": datasets.Sequence(datasets.ClassLabel(names=names))})
    return datasets.Dataset.from_dict({"image": [_image(offset + i) for i in range(len(rows))],
                                       "labels": [[names.index(n) for n in r] for r in rows]}, features=features)


def _write_split(folder, rows, fmt: str, offset: int = 0) -> None:
    """Images ``img<i>.png`` beside a metadata file of their labels (jsonl: a list; csv: ``"cat;dog"``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file_name,labels"] if fmt == "csv" else []
    for i, labels in enumerate(rows):
        _image(offset + i).save(folder / f"img{offset + i}.png")
        lines.append(f"img{offset + i}.png,{';'.join(labels)}" if fmt == "csv"
                     else json.dumps({"file_name": f"img{offset + i}.png", "labels": labels}))
    (folder / f"metadata.{fmt}").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def test_a_sequence_of_classlabel_column_is_detected_and_becomes_multi_hot():
    data = prepare_data(_sequence_dataset(), validation_size=0.25, seed=0)
    assert data.multi_label and data.labels == NAMES and data.label_column == "labels"
    assert len(data.train) + len(data.validation) == len(ROWS)
    for split in (data.train, data.validation):
        _check_multi_hot(split, "labels", _expected(ROWS))


def test_an_image_folder_with_metadata_jsonl_per_split(tmp_path):
    _write_split(tmp_path / "data" / "train", ROWS, "jsonl")
    _write_split(tmp_path / "data" / "test", [["cat"], ["dog", "bird"], []], "jsonl", offset=50)
    loaded = load_source(str(tmp_path / "data"))
    assert set(loaded) == {"train", "test"} and loaded["train"].column_names == ["image", "labels"]
    data = prepare_data(str(tmp_path / "data"), seed=0)  # a List(string) column: detected
    assert data.multi_label and data.labels == ["bird", "cat", "dog"]
    expected = _expected(ROWS + [[]] * 38 + [["cat"], ["dog", "bird"], []], names=data.labels)
    for split in (data.train, data.validation, data.test):
        _check_multi_hot(split, "labels", expected)


def test_an_image_folder_with_metadata_csv_and_declared_strings(tmp_path):
    _write_split(tmp_path / "data" / "train", ROWS, "csv")
    _write_split(tmp_path / "data" / "validation", [["cat", "bird"], ["dog"]], "csv", offset=50)
    data = prepare_data(str(tmp_path / "data"), multi_label=True)
    assert data.multi_label and data.labels == ["bird", "cat", "dog"] and len(data.validation) == 2
    expected = _expected(ROWS + [[]] * 38 + [["cat", "bird"], ["dog"]], names=data.labels)
    for split in (data.train, data.validation):
        _check_multi_hot(split, "labels", expected)


def _write_csv(tmp_path, header: str, rows, sub: str = "pics"):
    (tmp_path / sub).mkdir(exist_ok=True)
    lines = [header]
    for i, label in enumerate(rows):
        _image(i).save(tmp_path / sub / f"{i}.png")
        lines.append(f"{sub}/{i}.png,{label}")
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_csv_file_of_image_paths_and_label_lists(tmp_path):
    path = _write_csv(tmp_path, "file_name,labels", ["|".join(r) for r in ROWS])
    loaded = load_source(path)
    assert isinstance(loaded.features["file_name"], datasets.Image) and len(loaded) == len(ROWS)
    data = prepare_data(path, multi_label=True, seed=1)
    assert data.multi_label and data.image_column == "file_name" and data.labels == ["bird", "cat", "dog"]
    expected = _expected(ROWS, names=data.labels)
    for split in (data.train, data.validation):
        _check_multi_hot(split.rename_column("file_name", "image"), "labels", expected)


def test_a_csv_file_of_single_labels_is_single_label(tmp_path):
    path = _write_csv(tmp_path, "path,label", ["cat", "dog", "cat", "dog", "cat", "dog"])
    data = prepare_data(path)
    assert not data.multi_label and data.labels == ["cat", "dog"]
    assert isinstance(data.train.features["label"], datasets.ClassLabel)
    assert data.class_counts() == {"cat": 2, "dog": 2} and len(data.validation) == 2


def test_declared_semicolon_strings_and_integer_lists():
    ds = datasets.Dataset.from_dict({"image": [_image(i) for i in range(6)],
                                     "label": ["cat;dog", "dog", "", "cat ; bird", "bird", "cat"]})
    ds = ds.cast_column("image", datasets.Image())
    data = prepare_data(ds, ds, multi_label=True)
    assert data.labels == ["bird", "cat", "dog"]
    assert list(data.train["label"]) == [[0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0]]
    ints = datasets.Dataset.from_dict({"image": [_image(i) for i in range(4)], "label": [[2], [10, 2], [], [10]]})
    data = prepare_data(ints, ints)  # a List(int) column: detected; names sorted as numbers
    assert data.multi_label and data.labels == ["2", "10"] and list(data.train["label"])[1] == [1.0, 1.0]


def test_detection_and_declaration():
    with pytest.raises(DataError, match=r"holds a list of labels per image.*pass multi_label=True \(--multi-label\)"):
        prepare_data(_sequence_dataset(), multi_label=False)
    single = datasets.Dataset.from_dict({"image": [_image(i) for i in range(6)], "label": [0, 1, 2] * 2},
                                        features=datasets.Features({"image": datasets.Image(),
                                                                    "label": datasets.ClassLabel(names=NAMES)}))
    assert not prepare_data(single, single).multi_label  # detected: one label per image
    declared = prepare_data(single, single, multi_label=True)
    assert declared.multi_label and declared.labels == NAMES and list(declared.train["label"])[2] == [0.0, 0.0, 1.0]


def test_strings_with_separators_undeclared_are_single_label_with_a_hint(caplog):
    ds = datasets.Dataset.from_dict({"image": [_image(i) for i in range(4)], "label": ["a;b", "a", "a;b", "a"]})
    with caplog.at_level(logging.WARNING, logger="tl_hub.data"):
        data = prepare_data(ds.cast_column("image", datasets.Image()), seed=0)
    assert not data.multi_label and data.labels == ["a", "a;b"]
    assert any("pass multi_label=True (--multi-label)" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------------------
# Splits


def _targets(seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.random((n, 8)) < np.array([0.5, 0.3, 0.1, 0.05, 0.02, 0.01, 0.0, 0.0])
    y[:, 6] = False
    y[rng.choice(n, 2, replace=False), 6] = True  # exactly two positives
    y[:, 7] = False
    y[rng.integers(n), 7] = True  # a single positive
    return y.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_multilabel_split_keeps_every_label_on_both_sides(seed, caplog):
    y = _targets(seed)
    with caplog.at_level(logging.WARNING, logger="tl_hub.data"):
        train, val = multilabel_split(y, 0.2, seed, names=[f"l{j}" for j in range(8)])
    assert sorted(train + val) == list(range(len(y))) and not set(train) & set(val)
    assert abs(len(val) - 0.2 * len(y)) <= 8
    for j in np.flatnonzero(y.sum(0) >= 2):
        assert y[val, j].sum() >= 1 and y[train, j].sum() >= 1, j
    assert y[train, 7].sum() == 1  # the single positive is trained on, and named in a warning
    assert any("single positive image" in r.getMessage() and "'l7'" in r.getMessage() for r in caplog.records)
    assert multilabel_split(y, 0.2, seed) == (train, val)
    assert multilabel_split(y, 0.2, seed + 10) != (train, val)


def test_single_label_classes_with_one_image_are_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tl_hub.data"):
        train, val = stratified_split([0, 0, 0, 1, 2, 2], 0.5, 0, names=["a", "b", "c"])
    assert 3 in train and set(val) & {0, 1, 2} and set(val) & {4, 5}
    assert any("['b']" in r.getMessage() and "no validation image" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs


def test_images_with_no_label_are_negatives_in_a_multi_label_task():
    data = prepare_data(_sequence_dataset(), validation_size=0.25, seed=0)
    assert "2 images with no label" in data.summary() or "1 image with no label" in data.summary()
    assert sum(sum(t) == 0 for t in list(data.train["labels"]) + list(data.validation["labels"])) == 2


def test_an_image_with_no_label_is_still_an_error_in_a_single_label_task():
    ds = datasets.Dataset.from_dict({"image": [_image(i) for i in range(4)], "label": ["a", None, "b", "a"]})
    with pytest.raises(DataError, match="1 of 4 examples have no value in label column 'label'"):
        prepare_data(ds.cast_column("image", datasets.Image()))


def test_no_image_with_any_label_is_an_error():
    with pytest.raises(DataError, match="None of the 4 training images has a label"):
        prepare_data(_sequence_dataset([[], [], [], []]))


def test_unknown_labels_in_validation_or_test_are_named():
    validation = _sequence_dataset([["cat"], ["dog", "fox"], ["bird"]], offset=50, names=NAMES + ["fox"])
    with pytest.raises(DataError, match=r"Labels \['fox'\] in this data are not among the 3 training labels"):
        prepare_data(_sequence_dataset(), validation)
    test = _sequence_dataset([["owl"]], offset=60, names=["owl"])
    with pytest.raises(DataError, match=r"Labels \['owl'\]"):
        prepare_data(datasets.DatasetDict({"train": _sequence_dataset(), "test": test}))


def test_a_training_label_that_no_validation_image_shows_is_an_error():
    validation = _sequence_dataset([["cat"], ["cat"], []], offset=50)
    with pytest.raises(DataError) as info:
        prepare_data(_sequence_dataset(), validation)
    msg = str(info.value)
    assert "2 label(s)" in msg and "['dog', 'bird']" in msg and "add validation images showing them" in msg
    assert "leave the validation split out" in msg and "\n" not in msg


def test_a_training_class_missing_from_a_given_single_label_validation_split_is_a_warning(caplog):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    train = datasets.Dataset.from_dict({"image": [_image(i) for i in range(6)], "label": [0, 1, 2] * 2}, features)
    validation = datasets.Dataset.from_dict({"image": [_image(9), _image(10)], "label": [0, 1]}, features)
    with caplog.at_level(logging.WARNING, logger="tl_hub.data"):
        data = prepare_data(train, validation)
    assert len(data.validation) == 2  # the run goes on: the model still predicts the class
    assert re.search(r"1 class\(es\) have training images but none in the validation split \(\['bird'\]\).*add "
                     r"validation images of them, or leave the validation", caplog.text)


def test_bad_csv_files(tmp_path):
    path = _write_csv(tmp_path, "file_name,labels", ["cat", "dog"])
    (tmp_path / "pics" / "1.png").unlink()
    with pytest.raises(DataError, match=r"1 of 2 images listed in column 'file_name'.*\['pics/1.png'\]"):
        load_source(path)
    (tmp_path / "other.csv").write_text("name,labels\na,b\n")
    with pytest.raises(DataError, match="has no image-path column"):
        load_source(str(tmp_path / "other.csv"))
    (tmp_path / "labels.txt").write_text("pics/0.png,cat\n")
    with pytest.raises(DataError, match="is a file"):
        load_source(str(tmp_path / "labels.txt"))


# ---------------------------------------------------------------------------------------------------------------------
# Imbalance, evaluation data, batches


def test_imbalance_and_summary():
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    labels = [0] * 8 + [1] * 4 + [2] * 2
    train = datasets.Dataset.from_dict({"image": [_image(i) for i in range(14)], "label": labels}, features)
    data = PreparedData(train, train.select(range(3)), None, NAMES, "image", "label")
    assert data.class_counts() == {"cat": 8, "dog": 4, "bird": 2} and data.imbalance() == 4.0
    assert data.summary() == "3 classes; train 14 (2-8 per class, imbalance 4.0:1), validation 3"
    multi = prepare_data(_sequence_dataset(), _sequence_dataset(ROWS[:6], offset=50))
    assert multi.class_counts() == {"cat": 5, "dog": 5, "bird": 4} and multi.imbalance() == 1.25
    assert multi.summary() == ("3 labels (multi-label, 1.2 per image; 2 images with no label); "
                               "train 12 (4-5 per label, imbalance 1.2:1), validation 6")


def test_evaluation_data_is_mapped_onto_the_training_labels_by_name():
    reordered = ["bird", "cat", "dog"]
    ds, _, column = prepare_eval_data(_sequence_dataset(ROWS[:4], names=reordered), NAMES, multi_label=True)
    _check_multi_hot(ds, column, _expected(ROWS[:4]))
    with pytest.raises(DataError, match=r"Labels \['owl'\]"):
        prepare_eval_data(_sequence_dataset([["owl"]], names=["owl"]), NAMES, multi_label=True)
    with pytest.raises(DataError, match="holds a list of labels per image, but the task is single-label"):
        prepare_eval_data(_sequence_dataset(ROWS[:4]), NAMES)


class _Processor:
    def __call__(self, images, return_tensors="pt"):
        return {"pixel_values": torch.zeros(len(images), 3, 8, 8)}


def test_the_collator_gives_float_multi_hot_labels():
    data = prepare_data(_sequence_dataset(), validation_size=0.25, seed=0)
    items = ImageClassificationDataset(data.train, "image", "labels").__getitems__([0, 1, 2, 3])
    assert all(isinstance(label, list) and len(label) == 3 for _, label in items)
    batch = ImageCollator(_Processor())(items)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (4, 3)
    assert batch["labels"].tolist() == list(data.train["labels"])[:4]
    single = ImageCollator(_Processor())([(_image(0), 1), (_image(1), 0)])
    assert single["labels"].dtype == torch.long and single["labels"].tolist() == [1, 0]
