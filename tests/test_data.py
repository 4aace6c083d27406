"""Image conversion, column and label handling, splits, `prepare_data` and the augmenting dataset/collator."""

import io
import logging
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from support.tiny import COLOURS, colour_dataset, write_image_folder

from tl_hub.data import (
    ImageClassificationDataset,
    ImageCollator,
    encode_labels,
    find_image_column,
    find_label_column,
    prepare_data,
    to_rgb,
)
from tl_hub.errors import DataError
from tl_hub.splits import stratified_split


def rgb(image):
    out = to_rgb(image)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    return np.asarray(out)


def png_bytes(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def dominant(image):
    return int(np.asarray(image, dtype=float).mean(axis=(0, 1)).argmax())


# ---------------------------------------------------------------------------------------------------------------------
# to_rgb


def test_rgba_transparent_pixel_becomes_white():
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    a = rgb(img)
    assert a[0, 0].tolist() == [255, 255, 255]
    assert a[0, 1].tolist() == [0, 0, 255]


def test_la_is_composited_on_white():
    img = Image.new("LA", (3, 1))
    img.putpixel((0, 0), (0, 0))
    img.putpixel((1, 0), (0, 255))
    img.putpixel((2, 0), (100, 128))
    a = rgb(img)
    assert a[0, 0].tolist() == [255, 255, 255]
    assert a[0, 1].tolist() == [0, 0, 0]
    expected = 100 * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.all(np.abs(a[0, 2].astype(int) - expected) <= 1)


def _palette_image():
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    return img


def test_palette_with_transparency_becomes_white():
    buf = io.BytesIO()
    _palette_image().save(buf, format="PNG", transparency=0)
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert img.mode == "P" and "transparency" in img.info
    a = rgb(img)
    assert a[0, 0].tolist() == [255, 255, 255]
    assert a[0, 1].tolist() == [0, 0, 255]


def test_palette_without_transparency_keeps_colours():
    a = rgb(_palette_image())
    assert a[0, 0].tolist() == [255, 0, 0]
    assert a[0, 1].tolist() == [0, 0, 255]


def test_cmyk():
    img = Image.new("CMYK", (2, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 0))
    a = rgb(img)
    assert a[0, 0].tolist() == [255, 255, 255]
    assert a[0, 1].tolist() == [0, 255, 255]


def test_grayscale_and_bilevel():
    a = rgb(Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), mode="L"))
    assert a[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]
    one = Image.new("1", (2, 1))
    one.putpixel((0, 0), 1)
    a = rgb(one)
    assert a[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_16_bit_uses_full_range():
    img = Image.fromarray(np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16))
    assert img.mode == "I;16"
    a = rgb(img)[..., 0]
    assert a.min() == 0 and a.max() == 255
    assert a.tolist() == [[0, 63], [127, 255]]
    assert (rgb(img)[..., 0] == rgb(img)[..., 2]).all()


def test_16_bit_png_file_uses_full_range(tmp_path):
    path = str(tmp_path / "deep.png")
    Image.fromarray(np.array([[0, 20000], [40000, 65535]], dtype=np.uint16)).save(path)
    a = rgb(path)[..., 0]
    assert a.min() == 0 and a.max() == 255
    assert a[0, 1] == pytest.approx(20000 / 65535 * 255, abs=1)


def test_float_image_mode_f():
    img = Image.fromarray(np.array([[-1.0, 0.0], [1.0, 3.0]], dtype=np.float32))
    assert img.mode == "F"
    a = rgb(img)[..., 1]
    assert a.tolist() == [[0, 63], [127, 255]]


def test_constant_16_bit_image_does_not_divide_by_zero():
    a = rgb(Image.fromarray(np.full((2, 2), 500, dtype=np.uint16)))
    assert a.shape == (2, 2, 3)


