"""Imbalanced classes: how imbalanced the training data is, and the class weights that compensate.

- `label_counts`: training examples per class (multi-label: positive examples per label).
- `imbalance_ratio`: the largest count over the smallest non-zero one (1.0 for balanced data).
- `class_weights`: the weights ``class_weighting`` asks for, or None:

  - ``"none"``: every example counts the same;
  - ``"balanced"``: single-label, class ``c`` weighs ``N / (K n_c)`` (scikit-learn's ``class_weight="balanced"``:
    every class contributes the same total weight to the loss); multi-label, label ``k``'s positive examples weigh
    ``n_neg / n_pos`` (BCE's ``pos_weight``: positives and negatives of a label count the same);
  - ``"auto"`` (the default): ``"balanced"`` for single-label data whose `imbalance_ratio` is at least
    `AUTO_RATIO`, else ``"none"``.  Balanced data is trained exactly as without weighting; multi-label data is
    never weighted by default, since its per-label decision thresholds, chosen on validation
    (`tl_hub.metrics.choose_thresholds`), already move each label's decision to where its F1 is best.

The same weights apply to the loss of every trained period and to the linear head's solve (`tl_hub.probe`, as
per-example weights); with weighted classes, epochs and the solve's regularisation are chosen by balanced accuracy
rather than accuracy (`tl_hub.tasks.selection_key`).
"""

from __future__ import annotations

from typing import Optional

import torch

# "auto" weights single-label classes from this ratio of the largest to the smallest class on (weighting raised
# macro-F1 at 10:1 and 50:1 in benchmarks/multilabel.py; ratios between 1:1 and 10:1 were not measured)
AUTO_RATIO = 3.0


def label_counts(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Examples per class (``labels`` of class ids) or positive examples per label (multi-hot ``labels``)."""
    if labels.ndim == 2:
        return (labels > 0.5).sum(0).to(torch.float64)
    return torch.bincount(labels.to(torch.long).flatten(), minlength=num_labels).to(torch.float64)


def imbalance_ratio(counts: torch.Tensor) -> float:
    """The largest count over the smallest non-zero one (1.0 when there is at most one non-zero count)."""
    present = counts[counts > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def resolve_weighting(weighting: str, counts: torch.Tensor, multi_label: bool) -> str:
    """The weighting ``"auto"`` stands for on this data (see the module docstring); other values as given."""
    if weighting != "auto":
        return weighting
    return "balanced" if not multi_label and imbalance_ratio(counts) >= AUTO_RATIO else "none"


def class_weights(weighting: str, labels: torch.Tensor, num_labels: int) -> Optional[torch.Tensor]:
    """The class (single-label) or positive (multi-label) weights ``weighting`` asks for on the training
    ``labels``, as a float32 tensor of ``num_labels``; None for no weighting."""
    multi_label = labels.ndim == 2
    counts = label_counts(labels, num_labels)
    if resolve_weighting(weighting, counts, multi_label) == "none":
        return None
    if multi_label:
        total = float(labels.shape[0])
        return torch.where(counts > 0, (total - counts) / counts.clamp_min(1), torch.ones_like(counts)).float()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def example_weights(labels: torch.Tensor, weights: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """One weight per single-label example (its class's weight), normalised to mean 1; None without weights or
    for multi-label labels (their weights are per label, see `class_weights`)."""
    if weights is None or labels.ndim == 2:
        return None
    per_example = weights.to(torch.float64)[labels.to(torch.long)]
    return per_example / per_example.mean().clamp_min(1e-12)


def balanced_order(labels: torch.Tensor, seed: int, epoch: int, count: Optional[int] = None) -> torch.Tensor:
    """``count`` (default ``len(labels)``) example indices drawn with replacement so that every class (multi-label:
    every label, by the rarest label an example has) is drawn equally often in expectation, from a generator seeded
    by ``(seed, epoch)``: the same order on every process and in every worker."""
    if labels.ndim == 2:
        counts = label_counts(labels, labels.shape[1])
        inverse = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
        per_example = (labels.double() * inverse).max(1).values
        per_example = torch.where(per_example > 0, per_example, inverse[inverse > 0].min() if (inverse > 0).any()
                                  else torch.tensor(1.0, dtype=torch.float64))
    else:
        counts = label_counts(labels, int(labels.max()) + 1 if len(labels) else 1)
        per_example = 1.0 / counts[labels.to(torch.long)]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.multinomial(per_example, count or len(labels), replacement=True, generator=generator)
