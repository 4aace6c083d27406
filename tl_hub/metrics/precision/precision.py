"""Precision for multi-class classification (an `evaluate` metric module shipped with tl-hub, so it loads offline
with ``evaluate.load(path)``): the share of the predictions of a class that are right, per class or averaged.  With the
config ``"multilabel"`` (``evaluate.load(path, "multilabel")``) predictions and references are 0/1 indicator rows,
counted per label (column) as scikit-learn does on indicator matrices."""

import evaluate

from tl_hub.metrics import averaged, label_counts, label_metric_info

_DESCRIPTION = "Precision = TP / (TP + FP), per class, then averaged."
_KWARGS = """
    average (`str`, defaults to `"macro"`): "macro", "micro", "weighted" or None (per-class scores).
    labels (`list[int]`, *optional*): the classes (default: those in predictions or references).
        With `config_name="multilabel"`: the label columns, by index (default: all).
Returns:
    precision (`float` or `list[float]`); a class never predicted has precision 0.
Example:
    >>> evaluate.load(path).compute(predictions=[0, 1, 1], references=[0, 1, 0], average=None)
    {'precision': [1.0, 0.5]}
    >>> evaluate.load(path, "multilabel").compute(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]],
    ...                                           average=None)
    {'precision': [0.5, 1.0]}
"""


class Precision(evaluate.Metric):
    def _info(self):
        return label_metric_info(_DESCRIPTION, _KWARGS, self.config_name)

    def _compute(self, predictions, references, average="macro", labels=None):
        tp, fp, fn = label_counts(predictions, references, labels, self.config_name)
        return {"precision": averaged(tp, tp + fp, tp + fn, average)}