def test_numpy_inputs():
    arr = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    assert np.array_equal(rgb(arr), arr)
    gray = np.array([[0, 10], [200, 255]], dtype=np.uint8)
    a = rgb(gray)
    assert a.shape == (2, 2, 3)
    assert np.array_equal(a[..., 0], gray) and np.array_equal(a[..., 2], gray)
    floats = np.array([[0.0, 0.5], [1.0, 0.25]])
    a = rgb(floats)
    assert a[..., 0].tolist() == [[0, 127], [255, 63]]
    floats_rgb = np.zeros((2, 2, 3))
    floats_rgb[0, 0] = [1.0, 0.0, 0.5]
    assert rgb(floats_rgb)[0, 0].tolist() == [255, 0, 127]
    tensor = torch.from_numpy(arr)
    assert np.array_equal(rgb(tensor), arr)


def test_bytes_path_and_dict(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (6, 4, 3)).astype(np.uint8)
    data = png_bytes(Image.fromarray(arr))
    assert np.array_equal(rgb(data), arr)
    assert np.array_equal(rgb(bytearray(data)), arr)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert np.array_equal(rgb(str(path)), arr)
    assert np.array_equal(rgb(path), arr)
    assert np.array_equal(rgb({"bytes": data, "path": None}), arr)
    assert np.array_equal(rgb({"bytes": None, "path": str(path)}), arr)


def test_unreadable_input_is_a_data_error():
    with pytest.raises(DataError, match="Cannot read an image from a int"):
        to_rgb(42)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((8, 16, 3), dtype=np.uint8)  # width 16, height 8
    a[:, :8] = [255, 0, 0]  # left half red
    a[:, 8:] = [0, 0, 255]  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(a).save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    raw = Image.open(path)
    assert raw.size == (16, 8)
    out = to_rgb(path)
    assert out.size == (8, 16)
    b = np.asarray(out).astype(int)
    # clockwise rotation: the left (red) half is now on top, the right (blue) half below
    assert b[:6].mean(axis=(0, 1)).argmax() == 0
    assert b[10:].mean(axis=(0, 1)).argmax() == 2


# ---------------------------------------------------------------------------------------------------------------------
# Columns


def _images(n=4):
    return [Image.new("RGB", (4, 4), (i * 40, 0, 0)) for i in range(n)]


def test_find_columns_by_feature_type():
    features = datasets.Features({"y": datasets.ClassLabel(names=["a", "b"]), "pixels": datasets.Image(),
                                  "label": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"y": [0, 1], "pixels": _images(2), "label": ["x", "y"]}, features=features)
    assert find_image_column(ds) == "pixels"
    assert find_label_column(ds, image_column="pixels") == "y"


def test_find_columns_by_name():
    ds = datasets.Dataset.from_dict({"other": [1, 2], "img": ["a.png", "b.png"], "target": [0, 1]})
    assert find_image_column(ds) == "img"
    assert find_label_column(ds, image_column="img") == "target"


def test_explicit_columns():
    ds = datasets.Dataset.from_dict({"file": ["a.png", "b.png"], "kind": ["x", "y"], "label": [0, 1]})
    assert find_image_column(ds, "file") == "file"
    assert find_label_column(ds, "kind") == "kind"
    assert find_label_column(ds) == "label"


def test_missing_columns_are_data_errors():
    ds = datasets.Dataset.from_dict({"foo": [1, 2], "bar": [3, 4]})
    with pytest.raises(DataError) as info:
        find_image_column(ds, "photo")
    assert "'photo' does not exist" in str(info.value) and "['foo', 'bar']" in str(info.value)
    assert "image_column" in str(info.value)
    with pytest.raises(DataError) as info:
        find_label_column(ds, "category")
    assert "'category' does not exist" in str(info.value) and "['foo', 'bar']" in str(info.value)
    assert "label_column" in str(info.value)
    with pytest.raises(DataError) as info:
        find_image_column(ds)
    assert "['foo', 'bar']" in str(info.value)
    with pytest.raises(DataError) as info:
        find_label_column(ds)
    assert "['foo', 'bar']" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Labels


def _labelled(labels, feature=None):
    features = None
    if feature is not None:
        features = datasets.Features({"x": datasets.Value("int64"), "label": feature})
    return datasets.Dataset.from_dict({"x": list(range(len(labels))), "label": labels}, features=features)


def test_encode_string_labels_sorted():
    ds, names = encode_labels(_labelled(["b", "a", "c", "a"]), "label")
    assert names == ["a", "b", "c"]
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == ["a", "b", "c"]
    assert list(ds["label"]) == [1, 0, 2, 0]
    assert list(ds["x"]) == [0, 1, 2, 3]


