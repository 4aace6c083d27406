"""A data audit before training: likely mislabelled images, near-duplicates (and leakage), outliers.

`audit` runs a model's frozen encoder once over every split of the data (through the feature cache that the
recipes share, so auditing again, or training feature extraction afterwards, reuses the features) and reports:

1. **Label issues** (training split): confident learning (Northcutt et al. 2021, the rule of cleanlab's
   ``filter_by="confident_learning"``) on out-of-fold probabilities of the linear probe (`tl_hub.probe`: the
   L2 strength chosen by stratified k-fold cross-validation, every image predicted by the fold that did not train
   on it).  Per class ``j`` the threshold ``t_j`` is the mean probability of ``j`` over the images labelled ``j``;
   an image labelled ``i`` is flagged when some class reaches its threshold and the most probable of those
   classes is ``j != i``, with ``j`` as the suggested label.  Findings are ordered by the margin ``p_j - p_i``.
2. **Near-duplicates** inside the training split and between it and the validation and test splits (leakage):
   see `near_duplicates` for the rule and its measured thresholds.
3. **Outliers**: images far from every class; see `outliers`.

The findings go to ``audit.json`` and one PNG grid per kind (`write_audit`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from .config import ModelSource
from .errors import DataError
from .outputs import atomic_path, check_output_dir, write_json

logger = logging.getLogger(__name__)

FOLDS = 5  # cross-validation folds of the out-of-fold probabilities (fewer when a class has fewer images)
# Near-duplicates (see `near_duplicates`), measured on EfficientNet-Lite0 / Fashion-MNIST (28 px) and on the colour
# images of the tests, and checked by benchmarks/audit.py:
THUMBNAIL = 8  # px: the side of the thumbnails that propose candidate pairs (half-size copies are >= 0.97 there)
CANDIDATE = 0.90  # thumbnail similarity from which a pair is compared in detail
PIXEL_THRESHOLD = 0.98  # detail similarity of a near-duplicate (planted copies >= 0.982, distinct pairs <= 0.974)
DETAIL_SIDE = 64  # px: the detail comparison is at the pair's smaller size, at most this
OUTLIER_FENCE = 3.0  # Tukey's far-out fence: Q3 + 3 IQR of the training images' distances
SHOWN = 16  # findings drawn per PNG grid
JSON_FILE = "audit.json"
FIGURES = {"label_issues": "label_issues.png", "duplicates": "duplicates.png", "outliers": "outliers.png"}


@dataclass
class AuditResult:
    """What `audit` found, and what it cost.

    Attributes:
        label_issues: per flagged training image: ``index`` (in the training split), ``label``, ``suggested``,
            ``self_confidence`` (out-of-fold probability of its label), ``suggested_probability``, ``margin``.
        duplicates: per pair: ``split_a``/``index_a``, ``split_b``/``index_b`` (``train`` first), their labels,
            ``similarity`` (detail, pixels: what decides), ``thumbnail_similarity`` and ``feature_similarity``
            (centred encoder features, for information).
        outliers: per image: ``split``, ``index``, ``label``, ``nearest_class``, ``distance`` (1 - cosine to the
            nearest class mean) and the ``fence`` it is beyond.
        rules: the thresholds used and what was measured to set them (fence, class thresholds, folds, ``C``).
        data: classes, images per split, the model.
        seconds: per step (``encode``, ``label_issues``, ``duplicates``, ``outliers``, ``total``).
        encoder_passes: images run through the encoder over images audited (0 when every feature was cached).
        files: the files written (empty without an output folder).
        features: split -> encoder features ``(N, D)`` (not written to the JSON).
    """

    label_issues: list
    duplicates: list
    outliers: list
    rules: dict
    data: dict
    seconds: dict
    encoder_passes: float
    files: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """Everything but the features, JSON-ready."""
        out = asdict(self)
        out.pop("features")
        out["counts"] = self.counts()
        return out

    def counts(self) -> dict:
        """Findings per kind; duplicates split into inside-train pairs and train-vs-other (leakage) pairs."""
        leaks = sum(1 for d in self.duplicates if d["split_b"] != "train")
        return {"label_issues": len(self.label_issues), "duplicates_in_train": len(self.duplicates) - leaks,
                "leakage_pairs": leaks, "outliers": len(self.outliers)}

    def summary(self) -> str:
        """A few printed lines: counts per finding, cost, where the files are."""
        c = self.counts()
        splits = ", ".join(f"{k} {v}" for k, v in self.data["splits"].items())
        lines = [f"audited {self.data['images']} images ({splits}; {len(self.data['labels'])} classes) with "
                 f"{self.data['model']}",
                 f"likely mislabelled: {c['label_issues']}",
                 f"near-duplicates in train: {c['duplicates_in_train']}; train vs validation/test (leakage): "
                 f"{c['leakage_pairs']}",
                 f"outliers: {c['outliers']}",
                 f"{self.seconds['total']:.1f} s, {self.encoder_passes:.2f} encoder passes"]
        lines += [f"{name}: {path}" for name, path in self.files.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Data and features


def refuse_multi_label(dataset: Any, image_column: Optional[str], label_column: Optional[str]) -> None:
    """One clear error for a multi-label dataset: confident learning here assumes one class per image."""
    from .data import multi_label_column

    column = multi_label_column(dataset, image_column, label_column)
    if column is not None:
        raise DataError(
            f"The label column '{column}' holds a set of labels per image (a multi-label task); the audit finds "
            "label issues of single-label data (one class per image, confident learning over a softmax). Audit a "
            "single-label column (label_column=..., --label-column), or review a multi-label model's most "
            "confident mistakes with `tl-hub evaluate --output-dir`.")


def load_audit_splits(data: Any, validation: Any = None, *, image_column: Optional[str] = None,
                      label_column: Optional[str] = None) -> tuple[dict, dict, str, str, list]:
    """The splits to audit: ``(splits, indices, image_column, label_column, labels)``; ``splits`` maps ``train``
    (and ``validation``, ``test`` when the data has them) to a dataset with its labels mapped onto the training
    labels, ``indices`` each kept row's index in the split as given (undecodable images are skipped)."""
    from .data import (
        align_split,
        check_single_label_training,
        encode_task_labels,
        find_image_column,
        find_label_column,
        load_source,
        pick_splits,
    )

    dataset = load_source(data)
    refuse_multi_label(dataset, image_column, label_column)
    train, val, test = pick_splits(dataset)
    if validation is not None:
        val = pick_splits(load_source(validation))[0]
    if len(train) == 0:
        raise DataError("The training split is empty; give a dataset with labelled images.")
    img_col = find_image_column(train, image_column)
    lbl_col = find_label_column(train, label_column, img_col)
    train, labels = encode_task_labels(train.select_columns([img_col, lbl_col]), lbl_col, False)
    splits = {"train": train}
    for name, ds in (("validation", val), ("test", test)):
        if ds is not None and len(ds):
            splits[name] = align_split(ds, img_col, lbl_col, labels, name)
    indices = {}
    for name in splits:
        splits[name], indices[name] = decodable_rows(splits[name], img_col, name)
    check_single_label_training(splits["train"], lbl_col, labels)
    return splits, indices, img_col, lbl_col, labels


