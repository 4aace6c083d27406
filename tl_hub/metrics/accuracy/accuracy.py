"""Accuracy: the fraction of predictions equal to the references (an `evaluate` metric module shipped with
tl-hub, so it loads offline with ``evaluate.load(path)``).  With the config ``"multilabel"``
(``evaluate.load(path, "multilabel")``, as on the Hub) predictions and references are 0/1 indicator rows and an
example counts as right only when its whole row is (subset accuracy, scikit-learn's ``accuracy_score`` on
indicator matrices)."""

import evaluate
import numpy as np

from tl_hub.metrics import indicator_rows, label_metric_info

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."
_KWARGS = """
    sample_weight (`list[float]`, *optional*): weight of each example.
Example:
    >>> evaluate.load(path).compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
    >>> evaluate.load(path, "multilabel").compute(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]])
    {'accuracy': 0.5}
Returns:
    accuracy (`float`): in [0, 1].
"""


class Accuracy(evaluate.Metric):
    def _compute(self, predictions, references, sample_weight=None):
        if len(predictions) == 0:
            return {"accuracy": float("nan")}
        if self.config_name == "multilabel":
            p, r = indicator_rows(predictions, references)
            correct = np.all(p == r, axis=1)
        else:
            correct = np.asarray(predictions) == np.asarray(references)
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        return {"accuracy": float(np.sum(weights * correct) / np.sum(weights))}

    def _info(self):
        return label_metric_info(_DESCRIPTION, _KWARGS, self.config_name)