def test_encode_int_labels_in_numeric_order():
    ds, names = encode_labels(_labelled([10, 2, 2, 10, 7]), "label")
    assert names == ["2", "7", "10"]
    assert list(ds["label"]) == [2, 0, 0, 2, 1]
    assert ds.features["label"].names == names


def test_encode_class_label_kept():
    src = _labelled([1, 0, 1], datasets.ClassLabel(names=["cat", "dog"]))
    ds, names = encode_labels(src, "label")
    assert names == ["cat", "dog"]
    assert list(ds["label"]) == [1, 0, 1]


def test_missing_label_is_a_data_error():
    with pytest.raises(DataError) as info:
        encode_labels(_labelled(["a", None, "b"]), "label")
    assert "1 of 3 examples" in str(info.value) and "'label'" in str(info.value)


def test_class_label_minus_one_is_missing_label():
    # datasets' ClassLabel uses -1 for an unknown/missing label: it is not a class.
    src = _labelled([0, -1, 1], datasets.ClassLabel(names=["a", "b"]))
    with pytest.raises(DataError):
        ds, names = encode_labels(src, "label")
        pytest.fail(f"-1 accepted as a label: {list(ds['label'])} with names {names}")


def test_class_label_minus_one_not_mapped_to_last_training_label():
    src = _labelled([0, -1, 1], datasets.ClassLabel(names=["a", "b"]))
    with pytest.raises(DataError):
        ds, names = encode_labels(src, "label", ["b", "a"])
        pytest.fail(f"-1 silently became {names[ds[1]['label']]!r}: labels {list(ds['label'])} of {names}")


def test_map_eval_labels_onto_training_names():
    src = _labelled([0, 1, 1], datasets.ClassLabel(names=["green", "red"]))
    ds, names = encode_labels(src, "label", COLOURS)
    assert names == COLOURS
    assert ds.features["label"].names == COLOURS
    assert list(ds["label"]) == [1, 0, 0]

    ds, _ = encode_labels(_labelled(["blue", "red", "blue"]), "label", COLOURS)
    assert list(ds["label"]) == [2, 0, 2]
    ds, _ = encode_labels(_labelled([1, 0]), "label", ["0", "1", "2"])
    assert list(ds["label"]) == [1, 0]


def test_unknown_eval_label_is_a_data_error():
    with pytest.raises(DataError) as info:
        encode_labels(_labelled(["red", "purple", "blue"]), "label", COLOURS)
    msg = str(info.value)
    assert "purple" in msg and "red" in msg and "same label set" in msg


# ---------------------------------------------------------------------------------------------------------------------
# Splits


def _split_labels():
    labels = [0] * 10 + [1] * 5 + [2] * 2 + [3] * 1
    perm = np.random.default_rng(0).permutation(len(labels))
    return [labels[i] for i in perm]


def test_stratified_split_every_class_on_both_sides():
    labels = _split_labels()
    train, val = stratified_split(labels, 0.2, seed=0)
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(len(labels)))
    assert train == sorted(train) and val == sorted(val)
    val_counts = {c: sum(labels[i] == c for i in val) for c in range(4)}
    assert val_counts == {0: 2, 1: 1, 2: 1, 3: 0}
    for c in (0, 1, 2):
        assert any(labels[i] == c for i in train)
    assert any(labels[i] == 3 for i in train)


def test_stratified_split_deterministic_per_seed():
    labels = _split_labels()
    assert stratified_split(labels, 0.3, seed=5) == stratified_split(labels, 0.3, seed=5)
    splits = {tuple(stratified_split(labels, 0.3, seed=s)[1]) for s in range(6)}
    assert len(splits) > 1


# ---------------------------------------------------------------------------------------------------------------------
# prepare_data


def _image_keys(ds, col="image"):
    return [np.asarray(to_rgb(x)).tobytes() for x in ds[col]]


