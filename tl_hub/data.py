"""Datasets in, batches for the model out.

- `load_source`: a ``datasets.Dataset``/``DatasetDict``, a ``save_to_disk`` folder, an image folder
  (``class_name/xxx.jpg``, or images beside a ``metadata.csv``/``metadata.jsonl`` naming their labels), a CSV file
  of image paths and labels, or a Hub dataset id.
- `prepare_data`: finds the image and label columns, builds the label names, removes undecodable
  images (with a warning that counts them), and makes a stratified validation split when none exists.
  A label column of lists (or strings such as ``"cat;dog"`` with ``multi_label=True``) makes a multi-label task: the
  labels become a multi-hot vector per image (see `tl_hub.label_files`) and the split keeps every label that has two
  images or more on both sides (`multilabel_split`).
- `ImageClassificationDataset` + `ImageCollator`: images converted to RGB, augmented on the fly (random
  resized crop, horizontal flip; no torchvision needed) with a random stream derived from
  ``(seed, epoch, index)`` so the augmentation does not depend on the number of processes or workers,
  then preprocessed by the model's own image processor, batch-wise.

Corrupt images are skipped, not fatal: they are counted and reported once; if no image is readable the
data is rejected.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import DataError, first_line
from .imbalance import balanced_order
from .label_files import (
    is_list_column,
    is_multi_hot_feature,
    label_lists,
    load_label_csv,
    multi_hot,
    separator_of,
    sorted_names,
)
from .paths import looks_local, not_found
from .splits import (
    check_validation_covers,
    split_off_validation,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "photo")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "category", "fine_label")
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "eval", "dev")


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def _has_images(folder: str) -> bool:
    for _, _, files in os.walk(folder):
        if any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in files):
            return True
    return False


def load_source(source: Any, *, revision: Optional[str] = None, cache_dir: Optional[str] = None):
    """Turn what the user gave into a ``Dataset`` or ``DatasetDict``.

    Args:
        source: a ``datasets.Dataset``/``DatasetDict``; a folder written by ``save_to_disk``; an image
            folder laid out as ``<class>/<image>`` (optionally under ``train/``, ``validation/``, ``test/``), or
            holding its images beside a ``metadata.csv``/``metadata.jsonl`` with a ``file_name`` column and a label
            column (e.g. ``labels``: a JSON list in jsonl, ``"cat;dog"`` in csv), one per split folder; a ``.csv``
            file of image paths and labels (see `tl_hub.label_files.load_label_csv`); or a Hub dataset id such as
            ``"beans"``.

    Raises:
        DataError: the folder holds no images, the CSV lists missing images, the id cannot be loaded.
    """
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(
            f"Expected a datasets.Dataset, DatasetDict, folder or Hub dataset id, got {type(source).__name__}."
        )
    path = os.path.expanduser(os.fspath(source))
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(
            os.path.join(path, "state.json")
        ):
            return datasets.load_from_disk(path)
        if not _has_images(path):
            raise DataError(
                f"The folder '{path}' contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}). Lay it out as "
                "<folder>/<class name>/<image>, or pass a saved dataset or a Hub dataset id."
            )
        with quiet_datasets():  # "Downloading data: 30/30 files" is a copy of local files into the cache
            data = datasets.load_dataset("imagefolder", data_dir=path, cache_dir=cache_dir)
        first = next(iter(data.values()))
        # imagefolder infers labels only from >= 2 class folders, and not at all beside a metadata.csv/.jsonl (whose
        # columns it adds instead)
        if "label" not in first.column_names and len(first.column_names) < 2:
            classes = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
            raise DataError(
                f"The folder '{path}' has images of {len(classes)} class folder(s) {classes[:5]}; a classifier "
                "needs at least two. Lay it out as <folder>/<class name>/<image> with one folder per class."
            )
        return data
    if os.path.isfile(path) and path.lower().endswith(".csv"):
        return load_label_csv(path)
    if os.path.exists(path):
        raise DataError(f"'{path}' is a file; pass a folder of images, a saved dataset folder, a Hub dataset id or a "
                        "CSV file of image paths and labels.")
    if looks_local(path):
        raise DataError(not_found(path))
    return load_hub_dataset(path, revision=revision, cache_dir=cache_dir)


@contextlib.contextmanager
def quiet_datasets():
    """``datasets``' progress bars off inside the block (restored after)."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()


