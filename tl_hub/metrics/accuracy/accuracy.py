"""Accuracy: the fraction of predictions equal to the references (an `evaluate` metric module shipped with
tl-hub, so it loads offline with ``evaluate.load(path)``)."""

import evaluate
import numpy as np

from tl_hub.metrics import label_metric_info

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."
_KWARGS = """
    sample_weight (`list[float]`, *optional*): weight of each example.
Example:
    >>> evaluate.load(path).compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
Returns:
    accuracy (`float`): in [0, 1].
"""


class Accuracy(evaluate.Metric):
    def _compute(self, predictions, references, sample_weight=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if len(predictions) == 0:
            return {"accuracy": float("nan")}
        weights = np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        return {"accuracy": float(np.sum(weights * (predictions == references)) / np.sum(weights))}

    def _info(self):
        return label_metric_info(_DESCRIPTION, _KWARGS)
