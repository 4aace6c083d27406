"""F1 score for multi-class classification (an `evaluate` metric module shipped with tl-hub, so it loads
offline with ``evaluate.load(path)``).  ``average="macro"`` averages the per-class F1 over ``labels`` (by
default the classes that occur in predictions or references, as scikit-learn does).  With the config
``"multilabel"`` (``evaluate.load(path, "multilabel")``) predictions and references are 0/1 indicator rows and the
F1 is per label (column), as scikit-learn computes it on indicator matrices."""

import evaluate

from tl_hub.metrics import averaged, label_counts, label_metric_info

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall), per class, then averaged."
_KWARGS = """
    average (`str`, defaults to `"macro"`): "macro", "micro", "weighted" or None (per-class scores).
    labels (`list[int]`, *optional*): the classes to average over.
        With `config_name="multilabel"`: the label columns, by index (default: all).
Returns:
    f1 (`float` or `list[float]`).
Example:
    >>> evaluate.load(path).compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'f1': 0.6666666666666666}
    >>> evaluate.load(path, "multilabel").compute(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]])
    {'f1': 0.8333333333333333}
"""


class F1(evaluate.Metric):
    def _info(self):
        return label_metric_info(_DESCRIPTION, _KWARGS, self.config_name)

    def _compute(self, predictions, references, average="macro", labels=None):
        tp, fp, fn = label_counts(predictions, references, labels, self.config_name)
        return {"f1": averaged(2 * tp, 2 * tp + fp + fn, tp + fn, average)}
