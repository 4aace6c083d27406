"""Classification metrics through the `evaluate` API, from modules shipped in this package (offline).

``evaluate.load("accuracy")`` fetches a script from the Hub; `load_metric` loads the same kind of module
from ``tl_hub/metrics/<name>/<name>.py`` instead, so metrics work without a network.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = ("accuracy", "f1")


def metric_path(name: str) -> str:
    if name not in AVAILABLE:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(AVAILABLE)}.")
    return os.path.join(METRICS_DIR, name, f"{name}.py")


@functools.lru_cache(maxsize=None)
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