def load_hub_dataset(name: str, *, revision: Optional[str] = None, cache_dir: Optional[str] = None):
    """``datasets.load_dataset(name)`` from the Hub, the libraries' retry messages hidden; one `DataError` if not."""
    import datasets

    quiet = [logging.getLogger(n) for n in ("huggingface_hub", "datasets", "urllib3", "httpx")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(name, revision=revision, cache_dir=cache_dir)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError)
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        raise DataError(
            f"Could not load dataset '{name}': it is not a folder here, and "
            + ("the Hub is switched off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1) and it is not in the cache. "
               if offline else f"loading it from the Hub failed ({first_line(e)}). ")
            + "Check the folder path or the Hub id (owner/name)."
        ) from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


# ---------------------------------------------------------------------------------------------------------------------
# Columns and labels


def _require_column(ds, name: str, kind: str) -> str:
    if name not in ds.column_names:
        raise DataError(
            f"{kind.capitalize()} column '{name}' does not exist; the columns are {ds.column_names}. "
            f"Pass one of them as {kind}_column (--{kind}-column)."
        )
    return name


def find_image_column(ds, image_column: Optional[str] = None) -> str:
    """``image_column`` if ``ds`` has it, else its first ``Image`` feature, else a column with a usual name."""
    from datasets import Image as ImageFeature

    if image_column is not None:
        return _require_column(ds, image_column, "image")
    for name, feat in ds.features.items():
        if isinstance(feat, ImageFeature):
            return name
    for name in IMAGE_COLUMN_NAMES:
        if name in ds.column_names:
            return name
    raise DataError(f"Found no image column among {ds.column_names}; pass image_column (--image-column).")


def find_label_column(ds, label_column: Optional[str] = None, image_column: Optional[str] = None) -> str:
    """``label_column`` if ``ds`` has it, else its first ``ClassLabel`` feature, else a column with a usual name
    (``label``, ``labels``, ...)."""
    from datasets import ClassLabel

    if label_column is not None:
        return _require_column(ds, label_column, "label")
    for name, feat in ds.features.items():
        if isinstance(feat, ClassLabel) and name != image_column:
            return name
    for name in LABEL_COLUMN_NAMES:
        if name in ds.column_names:
            return name
    raise DataError(f"Found no label column among {ds.column_names}; pass label_column (--label-column).")


def multi_label_column(dataset: Any, image_column: Optional[str] = None,
                       label_column: Optional[str] = None) -> Optional[str]:
    """The name of the training split's label column when it holds a set of labels per image (a multi-label
    task), else None: for the tools that work on single-label data only, to refuse such data with their own
    message."""
    train = pick_splits(dataset)[0]
    column = find_label_column(train, label_column, find_image_column(train, image_column))
    return column if is_list_column(train, column) else None


def encode_labels(ds, label_column: str, names: Optional[Sequence[str]] = None):
    """Return ``(dataset, label_names)`` with the label column as a ``ClassLabel``.

    With ``names`` given (the training labels), the column is mapped onto them and any label outside
    them is an error.
    """
    from datasets import ClassLabel

    feat = ds.features[label_column]
    values = list(ds[label_column])
    missing = sum(v is None or (isinstance(feat, ClassLabel) and v == -1) for v in values)
    if missing:
        raise DataError(
            f"{missing} of {len(values)} examples have no value in label column '{label_column}'; "
            "remove or label them."
        )
    if isinstance(feat, ClassLabel):
        own = list(feat.names)
        if names is None or own == list(names):
            return ds, own
        values = [own[v] for v in values]
    if names is None:
        if all(isinstance(v, (int, np.integer)) for v in values):
            names = [str(v) for v in sorted(set(values))]
            values = [str(v) for v in values]
        else:
            names = sorted({str(v) for v in values})
    names = [str(n) for n in names]
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise DataError(
            f"Labels {unknown[:5]} in this data are not among the {len(names)} training labels {names[:10]}; "
            "evaluate on data with the same label set."
        )
    new = [index[str(v)] for v in values]
    features = ds.features.copy()
    features[label_column] = ClassLabel(names=names)
    ds = ds.map(lambda _, idx: {label_column: [new[i] for i in idx]}, batched=True, with_indices=True,
                input_columns=[label_column], features=features, load_from_cache_file=False)
    return ds, names