def test_prepare_from_dataset():
    src = colour_dataset(90)
    data = prepare_data(src, seed=0)
    assert data.labels == COLOURS
    assert data.image_column == "image" and data.label_column == "label"
    assert data.test is None and data.skipped == 0
    assert len(data.train) == 72 and len(data.validation) == 18
    assert sorted(data.validation["label"]) == [0] * 6 + [1] * 6 + [2] * 6
    train_keys, val_keys = set(_image_keys(data.train)), set(_image_keys(data.validation))
    assert train_keys.isdisjoint(val_keys)
    assert train_keys | val_keys == set(_image_keys(src))
    assert "3 classes" in data.summary()
    again = prepare_data(src, seed=0)
    assert _image_keys(again.validation) == _image_keys(data.validation)


def test_prepare_from_string_labels():
    data = prepare_data(colour_dataset(30, string_labels=True))
    assert data.labels == sorted(COLOURS)
    for img, y in zip(data.validation["image"], data.validation["label"]):
        assert dominant(img) == COLOURS.index(data.labels[y])


def test_prepare_from_dataset_dict_with_validation_and_test():
    dd = datasets.DatasetDict({
        "train": colour_dataset(60, seed=0),
        "validation": colour_dataset(30, seed=1, string_labels=True),
        "test": colour_dataset(15, seed=2),
    })
    data = prepare_data(dd)
    assert data.labels == COLOURS
    assert len(data.train) == 60 and len(data.validation) == 30 and len(data.test) == 15
    for split in (data.validation, data.test):
        assert split.features["label"].names == COLOURS
        for img, y in zip(split["image"], split["label"]):
            assert dominant(img) == y  # red=0, green=1, blue=2 both in the names and in the pixels


def test_prepare_from_save_to_disk(tmp_path):
    dd = datasets.DatasetDict({"train": colour_dataset(30, seed=0), "test": colour_dataset(9, seed=1)})
    dd.save_to_disk(str(tmp_path / "dd"))
    data = prepare_data(str(tmp_path / "dd"))
    assert data.labels == COLOURS
    assert len(data.train) + len(data.validation) == 30 and len(data.test) == 9

    colour_dataset(30).save_to_disk(str(tmp_path / "single"))
    data = prepare_data(tmp_path / "single")
    assert len(data.train) + len(data.validation) == 30 and data.test is None


def test_prepare_from_image_folder(image_folder):
    data = prepare_data(image_folder)
    assert data.labels == sorted(COLOURS)
    assert data.image_column == "image" and data.label_column == "label"
    assert len(data.train) + len(data.validation) == 60 and len(data.validation) == 12
    assert data.skipped == 0
    for img, y in zip(data.validation["image"], data.validation["label"]):
        assert dominant(img) == COLOURS.index(data.labels[y])


def test_prepare_from_image_folder_with_splits(tmp_path):
    write_image_folder(tmp_path / "imgs" / "train", n=30, seed=0)
    write_image_folder(tmp_path / "imgs" / "validation", n=12, seed=1)
    data = prepare_data(str(tmp_path / "imgs"))
    assert len(data.train) == 30 and len(data.validation) == 12


def test_folder_without_images(tmp_path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="contains no images"):
        prepare_data(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="is a file"):
        prepare_data(str(tmp_path / "empty" / "cats" / "notes.txt"))


def test_one_class_is_a_data_error():
    images = _images(4)
    ds = datasets.Dataset.from_dict({"image": images, "label": ["cat"] * 4}).cast_column("image", datasets.Image())
    with pytest.raises(DataError) as info:
        prepare_data(ds)
    assert "1 class(es)" in str(info.value) and "at least two" in str(info.value)


def test_one_class_image_folder_is_a_data_error(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n=5, classes=["cat"])
    with pytest.raises(DataError) as info:
        prepare_data(root)
    assert "at least two" in str(info.value)


def test_unknown_label_column_is_a_data_error():
    with pytest.raises(DataError) as info:
        prepare_data(colour_dataset(12), label_column="nope")
    assert "'nope' does not exist" in str(info.value) and "['image', 'label']" in str(info.value)


