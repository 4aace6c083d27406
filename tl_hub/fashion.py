"""Real photographs-of-things data that ships with tl-hub: a Fashion-MNIST subset (MIT licence, see
``assets/fashion-mnist/NOTICE``).

Fashion-MNIST is 28x28 grayscale pictures of clothing in 10 classes, a real target for an ImageNet base: its
classes are objects ImageNet has relatives of (shirts, sandals, bags), seen in a new style. The package ships the
first 100 images of each class of the original training file (the *pool*: training and validation sets are drawn
from it) and of its test file (the *test* set), built by ``recipes/build_fashion_mnist.py``.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np

from .errors import DataError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SUBSET_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "fashion-mnist", "subset.npz")


@functools.cache
def _arrays() -> dict:
    with np.load(SUBSET_FILE) as f:
        return {k: f[k] for k in f.files}


def pool_size() -> int:
    """Images per class in the shipped pool (training + validation draws)."""
    labels = _arrays()["train_labels"]
    return int(np.bincount(labels).min())


def _dataset(images: np.ndarray, labels: np.ndarray):
    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a).convert("RGB") for a in images], "label": labels.tolist()}, features=features)


def fashion_data(per_class: int, validation_per_class: int = 0, test_per_class: Optional[int] = None,
                 seed: int = 0):
    """``(train, validation, test)`` Fashion-MNIST datasets (``image`` RGB, ``label`` ClassLabel).

    ``per_class`` training and ``validation_per_class`` validation images of each class are a seeded draw from
    the pool (no image in both); the test set is the first ``test_per_class`` (default: all 100) test images of
    each class, the same for every seed. ``validation`` is None when ``validation_per_class`` is 0.
    """
    pool = pool_size()
    if per_class < 1 or validation_per_class < 0 or per_class + validation_per_class > pool:
        raise DataError(f"Fashion-MNIST ships {pool} images per class for training and validation; asked for "
                        f"{per_class} + {validation_per_class}. Ask for at most {pool} per class in all.")
    arrays = _arrays()
    rng = np.random.default_rng(seed)
    train_rows, val_rows, test_rows = [], [], []
    for c in range(len(CLASSES)):
        rows = rng.permutation(np.flatnonzero(arrays["train_labels"] == c))
        train_rows += rows[:per_class].tolist()
        val_rows += rows[per_class:per_class + validation_per_class].tolist()
        test_rows += np.flatnonzero(arrays["test_labels"] == c)[:test_per_class].tolist()
    train_rows, val_rows, test_rows = sorted(train_rows), sorted(val_rows), sorted(test_rows)
    train = _dataset(arrays["train_images"][train_rows], arrays["train_labels"][train_rows])
    validation = (_dataset(arrays["train_images"][val_rows], arrays["train_labels"][val_rows])
                  if validation_per_class else None)
    test = _dataset(arrays["test_images"][test_rows], arrays["test_labels"][test_rows])
    return train, validation, test


def folder_name(label: str) -> str:
    """A class name as a folder name ("T-shirt/top" -> "T-shirt-top")."""
    return label.replace("/", "-")


def example_folder(path: str, per_class: int = 10, test_per_class: int = 20, seed: int = 0,
                   overwrite: bool = False) -> str:
    """Write Fashion-MNIST pictures as a folder of images, the layout tl-hub reads for your own data:
    ``path/train/<class>/<n>.png`` (``per_class`` per class, ``n`` from 0000) and ``path/test/<class>/<n>.png``
    (``test_per_class``); returns ``path``.  A stand-in for your images in the Quickstart, offline.

    The folder is written in one step (a temporary sibling renamed into place); an existing non-empty ``path`` is
    refused unless ``overwrite``.
    """
    from .outputs import atomic_output_dir

    train, _, test = fashion_data(per_class, test_per_class=test_per_class, seed=seed)
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        for split, data in (("train", train), ("test", test)):
            counts = [0] * len(CLASSES)
            for image, label in zip(data["image"], data["label"]):
                folder = os.path.join(tmp, split, folder_name(CLASSES[label]))
                os.makedirs(folder, exist_ok=True)
                image.save(os.path.join(folder, f"{counts[label]:04d}.png"))
                counts[label] += 1
    return path