def encode_multi_hot(ds, column: str, names: Optional[Sequence[str]] = None):
    """Return ``(dataset, label_names)`` with the label column as a multi-hot vector
    (``Sequence(Value("float32"), length=K)``, K label names).

    The names are ``names`` when given (the training labels: a label outside them is an error), else the column's
    own (a ``Sequence(ClassLabel)``), else the sorted union of its labels."""
    import datasets

    feature = ds.features[column]
    if names is not None and is_multi_hot_feature(feature) and getattr(feature, "length", None) == len(names):
        return ds, [str(n) for n in names]  # already encoded over these labels (a split tl-hub prepared)
    lists, own = label_lists(ds, column)
    if names is None:
        names = own if own is not None else sorted_names(lists)
    names = [str(n) for n in names]
    targets = multi_hot(lists, names)
    features = ds.features.copy()
    features[column] = datasets.Sequence(datasets.Value("float32"), length=len(names))
    with quiet_datasets():  # no "Map" bar for a step of tl-hub's own
        ds = ds.map(lambda _, idx: {column: targets[idx].tolist()}, batched=True, with_indices=True,
                    input_columns=[column], features=features, load_from_cache_file=False)
    return ds, names


def encode_task_labels(ds, label_column: str, multi_label: Optional[bool] = None):
    """Return ``(dataset, label_names)``: a single-label column as a ``ClassLabel`` (`encode_labels`), a multi-label
    one as a multi-hot vector of ``float32`` (`encode_multi_hot`).

    ``multi_label=None`` detects a multi-label column (a ``Sequence``/``List`` feature, or lists as values); True
    declares one: strings are then split on the first of ``;``, ``|``, ``,`` that occurs anywhere in the column
    (``"cat;dog"``), a string without it is one label; False requires one label per image.
    """
    listed = is_list_column(ds, label_column)
    if listed and multi_label is False:
        raise DataError(
            f"Label column '{label_column}' holds a list of labels per image (a multi-label task) but a single-label "
            "task was asked for; pass multi_label=True (--multi-label), or give one label per image."
        )
    if listed or multi_label:
        return encode_multi_hot(ds, label_column)
    if multi_label is None:
        separator = separator_of([v for v in ds[label_column] if isinstance(v, str) and (";" in v or "|" in v)])
        if separator:
            logger.warning("Labels in column '%s' hold '%s' (e.g. 'cat%sdog'): each is read as one class name; if an "
                           "image can have several labels, pass multi_label=True (--multi-label).",
                           label_column, separator, separator)
    return encode_labels(ds, label_column)


# ---------------------------------------------------------------------------------------------------------------------
# Images


def to_rgb(image: Any) -> Image.Image:
    """Any image (PIL, numpy, path, bytes) as an upright 8-bit RGB PIL image.

    Palette and alpha images are composited on white; CMYK, grayscale and 16-bit images are converted;
    EXIF orientation is applied.
    """
    if isinstance(image, dict):  # datasets Image(decode=False)
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = np.clip(arr / (arr.max() or 1) * 255 if arr.max() > 1 else arr * 255, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr)
    elif isinstance(image, torch.Tensor):
        return to_rgb(image.detach().cpu().numpy())
    if not isinstance(image, Image.Image):
        raise DataError(f"Cannot read an image from a {type(image).__name__}.")
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def images_at(ds, image_column: str, indices: Sequence[int]) -> list[Image.Image]:
    """The images of rows ``indices`` of ``ds`` as RGB, in that order, in one read."""
    return [to_rgb(value) for value in ds[list(indices)][image_column]] if len(indices) else []


