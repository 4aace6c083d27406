"""Freezing and optimizer parameter groups, as pure functions.

Each ``*_param_groups`` function returns a list of ``torch.optim`` parameter
groups; every group carries ``name``, ``lr``, ``lr_scale`` (relative to the
base ``lr``) and ``weight_decay``.  Biases, norm weights and learned tokens /
position embeddings never get weight decay.

Methods:
    - head only: the new head at ``lr`` (feature extraction, LP-FT period 1).
    - discriminative LRs (ULMFiT, Howard & Ruder 2018; fastai ``slice(lr*ratio, lr)``):
      every unfrozen pretrained group at ``lr * ratio``.
    - layer-wise decay (BEiT, Bao et al. 2021): a group at depth ``d`` from the top
      (1 = top block) at ``lr * decay ** d``.

`freeze_all_but` sets ``requires_grad`` to match the groups; it is the only function here
that changes the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Union

from torch import nn

from .config import parse_unfreeze
from .errors import ConfigError
from .structure import BATCHNORM_TYPES, LayerGroup, ModelParts

NO_DECAY_KEYWORDS = (
    "cls_token", "position_embedding", "pos_embed", "mask_token", "register_tokens", "distillation_token",
    "relative_position_bias_table", "absolute_pos_embed",
)


def no_weight_decay(name: str, param) -> bool:
    """Biases and norm weights (1-d) and learned tokens are not decayed."""
    return param.ndim <= 1 or any(k in name for k in NO_DECAY_KEYWORDS)


def group_depths(parts: ModelParts) -> dict[str, int]:
    """Depth of every encoder group counted from the top: the top block (and the final norm) are 1,
    the bottom block N, the embeddings N + 1."""
    blocks = parts.blocks
    n = len(blocks)
    depths = {b.name: n - i for i, b in enumerate(blocks)}
    for g in parts.groups:
        if g.kind == "norm":
            depths[g.name] = 1
        elif g.kind == "embeddings":
            depths[g.name] = n + 1
    return depths


def groups_to_unfreeze(parts: ModelParts, unfreeze: Union[str, int] = "all") -> list[LayerGroup]:
    """The encoder groups trained in fine-tuning: all of them, or the top ``unfreeze`` blocks plus the final norm.

    Raises:
        ConfigError: when ``unfreeze`` asks for more blocks than the model has.
    """
    unfreeze = parse_unfreeze(unfreeze)
    if unfreeze == "all":
        return list(parts.groups)
    n_blocks = len(parts.blocks)
    if unfreeze > n_blocks:
        raise ConfigError(
            f"`unfreeze` is {unfreeze} but the model has only {n_blocks} encoder blocks; "
            f"pass a number up to {n_blocks}, or 'all'."
        )
    depths = group_depths(parts)
    return [g for g in parts.groups if g.kind != "embeddings" and depths[g.name] <= unfreeze]


def _split_decay(
    model: nn.Module, name: str, param_names: Iterable[str], lr: float, scale: float, weight_decay: float
) -> list[dict]:
    params = dict(model.named_parameters())
    decay, no_decay = [], []
    for pn in param_names:
        p = params[pn]
        (no_decay if no_weight_decay(pn, p) else decay).append(p)
    out = []
    for suffix, ps, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
        if ps:
            out.append({"name": f"{name}/{suffix}", "params": ps, "lr": lr * scale, "lr_scale": scale,
                        "weight_decay": wd})
    return out


def head_param_groups(model: nn.Module, parts: ModelParts, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups for the new head alone, at ``lr``."""
    return _split_decay(model, "head", parts.head_params(model), lr, 1.0, weight_decay)


def discriminative_param_groups(
    model: nn.Module, parts: ModelParts, lr: float, ratio: float, weight_decay: float = 0.0,
    unfreeze: Union[str, int] = "all",
) -> list[dict]:
    """Head at ``lr``; unfrozen pretrained groups at ``lr * ratio``."""
    out = head_param_groups(model, parts, lr, weight_decay)
    for g in groups_to_unfreeze(parts, unfreeze):
        out += _split_decay(model, g.name, g.params, lr, ratio, weight_decay)
    return out


def layer_decay_param_groups(
    model: nn.Module, parts: ModelParts, lr: float, decay: float, weight_decay: float = 0.0,
    unfreeze: Union[str, int] = "all",
) -> list[dict]:
    """Head at ``lr``; an unfrozen group at depth ``d`` from the top at ``lr * decay ** d``."""
    depths = group_depths(parts)
    out = head_param_groups(model, parts, lr, weight_decay)
    for g in groups_to_unfreeze(parts, unfreeze):
        out += _split_decay(model, g.name, g.params, lr, decay ** depths[g.name], weight_decay)
    return out


def named_param_groups(model: nn.Module, name: str, param_names: Iterable[str], lr: float,
                       weight_decay: float = 0.0) -> list[dict]:
    """The named parameters at ``lr`` (split by weight decay), e.g. the LoRA matrices and the head."""
    return _split_decay(model, name, param_names, lr, 1.0, weight_decay)


