"""F1 score for multi-class classification (an `evaluate` metric module shipped with tl-hub, so it loads
offline with ``evaluate.load(path)``).  ``average="macro"`` averages the per-class F1 over ``labels`` (by
default the classes that occur in predictions or references, as scikit-learn does)."""

import evaluate

from tl_hub.metrics import averaged, label_metric_info, per_class_counts

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall), per class, then averaged."
_KWARGS = """
    average (`str`, defaults to `"macro"`): "macro", "micro", "weighted" or None (per-class scores).
    labels (`list[int]`, *optional*): the classes to average over.
Returns:
    f1 (`float` or `list[float]`).
Example:
    >>> evaluate.load(path).compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'f1': 0.6666666666666666}
"""


class F1(evaluate.Metric):
    def _info(self):
        return label_metric_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, average="macro", labels=None):
        tp, fp, fn = per_class_counts(predictions, references, labels)
        return {"f1": averaged(2 * tp, 2 * tp + fp + fn, tp + fn, average)}