def decodable_rows(ds, image_column: str, name: str) -> tuple[Any, list]:
    """``ds`` without its undecodable images, and the index of each kept row in ``ds``."""
    from .data import drop_undecodable

    column = "__audit_row__"
    kept, skipped = drop_undecodable(ds.add_column(column, list(range(len(ds)))), image_column, name)
    if not skipped:
        return ds, list(range(len(ds)))
    return kept.remove_columns(column), list(kept[column])


def audit_backbone(model: Union[str, ModelSource], labels: Sequence[str]):
    """The encoder to audit with: a trained tl-hub model folder (with ``tl_hub.json``) as trained, its encoder
    included; anything else (a Hub id, a folder, ``tl-hub:efficientnet-lite0``) loaded as the recipes load a base,
    with a new head for ``labels`` (the head is not used: the features are its input)."""
    from .backbone import Backbone, load_backbone, split_model
    from .filenames import INFO_FILE
    from .model_folder import TrainedModel
    from .structure import example_inputs

    source = ModelSource.of(model)
    if os.path.isfile(os.path.join(source.id, INFO_FILE)):
        clf = TrainedModel.load(source).classifier
        parts = split_model(clf.model, example_inputs(clf.model, clf.processor), num_labels=len(clf.labels))
        return Backbone(model=clf.model, processor=clf.processor, parts=parts, source=source.id)
    return load_backbone(source, labels)


