"""Accuracy: the fraction of predictions equal to the references (an `evaluate` metric module shipped with
tl-hub, so it loads offline with ``evaluate.load(path)``)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."
_KWARGS = """
Args:
    predictions (`list[int]`): predicted label ids.
    references (`list[int]`): true label ids.
    sample_weight (`list[float]`, *optional*): weight of each example.
Returns:
    accuracy (`float`): in [0, 1].
Example:
    >>> evaluate.load(path).compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, sample_weight=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if len(predictions) == 0:
            return {"accuracy": float("nan")}
        weights = np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        return {"accuracy": float(np.sum(weights * (predictions == references)) / np.sum(weights))}
