"""Confusion matrix (an `evaluate` metric module shipped with tl-hub, so it loads offline with
``evaluate.load(path)``): row = true class, column = predicted class, in the order of ``labels``."""

import evaluate
import numpy as np

from tl_hub.metrics import label_metric_info

_DESCRIPTION = "Counts of (true class, predicted class) pairs."
_KWARGS = """
    labels (`list[int]`, *optional*): the classes, in the order of the rows and columns (default: those in
        predictions or references, sorted).
Returns:
    confusion_matrix (`list[list[int]]`): entry [i][j] counts examples of class labels[i] predicted as labels[j].
Example:
    >>> evaluate.load(path).compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'confusion_matrix': [[1, 1], [0, 1]]}
"""


class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return label_metric_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, labels=None):
        p, r = np.asarray(predictions), np.asarray(references)
        labels = np.union1d(p, r) if labels is None else np.asarray(labels)
        index = {int(c): i for i, c in enumerate(labels)}
        matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
        for true, pred in zip(r.tolist(), p.tolist()):
            if true in index and pred in index:
                matrix[index[true], index[pred]] += 1
        return {"confusion_matrix": matrix.tolist()}
