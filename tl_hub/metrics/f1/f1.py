"""F1 score for multi-class classification (an `evaluate` metric module shipped with tl-hub, so it loads
offline with ``evaluate.load(path)``).  ``average="macro"`` averages the per-class F1 over ``labels`` (by
default the classes that occur in predictions or references, as scikit-learn does)."""

import evaluate
import numpy as np

from tl_hub.metrics import label_metric_info

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
        p, r = np.asarray(predictions), np.asarray(references)
        if labels is None:
            labels = np.union1d(p, r)
        labels = np.asarray(labels)
        tp = np.array([np.sum((p == c) & (r == c)) for c in labels], dtype=float)
        fp = np.array([np.sum((p == c) & (r != c)) for c in labels], dtype=float)
        fn = np.array([np.sum((p != c) & (r == c)) for c in labels], dtype=float)
        if average == "micro":
            denom = 2 * tp.sum() + fp.sum() + fn.sum()
            return {"f1": float(2 * tp.sum() / denom) if denom else 0.0}
        denom = 2 * tp + fp + fn
        per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        if average is None:
            return {"f1": per_class.tolist()}
        if average == "weighted":
            support = tp + fn
            return {"f1": float(np.sum(per_class * support) / support.sum()) if support.sum() else 0.0}
        if average != "macro":
            raise ValueError(f"average should be 'macro', 'micro', 'weighted' or None, got {average!r}")
        return {"f1": float(per_class.mean()) if len(per_class) else 0.0}
