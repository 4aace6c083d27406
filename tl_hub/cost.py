"""What a training step costs, counted rather than timed: floating-point operations per image.

The count is PyTorch's (`torch.utils.flop_counter.FlopCounterMode`: matrix multiplications and convolutions, the
bulk of a vision model's work) for one forward pass of one image at the size the model's image processor makes,
and training costs about three forward passes (the backward pass computes gradients for both the inputs and the
weights of each layer).  A count is the same on every machine, so budgets written in FLOPs give the same
schedule, and the same results, on a laptop and on a GPU node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .structure import example_inputs, model_inputs

TRAINING_TO_FORWARD = 3.0


def forward_flops(model: nn.Module, processor=None) -> int:
    """FLOPs of one forward pass of ``model`` on one image (the processor's output size)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in model_inputs(model, example_inputs(model, processor)).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(**inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Cost:
    """What an epoch of a trained period costs, in FLOPs: each training image trained on (``train_flops``, forward
    and backward) in each pass, and each of the ``validation_images`` evaluated once (``eval_flops``)."""

    train_flops: float
    eval_flops: float
    validation_images: int = 0

    def epoch(self, train_images: int, passes: int = 1) -> float:
        return passes * max(train_images, 1) * self.train_flops + self.validation_images * self.eval_flops


def measure_cost(model: nn.Module, processor=None, validation_images: int = 0) -> Cost:
    """The `Cost` of an epoch of ``model`` (one forward pass counted, see `forward_flops`; a training image costs
    ``TRAINING_TO_FORWARD`` times that, forward and backward)."""
    forward = forward_flops(model, processor)
    return Cost(TRAINING_TO_FORWARD * forward, float(forward), int(validation_images or 0))
