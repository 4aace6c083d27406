"""Single-label and multi-label classification: what differs between them, in one place.

A task is **multi-label** when its model's config says ``problem_type="multi_label_classification"``, as the
transformers ``...ForImageClassification`` models and the ``image-classification`` pipeline read it (BCE-with-logits
loss; sigmoid scores).  Its label tensors are multi-hot floats of shape ``(N, K)``; a single-label task's are class
ids of shape ``(N,)``.  Everything that depends on the kind of task asks here:

- `task_loss`: cross-entropy (optionally class-weighted, label-smoothed) or BCE-with-logits (optionally with a
  positive weight per label);
- `probabilities`: softmax or sigmoid;
- `decide`: the arg-max class, or every label whose probability reaches its threshold;
- `selection_key`: what an epoch or a head's regularisation is chosen by on validation (accuracy, balanced accuracy
  when classes are weighted, or mAP for multi-label).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F

MULTI_LABEL = "multi_label_classification"
SINGLE_LABEL = "single_label_classification"
DEFAULT_THRESHOLD = 0.5


def model_config(model_or_config: Any) -> Any:
    """The ``PretrainedConfig`` of a model (a PEFT model's base model's), or the argument if it is a config."""
    if hasattr(model_or_config, "problem_type") or hasattr(model_or_config, "id2label"):
        return model_or_config
    config = getattr(model_or_config, "config", None)
    if config is None and hasattr(model_or_config, "get_base_model"):
        config = getattr(model_or_config.get_base_model(), "config", None)
    return config


def is_multi_label(model_or_config: Any) -> bool:
    """Whether a model (or its config) is a multi-label classifier (``problem_type``)."""
    return getattr(model_config(model_or_config), "problem_type", None) == MULTI_LABEL


def set_problem_type(config: Any, multi_label: bool) -> None:
    """Record on a model config that it is multi-label, so that transformers and the pipeline treat it so; a
    single-label task clears a base model's multi-label setting and otherwise leaves the config as it was."""
    if multi_label:
        config.problem_type = MULTI_LABEL
    elif getattr(config, "problem_type", None) == MULTI_LABEL:
        config.problem_type = SINGLE_LABEL


def is_multi_hot(labels: torch.Tensor) -> bool:
    """Whether a label tensor holds multi-hot rows ``(N, K)`` (multi-label) rather than class ids ``(N,)``."""
    return labels.ndim == 2 and labels.is_floating_point()


def task_loss(logits: torch.Tensor, labels: torch.Tensor, *, class_weight: Optional[torch.Tensor] = None,
              label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """The training loss of ``logits`` against ``labels``.

    Single-label: cross-entropy, with ``class_weight`` (one weight per class; the weighted mean, as PyTorch
    defines it) and ``label_smoothing``.  Multi-label: BCE-with-logits averaged over labels, with ``class_weight``
    as the weight of each label's positive examples (``pos_weight``); ``reduction="none"`` gives one loss per
    example (the mean over its labels).
    """
    if is_multi_hot(labels):
        weight = class_weight.to(logits.device, logits.dtype) if class_weight is not None else None
        targets = labels.to(logits.dtype)
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + label_smoothing / 2
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction="none").mean(-1)
        return loss.mean() if reduction == "mean" else loss
    weight = class_weight.to(logits.device, logits.dtype) if class_weight is not None else None
    return F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing, reduction=reduction)


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Per-class probabilities: a softmax over classes, or one sigmoid per label."""
    return logits.float().sigmoid() if multi_label else logits.float().softmax(-1)


def decide(probs: torch.Tensor, thresholds: Optional[Sequence[float]] = None) -> list[list[int]]:
    """Multi-label decisions: per row, the labels whose probability reaches its threshold (default
    `DEFAULT_THRESHOLD`), most probable first."""
    limit = torch.full((probs.shape[-1],), DEFAULT_THRESHOLD) if thresholds is None else torch.as_tensor(
        list(thresholds), dtype=probs.dtype)
    chosen = probs >= limit.to(probs.device, probs.dtype)
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
    return [[int(j) for j in row_order if row_chosen[j]] for row_order, row_chosen in zip(order, chosen)]


def selection_key(metrics: dict, *, balanced: bool = False) -> tuple:
    """What validation results are compared by (higher is better): mAP for multi-label, balanced accuracy with
    weighted classes, else accuracy; ties go to the lower loss."""
    if "mAP" in metrics:
        score = metrics["mAP"]
    elif balanced and metrics.get("balanced_accuracy") is not None:
        score = metrics["balanced_accuracy"]
    else:
        score = metrics["accuracy"]
    return (score, -metrics["loss"])
