"""Classification metrics through the `evaluate` API, from modules shipped in this package (offline).

``evaluate.load("accuracy")`` fetches a script from the Hub; `load_metric` loads the same kind of module
from ``tl_hub/metrics/<name>/<name>.py`` instead, so metrics work without a network.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = ("accuracy", "f1", "precision", "recall", "confusion_matrix")


def label_metric_info(description: str, inputs_description: str):
    """The ``evaluate.MetricInfo`` of a metric over integer label predictions and references (used by the shipped
    metric modules); ``inputs_description`` documents its other arguments, what it returns and an example."""
    import datasets
    import evaluate

    inputs_description = ("\nArgs:\n    predictions (`list[int]`): predicted label ids.\n"
                          "    references (`list[int]`): true label ids." + inputs_description)
    return evaluate.MetricInfo(
        description=description, citation="", inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
    )


def per_class_counts(predictions, references, labels=None):
    """True positives, false positives and false negatives per class of ``labels`` (default: the classes in
    predictions or references), as float arrays."""
    import numpy as np

    p, r = np.asarray(predictions), np.asarray(references)
    labels = np.union1d(p, r) if labels is None else np.asarray(labels)
    tp = np.array([np.sum((p == c) & (r == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((p == c) & (r != c)) for c in labels], dtype=float)
    fn = np.array([np.sum((p != c) & (r == c)) for c in labels], dtype=float)
    return tp, fp, fn


def averaged(numerator, denominator, support, average):
    """Per-class ratios ``numerator / denominator`` (0 where the denominator is 0), as a list (``average=None``) or
    averaged: "macro", "weighted" (by ``support``) or "micro" (ratio of the sums)."""
    import numpy as np

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
    if name not in AVAILABLE:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(AVAILABLE)}.")
    return os.path.join(METRICS_DIR, name, f"{name}.py")


@functools.cache
def load_metric(name: str):
    """``evaluate.load`` of a shipped metric module (cached per process)."""
    import evaluate

    return evaluate.load(metric_path(name), keep_in_memory=True)


def classification_metrics(predictions: Sequence[int], references: Sequence[int]) -> dict:
    """``{"accuracy": ..., "f1": macro-F1}``; the macro average runs over the classes that occur in the
    references or predictions (as in scikit-learn), so a class absent from a small split does not count as 0."""
    acc = load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]
    f1 = load_metric("f1").compute(
        predictions=predictions, references=references, average="macro"
    )["f1"]
    return {"accuracy": acc, "f1": f1}


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