def _write_corrupt(folder, name, truncated=False):
    if truncated:
        data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)))
        data = data[: len(data) // 2]
    else:
        data = b"this is not an image at all"
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def test_corrupt_images_are_skipped_and_counted(image_folder, caplog):
    _write_corrupt(os.path.join(image_folder, "red"), "garbage.png")
    _write_corrupt(os.path.join(image_folder, "green"), "truncated.png", truncated=True)
    with caplog.at_level(logging.WARNING, logger="tl_hub.data"):
        data = prepare_data(image_folder)
    assert data.skipped == 2
    assert len(data.train) + len(data.validation) == 60
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "Skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "Skipped 2 of 62" in warnings[0].getMessage()
    for img in data.train["image"]:  # everything left decodes
        assert to_rgb(img).size == (32, 32)


def test_corrupt_validation_images_are_counted(tmp_path, caplog):
    write_image_folder(tmp_path / "imgs" / "train", n=30, seed=0)
    write_image_folder(tmp_path / "imgs" / "validation", n=12, seed=1)
    _write_corrupt(str(tmp_path / "imgs" / "validation" / "blue"), "bad.png")
    with caplog.at_level(logging.WARNING, logger="tl_hub.data"):
        data = prepare_data(str(tmp_path / "imgs"))
    assert data.skipped == 1
    assert len(data.train) == 30 and len(data.validation) == 12
    assert any("Skipped 1 of 13 validation" in r.getMessage() for r in caplog.records)


def test_all_images_corrupt_is_a_data_error(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "bad" / c).mkdir(parents=True)
        for i in range(3):
            _write_corrupt(str(tmp_path / "bad" / c), f"{i}.png", truncated=bool(i % 2))
    with pytest.raises(DataError) as info:
        prepare_data(str(tmp_path / "bad"))
    assert "None of the 6 training images could be decoded" in str(info.value)


def test_one_class_left_after_dropping_corrupt_images_is_a_data_error(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n=12, classes=["cat", "dog"])
    dog = os.path.join(root, "dog")
    for name in os.listdir(dog):
        _write_corrupt(dog, name)
    # every readable image is a cat: this is not a two-class problem any more
    with pytest.raises(DataError):
        data = prepare_data(root)
        pytest.fail(f"accepted: {data.summary()}, train labels {sorted(set(data.train['label']))} of {data.labels}")


# ---------------------------------------------------------------------------------------------------------------------
# ImageClassificationDataset and ImageCollator


@pytest.fixture(scope="module")
def small_ds():
    return colour_dataset(8)


def _arrays(dataset):
    return [np.asarray(dataset[i][0]) for i in range(len(dataset))]


def test_augmentation_is_deterministic_per_seed_epoch_index(small_ds):
    a = ImageClassificationDataset(small_ds, "image", "label", augment=True, seed=3)
    b = ImageClassificationDataset(small_ds, "image", "label", augment=True, seed=3)
    first = _arrays(a)
    assert all(np.array_equal(x, y) for x, y in zip(first, _arrays(b)))
    assert all(np.array_equal(x, y) for x, y in zip(first, _arrays(a)))  # repeated reads
    assert [a[i][1] for i in range(len(a))] == list(small_ds["label"])
    # reading in another order gives the same images
    for i in reversed(range(len(b))):
        assert np.array_equal(np.asarray(b[i][0]), first[i])

    a.set_epoch(1)
    b.set_epoch(1)
    second = _arrays(a)
    assert all(np.array_equal(x, y) for x, y in zip(second, _arrays(b)))
    assert any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(first, second))

    other_seed = ImageClassificationDataset(small_ds, "image", "label", augment=True, seed=4)
    assert any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(first, _arrays(other_seed)))

    originals = [np.asarray(to_rgb(img)) for img in small_ds["image"]]
    assert any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(first, originals))


def test_no_augmentation_returns_the_original(small_ds):
    plain = ImageClassificationDataset(small_ds, "image", "label", augment=False, seed=3)
    plain.set_epoch(5)
    for i, img in enumerate(small_ds["image"]):
        out, label = plain[i]
        assert out.mode == "RGB" and out.size == (32, 32)
        assert np.array_equal(np.asarray(out), np.asarray(to_rgb(img)))
        assert label == small_ds[i]["label"]
    unlabelled = ImageClassificationDataset(small_ds, "image", None)
    assert unlabelled[0][1] == -1