def full_param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0,
                      parts: Optional[ModelParts] = None) -> list[dict]:
    """Every parameter at ``lr`` (training from scratch, or everything at one LR), except those the forward never
    uses (``parts.unused``)."""
    unused = set(parts.unused) if parts is not None else set()
    return _split_decay(model, "all", [n for n, _ in model.named_parameters() if n not in unused], lr, 1.0,
                        weight_decay)


def freeze_all_but(model: nn.Module, param_groups: Sequence[dict]) -> None:
    """Set ``requires_grad`` True exactly for the parameters that appear in ``param_groups``."""
    keep = {id(p) for g in param_groups for p in g["params"]}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"trainable": n, "frozen": m, "total": n + m}`` by ``requires_grad``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def encoder_batchnorms(model: nn.Module, parts: ModelParts, prefix: str = "") -> list[str]:
    """Paths of the BatchNorm layers outside the head (kept in eval mode to freeze their statistics); ``prefix``
    for a wrapped model (PEFT's ``base_model.model.``)."""
    return [f"{prefix}{n}" for n, m in model.named_modules()
            if isinstance(m, BATCHNORM_TYPES) and not any(n == h or n.startswith(h + ".") for h in parts.head)]


def fine_tune_eval_modules(model: nn.Module, parts: ModelParts, unfreeze: Union[str, int] = "all",
                           bn_policy: str = "frozen") -> tuple[str, ...]:
    """The modules kept in eval mode while fine-tuning: the encoder groups left frozen by ``unfreeze``, and with
    ``bn_policy="frozen"`` every encoder BatchNorm layer (their statistics do not move)."""
    unfrozen = groups_to_unfreeze(parts, unfreeze)
    frozen = [m for g in parts.groups if g not in unfrozen for m in g.modules]
    return tuple(frozen + (encoder_batchnorms(model, parts) if bn_policy == "frozen" else []))


def lora_targets(model, parts) -> list[str]:
    """Every ``nn.Linear`` inside the encoder blocks: attention and MLP projections, found without names."""
    return [name for g in parts.blocks for path in g.modules
            for name, m in model.get_submodule(path).named_modules(prefix=path) if isinstance(m, nn.Linear)]


def param_groups(model: nn.Module, *, lr: float, backbone_lr_ratio: Optional[float] = None,
                 layer_decay: Optional[float] = None, weight_decay: float = 0.0, unfreeze: Union[str, int] = "all",
                 parts: Optional[ModelParts] = None, processor=None) -> list[dict]:
    """Optimizer parameter groups for any image classifier, for any ``torch.optim`` optimizer and any loop.

    The groups are the ones tl-hub's recipes train with (`tl_hub.split_model`: the head, then the encoder groups
    from the embeddings up to the final norm), each split into a decayed part and a part without weight decay
    (biases, norm weights, learned tokens and position embeddings).  Every group has its real ``lr`` set, so any
    scheduler that scales ``lr`` works; ``lr_scale`` (relative to ``lr``) and ``name`` ride along and optimizers
    ignore them.

    Args:
        model: an ``...ForImageClassification`` model (its head already sized for your labels).
        lr: the head's learning rate.
        backbone_lr_ratio: every trained encoder group at ``lr * backbone_lr_ratio`` (discriminative learning
            rates; default 1.0 when ``layer_decay`` is not given).
        layer_decay: instead, the encoder group at depth ``d`` from the top (1 = the top block) at
            ``lr * layer_decay ** d`` (layer-wise decay).
        weight_decay: for the decayed parts.
        unfreeze: ``"all"``, a number of top blocks (their groups, plus the final norm), or 0 for the head alone.
        parts: the model's structure, if already known (else found by running the model once on a blank image).
        processor: the model's image processor, used for that blank image (else shaped from the config).

    Example:
        >>> optimizer = torch.optim.AdamW(tl_hub.param_groups(model, lr=1e-3, layer_decay=0.75, weight_decay=0.05))

    Returns ``torch.optim`` parameter groups; `freeze_all_but` (``requires_grad`` of the rest) is up to the caller.
    """
    from .structure import example_inputs, split_model

    if not lr > 0:
        raise ConfigError(f"`lr` should be positive, got {lr}.")
    if backbone_lr_ratio is not None and layer_decay is not None:
        raise ConfigError("Pass `backbone_lr_ratio` or `layer_decay`, not both: each sets every encoder group's "
                          "learning rate.")
    if backbone_lr_ratio is not None and not 0 < backbone_lr_ratio <= 1:
        raise ConfigError(f"`backbone_lr_ratio` should be in (0, 1], got {backbone_lr_ratio}.")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"`layer_decay` should be in (0, 1], got {layer_decay}.")
    if weight_decay < 0:
        raise ConfigError(f"`weight_decay` should be >= 0, got {weight_decay}.")
    parts = parts or split_model(model, example_inputs(model, processor))
    if unfreeze == 0:
        return head_param_groups(model, parts, lr, weight_decay)
    if layer_decay is not None:
        return layer_decay_param_groups(model, parts, lr, layer_decay, weight_decay, unfreeze)
    ratio = 1.0 if backbone_lr_ratio is None else backbone_lr_ratio
    return discriminative_param_groups(model, parts, lr, ratio, weight_decay, unfreeze)