def _open(value: Any) -> Image.Image:
    if isinstance(value, dict):  # datasets Image(decode=False): {"bytes", "path"}
        data = value.get("bytes")
        return Image.open(io.BytesIO(data)) if data else Image.open(value["path"])
    if isinstance(value, Image.Image):
        return value
    return to_rgb(value)


def _decodable(value: Any) -> bool:
    """Whether the image decodes.  PNGs are checked by their chunk checksums (no decompression, ~10x faster)
    and fully decoded only if that fails; JPEGs are decoded at 1/8 scale, which still reads every byte."""
    try:
        img = _open(value)
        if img.width <= 0 or img.height <= 0:
            return False
        if getattr(img, "format", None) == "PNG":
            try:
                img.verify()
                return True
            except Exception:
                img = _open(value)  # verify() consumes the file; a damaged trailer may still decode
        elif getattr(img, "format", None) == "JPEG":
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()
        return True
    except Exception:
        return False


CHECK_CHUNK = 2048  # images read at a time by drop_undecodable


def drop_undecodable(ds, image_column: str, what: str = "training"):
    """Remove examples whose image cannot be decoded; warn once with the count."""
    from datasets import Image as ImageFeature

    raw = ds.cast_column(image_column, ImageFeature(decode=False)) if isinstance(
        ds.features[image_column], ImageFeature) else ds
    flags = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
        for start in range(0, len(raw), CHECK_CHUNK):  # a chunk of encoded images in memory at a time, not all
            flags += pool.map(_decodable, raw[start:start + CHECK_CHUNK][image_column], chunksize=64)
    ok = [i for i, good in enumerate(flags) if good]
    skipped = len(ds) - len(ok)
    if skipped == len(ds) and len(ds) > 0:
        raise DataError(f"None of the {len(ds)} {what} images could be decoded; check the files.")
    if skipped:
        logger.warning("Skipped %d of %d %s images that could not be decoded (corrupt or not an image).",
                       skipped, len(ds), what)
        ds = ds.select(ok)
    return ds, skipped


