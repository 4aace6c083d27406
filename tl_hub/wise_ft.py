"""Weight-space ensembling of a fine-tuned model with its start (WiSE-FT, Wortsman et al., 2022).

After fine-tuning, the weights ``θ(α) = (1 − α)·θ_start + α·θ_ft`` are evaluated for ``α`` on a small grid
(`ALPHA_GRID`) and the best on the validation split is kept, as an ordinary model.  ``θ_start`` is the pretrained
encoder with the head solved on it in the first period (the linear classifier WiSE-FT interpolates from); ``α = 1``
is plain fine-tuning and ``α = 0`` the feature-extraction model.  It costs one validation pass per ``α``, and no
training.

Every floating-point entry of the state that fine-tuning may change is interpolated (the trained parameters, and
buffers such as BatchNorm running statistics); integer buffers keep their fine-tuned value.  A run has a start only
when a head-only period precedes the periods that train the encoder (the fine-tune recipe with ``head_epochs``
above 0): train-all, LoRA and feature extraction have none, and a run resumed after its head period no longer holds
it (the record says why WiSE-FT did not run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn

from .errors import ConfigError

ALPHA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
WISE_FT_MODES = ("auto", "off")


def parse_wise_ft(value: Any) -> Union[str, float]:
    """``wise_ft`` as a run takes it: ``"auto"`` (α chosen on validation from `ALPHA_GRID`), ``"off"``, or a fixed
    α in [0, 1].

    Example:
        >>> parse_wise_ft("0.5"), parse_wise_ft("auto")
        (0.5, 'auto')
    """
    if isinstance(value, str) and value.strip().lower() in WISE_FT_MODES:
        return value.strip().lower()
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = None
    if isinstance(value, bool) or alpha is None or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"`wise_ft` should be 'auto', 'off' or a number in [0, 1] (the weight of the fine-tuned "
                          f"model), got {value!r}.")
    return alpha


def interpolate(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """``(1 − alpha)·start + alpha·end`` for every floating-point tensor of ``start`` (on ``end``'s device and
    dtype); other tensors are ``end``'s."""
    out = {}
    for key, first in start.items():
        last = end[key]
        if first.is_floating_point():
            mixed = torch.lerp(first.to(last.device, torch.float32), last.float(), float(alpha))
            out[key] = mixed.to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def start_keys(model: nn.Module, periods: Sequence[Any]) -> Optional[list[str]]:
    """The state keys WiSE-FT interpolates, when the run has a start: the first period that trains beyond the head
    comes after a head-only period with epochs.  The keys are the parameters of the later periods and every
    floating-point buffer.  None when the run has no start."""
    first_tuning = next((i for i, p in enumerate(periods) if not p.head_only and p.epochs > 0), None)
    if first_tuning is None or not any(p.head_only and p.epochs > 0 for p in periods[:first_tuning]):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    trained = {names[id(p)] for period in periods[first_tuning:] for g in period.param_groups for p in g["params"]}
    buffers = {n for n, b in model.named_buffers() if b.is_floating_point()}
    return sorted(trained | buffers)


def snapshot(model: nn.Module, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """CPU copies of ``keys`` of the model's state."""
    state = model.state_dict()
    return {k: state[k].detach().to("cpu", copy=True) for k in keys}


class StartKeeper:
    """Keeps θ_start of a run: called at each period's end (`tl_hub.loop.train_periods`' ``on_period_end``), it
    copies the model's `start_keys` at the end of the head-only period that comes before the encoder trains, then
    calls the user's own ``on_period_end``, if any."""

    def __init__(self, keys: Optional[Sequence[str]], periods: Sequence[Any], on_period_end=None):
        self.keys, self.on_period_end, self.state = keys, on_period_end, None
        first_tuning = next((i for i, p in enumerate(periods) if not p.head_only and p.epochs > 0), None)
        self.last_head = periods[first_tuning - 1] if keys is not None and first_tuning else None

    def __call__(self, period, model: nn.Module, optimizer) -> None:
        if period is self.last_head:
            self.state = snapshot(model, self.keys)
        if self.on_period_end is not None:
            self.on_period_end(period, model, optimizer)


def candidate_alphas(setting: Union[str, float]) -> tuple[float, ...]:
    """The α values a run evaluates: the grid for ``"auto"``, the one given otherwise."""
    return ALPHA_GRID if setting == "auto" else (float(setting),)


def load_alpha(model: nn.Module, start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
               alpha: float) -> None:
    """Put θ(α) into the model."""
    model.load_state_dict(interpolate(start, end, alpha), strict=False)


def choose(scores: Sequence[tuple[float, tuple]]) -> float:
    """The α whose validation key (`tl_hub.tasks.selection_key`: higher is better) is best; ties go to the larger
    α (closer to plain fine-tuning)."""
    return max(scores, key=lambda s: (s[1], s[0]))[0]