def encode_splits(backbone, splits: dict, image_column: str, label_column: str, *, accelerator=None,
                  feature_cache: str = "disk", feature_cache_dir: Optional[str] = None, batch_size: int = 64,
                  progress: bool = False) -> tuple[dict, float]:
    """Every split's head-input features ``(N, D)`` (float32) in one encoder pass through the feature cache, and
    the encoder passes that took (images encoded over images; 0 when all were cached)."""
    from .features import FeatureStore
    from .runtime import make_accelerator

    store = FeatureStore(backbone, accelerator or make_accelerator(), cache=feature_cache,
                         cache_dir=feature_cache_dir, batch_size=batch_size, progress=progress)
    heads = [store.head_path] if store.available else list(backbone.parts.head)
    features = {}
    for name, ds in splits.items():
        cached = store.get_many(ds, image_column, label_column, at=heads, what=f"audit {name}")
        features[name] = torch.cat([c.features[0].flatten(1).float() for c in cached], 1)
    images = sum(len(ds) for ds in splits.values())
    return features, store.computed_examples / max(images, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Label issues


def out_of_fold_probabilities(x: torch.Tensor, y: torch.Tensor, classes: int, *, folds: int = FOLDS,
                              seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Each image's class probabilities from the linear probe of the fold that held it out: ``(probs (N, K),
    info)``.  ``C`` is chosen by the same k-fold cross-validation (`tl_hub.probe.cross_validated_C`'s walk over
    the grid), whose held-out logits at the chosen ``C`` are the probabilities, so no extra fit is needed.
    ``info``: ``C``, the folds used and the cross-validated accuracy."""
    from .probe import C_GRID, PATIENCE, fit_logistic, logit_scores, stratified_folds, walk_grid

    y = y.to(torch.long)
    fold = stratified_folds(y, folds, seed)
    if fold is None:
        raise DataError("A class has a single training image: it cannot be held out and trained on at once, so "
                        "its images get no out-of-fold prediction. Add images of it or remove it.")
    k = int(fold.max()) + 1
    xs = x.double() - x.double().mean(0)
    xs = (xs / (xs.norm() ** 2 / max(xs.numel(), 1)).sqrt().clamp_min(1e-12)).float()
    inits: list = [None] * k

    def held_out(C: float):
        logits = torch.empty((len(y), classes), dtype=torch.float64)
        for f in range(k):
            train, held = fold != f, fold == f
            w, b, _ = fit_logistic(xs[train], y[train], classes, C, init=inits[f])
            inits[f] = (w, b)
            logits[held] = xs[held].double() @ w.T + b
        loss, score = logit_scores(logits, y)
        return (score, -loss), (C, logits, score), {"C": C, "cv_accuracy": score, "cv_loss": loss}

    (C, logits, score), path = walk_grid(C_GRID, held_out, PATIENCE)
    return logits.softmax(-1), {"C": C, "folds": k, "cv_accuracy": score, "path": path}


def label_issues(probs: torch.Tensor, y: torch.Tensor, labels: Sequence[str],
                 indices: Optional[Sequence[int]] = None) -> tuple[list, list]:
    """Confident learning's flagged images (most confident first) and the per-class thresholds ``t_j``.

    ``t_j`` is the mean out-of-fold probability of class ``j`` over the images labelled ``j`` (a class without
    images has none and is never suggested).  An image labelled ``i`` is flagged when ``{j : p_j >= t_j}`` is not
    empty and its most probable class ``j`` differs from ``i``; findings are ordered by ``p_j - p_i``."""
    probs, y = probs.double(), y.to(torch.long)
    k = probs.shape[1]
    counts = torch.bincount(y, minlength=k)
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, y, probs[torch.arange(len(y)), y])
    thresholds = torch.where(counts > 0, sums / counts.clamp_min(1), torch.tensor(float("inf"), dtype=torch.float64))
    confident = probs >= thresholds
    best = torch.where(confident, probs, torch.tensor(-1.0, dtype=torch.float64)).argmax(1)
    flagged = torch.nonzero(confident.any(1) & (best != y)).flatten().tolist()
    found = []
    for i in flagged:
        p_label, p_best = float(probs[i, y[i]]), float(probs[i, best[i]])
        found.append({"index": int(indices[i]) if indices is not None else i, "row": i, "label": labels[int(y[i])],
                      "suggested": labels[int(best[i])], "self_confidence": p_label,
                      "suggested_probability": p_best, "margin": p_best - p_label})
    found.sort(key=lambda f: -f["margin"])
    return found, [None if not torch.isfinite(t) else float(t) for t in thresholds]


# ---------------------------------------------------------------------------------------------------------------------
# Near-duplicates


def thumbnail(image, side: int = THUMBNAIL) -> np.ndarray:
    """``image`` as a ``side x side`` RGB thumbnail with each channel's mean removed, flattened (float64)."""
    from PIL import Image

    a = np.asarray(image.resize((side, side), Image.BILINEAR), dtype=np.float64)
    return (a - a.mean((0, 1), keepdims=True)).ravel()


def detail_similarity(a, b) -> float:
    """The correlation of two images at the smaller one's size (at most `DETAIL_SIDE` px a side), each channel's
    mean removed: 1 for an exact or resized copy, lower as the pictures differ in detail."""
    from PIL import Image

    width, height = min(a.width, b.width, DETAIL_SIDE), min(a.height, b.height, DETAIL_SIDE)
    u, v = (np.asarray(im.resize((width, height), Image.BILINEAR), dtype=np.float64) for im in (a, b))
    u, v = u - u.mean((0, 1)), v - v.mean((0, 1))
    norm = float(np.linalg.norm(u) * np.linalg.norm(v))
    return float((u * v).sum() / norm) if norm > 1e-9 else float(np.array_equal(u, v))


def image_thumbnails(ds, image_column: str) -> np.ndarray:
    """The `thumbnail` of every image of ``ds``, ``(N, 3 * THUMBNAIL**2)``, read in chunks."""
    from .data import images_at

    rows = [thumbnail(im) for start in range(0, len(ds), 256)
            for im in images_at(ds, image_column, range(start, min(start + 256, len(ds))))]
    return np.stack(rows) if rows else np.zeros((0, 3 * THUMBNAIL ** 2))


def unit_rows(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Rows of ``x`` minus ``centre``, scaled to unit length (a zero row stays zero)."""
    x = x - centre
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similar_pairs(a: np.ndarray, b: np.ndarray, threshold: float, same: bool) -> set:
    """``(i, j)`` with ``a[i] . b[j] >= threshold`` (``i < j`` when ``a`` and ``b`` are the same rows),
    computed in blocks of rows."""
    pairs = set()
    for start in range(0, len(a), 1024):
        s = a[start:start + 1024] @ b.T
        for i, j in zip(*np.nonzero(s >= threshold)):
            if not same or start + i < j:
                pairs.add((int(start + i), int(j)))
    return pairs


def near_duplicates(splits: dict, image_column: str, targets: dict, labels: Sequence[str], features: dict,
                    indices: Optional[dict] = None) -> list:
    """Pairs of near-identical images inside the training split, and between it and the other splits (leakage).

    Pairs whose `THUMBNAIL`-px thumbnails (each channel's mean removed, minus the training split's mean thumbnail)
    have a cosine of at least `CANDIDATE` are compared in detail, at the smaller image's size
    (`detail_similarity`); at least `PIXEL_THRESHOLD` is a near-duplicate.  The cosine of the encoder features
    (centred on the training mean) is reported with each pair but decides nothing, because measured, it cannot
    separate resized copies from distinct images: a 28 px Fashion-MNIST image given again at 14 px is upsampled
    to 224 px into a blurred picture whose Lite0 features have a cosine of 0.16-0.60 with the original's, below
    distinct images of the same class (up to 0.86); with the tests' tiny random encoder, distinct images of a
    class reach 0.9989 and a half-size copy 0.9976.  The pixels separate them: on Fashion-MNIST (92,235 pairs of
    distinct images among 430), detail similarity at most 0.974, planted copies (exact, 1/2 and 1/3 size, 2x
    upscaled) at least 0.982; on the tests' colour images distinct pairs stay below 0.15 (see
    ``benchmarks/audit.py`` for the recall and false positives measured on planted copies).

    ``targets``: split -> label ids.  Each pair: its splits and indices (``train`` first; ``row_*``: the rows of
    the datasets given), labels, the three similarities and ``by``."""
    from .data import images_at

    indices = indices or {n: list(range(len(ds))) for n, ds in splits.items()}
    thumbs = {n: image_thumbnails(ds, image_column) for n, ds in splits.items()}
    t_unit = {n: unit_rows(t, thumbs["train"].mean(0)) for n, t in thumbs.items()}
    feats = {n: f.double().numpy() for n, f in features.items()}
    f_unit = {n: unit_rows(f, feats["train"].mean(0)) for n, f in feats.items()}
    found = []
    for other in splits:
        same = other == "train"
        candidates = sorted(similar_pairs(t_unit["train"], t_unit[other], CANDIDATE, same))
        if not candidates:
            continue
        rows_a, rows_b = sorted({i for i, _ in candidates}), sorted({j for _, j in candidates})
        image_a = dict(zip(rows_a, images_at(splits["train"], image_column, rows_a)))
        image_b = dict(zip(rows_b, images_at(splits[other], image_column, rows_b)))
        for i, j in candidates:
            pixels = detail_similarity(image_a[i], image_b[j])
            feature = float(f_unit["train"][i] @ f_unit[other][j])
            if pixels >= PIXEL_THRESHOLD:
                found.append({"split_a": "train", "index_a": indices["train"][i], "split_b": other,
                              "index_b": indices[other][j], "row_a": i, "row_b": j,
                              "label_a": labels[int(targets["train"][i])], "label_b": labels[int(targets[other][j])],
                              "similarity": pixels,
                              "thumbnail_similarity": float(t_unit["train"][i] @ t_unit[other][j]),
                              "feature_similarity": feature})
    found.sort(key=lambda d: (-d["similarity"], -d["feature_similarity"]))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Outliers


def class_mean_distances(u: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor,
                         own: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - cosine to the nearest class mean, that class)`` for unit rows ``u``, from per-class sums of unit
    training rows; with ``own`` (each row's class, ``u`` being those training rows), each row is left out of its
    own class's mean."""
    dots = u @ sums.T  # cosine to a mean = u . sum / |sum|
    sq = (sums * sums).sum(1).expand_as(dots).clone()
    n = counts.double().expand_as(dots).clone()
    if own is not None:
        rows = torch.arange(len(u))
        dots[rows, own] -= 1.0  # u . (sum - u), |sum - u|^2 = |sum|^2 - 2 u . sum + 1
        sq[rows, own] = sq[rows, own] - 2 * (dots[rows, own] + 1.0) + 1.0
        n[rows, own] -= 1
    cos = torch.where(n > 0, dots / sq.clamp_min(1e-12).sqrt(), torch.tensor(-2.0, dtype=dots.dtype))
    best, nearest = cos.max(1)
    return 1.0 - best, nearest


def outliers(features: dict, targets: dict, labels: Sequence[str], indices: Optional[dict] = None,
             fence: float = OUTLIER_FENCE) -> tuple[list, dict]:
    """Images far from every class: ``(findings, rule)``, the farthest first.

    An image's distance is 1 - the cosine between its features and the nearest class mean (features centred on
    the training mean; a training image is left out of its own class's mean).  It is an outlier beyond Tukey's
    far-out fence of the training images' distances, ``Q3 + fence * IQR`` (``fence`` 3 by default).  Why this rule:
    the distance to the nearest class mean is low for a mislabelled image (it sits by its true class), so outliers
    and label issues stay apart, and unlike a k-NN distance it is not lowered by an outlier's own copies; the
    fence is distribution-free and robust (the quartiles ignore up to a quarter of extreme values), and on
    normally distributed distances it lies 4.7 standard deviations above the median, about one image in a
    million, so a clean dataset gets almost no finding whatever its size.  Validation and test images are
    measured against the same fence."""
    indices = indices or {n: list(range(len(f))) for n, f in features.items()}
    centre = features["train"].double().mean(0)
    unit = {n: torch.nn.functional.normalize(f.double() - centre, dim=1) for n, f in features.items()}
    y = torch.as_tensor(targets["train"], dtype=torch.long)
    sums = torch.zeros(len(labels), unit["train"].shape[1], dtype=torch.float64).index_add_(0, y, unit["train"])
    counts = torch.bincount(y, minlength=len(labels))
    distances = {n: class_mean_distances(u, sums, counts, own=y if n == "train" else None) for n, u in unit.items()}
    q1, q3 = np.quantile(distances["train"][0].numpy(), [0.25, 0.75])
    limit = float(q3 + fence * (q3 - q1))
    found = []
    for name, (distance, nearest) in distances.items():
        for i in torch.nonzero(distance > limit).flatten().tolist():
            found.append({"split": name, "index": indices[name][i], "row": i, "label": labels[int(targets[name][i])],
                          "nearest_class": labels[int(nearest[i])], "distance": float(distance[i]), "fence": limit})
    found.sort(key=lambda f: -f["distance"])
    rule = {"fence": limit, "q1": float(q1), "q3": float(q3), "iqr_multiple": fence,
            "median_distance": float(distances["train"][0].median())}
    return found, rule


# ---------------------------------------------------------------------------------------------------------------------
# The audit


def audit(data: Any, model: Union[str, ModelSource], *, output_dir: Optional[str] = None, overwrite: bool = False,
          validation: Any = None, folds: int = FOLDS, image_column: Optional[str] = None,
          label_column: Optional[str] = None, seed: int = 0, batch_size: int = 64, feature_cache: str = "disk",
          feature_cache_dir: Optional[str] = None, accelerator=None, progress: bool = False,
          **options: Any) -> AuditResult:
    """Audit a labelled image dataset with a model's frozen encoder (one encoder pass, through the feature cache):
    likely mislabelled training images with the suggested label, near-duplicates inside the training split and
    between it and the validation and test splits, and outliers (see the module's rules).

    Args:
        data: a ``datasets.Dataset``/``DatasetDict``, an image folder, a saved dataset folder or a Hub id (anything
            `tl_hub.data.prepare_data` takes); single-label.  Its ``validation`` and ``test`` splits are checked for
            leakage.
        model: the encoder: a pretrained model (Hub id, folder, ``tl-hub:efficientnet-lite0``), loaded as the
            recipes load a base, or a trained tl-hub model folder; ``options`` (revision, cache_dir, ...) apply to
            a string.
        output_dir: where to write ``audit.json`` and the PNG grids (created; an existing non-empty folder is
            refused unless ``overwrite``); None writes nothing.
        validation: separate validation data (replaces the dataset's validation split).
        folds: cross-validation folds of the out-of-fold probabilities (at most the smallest class's images).
        feature_cache: where the features are kept, as the recipes' setting (``"disk"``, ``"memory"``).
        feature_cache_dir: the folder of disk caches (shared with the recipes).

    Returns:
        `AuditResult` (``.summary()`` for the printed lines).

    Raises:
        DataError: multi-label data, fewer than two classes, a class with a single training image.
        OutputError: ``output_dir`` exists and is not empty (without ``overwrite``), or cannot be written.
    """
    start = time.perf_counter()
    if output_dir is not None:
        check_output_dir(output_dir, overwrite=overwrite, what="Audit output")
    if folds < 2:
        raise DataError(f"`folds` should be at least 2 (a probe predicts the images it did not see), got {folds}.")
    source = ModelSource.of(model, **options)
    splits, indices, img_col, lbl_col, labels = load_audit_splits(data, validation, image_column=image_column,
                                                                  label_column=label_column)
    targets = {n: torch.as_tensor(ds[lbl_col], dtype=torch.long) for n, ds in splits.items()}
    smallest, seconds = smallest_class(targets["train"], labels, folds), {}
    features, passes = encode_splits(audit_backbone(source, labels), splits, img_col, lbl_col, accelerator=accelerator,
                                     feature_cache=feature_cache, feature_cache_dir=feature_cache_dir,
                                     batch_size=batch_size, progress=progress)
    seconds["encode"], tick = time.perf_counter() - start, time.perf_counter()
    probs, probe = out_of_fold_probabilities(features["train"], targets["train"], len(labels), folds=folds, seed=seed)
    issues, class_thresholds = label_issues(probs, targets["train"], labels, indices["train"])
    seconds["label_issues"], tick = time.perf_counter() - tick, time.perf_counter()
    pairs = near_duplicates(splits, img_col, targets, labels, features, indices)
    seconds["duplicates"], tick = time.perf_counter() - tick, time.perf_counter()
    far, fence = outliers(features, targets, labels, indices)
    seconds["outliers"] = time.perf_counter() - tick
    rules = audit_rules(labels, class_thresholds, smallest, probe, fence)
    data_info = {"model": source.id, "labels": labels, "splits": {n: len(ds) for n, ds in splits.items()},
                 "images": sum(len(ds) for ds in splits.values()), "feature_dim": int(features["train"].shape[1])}
    seconds["total"] = time.perf_counter() - start
    result = AuditResult(issues, pairs, far, rules, data_info, seconds, passes, features=features)
    if output_dir is not None:
        write_audit(result, splits, img_col, output_dir)
    return result


def audit_rules(labels: Sequence[str], class_thresholds: list, smallest: dict, probe: dict, fence: dict) -> dict:
    """The rules and thresholds of an audit, with what was measured on this data, for the JSON."""
    return {"label_issues": {"rule": "confident learning (cleanlab filter_by='confident_learning')",
                             "class_thresholds": dict(zip(labels, class_thresholds)), "smallest_class": smallest,
                             **{k: v for k, v in probe.items() if k != "path"}, "probe_path": probe["path"]},
            "duplicates": {"thumbnail_side": THUMBNAIL, "candidate": CANDIDATE, "pixel_threshold": PIXEL_THRESHOLD,
                           "detail_side": DETAIL_SIDE},
            "outliers": {"rule": "1 - cosine to the nearest class mean > Q3 + 3 IQR (training images)", **fence}}


def smallest_class(y: torch.Tensor, labels: Sequence[str], folds: int) -> dict:
    """The training class with the fewest images (of those that have any); a single image is an error, fewer
    than ``folds`` images means as many folds as it has (logged)."""
    counts = torch.bincount(y, minlength=len(labels))
    present = torch.nonzero(counts).flatten()
    c = int(present[counts[present].argmin()])
    n = int(counts[c])
    if n < 2:
        raise DataError(f"Class '{labels[c]}' has a single training image: confident learning predicts every "
                        "image with a probe trained without it, which needs at least 2 images per class (more "
                        "than the folds, 5, for the full cross-validation). Add images of it or remove it.")
    if n < folds:
        logger.warning("Class '%s' has %d training images, fewer than the %d folds: the out-of-fold probabilities "
                       "use %d folds (each probe then trains on %d%% of the images).", labels[c], n, folds, n,
                       round(100 * (n - 1) / n))
    return {"label": labels[c], "images": n, "folds": min(n, folds)}


# ---------------------------------------------------------------------------------------------------------------------
# Files


def write_audit(result: AuditResult, splits: dict, image_column: str, output_dir: str) -> dict:
    """Write ``audit.json`` and the PNG grids (the first `SHOWN` findings of each kind) into ``output_dir``
    (created), each file atomically; returns ``{name: path}`` (also set on ``result.files``)."""
    from .data import images_at

    os.makedirs(output_dir, exist_ok=True)
    files = {name: os.path.abspath(os.path.join(output_dir, f)) for name, f in FIGURES.items()}
    files["json"] = os.path.abspath(os.path.join(output_dir, JSON_FILE))
    result.files = files

    def image(split: str, row: int):
        return images_at(splits[split], image_column, [row])[0]

    issues = [(image("train", f["row"]),
               f"#{f['index']} {f['label']}\n-> {f['suggested']} ({f['suggested_probability']:.0%})")
              for f in result.label_issues[:SHOWN]]
    pairs = [(side_by_side(image(d["split_a"], d["row_a"]), image(d["split_b"], d["row_b"])),
              f"train #{d['index_a']} / {d['split_b']} #{d['index_b']}\nsimilarity {d['similarity']:.3f}")
             for d in result.duplicates[:SHOWN]]
    far = [(image(o["split"], o["row"]), f"{o['split']} #{o['index']} {o['label']}\ndistance {o['distance']:.2f}")
           for o in result.outliers[:SHOWN]]
    plot_findings(issues, files["label_issues"], f"Likely mislabelled ({len(result.label_issues)}): label -> suggested")
    plot_findings(pairs, files["duplicates"], f"Near-duplicates ({len(result.duplicates)})")
    plot_findings(far, files["outliers"], f"Outliers ({len(result.outliers)}): far from every class")
    write_json(files["json"], result.to_dict())
    return files


def side_by_side(a, b, height: int = 96):
    """Two images next to each other at one height, with a white gap."""
    from PIL import Image

    a, b = (im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height)) for im in (a, b))
    out = Image.new("RGB", (a.width + b.width + 6, height), (255, 255, 255))
    out.paste(a, (0, 0))
    out.paste(b, (a.width + 6, 0))
    return out


def plot_findings(cells: Sequence[tuple], path: str, title: str) -> str:
    """A grid of ``(image, caption)`` cells as a PNG at ``path``, written atomically (`tl_hub.plots.image_grid`)."""
    from .plots import image_grid

    with atomic_path(path) as tmp:
        image_grid(cells, tmp, title)
    return path
