"""Calibrated probabilities: a temperature fitted on the validation split and folded into the head, and the figures
that measure calibration (expected calibration error, negative log-likelihood, the reliability diagram).

A classifier trained to a training loss near zero on a few dozen images is overconfident: its softmax says 0.99 where
it is right 80% of the time.  Temperature scaling (Guo et al., 2017) divides the logits by one number ``T`` fitted
to minimise the validation negative log-likelihood; the predicted class does not change, only how sure the model
says it is.  A multi-label model gets one temperature per label (each label is its own binary classifier, with its
own over- or under-confidence); a label without both a positive and a negative validation image keeps ``T = 1``.

The fit is maximum a posteriori with a weak log-normal prior on ``T`` centred on 1 (`PRIOR_WEIGHT`): a validation
split where every image is right would otherwise push ``T`` towards 0 and make the model certain of everything.
The fitted ``T`` is then kept only when it is a significant improvement: a likelihood-ratio test of one parameter
(`SIGNIFICANCE`) against ``T = 1``.  A model that is already calibrated keeps ``T = 1``: on a few dozen validation
images the fitted value would otherwise be noise that makes it slightly worse.

The temperature is folded into the head (the final layer's weights and bias divided by ``T``, row by row for a
multi-label model), so every consumer of the saved model gets calibrated probabilities with no extra code: `predict`,
the Space, an exported model and the transformers ``pipeline``.  The folding is checked on the validation logits;
a head whose logits are not one layer's output (e.g. two heads averaged) is left as it was, with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .tasks import is_multi_hot, probabilities, task_loss

logger = logging.getLogger(__name__)

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
PRIOR_WEIGHT = 1.0  # the prior's pull, in summed NLL units per unit of (log T)^2
# the summed NLL a temperature must save over T = 1 to be kept: half the 95% quantile of chi-squared with one degree
# of freedom (a likelihood-ratio test of the one fitted parameter)
SIGNIFICANCE = 1.92
FOLD_TOLERANCE = 1e-3
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def reliability_bins(probs: np.ndarray, refs: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram's bins: equal-width confidence intervals with, for each, how many predictions fall
    there, their mean confidence and how often they were right.

    Single-label (``refs`` class ids): the confidence is the top class's probability, right when it is the label.
    Multi-label (``refs`` multi-hot rows): every (image, label) probability is a prediction that the label is present,
    compared with how often it is."""
    probs, refs = np.asarray(probs, dtype=np.float64), np.asarray(refs)
    if refs.ndim == 2:
        confidence, outcome = probs.reshape(-1), refs.reshape(-1).astype(np.float64)
    else:
        confidence = probs.max(-1) if probs.size else np.zeros(0)
        outcome = (probs.argmax(-1) == refs).astype(np.float64) if probs.size else np.zeros(0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                    "confidence": float(confidence[inside].mean()) if count else None,
                    "accuracy": float(outcome[inside].mean()) if count else None})
    return out


