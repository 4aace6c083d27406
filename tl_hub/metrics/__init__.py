"""Classification metrics through the `evaluate` API, from modules shipped in this package (offline).

``evaluate.load("accuracy")`` fetches a script from the Hub; `load_metric` loads the same kind of module
from ``tl_hub/metrics/<name>/<name>.py`` instead, so metrics work without a network.  As on the Hub, the
accuracy, precision, recall and F1 modules take the config ``"multilabel"`` (0/1 indicator rows, computed per label
as scikit-learn does on indicator matrices), and ``average_precision`` ranks per-label scores.

- `classification_metrics`: accuracy, macro-F1 and balanced accuracy of single-label predictions.
- `class_report`: per-class precision, recall, F1, support and the confusion matrix.
- `choose_thresholds`: per label, the decision threshold with the best F1 on validation scores.
- `multilabel_metrics`: mAP, F1 (macro, micro), micro precision and recall, subset and per-entry accuracy of
  multi-label scores at given thresholds, optionally per label.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Optional

import numpy as np

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = ("accuracy", "f1", "precision", "recall", "confusion_matrix", "average_precision")
CONFIGS = ("default", "multilabel")


def label_metric_info(description: str, inputs_description: str, config_name: str = "default"):
    """The ``evaluate.MetricInfo`` of a metric over label predictions and references (used by the shipped metric
    modules): integer label ids, or with ``config_name="multilabel"`` rows of 0/1 label indicators.

    Args:
        description: what the metric computes.
        inputs_description: its other arguments, what it returns and an example.
        config_name: ``"default"`` (one label id per example) or ``"multilabel"``.

    Returns:
        The module's ``evaluate.MetricInfo``.
    """
    import datasets
    import evaluate

    if config_name not in CONFIGS:
        raise ValueError(f"config_name should be one of {', '.join(CONFIGS)}, got {config_name!r}")
    if config_name == "multilabel":
        value = datasets.Sequence(datasets.Value("int64"))
        args = ("\nArgs:\n    predictions (`list[list[int]]`): predicted 0/1 label indicators, one row per example.\n"
                "    references (`list[list[int]]`): true 0/1 label indicators.")
    else:
        value = datasets.Value("int64")
        args = ("\nArgs:\n    predictions (`list[int]`): predicted label ids.\n"
                "    references (`list[int]`): true label ids.")
    return evaluate.MetricInfo(description=description, citation="", inputs_description=args + inputs_description,
                               features=datasets.Features({"predictions": value, "references": value}))


def indicator_matrix(rows, name: str = "references") -> np.ndarray:
    """Rows of 0/1 label indicators as an (N, K) bool array, checked (``name`` is the argument's, for the error)."""
    a = np.asarray(rows)
    if a.size == 0:
        return np.zeros((len(a), a.shape[1] if a.ndim == 2 else 0), dtype=bool)
    if a.ndim != 2 or not ((a == 0) | (a == 1)).all():
        raise ValueError(f"multilabel {name} should be rows of 0/1 label indicators, got shape {a.shape}")
    return a.astype(bool)


def indicator_rows(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    """``predictions`` and ``references`` as (N, K) bool arrays of label indicators, checked to be 0/1 rows of the
    same shape."""
    p, r = indicator_matrix(predictions, "predictions"), indicator_matrix(references, "references")
    if p.shape != r.shape:
        raise ValueError(f"predictions {p.shape} and references {r.shape} should have the same shape")
    return p, r


def score_rows(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as an (N, K) float array and ``targets`` as (N, K) bool label indicators, checked to match."""
    t = indicator_matrix(targets, "targets")
    s = np.asarray(scores, dtype=float)
    if s.size == 0:
        s = s.reshape(t.shape)
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} should have the same (examples, labels) shape")
    return s, t


def per_class_counts(predictions, references, labels=None):
    """True positives, false positives and false negatives per class of ``labels`` (default: the classes in
    predictions or references), as float arrays."""
    p, r = np.asarray(predictions), np.asarray(references)
    labels = np.union1d(p, r) if labels is None else np.asarray(labels)
    tp = np.array([np.sum((p == c) & (r == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((p == c) & (r != c)) for c in labels], dtype=float)
    fn = np.array([np.sum((p != c) & (r == c)) for c in labels], dtype=float)
    return tp, fp, fn


def multilabel_counts(predictions, references, labels=None):
    """True positives, false positives and false negatives per label (column) of 0/1 indicator rows, as float
    arrays; ``labels`` picks columns by index (default: all)."""
    p, r = indicator_rows(predictions, references)
    if labels is not None:
        p, r = p[:, list(labels)], r[:, list(labels)]
    tp = (p & r).sum(0).astype(float)
    return tp, p.sum(0) - tp, r.sum(0) - tp


def label_counts(predictions, references, labels=None, config_name: str = "default"):
    """`per_class_counts` of label ids, or `multilabel_counts` of indicator rows with ``config_name="multilabel"``
    (the counts behind the precision, recall and F1 modules)."""
    counts = multilabel_counts if config_name == "multilabel" else per_class_counts
    return counts(predictions, references, labels)


def averaged(numerator, denominator, support, average):
    """Per-class ratios ``numerator / denominator`` (0 where the denominator is 0), as a list (``average=None``) or
    averaged: "macro", "weighted" (by ``support``) or "micro" (ratio of the sums)."""
    if average == "micro":
        return float(numerator.sum() / denominator.sum()) if denominator.sum() else 0.0
    per_class = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    if average is None:
        return per_class.tolist()
    if average == "weighted":
        return float(np.sum(per_class * support) / support.sum()) if support.sum() else 0.0
    if average != "macro":
        raise ValueError(f"average should be 'macro', 'micro', 'weighted' or None, got {average!r}")
    return float(per_class.mean()) if len(per_class) else 0.0


def metric_path(name: str) -> str:
    """The file of the shipped metric module ``name`` (one of `AVAILABLE`)."""
    if name not in AVAILABLE:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(AVAILABLE)}.")
    return os.path.join(METRICS_DIR, name, f"{name}.py")


def load_metric(name: str, config_name: Optional[str] = None):
    """``evaluate.load`` of a shipped metric module, cached per process and per ``(name, config_name)``.

    Args:
        name: one of `AVAILABLE`.
        config_name: the module's config, e.g. ``"multilabel"`` for accuracy, precision, recall and F1 over 0/1
            indicator rows (None: the default config).

    Returns:
        The ``evaluate.Metric``.
    """
    return _load_metric(name, config_name or "default")


@functools.cache
def _load_metric(name: str, config_name: str):
    import evaluate

    return evaluate.load(metric_path(name), config_name, keep_in_memory=True)


def classification_metrics(predictions: Sequence[int], references: Sequence[int]) -> dict:
    """``{"accuracy": ..., "f1": macro-F1, "balanced_accuracy": ...}``.  The macro-F1 runs over the classes that
    occur in the references or predictions (as in scikit-learn), so a class absent from a small split does not count
    as 0; the balanced accuracy is the macro recall over the classes in the references (scikit-learn's
    ``balanced_accuracy_score``)."""
    acc = load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]
    f1 = load_metric("f1").compute(
        predictions=predictions, references=references, average="macro"
    )["f1"]
    balanced = load_metric("recall").compute(predictions=predictions, references=references, average="macro",
                                             labels=sorted(set(references)))["recall"]
    return {"accuracy": acc, "f1": f1, "balanced_accuracy": balanced}


def class_report(predictions: Sequence[int], references: Sequence[int], labels: Sequence[str]) -> dict:
    """Per-class precision, recall, F1 and support for every label (by name, in label-id order), and the confusion
    matrix (rows: true labels, columns: predicted labels), through the shipped `evaluate` modules."""
    ids = list(range(len(labels)))
    scores = {name: load_metric(name).compute(predictions=predictions, references=references, average=None,
                                              labels=ids)[name] for name in ("precision", "recall", "f1")}
    matrix = load_metric("confusion_matrix").compute(predictions=predictions, references=references,
                                                     labels=ids)["confusion_matrix"]
    per_class = {label: {"precision": scores["precision"][i], "recall": scores["recall"][i], "f1": scores["f1"][i],
                         "support": int(sum(matrix[i]))} for i, label in enumerate(labels)}
    return {"per_class": per_class, "confusion_matrix": matrix}


def ranked_columns(scores, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each label (column) ranked by descending score, all labels in one sort (behind `choose_thresholds` and the
    ``average_precision`` module).

    Args:
        scores: (N, K) scores.
        targets: (N, K) 0/1 indicators.

    Returns:
        ``(sorted_scores, true_positives, cut)``, each (N, K): the scores of each column in descending order; the
        positives among the top ``i + 1`` of a column (its true positives when those are predicted positive); and
        whether a threshold can cut after row ``i`` (the last row of a run of tied scores).
    """
    s, t = score_rows(scores, targets)
    order = np.argsort(-s, axis=0, kind="stable")
    s = np.take_along_axis(s, order, axis=0)
    true_positives = np.cumsum(np.take_along_axis(t, order, axis=0), axis=0, dtype=float)
    cut = np.ones(s.shape, dtype=bool)
    cut[:-1] = s[:-1] != s[1:]
    return s, true_positives, cut


def per_label_average_precision(scores, targets):
    """The average precision of each column of ``scores`` against 0/1 ``targets`` (NaN without positives), and
    the positives per column."""
    s, true_positives, cut = ranked_columns(scores, targets)
    n = len(s)
    if n == 0:
        return np.full(s.shape[1], np.nan), np.zeros(s.shape[1])
    precision = true_positives / np.arange(1, n + 1)[:, None]
    # each row takes the precision at the end of its run of tied scores (where a threshold can cut)
    ends = np.minimum.accumulate(np.where(cut, np.arange(n)[:, None], n - 1)[::-1], axis=0)[::-1]
    is_positive = np.diff(true_positives, axis=0, prepend=0.0)
    positives = true_positives[-1]
    total = np.sum(is_positive * np.take_along_axis(precision, ends, axis=0), axis=0)
    return np.divide(total, positives, out=np.full_like(total, np.nan), where=positives > 0), positives


def mean_average_precision(scores, targets) -> float:
    """The macro mean of `per_label_average_precision` over the labels with a positive (NaN when none has one),
    straight from numpy: for choices made many times on the same data (a head's regularisation path)."""
    per_label, positives = per_label_average_precision(np.asarray(scores, dtype=float), np.asarray(targets))
    return float(per_label[positives > 0].mean()) if (positives > 0).any() else float("nan")


def choose_thresholds(scores, targets, *, default: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """Per label, the decision threshold (predict ``scores >= threshold``) with the best F1 on these (validation)
    scores.

    The candidates are the midpoints between consecutive distinct scores of a label, and one below its smallest
    score (halfway to 0 for probabilities), so a chosen threshold sits between scores; among equally good ones the
    highest wins (fewer false positives).  All labels are done at once, with one sort.

    Args:
        scores: (N, K) probabilities.
        targets: (N, K) 0/1 true labels.
        default: the threshold of a label without any positive in ``targets`` (its F1 cannot guide the choice).

    Returns:
        ``(thresholds, fell_back)``: a (K,) float array, and the indices of the labels given ``default``.
    """
    s, true_positives, cut = ranked_columns(scores, targets)
    n, k = s.shape
    positives = true_positives[-1] if n else np.zeros(k)
    thresholds = np.full(k, float(default))
    if n:
        predicted = np.arange(1, n + 1, dtype=float)[:, None]
        f1 = np.where(cut, 2 * true_positives / (predicted + positives), -1.0)
        best = np.argmax(f1, axis=0)  # the first best: the fewest predicted positives, the highest threshold
        columns = np.arange(k)
        lowest_kept = s[best, columns]
        below = np.where(best + 1 < n, s[np.minimum(best + 1, n - 1), columns], np.minimum(s[-1], 0.0))
        middle = (lowest_kept + below) / 2
        thresholds = np.where(middle > below, middle, lowest_kept)  # rounding can't let `below` through
    fell_back = np.flatnonzero(positives == 0)
    thresholds[fell_back] = default
    return thresholds, fell_back.tolist()


def multilabel_metrics(scores, targets, thresholds=None, labels: Optional[Sequence[str]] = None) -> dict:
    """Metrics of multi-label scores, through the shipped modules: the predictions are ``scores >= thresholds``.

    Args:
        scores: (N, K) probabilities.
        targets: (N, K) 0/1 true labels.
        thresholds: (K,) decision thresholds (default 0.5 for every label), e.g. from `choose_thresholds`.
        labels: the K label names; given, the result also has ``"per_label"``.

    Returns:
        ``{"mAP": macro average precision (over the labels with a positive), "f1": macro-F1 (over all K labels),
        "f1_macro", "f1_micro", "precision_micro", "recall_micro", "accuracy": subset accuracy (the whole label set
        right), "label_accuracy": accuracy over all (example, label) entries}``, and with ``labels``
        ``"per_label": {name: {"precision", "recall", "f1", "average_precision" (None without positives),
        "support" (positives), "threshold"}}``.

    Raises:
        ValueError: no example, shapes that don't match, targets that aren't 0/1.
    """
    s, t = score_rows(scores, targets)
    t, k = t.astype(np.int64), s.shape[1]
    if len(s) == 0:
        raise ValueError("multilabel_metrics needs at least one example, got none")
    thresholds = np.full(k, 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
    if thresholds.shape != (k,):
        raise ValueError(f"thresholds should have one value per label ({k}), got shape {thresholds.shape}")
    p = (s >= thresholds).astype(np.int64)
    rows = {"predictions": p.tolist(), "references": t.tolist()}

    def label_score(name, average):
        return load_metric(name, "multilabel").compute(**rows, average=average)[name]

    f1_macro = label_score("f1", "macro")
    out = {"mAP": load_metric("average_precision").compute(predictions=s.tolist(), references=rows["references"],
                                                          average="macro")["average_precision"],
           "f1": f1_macro, "f1_macro": f1_macro, "f1_micro": label_score("f1", "micro"),
           "precision_micro": label_score("precision", "micro"), "recall_micro": label_score("recall", "micro"),
           "accuracy": load_metric("accuracy", "multilabel").compute(**rows)["accuracy"],
           "label_accuracy": load_metric("accuracy").compute(predictions=p.ravel().tolist(),
                                                             references=t.ravel().tolist())["accuracy"]}
    if labels is not None:
        if len(labels) != k:
            raise ValueError(f"labels should name the {k} labels, got {len(labels)} names")
        per_label = {name: label_score(name, None) for name in ("precision", "recall", "f1")}
        per_label["average_precision"] = load_metric("average_precision").compute(
            predictions=s.tolist(), references=rows["references"], average=None)["average_precision"]
        support = t.sum(0).tolist()
        out["per_label"] = {name: {**{m: values[i] for m, values in per_label.items()}, "support": support[i],
                                   "threshold": float(thresholds[i])} for i, name in enumerate(labels)}
    return out