@dataclass
class PreparedData:
    """Training-ready splits with a shared label set.

    In a multi-label task (``multi_label``) the label column holds a multi-hot vector of ``float32`` per image
    (``Sequence(Value("float32"), length=len(labels))``), in the order of ``labels``; else a ``ClassLabel`` id."""

    train: Any
    validation: Any
    test: Optional[Any]
    labels: list[str]
    image_column: str
    label_column: str
    skipped: int = 0
    multi_label: bool = False

    def train_size(self) -> int:
        """Training examples in one pass (a streamed split knows it otherwise, see `tl_hub.streaming`)."""
        return len(self.train)

    def validation_size(self) -> Optional[int]:
        """Validation examples (None where a stream does not know)."""
        return len(self.validation)

    def train_targets(self) -> np.ndarray:
        """The training labels: ``(N, K)`` 0/1 targets in a multi-label task, ``(N,)`` class ids otherwise."""
        column = self.train[self.label_column]
        if self.multi_label:
            return np.asarray(column, dtype=np.float32).reshape(-1, len(self.labels))
        return np.asarray(column, dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        """Training images per class, in label order (multi-label: training images showing each label)."""
        targets = self.train_targets()
        counts = targets.sum(0) if self.multi_label else np.bincount(targets, minlength=len(self.labels))
        return {name: int(round(float(c))) for name, c in zip(self.labels, counts)}

    def imbalance(self) -> float:
        """The largest class count over the smallest non-zero one (1.0 when no class has images)."""
        counts = [c for c in self.class_counts().values() if c > 0]
        return max(counts) / min(counts) if counts else 1.0

    def summary(self) -> str:
        """One line: classes, split sizes, images per class and the imbalance, e.g. ``10 classes; train 400 (4-40
        per class, imbalance 10.0:1), validation 60``."""
        counts = [c for c in self.class_counts().values() if c > 0]
        per = "label" if self.multi_label else "class"
        per_class = f"{min(counts)}-{max(counts)} per {per}, imbalance {self.imbalance():.1f}:1" if counts \
            else f"0 per {per}"
        if self.multi_label:
            targets = self.train_targets()
            per_image, unlabelled = targets.sum(1), int((targets.sum(1) == 0).sum())
            none = f"; {unlabelled} image{'s' * (unlabelled != 1)} with no label" if unlabelled else ""
            head = (f"{len(self.labels)} labels (multi-label, {per_image.mean() if len(targets) else 0:.1f} per "
                    f"image{none})")
        else:
            head = f"{len(self.labels)} classes"
        return (f"{head}; train {len(self.train)} ({per_class}), validation {len(self.validation)}"
                + (f", test {len(self.test)}" if self.test is not None else ""))


def pick_splits(data) -> tuple[Any, Optional[Any], Optional[Any]]:
    """``(train, validation, test)`` of a ``Dataset`` (the training split alone) or ``DatasetDict``."""
    import datasets

    if isinstance(data, datasets.Dataset):
        return data, None, None
    names = list(data.keys())
    if not names:
        raise DataError("The dataset has no splits.")
    train_name = "train" if "train" in data else names[0]
    val_name = next((n for n in VALIDATION_SPLIT_NAMES if n in data), None)
    test_name = "test" if "test" in data and train_name != "test" else None
    return data[train_name], data[val_name] if val_name else None, data[test_name] if test_name else None


def load_labelled(train: Any, validation: Any = None, *, image_column: Optional[str] = None,
                  label_column: Optional[str] = None, multi_label: Optional[bool] = False):
    """The splits of ``train`` (``validation`` replacing its validation split if given), with the training split's
    columns found, its labels encoded (see `encode_task_labels` for ``multi_label``) and its undecodable images
    dropped: ``(train, validation, test, image_column, label_column, labels, skipped)``; validation and test are as
    loaded."""
    train_ds, val_ds, test_ds = pick_splits(load_source(train))
    if validation is not None:
        val_ds, _, _ = pick_splits(load_source(validation))
    if len(train_ds) == 0:
        raise DataError("The training split is empty; give a dataset with labelled images.")
    img_col = find_image_column(train_ds, image_column)
    lbl_col = find_label_column(train_ds, label_column, img_col)
    train_ds, labels = encode_task_labels(train_ds.select_columns([img_col, lbl_col]), lbl_col, multi_label)
    train_ds, skipped = drop_undecodable(train_ds, img_col)
    return train_ds, val_ds, test_ds, img_col, lbl_col, labels, skipped


def check_single_label_training(train_ds, label_column: str, labels: Sequence[str]) -> None:
    """Warn about classes without training images; at least two classes must have some."""
    present = set(train_ds[label_column])
    absent = [labels[i] for i in range(len(labels)) if i not in present]
    if absent and len(present) >= 2:
        logger.warning("%d class(es) have no training examples (%s); the model keeps an output for them but cannot "
                       "learn them: add images or remove them from the label set.", len(absent), absent[:5])
    if len(labels) < 2 or len(present) < 2:
        raise DataError(
            f"The training data has {len(present)} class(es) with readable images "
            f"({[labels[i] for i in sorted(present)]}); a classifier needs at least two. Check the label column "
            "or add images of other classes."
        )


def check_multi_label_training(train_ds, label_column: str, labels: Sequence[str]) -> None:
    """Warn about labels no training image shows; at least one label must be shown. Images with no label are
    allowed (negatives for every label)."""
    counts = np.asarray(train_ds[label_column], dtype=np.float32).reshape(-1, len(labels)).sum(0)
    if not counts.any():
        raise DataError(
            f"None of the {len(train_ds)} training images has a label (of {list(labels)[:10]}); a multi-label "
            "classifier needs images showing them. Check the label column or add labelled images."
        )
    absent = [labels[j] for j in range(len(labels)) if counts[j] == 0]
    if absent:
        logger.warning("%d label(s) have no training image (%s); the model keeps an output for them but cannot "
                       "learn them: add images showing them or remove them from the label set.",
                       len(absent), absent[:5])


def prepare_data(
    train: Any,
    validation: Any = None,
    *,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    validation_size: float = 0.2,
    seed: int = 42,
    multi_label: Optional[bool] = None,
) -> PreparedData:
    """Resolve columns and labels and produce train / validation (/ test) splits.

    Args:
        multi_label: None detects a multi-label task (a ``Sequence``/``List`` label column, or lists as values);
            True declares one (``--multi-label``): a string label is then split on the first of ``;``, ``|``, ``,``
            that occurs anywhere in the column (``"cat;dog"``), a string without it is one label; False: one label
            per image (a column of lists is an error). A multi-label task's label column becomes a multi-hot
            vector (see `PreparedData`); an image may have no label (a negative for every label).

    Raises:
        DataError: empty data, unknown columns, fewer than two classes (multi-label: no label shown), missing
            labels (single-label), labels of the validation or test data that training does not have, training
            labels that a given validation split does not show.
    """
    train_ds, val_ds, test_ds, img_col, lbl_col, labels, skipped = load_labelled(
        train, validation, image_column=image_column, label_column=label_column, multi_label=multi_label)
    multi = is_multi_hot_feature(train_ds.features[lbl_col])
    (check_multi_label_training if multi else check_single_label_training)(train_ds, lbl_col, labels)
    if val_ds is None:
        train_ds, val_ds = split_off_validation(train_ds, lbl_col, labels, validation_size, seed, multi)
    else:
        val_ds = align_split(val_ds, img_col, lbl_col, labels, "validation", multi_label=multi)
        val_ds, s = drop_undecodable(val_ds, img_col, "validation")
        skipped += s
        check_validation_covers(train_ds, val_ds, lbl_col, labels, multi)
    if test_ds is not None:
        test_ds = align_split(test_ds, img_col, lbl_col, labels, "test", multi_label=multi)
    return PreparedData(train_ds, val_ds, test_ds, labels, img_col, lbl_col, skipped, multi)


def align_split(ds, image_column: str, label_column: str, labels: Sequence[str], what: str, *,
                multi_label: bool = False):
    """``ds`` with only its image and label columns, the labels mapped onto ``labels`` (as a multi-hot vector with
    ``multi_label``); a label outside them is an error."""
    if len(ds) == 0:
        raise DataError(f"The {what} split is empty.")
    for col, kind in ((image_column, "image"), (label_column, "label")):
        if col not in ds.column_names:
            raise DataError(
                f"The {what} split has no {kind} column '{col}' (its columns: {ds.column_names})."
            )
    ds = ds.select_columns([image_column, label_column])
    if multi_label:
        ds, _ = encode_multi_hot(ds, label_column, labels)
        return ds
    if is_list_column(ds, label_column):
        raise DataError(
            f"The {what} split's label column '{label_column}' holds a list of labels per image, but the task is "
            "single-label; give one label per image, or make the task multi-label (multi_label=True, --multi-label)."
        )
    ds, _ = encode_labels(ds, label_column, labels)
    return ds


def prepare_eval_data(source: Any, labels: Sequence[str], *, image_column: Optional[str] = None,
                      label_column: Optional[str] = None, split: Optional[str] = None, fallback: bool = False,
                      multi_label: bool = False):
    """An evaluation dataset mapped onto the model's ``labels`` (as multi-hot vectors with ``multi_label``, see
    `align_split`); its test split by default.

    With ``fallback``, column names that the data does not have are detected instead (the names recorded at
    training time are only a first guess for other data)."""
    import datasets

    data = load_source(source)
    if isinstance(data, datasets.DatasetDict):
        if split is None:
            split = next((s for s in ("test",) + VALIDATION_SPLIT_NAMES + ("train",) if s in data), list(data)[0])
        if split not in data:
            raise DataError(f"The dataset has no split '{split}'; its splits are {list(data)}.")
        data = data[split]
    if len(data) == 0:
        raise DataError("The evaluation data is empty.")
    if fallback:
        image_column = image_column if image_column in data.column_names else None
        label_column = label_column if label_column in data.column_names else None
    img_col = find_image_column(data, image_column)
    lbl_col = find_label_column(data, label_column, img_col)
    ds = align_split(data, img_col, lbl_col, labels, "evaluation", multi_label=multi_label)
    ds, _ = drop_undecodable(ds, img_col, "evaluation")
    return ds, img_col, lbl_col


# ---------------------------------------------------------------------------------------------------------------------
# On-the-fly augmentation and batching


def random_resized_crop(image: Image.Image, rng: random.Random, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop a random region of ``scale`` area fraction and ``ratio`` aspect (the processor resizes it)."""
    w, h = image.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        log_r = (math.log(ratio[0]), math.log(ratio[1]))
        aspect = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return image.crop((x, y, x + cw, y + ch))
    side = min(w, h)  # fallback: central square
    return image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))


def augment_image(image: Image.Image, rng: random.Random, *, crop_scale: float = 0.6, hflip: bool = False):
    """The training augmentation: a random resized crop of at least ``crop_scale`` of the area, then (with ``hflip``)
    a horizontal flip half of the time, drawn from ``rng``."""
    image = random_resized_crop(image, rng, scale=(crop_scale, 1.0))
    if hflip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


class EpochDataset(torch.utils.data.Dataset):
    """A dataset whose epoch is ``passes`` passes over its ``examples``; random choices are drawn per
    ``(seed, epoch, index)``, so `set_epoch` reseeds them and any number of processes sees the same ones."""

    def __init__(self, examples: int, *, seed: int = 0, passes: int = 1):
        self.examples, self.seed, self.passes, self.epoch = examples, seed, passes, 0
        self.balance_labels: Optional[torch.Tensor] = None
        self.order: Optional[torch.Tensor] = None

    def set_epoch(self, epoch: int) -> None:
        """Draw the next random choices for ``epoch``."""
        self.epoch = epoch
        if self.balance_labels is not None:
            self.order = balanced_order(self.balance_labels, self.seed, epoch, count=len(self))

    def balance(self, labels: torch.Tensor) -> None:
        """Draw each epoch's examples with replacement so that every class comes equally often (``sampler=
        "balanced"``, `tl_hub.imbalance.balanced_order`), from ``labels`` (class ids or multi-hot rows)."""
        self.balance_labels = labels
        self.set_epoch(self.epoch)

    def row(self, index: int) -> int:
        """The example at position ``index`` of this epoch."""
        if self.order is not None:
            return int(self.order[int(index)])
        return int(index) % self.examples

    def __len__(self) -> int:
        return self.examples * self.passes

    def rng(self, index: int) -> random.Random:
        """The random stream of example ``index`` in this epoch."""
        return random.Random(hash((self.seed, self.epoch, int(index))))


class ImageClassificationDataset(EpochDataset):
    """Map-style dataset of ``(rgb_image, label)`` over a ``datasets.Dataset``.

    Augmentation (when ``augment``) draws from ``random.Random((seed, epoch, index))``: the same example
    gets the same crop in a given epoch whatever the number of processes or workers.  Call
    `set_epoch` before each epoch.  With ``passes=k`` an epoch holds every example k times (index ``i`` is
    example ``i % len(ds)``, each pass with its own augmentation).
    """

    def __init__(self, ds, image_column: str, label_column: Optional[str], *, augment: bool = False,
                 hflip: bool = False, crop_scale: float = 0.6, seed: int = 0, passes: int = 1):
        super().__init__(len(ds), seed=seed, passes=passes)
        self.ds, self.image_column, self.label_column = ds, image_column, label_column
        self.augment, self.hflip, self.crop_scale = augment, hflip, crop_scale

    def _item(self, index: int, image: Any, label: Any):
        image = to_rgb(image)
        if self.augment:
            image = augment_image(image, self.rng(index), crop_scale=self.crop_scale, hflip=self.hflip)
        if isinstance(label, (list, tuple)):  # a multi-hot vector (multi-label task)
            return image, list(label)
        return image, int(label) if label is not None else -1

    def __getitem__(self, index: int):
        row = self.ds[self.row(index)]
        return self._item(index, row[self.image_column], row[self.label_column] if self.label_column else None)

    def __getitems__(self, indices: Sequence[int]):
        """Fetch a whole batch in one read (the DataLoader calls this instead of one ``__getitem__`` per item)."""
        indices = [int(i) for i in indices]
        rows = self.ds[[self.row(i) for i in indices]]
        labels = rows[self.label_column] if self.label_column else [None] * len(indices)
        return [self._item(i, img, y) for i, img, y in zip(indices, rows[self.image_column], labels)]


def preprocess(processor, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The model inputs for ``images``: everything the processor returns (``pixel_values``, and e.g. SigLIP 2's
    ``pixel_attention_mask`` and ``spatial_shapes`` or ImageGPT's ``input_ids``).  A processor that keeps each
    image's aspect ratio returns images of different sizes; they are padded (bottom and right, with zeros) to the
    largest height and width of the batch, as fully convolutional models accept."""
    try:
        return dict(processor(images=list(images), return_tensors="pt"))
    except ValueError as e:
        if "inhomogeneous" not in str(e) and "same size" not in str(e):
            raise
    out = dict(processor(images=list(images)))
    values = [torch.as_tensor(np.asarray(v)) for v in out["pixel_values"]]
    height, width = max(v.shape[-2] for v in values), max(v.shape[-1] for v in values)
    out["pixel_values"] = torch.stack([torch.nn.functional.pad(v, (0, width - v.shape[-1], 0, height - v.shape[-2]))
                                       for v in values])
    return {k: v if torch.is_tensor(v) else torch.as_tensor(np.asarray(v)) for k, v in out.items()}


class ImageCollator:
    """Preprocess a list of ``(image, label)`` with the model's image processor, as one batch (see `preprocess`).

    The labels become a ``long`` tensor ``(B,)`` of class ids, or, when they are multi-hot lists (a multi-label
    task), a ``float32`` tensor ``(B, K)``."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, batch: Sequence[tuple[Image.Image, Any]]) -> dict[str, torch.Tensor]:
        inputs = preprocess(self.processor, [b[0] for b in batch])
        labels = [b[1] for b in batch]
        multi_hot = bool(labels) and isinstance(labels[0], (list, tuple))
        return {**inputs, "labels": torch.tensor(labels, dtype=torch.float32 if multi_hot else torch.long)}


def make_loader(dataset, batch_size: int, *, collate_fn, shuffle: bool = False, seed: Optional[int] = None,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """The one way tl-hub builds a ``DataLoader``: shuffled loaders draw their order from ``seed``."""
    generator = torch.Generator().manual_seed(seed) if shuffle and seed is not None else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn,
                                       generator=generator, num_workers=num_workers, persistent_workers=False,
                                       pin_memory=num_workers > 0 and torch.cuda.is_available())


def is_single_image(x: Any) -> bool:
    """True for one image (PIL image, path, bytes, HxW(xC) array); False for a collection of them."""
    return isinstance(x, (str, os.PathLike, bytes, Image.Image, dict)) or (
        isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim in (2, 3)
        and getattr(x, "dtype", None) is not np.dtype(object)
    )


def as_images(inputs: Union[Any, Sequence[Any]]) -> list[Image.Image]:
    """Normalise ``predict`` inputs (one or many PIL images, arrays, paths or bytes) to RGB images."""
    if is_single_image(inputs):
        inputs = [inputs]
    images = []
    for x in inputs:
        try:
            images.append(to_rgb(x))
        except DataError:
            raise
        except Exception as e:
            name = x if isinstance(x, (str, os.PathLike)) else type(x).__name__
            raise DataError(f"Cannot read image {name}: {e}") from None
    return images