def expected_calibration_error(probs: np.ndarray, refs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the mean gap between confidence and accuracy over `reliability_bins`, each bin weighted by its share of
    the predictions (0 is perfectly calibrated)."""
    table = reliability_bins(probs, refs, bins)
    total = sum(b["count"] for b in table)
    if not total:
        return 0.0
    return float(sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in table if b["count"]) / total)


def calibration_figures(logits: torch.Tensor, refs: torch.Tensor) -> dict:
    """``{"ece", "nll"}`` of logits against labels (class ids or multi-hot rows)."""
    multi = is_multi_hot(refs)
    probs = probabilities(logits, multi).numpy()
    return {"ece": expected_calibration_error(probs, refs.numpy()),
            "nll": float(task_loss(logits.float(), refs).item()) if len(refs) else float("nan")}


def _summed_nll(logits: torch.Tensor, refs: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """Summed NLL of ``logits / exp(log_t)`` per candidate: ``log_t`` of shape ``(K,)`` (single-label: K candidates
    of one temperature) or ``(K, L)`` (multi-label: one per label), giving ``(K,)`` or ``(K, L)``."""
    if is_multi_hot(refs):
        scaled = logits[None] / log_t.exp()[:, None, :]
        target = refs.to(logits.dtype)[None].expand_as(scaled)
        return nn.functional.binary_cross_entropy_with_logits(scaled, target, reduction="none").sum(1)
    scaled = logits[None] / log_t.exp()[:, None, None]
    return torch.stack([nn.functional.cross_entropy(s, refs, reduction="sum") for s in scaled])


def fit_temperature(logits: torch.Tensor, refs: torch.Tensor, *, prior_weight: float = PRIOR_WEIGHT,
                    significance: float = SIGNIFICANCE, iterations: int = 60) -> torch.Tensor:
    """The temperature that minimises the summed validation NLL of ``logits / T`` plus ``prior_weight * (log T)^2``,
    within `TEMPERATURE_RANGE`, by golden-section search on ``log T`` (one search per label, side by side, for a
    multi-label model); 1 where it lowers the summed NLL by less than ``significance`` (not a significant gain).

    Returns a 0-d tensor (single-label) or one temperature per label (multi-label; 1 for a label whose validation
    images are all positive or all negative)."""
    logits = logits.double()
    multi = is_multi_hot(refs)
    shape = (logits.shape[1],) if multi else ()
    lo, hi = (torch.full(shape, math.log(v), dtype=torch.float64) for v in TEMPERATURE_RANGE)

    def objective(log_t: torch.Tensor) -> torch.Tensor:
        return _summed_nll(logits, refs, log_t.reshape(1, *shape))[0] + prior_weight * log_t ** 2

    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(iterations):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        left_better = objective(a) <= objective(b)
        hi, lo = torch.where(left_better, b, hi), torch.where(left_better, lo, a)
    log_t = (lo + hi) / 2
    gain = _summed_nll(logits, refs, torch.zeros_like(log_t)[None])[0] - _summed_nll(logits, refs, log_t[None])[0]
    temperature = torch.where(gain >= significance, log_t.exp(), torch.ones_like(log_t))
    if multi:
        positives = refs.sum(0)
        temperature = torch.where((positives > 0) & (positives < len(refs)), temperature, torch.ones_like(temperature))
    return temperature.float()


def temperature_value(temperature: torch.Tensor) -> Union[float, list[float]]:
    """The temperature as the record keeps it: a number, or a list (one per label)."""
    return float(temperature) if temperature.ndim == 0 else [round(float(t), 6) for t in temperature]


def logit_layers(model: nn.Module, head: Sequence[str], num_labels: int) -> list[nn.Module]:
    """The layers of the head that output the logits: every ``nn.Linear`` with ``num_labels`` outputs and every
    convolution with ``num_labels`` channels inside the head modules (a PEFT model's trained copy only, not the
    original it keeps)."""
    layers, seen = [], set()
    for name, module in model.named_modules():
        if "original_module" in name or not any(f".{h}." in f".{name}." for h in head):
            continue
        size = (module.out_features if isinstance(module, nn.Linear)
                else module.out_channels if isinstance(module, CONVOLUTIONS) else None)
        if size == num_labels and id(module) not in seen:
            seen.add(id(module))
            layers.append(module)
    return layers


@torch.no_grad()
def scale_layers(layers: Sequence[nn.Module], factor: torch.Tensor) -> None:
    """Multiply the output of ``layers`` by ``factor`` (a number, or one per output unit): weights and biases."""
    for layer in layers:
        f = factor.to(layer.weight.device, layer.weight.dtype)
        shape = (-1,) + (1,) * (layer.weight.ndim - 1)
        layer.weight.mul_(f.reshape(shape) if f.ndim else f)
        if layer.bias is not None:
            layer.bias.mul_(f)


def folds_correctly(before: torch.Tensor, after: torch.Tensor, temperature: torch.Tensor) -> bool:
    """Whether the logits ``after`` folding are those ``before``, divided by the temperature."""
    expected = before / temperature
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    return bool(torch.allclose(after, expected, rtol=FOLD_TOLERANCE, atol=FOLD_TOLERANCE * scale))


def calibration_record(temperature, before: dict, after: dict, *, folded: bool, fitted_on: int) -> dict:
    """What ``tl_hub.json`` keeps about the calibration: the temperature, whether the head carries it, and the
    validation ECE and NLL before and after."""
    return {"temperature": temperature_value(temperature), "folded_into_head": folded,
            "fitted_on_images": fitted_on, "ece_bins": ECE_BINS,
            "validation": {"ece_before": before["ece"], "ece_after": after["ece"],
                           "nll_before": before["nll"], "nll_after": after["nll"]}}


def uncalibrated(logits: torch.Tensor, calibration: Optional[dict]) -> Optional[torch.Tensor]:
    """The logits a calibrated model would give without its temperature (``logits * T``), or None when the model
    was not calibrated (``calibration`` is its record's ``calibration`` entry)."""
    if not calibration or not calibration.get("folded_into_head"):
        return None
    temperature = torch.as_tensor(calibration["temperature"], dtype=logits.dtype)
    if temperature.ndim and temperature.numel() != logits.shape[-1]:
        return None
    return logits * temperature


def before_and_after(logits: torch.Tensor, refs: torch.Tensor, calibration: Optional[dict]) -> Optional[dict]:
    """ECE and NLL of a calibrated model's logits, and of the same logits without its temperature:
    ``{"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "reliability_before"}``, or None for a
    model without a temperature."""
    raw = uncalibrated(logits, calibration)
    if raw is None:
        return None
    before, after = calibration_figures(raw, refs), calibration_figures(logits, refs)
    raw_probs = probabilities(raw, is_multi_hot(refs)).numpy()
    return {"temperature": calibration["temperature"], "ece_before": before["ece"], "ece_after": after["ece"],
            "nll_before": before["nll"], "nll_after": after["nll"],
            "reliability_before": reliability_bins(raw_probs, refs.numpy())}
