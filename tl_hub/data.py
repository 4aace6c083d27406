"""Datasets in, batches for the model out.

- `load_source`: a ``datasets.Dataset``/``DatasetDict``, a ``save_to_disk`` folder, an image folder
  (``class_name/xxx.jpg``) or a Hub dataset id.
- `prepare_data`: finds the image and label columns, builds the label names, removes undecodable
  images (with a warning that counts them), and makes a stratified validation split when none exists.
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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import DataError, first_line
from .paths import looks_local, not_found

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
            folder laid out as ``<class>/<image>`` (optionally under ``train/``, ``validation/``, ``test/``);
            or a Hub dataset id such as ``"beans"``.

    Raises:
        DataError: the folder holds no images, the id cannot be loaded.
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
        if "label" not in first.column_names:  # imagefolder infers labels only from >= 2 class folders
            classes = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
            raise DataError(
                f"The folder '{path}' has images of {len(classes)} class folder(s) {classes[:5]}; a classifier "
                "needs at least two. Lay it out as <folder>/<class name>/<image> with one folder per class."
            )
        return data
    if os.path.exists(path):
        raise DataError(f"'{path}' is a file; pass a folder of images, a saved dataset folder or a Hub dataset id.")
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


# ---------------------------------------------------------------------------------------------------------------------
# Splits


def class_counts(labels, names) -> tuple[dict, dict, list]:
    """Examples per class, the classes that have any, and a warning for the empty ones."""
    counts = Counter(labels)
    per_class = {names[i]: counts.get(i, 0) for i in range(len(names))}
    present = {n: c for n, c in per_class.items() if c > 0}
    empty = [n for n, c in per_class.items() if c == 0]
    warnings = [f"{len(empty)} class(es) have no examples ({empty[:5]}): a model cannot learn them; add images or "
                "remove them from the label set. They are left out of the measurements."] if empty else []
    if len(present) < 2:
        raise DataError(f"Only {len(present)} class has examples ({list(present)}); a classifier needs at least two.")
    return per_class, present, warnings


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(train, validation)``: each class with >= 2 examples gives ``round(n * fraction)``
    (at least 1) of them to validation, chosen with a seeded shuffle."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    train, val = [], []
    for y in sorted(by_class):
        idx = by_class[y][:]
        rng.shuffle(idx)
        k = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


# below this many validation images, the validation metrics (and what is chosen on them: the head's
# regularisation, the kept epoch) move by several points from one image to the next
MIN_TRUSTED_VALIDATION = 30


def is_small_validation(images: Optional[int]) -> bool:
    """Whether ``images`` validation images are too few to choose on directly (False when unknown)."""
    return images is not None and images < MIN_TRUSTED_VALIDATION


def small_validation_warning(images: Optional[int]) -> Optional[str]:
    """What to say when ``images`` validation images are too few to trust (None when they are enough or unknown)."""
    if not is_small_validation(images):
        return None
    return (f"The validation split has only {images} images, so its metrics and the epoch kept on them move by "
            f"{100 / max(images, 1):.0f} points per image (so a linear head's regularisation is chosen by "
            f"cross-validation on the training and validation images instead, and an epoch is judged on the mean of "
            f"its and the previous epoch's validation figures): give a validation split of at least "
            f"{MIN_TRUSTED_VALIDATION} images, or judge the model on a test split.")


@dataclass
class PreparedData:
    """Training-ready splits with a shared label set."""

    train: Any
    validation: Any
    test: Optional[Any]
    labels: list[str]
    image_column: str
    label_column: str
    skipped: int = 0

    def train_size(self) -> int:
        """Training examples in one pass (a streamed split knows it otherwise, see `tl_hub.streaming`)."""
        return len(self.train)

    def validation_size(self) -> Optional[int]:
        """Validation examples (None where a stream does not know)."""
        return len(self.validation)

    def summary(self) -> str:
        counts = Counter(self.train[self.label_column])
        per_class = f"{min(counts.values())}-{max(counts.values())}" if counts else "0"
        return (f"{len(self.labels)} classes; train {len(self.train)} ({per_class} per class), "
                f"validation {len(self.validation)}" + (f", test {len(self.test)}" if self.test is not None else ""))


def pick_splits(data) -> tuple[Any, Optional[Any], Optional[Any]]:
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
                  label_column: Optional[str] = None):
    """The splits of ``train`` (``validation`` replacing its validation split if given), with the training split's
    columns found, its labels encoded and its undecodable images dropped: ``(train, validation, test,
    image_column, label_column, labels, skipped)``; validation and test are as loaded."""
    train_ds, val_ds, test_ds = pick_splits(load_source(train))
    if validation is not None:
        val_ds, _, _ = pick_splits(load_source(validation))
    if len(train_ds) == 0:
        raise DataError("The training split is empty; give a dataset with labelled images.")
    img_col = find_image_column(train_ds, image_column)
    lbl_col = find_label_column(train_ds, label_column, img_col)
    train_ds, labels = encode_labels(train_ds.select_columns([img_col, lbl_col]), lbl_col)
    train_ds, skipped = drop_undecodable(train_ds, img_col)
    return train_ds, val_ds, test_ds, img_col, lbl_col, labels, skipped


def prepare_data(
    train: Any,
    validation: Any = None,
    *,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    validation_size: float = 0.2,
    seed: int = 42,
) -> PreparedData:
    """Resolve columns and labels and produce train / validation (/ test) splits.

    Raises:
        DataError: empty data, unknown columns, fewer than two classes, missing labels.
    """
    train_ds, val_ds, test_ds, img_col, lbl_col, labels, skipped = load_labelled(
        train, validation, image_column=image_column, label_column=label_column)
    present = set(train_ds[lbl_col])
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
    if val_ds is None:
        tr_idx, val_idx = stratified_split(train_ds[lbl_col], validation_size, seed)
        if not val_idx:
            raise DataError(
                "Too few examples to hold out a validation split (every class has fewer than 2 images); "
                "add images or pass a validation dataset."
            )
        train_ds, val_ds = train_ds.select(tr_idx), train_ds.select(val_idx)
    else:
        val_ds = align_split(val_ds, img_col, lbl_col, labels, "validation")
        val_ds, s = drop_undecodable(val_ds, img_col, "validation")
        skipped += s
    if test_ds is not None:
        test_ds = align_split(test_ds, img_col, lbl_col, labels, "test")
    return PreparedData(train_ds, val_ds, test_ds, labels, img_col, lbl_col, skipped)


def align_split(ds, image_column: str, label_column: str, labels: Sequence[str], what: str):
    if len(ds) == 0:
        raise DataError(f"The {what} split is empty.")
    for col, kind in ((image_column, "image"), (label_column, "label")):
        if col not in ds.column_names:
            raise DataError(
                f"The {what} split has no {kind} column '{col}' (its columns: {ds.column_names})."
            )
    ds = ds.select_columns([image_column, label_column])
    ds, _ = encode_labels(ds, label_column, labels)
    return ds


def prepare_eval_data(source: Any, labels: Sequence[str], *, image_column: Optional[str] = None,
                      label_column: Optional[str] = None, split: Optional[str] = None, fallback: bool = False):
    """An evaluation dataset mapped onto the model's ``labels``; its test split by default.

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
    ds = align_split(data, img_col, lbl_col, labels, "evaluation")
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.examples * self.passes

    def rng(self, index: int) -> random.Random:
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
        return image, int(label) if label is not None else -1

    def __getitem__(self, index: int):
        row = self.ds[int(index) % len(self.ds)]
        return self._item(index, row[self.image_column], row[self.label_column] if self.label_column else None)

    def __getitems__(self, indices: Sequence[int]):
        """Fetch a whole batch in one read (the DataLoader calls this instead of one ``__getitem__`` per item)."""
        indices = [int(i) for i in indices]
        rows = self.ds[[i % len(self.ds) for i in indices]]
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
    """Preprocess a list of ``(image, label)`` with the model's image processor, as one batch (see `preprocess`)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, batch: Sequence[tuple[Image.Image, int]]) -> dict[str, torch.Tensor]:
        inputs = preprocess(self.processor, [b[0] for b in batch])
        return {**inputs, "labels": torch.tensor([b[1] for b in batch], dtype=torch.long)}


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
