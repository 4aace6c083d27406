"""Validation splits and how far to trust them.

- `stratified_split`: a single-label validation split that keeps at least one image of every class with two or
  more (a class with one image stays in training, with a warning that says why);
- `multilabel_split`: the same guarantee for every label of a multi-label task;
- `split_off_validation` / `check_validation_covers`: the split tl-hub makes when none is given, and the check of
  one the user gave;
- `class_counts`; `is_small_validation` / `small_validation_warning`: below `MIN_TRUSTED_VALIDATION` images the
  validation figures move by several points per image.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from typing import Optional

import numpy as np

from .errors import DataError

logger = logging.getLogger("tl_hub.data")  # the data preparation's messages, under one name


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


def stratified_split(labels: Sequence[int], fraction: float, seed: int, *, names: Optional[Sequence[str]] = None,
                     warn: bool = True) -> tuple[list[int], list[int]]:
    """Indices ``(train, validation)``: each class with >= 2 examples gives ``round(n * fraction)``
    (at least 1) of them to validation, chosen with a seeded shuffle.

    A class with a single example stays in training; with ``warn`` a warning names such classes (by ``names[id]``
    when given)."""
    counts = Counter(int(y) for y in labels)
    single = [names[y] if names is not None else y for y, n in sorted(counts.items()) if n == 1]
    if warn and single and len(counts) > len(single):
        logger.warning("%d class(es) have a single image (%s): they have no validation image, as one image cannot be "
                       "both trained on and validated on; add images of them to measure them.",
                       len(single), single[:10])
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


def multilabel_split(targets: np.ndarray, fraction: float, seed: int, *,
                     names: Optional[Sequence[str]] = None) -> tuple[list[int], list[int]]:
    """Indices ``(train, validation)`` of a multi-label task, ``targets`` an ``(N, K)`` 0/1 array.

    About ``fraction`` of the images go to validation, chosen with a seeded shuffle (the same for a seed). An image
    moves to validation only if every label it shows keeps a positive in training; labels are taken rarest first,
    and one that has >= 2 positive images and none in validation yet gets one (the image that also gives the most
    other such labels theirs), so every such label ends up on both sides (but in rare tangles of labels shared by
    few images; a warning names those). A label with a single positive image keeps it in training and gets a
    warning (by ``names[j]`` when given): no validation image shows it, so its decision threshold falls back to the
    default."""
    y = np.asarray(targets) > 0.5
    n, k = y.shape
    order = list(range(n))
    random.Random(seed).shuffle(order)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    counts = y.sum(0)
    in_val, train_pos, val_pos = np.zeros(n, dtype=bool), counts.copy(), np.zeros(k, dtype=np.int64)

    def movable(rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` may go to validation: every label they show keeps a training positive without them."""
        return ~(y[rows] & (train_pos < 2)).any(1)

    def move(i: int) -> None:
        """Image ``i`` to validation."""
        in_val[i] = True
        train_pos[:] -= y[i]
        val_pos[:] += y[i]

    for j in sorted(range(k), key=lambda j: (counts[j], j)):
        if counts[j] < 2 or val_pos[j]:
            continue
        candidates = np.flatnonzero(y[:, j] & ~in_val)
        candidates = candidates[movable(candidates)]
        if len(candidates):
            gain = (y[candidates] & (counts >= 2) & (val_pos == 0)).sum(1)
            move(int(candidates[np.lexsort((rank[candidates], -gain))[0]]))
    chosen, target = int(in_val.sum()), min(n - 1, round(n * fraction))
    for i in order:
        if chosen >= target:
            break
        if not in_val[i] and movable(np.array([i]))[0]:
            move(i)
            chosen += 1
    name = list(names) if names is not None else list(range(k))
    tangled = [name[j] for j in range(k) if counts[j] >= 2 and not val_pos[j]]
    if tangled:
        logger.warning("%d label(s) have no validation image (%s): each of their images is the last training image "
                       "of another label; add images showing them.", len(tangled), tangled[:10])
    single = [name[j] for j in range(k) if counts[j] == 1]
    if single:
        logger.warning("%d label(s) have a single positive image (%s): it stays in training, so no validation image "
                       "shows them and their decision threshold falls back to the default; add images showing them.",
                       len(single), single[:10])
    return np.flatnonzero(~in_val).tolist(), np.flatnonzero(in_val).tolist()


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


def split_off_validation(train_ds, label_column: str, labels: Sequence[str], fraction: float, seed: int,
                         multi_label: bool = False):
    """``(train, validation)``: a stratified validation split of ``fraction`` of the training images
    (`stratified_split`, or `multilabel_split` in a multi-label task)."""
    if multi_label:
        targets = np.asarray(train_ds[label_column], dtype=np.float32).reshape(-1, len(labels))
        tr_idx, val_idx = multilabel_split(targets, fraction, seed, names=labels)
        reason = f"{len(train_ds)} images and no label shown by two of them"
    else:
        tr_idx, val_idx = stratified_split(train_ds[label_column], fraction, seed, names=labels)
        reason = "every class has fewer than 2 images"
    if not val_idx:
        raise DataError(f"Too few examples to hold out a validation split ({reason}); add images or pass a "
                        "validation dataset.")
    return train_ds.select(tr_idx), train_ds.select(val_idx)


def check_validation_covers(train_ds, val_ds, label_column: str, labels: Sequence[str],
                            multi_label: bool = False) -> None:
    """A validation split that the user gave should show every label (class) that the training images show:
    multi-label, a label without a validation positive is an error (its threshold could not be chosen);
    single-label, a class without validation images is a warning."""
    k = len(labels)
    if multi_label:
        shown = [np.asarray(d[label_column], dtype=np.float32).reshape(-1, k).sum(0) > 0 for d in (train_ds, val_ds)]
    else:
        shown = [np.bincount(np.asarray(d[label_column], dtype=np.int64), minlength=k) > 0 for d in (train_ds, val_ds)]
    missing = [labels[j] for j in range(k) if shown[0][j] and not shown[1][j]]
    if not missing:
        return
    if multi_label:
        raise DataError(
            f"{len(missing)} label(s) have training images but no validation image shows them ({missing[:10]}), so "
            "they cannot be measured nor their decision thresholds tuned; add validation images showing them, or "
            "leave the validation split out so that tl-hub splits one off stratified."
        )
    # single-label: the model still predicts them, and they count in test metrics; say so, and go on
    logger.warning("%d class(es) have training images but none in the validation split (%s), so validation cannot "
                   "measure them (its figures and the epoch kept on them ignore them); add validation images of them, "
                   "or leave the validation split out so that tl-hub splits one off stratified.",
                   len(missing), missing[:10])
