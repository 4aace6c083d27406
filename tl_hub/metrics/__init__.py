"""Classification metrics through the `evaluate` API, from modules shipped in this package (offline).

``evaluate.load("accuracy")`` fetches a script from the Hub; `load_metric` loads the same kind of module
from ``tl_hub/metrics/<name>/<name>.py`` instead, so metrics work without a network.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = ("accuracy", "f1")


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