def test_full_scale_crop_of_square_image_and_hflip(small_ds):
    originals = [np.asarray(to_rgb(img)) for img in small_ds["image"]]
    no_flip = ImageClassificationDataset(small_ds, "image", "label", augment=True, hflip=False, crop_scale=1.0)
    flip = ImageClassificationDataset(small_ds, "image", "label", augment=True, hflip=True, crop_scale=1.0)
    flipped = unflipped = 0
    for epoch in range(4):
        no_flip.set_epoch(epoch)
        flip.set_epoch(epoch)
        for i, orig in enumerate(originals):
            assert np.array_equal(np.asarray(no_flip[i][0]), orig)
            out = np.asarray(flip[i][0])
            if np.array_equal(out, orig):
                unflipped += 1
            else:
                assert np.array_equal(out, orig[:, ::-1])
                flipped += 1
    assert flipped > 0 and unflipped > 0


@pytest.fixture(scope="module")
def vit_processor(tiny_model_dir):
    from tl_hub.backbone import load_backbone

    return load_backbone(tiny_model_dir("vit"), COLOURS).processor


def test_collator_batches_with_the_model_processor(vit_processor):
    collate = ImageCollator(vit_processor)
    batch = collate([
        (Image.new("RGB", (32, 32), (255, 255, 255)), 2),
        (Image.new("RGB", (48, 20), (0, 0, 0)), 0),
        (Image.new("RGB", (7, 64), (255, 0, 0)), 1),
    ])
    assert set(batch) == {"pixel_values", "labels"}
    pv = batch["pixel_values"]
    assert tuple(pv.shape) == (3, 3, 32, 32) and pv.dtype == torch.float32
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [2, 0, 1]
    # ViT normalisation: mean 0.5, std 0.5 -> white is 1, black is -1
    assert torch.allclose(pv[0], torch.ones_like(pv[0]), atol=1e-5)
    assert torch.allclose(pv[1], -torch.ones_like(pv[1]), atol=1e-5)
    assert pv[2, 0].mean() > 0.9 and pv[2, 1].mean() < -0.9


def test_collator_in_a_data_loader(small_ds, vit_processor):
    dataset = ImageClassificationDataset(small_ds, "image", "label", augment=True, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, shuffle=False, collate_fn=ImageCollator(vit_processor))
    batches = list(loader)
    assert [tuple(b["pixel_values"].shape) for b in batches] == [(5, 3, 32, 32), (3, 3, 32, 32)]
    assert torch.cat([b["labels"] for b in batches]).tolist() == list(small_ds["label"])
    # the augmentation does not depend on the number of workers
    dataset.set_epoch(2)
    single = list(torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=ImageCollator(vit_processor)))
    multi = list(torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=2,
                                             collate_fn=ImageCollator(vit_processor)))
    for x, y in zip(single, multi):
        assert torch.equal(x["pixel_values"], y["pixel_values"])
    assert not all(torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(single, batches))


def test_the_shipped_fashion_subset_draws_disjoint_seeded_splits():
    from tl_hub.errors import DataError
    from tl_hub.fashion import CLASSES, fashion_data, pool_size

    assert pool_size() == 100
    train, val, test = fashion_data(5, validation_per_class=3, test_per_class=20, seed=4)
    assert (len(train), len(val), len(test)) == (50, 30, 200)
    assert train.features["label"].names == list(CLASSES)
    for ds, n in ((train, 5), (val, 3), (test, 20)):
        assert sorted(ds["label"]) == sorted(list(range(10)) * n)
    image = train[0]["image"]
    assert image.mode == "RGB" and image.size == (28, 28)
    pixels = lambda ds: {np.asarray(im).tobytes() for im in ds["image"]}
    assert not pixels(train) & pixels(val)  # drawn without overlap from the pool
    again, _, same_test = fashion_data(5, validation_per_class=3, test_per_class=20, seed=4)
    other, _, other_test = fashion_data(5, validation_per_class=3, test_per_class=20, seed=5)
    assert pixels(again) == pixels(train) and pixels(other) != pixels(train)
    assert pixels(same_test) == pixels(other_test) == pixels(test)  # the test set does not depend on the seed
    assert fashion_data(1)[1] is None
    with pytest.raises(DataError, match="at most 100 per class"):
        fashion_data(90, validation_per_class=20)
