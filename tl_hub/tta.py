"""Test-time augmentation (TTA): the deterministic views of an image that a model's training augmentation allows,
and the mean of the probabilities over them.

The views, in order (`tta_views`): view 0 is the plain image (what evaluation without TTA sees); with ``hflip``,
its mirror; then crops of ``(1 + crop_scale) / 2`` of the area (the middle of the training crops' range) at the
centre and at the four corners, each followed by its mirror when ``hflip`` is on. A crop has the image's aspect
ratio, held within the training crops' [3/4, 4/3], and is made smaller where it would not fit (in an image much
wider than tall, the top and bottom corners then coincide). So a model allows 6 views (12 with ``hflip``), 1 (2)
when its training crops kept the whole image (``crop_scale=1``), and 1 when it was trained with ``augment`` off.
``tta=N`` takes the first N.

`Classifier.predict`, ``predict_proba``, ``evaluate`` and ``outputs`` take ``tta``: `ViewProcessor` turns a batch of
images into their views for the model's processor, and `ViewAveraged` averages a model's probabilities over each
image's views (in a loader, under any number of processes).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from PIL import Image
from torch import nn

from .config import TrainingConfig
from .errors import ConfigError
from .structure import logits_of
from .tasks import probabilities

DEFAULT_TTA = 1  # views per image when `tta` is not given (1: no TTA), capped at what the model allows
ASPECT_RANGE = (3 / 4, 4 / 3)  # the aspect ratios training's random resized crop draws from (tl_hub.data)
CROP_POSITIONS = ("centre", "top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class View:
    """One test-time view of an image: a crop of ``area`` (a fraction of the image's area) at ``position``
    (``"full"``: the whole image; ``"centre"``, ``"top-left"``, ``"top-right"``, ``"bottom-left"``,
    ``"bottom-right"``), then its mirror image when ``flip``."""

    position: str = "full"
    area: float = 1.0
    flip: bool = False


def training_augmentation(settings: Optional[Mapping[str, Any]]) -> tuple[bool, bool, float]:
    """``(augment, hflip, crop_scale)`` of a model's recorded training settings (``classifier.info["settings"]``);
    a setting not recorded takes `TrainingConfig`'s default."""
    settings = settings or {}
    return (bool(settings.get("augment", TrainingConfig.augment)), bool(settings.get("hflip", TrainingConfig.hflip)),
            float(settings.get("crop_scale", TrainingConfig.crop_scale)))


def tta_views(settings: Optional[Mapping[str, Any]] = None) -> list[View]:
    """Every deterministic view the training augmentation of ``settings`` allows, in order: the plain image, its
    mirror (``hflip``), then the centre and four corner crops of ``(1 + crop_scale) / 2`` of the area, each followed
    by its mirror (``hflip``). ``augment`` off: the plain image only; ``crop_scale=1``: no crops."""
    augment, hflip, crop_scale = training_augmentation(settings)
    if not augment:
        return [View()]
    crops = [View()] + ([View(p, (1 + crop_scale) / 2) for p in CROP_POSITIONS] if crop_scale < 1 else [])
    return [v for crop in crops for v in ((crop, replace(crop, flip=True)) if hflip else (crop,))]


def views_allowed(settings: Optional[Mapping[str, Any]] = None) -> str:
    """Why the training augmentation of ``settings`` allows as many views as it does, in words."""
    augment, hflip, crop_scale = training_augmentation(settings)
    if not augment:
        return "the model was trained with augment off, so its only view is the plain image"
    if crop_scale >= 1:
        return ("the model's training crops kept the whole image (crop_scale=1), so its views are the plain image"
                + (" and its mirror (hflip is on)" if hflip else " only (hflip is off)"))
    mirrors = "each also mirrored (hflip is on)" if hflip else "no mirrors (hflip is off)"
    return (f"the model's training augmentation allows {len(tta_views(settings))} views: the plain image and 5 "
            f"crops of {(1 + crop_scale) / 2:.0%} of its area (centre and corners), {mirrors}")


def check_tta(tta: Any, settings: Optional[Mapping[str, Any]] = None) -> list[View]:
    """The first ``tta`` views of `tta_views` (``tta=None``: `DEFAULT_TTA`, capped at the views there are), or a
    `ConfigError` that says what is allowed."""
    views = tta_views(settings)
    if tta is None:
        return views[:DEFAULT_TTA]
    if isinstance(tta, bool) or not isinstance(tta, numbers.Integral) or tta < 1:
        raise ConfigError(f"`tta` should be a whole number of views, at least 1 (1: no test-time augmentation), got "
                          f"{tta!r}.")
    if tta > len(views):
        fix = ("set `tta` to 1 (no test-time augmentation)" if len(views) == 1
               else f"set `tta` to {len(views)} or fewer")
        raise ConfigError(f"`tta` is {tta}, but {views_allowed(settings)}; {fix}.")
    return views[:int(tta)]


def view_box(size: tuple[int, int], view: View) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of ``view`` in an image of ``size`` ``(width, height)``."""
    w, h = size
    if view.position == "full":
        return 0, 0, w, h
    aspect = min(max(w / h, ASPECT_RANGE[0]), ASPECT_RANGE[1])
    cw, ch = math.sqrt(view.area * w * h * aspect), math.sqrt(view.area * w * h / aspect)
    shrink = min(1.0, w / cw, h / ch)  # a crop that would not fit is made smaller, at the same aspect ratio
    cw, ch = min(w, max(1, round(cw * shrink))), min(h, max(1, round(ch * shrink)))
    if view.position == "centre":
        x, y = (w - cw) // 2, (h - ch) // 2
    else:
        vertical, _, horizontal = view.position.partition("-")
        x, y = (0 if horizontal == "left" else w - cw), (0 if vertical == "top" else h - ch)
    return x, y, x + cw, y + ch


def apply_view(image: Image.Image, view: View) -> Image.Image:
    """``image`` as ``view`` sees it (the plain image is returned as it is)."""
    if view.position != "full":
        image = image.crop(view_box(image.size, view))
    if view.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def mean_over_views(probs: torch.Tensor, views: int) -> torch.Tensor:
    """``(B * views, K)`` probabilities, each image's views in a row, as the ``(B, K)`` mean per image."""
    if views == 1:
        return probs
    return probs.reshape(-1, views, probs.shape[-1]).mean(1)


def images_per_batch(batch_size: int, views: int, processes: int = 1) -> int:
    """How many images make a batch of about ``batch_size`` views (``batch_size`` itself without TTA): a multiple of
    the ``processes`` that split each batch, at least one image per process."""
    if views == 1:
        return batch_size
    return max(processes, batch_size // views // processes * processes)


def logits_of_probabilities(probs: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Logits whose probabilities (`tl_hub.tasks.probabilities`) are ``probs``: their log (single-label: a softmax
    gives them back) or their logit (multi-label), kept finite so that the loss stays defined."""
    eps = torch.finfo(probs.dtype).eps
    if multi_label:
        p = probs.clamp(eps, 1 - eps)
        return p.log() - (-p).log1p()
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class ViewProcessor:
    """An image processor that preprocesses ``views`` of each image, each image's views in a row, with
    ``processor``: ``B`` images become ``B * len(views)`` model inputs."""

    def __init__(self, processor, views: Sequence[View]):
        self.processor, self.views = processor, list(views)

    def __call__(self, images=None, **kwargs):
        """``processor(images=...)`` on every view of every image."""
        return self.processor(images=[apply_view(image, v) for image in images for v in self.views], **kwargs)


class ViewAveraged(nn.Module):
    """``model`` run on the ``views`` views of each image (inputs from `ViewProcessor`); it returns one row of logits
    per image, those of the mean of its views' probabilities (`logits_of_probabilities`), so that evaluation's
    loss and metrics apply unchanged."""

    def __init__(self, model: nn.Module, views: int, multi_label: bool):
        super().__init__()
        self.model, self.views, self.multi_label = model, views, multi_label

    @property
    def config(self):
        """The wrapped model's config (its labels)."""
        return getattr(self.model, "config", None)

    def forward(self, **inputs) -> torch.Tensor:
        """The per-image logits of the mean probabilities over the views."""
        probs = probabilities(logits_of(self.model(**inputs)), self.multi_label)
        return logits_of_probabilities(mean_over_views(probs, self.views), self.multi_label)
