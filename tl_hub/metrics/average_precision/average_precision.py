"""Average precision of per-label scores (an `evaluate` metric module shipped with tl-hub, so it loads offline
with ``evaluate.load(path)``): for each label (column), the precision at each distinct score threshold, weighted by
the recall it adds, as scikit-learn's ``average_precision_score`` computes it (step-wise, tied scores cut together).
All labels are ranked at once (one sort), so it runs on e.g. 10,000 examples x 100 labels."""

import datasets
import evaluate
import numpy as np

from tl_hub.metrics import per_label_average_precision

_DESCRIPTION = "AP = sum over thresholds of (R_n - R_(n-1)) * P_n, per label, then averaged."
_KWARGS = """
Args:
    predictions (`list[list[float]]`): a score per label, one row per example (higher: more likely positive).
    references (`list[list[int]]`): the true 0/1 label indicators, same shape.
    average (`str`, defaults to `"macro"`): "macro" (the mean over the labels with at least one positive reference),
        "weighted" (that mean weighted by the positives), "micro" (all entries flattened into one ranking) or None
        (per label).
Returns:
    average_precision (`float` or `list[float | None]`): per label, None for a label without positives; NaN when
        no label (no entry, for "micro") has a positive.
Example:
    >>> evaluate.load(path).compute(predictions=[[0.9, 0.2], [0.4, 0.8], [0.6, 0.1]],
    ...                             references=[[1, 0], [0, 1], [1, 0]], average=None)
    {'average_precision': [1.0, 1.0]}
"""
AVERAGES = ("macro", "weighted", "micro", None)


class AveragePrecision(evaluate.Metric):
    def _info(self):
        if self.config_name != "default":
            raise ValueError(f"average_precision has only the default config, got {self.config_name!r}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Sequence(datasets.Value("int64"))}),
        )

    def _compute(self, predictions, references, average="macro"):
        if average not in AVERAGES:
            raise ValueError(f"average should be 'macro', 'weighted', 'micro' or None, got {average!r}")
        scores, targets = np.asarray(predictions, dtype=float), np.asarray(references)
        if average == "micro":
            scores, targets = scores.reshape(-1, 1), targets.reshape(-1, 1)
        ap, positives = per_label_average_precision(scores, targets)
        if average is None:
            return {"average_precision": [None if np.isnan(v) else float(v) for v in ap]}
        kept = positives > 0
        if not kept.any():
            return {"average_precision": float("nan")}
        weights = positives[kept] if average == "weighted" else None
        return {"average_precision": float(np.average(ap[kept], weights=weights))}
