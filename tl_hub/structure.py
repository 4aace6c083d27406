"""The structure of any image classifier, found by running it: the head, the ordered encoder groups, and the
parameters its forward never uses.

`split_model` runs the model once on a one-image input (eval mode, so no BatchNorm statistic moves) with hooks on
every module, then back-propagates the logits:

- **head**: the layers that produce the logits: the used layers with one output per label, run after the last
  encoder block (one for most models; two for distilled heads such as DeiT's, LeViT's and SwiftFormer's).  What
  sits between the encoder and those layers (final norms, pooling norms, a classifier's BatchNorm) stays with the
  pretrained encoder.
- **blocks**: the children of the largest ``ModuleList``/``Sequential`` (``vit.encoder.layer``,
  ``convnext.encoder.stages``, ``swin.encoder.layers`` ...); a child that is a *stage* (it holds a list of two
  or more blocks) contributes its blocks, so depth counts blocks across stages as in a ViT.  A stage's other layers
  (a downsampling layer, a stage norm) go with the block that runs after them.
- **embeddings** / **norm**: what runs before the first block / after the last one (outside the head).
- **unused**: parameters that get no gradient (DINOv2's ``mask_token``, CLIP's ``post_layernorm``, SigLIP's
  pooling head in the classification model): never trained, so that DDP sees no unused parameter.

Groups are ordered from the input up::

    embeddings, block.0, ..., block.{N-1}, norm
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .errors import ModelError, first_line

BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


@dataclass(frozen=True)
class LayerGroup:
    """One unit of freezing and learning-rate scaling.

    Attributes:
        name: ``"embeddings"``, ``"block.<i>"`` or ``"norm"``.
        kind: ``"embeddings"``, ``"block"`` or ``"norm"``.
        modules: dotted paths of the modules that belong wholly to the group.
        params: dotted names of the parameters of the group.
    """

    name: str
    kind: str
    modules: tuple[str, ...]
    params: tuple[str, ...]


@dataclass(frozen=True)
class ModelParts:
    """Where the encoder and the head of a classification model are.

    Attributes:
        encoder: dotted path of the main encoder module (the base model), e.g. ``"vit"``.
        head: dotted paths of the layers that produce the logits, e.g. ``("classifier",)``.
        groups: encoder layer groups ordered from the input up.
        body: the largest modules that hold no head layer: everything kept frozen in feature extraction.
        unused: parameters the forward never uses (never trained).
    """

    encoder: str
    head: tuple[str, ...]
    groups: tuple[LayerGroup, ...]
    body: tuple[str, ...] = ()
    unused: tuple[str, ...] = field(default=())

    @property
    def blocks(self) -> tuple[LayerGroup, ...]:
        """The encoder's blocks (groups of kind ``"block"``), from the input to the output."""
        return tuple(g for g in self.groups if g.kind == "block")

    def group(self, name: str) -> LayerGroup:
        """The group called ``name`` (``KeyError`` if there is none)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def head_params(self, model: nn.Module) -> list[str]:
        """The names of the head's parameters in ``model``."""
        return [f"{h}.{n}" for h in self.head for n, _ in model.get_submodule(h).named_parameters()]

    def encoder_params(self) -> list[str]:
        """The names of the encoder's parameters, group by group."""
        return [p for g in self.groups for p in g.params]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _inside(path: str, roots) -> bool:
    return any(path == r or path.startswith(r + ".") for r in roots)


# ---------------------------------------------------------------------------------------------------------------------
# The dry run


def example_inputs(model: nn.Module, processor=None) -> dict:
    """A one-image input: the processor's output for a grey image, else pixel values shaped from the config."""
    if processor is not None:
        from PIL import Image

        return dict(processor(images=[Image.new("RGB", (64, 64), (128, 128, 128))], return_tensors="pt"))
    config = model.config
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None) or 224
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
    return {"pixel_values": torch.zeros(1, getattr(vision, "num_channels", 3) or 3, height, width)}


def logits_of(output) -> torch.Tensor:
    """The logits of a model's output: ``.logits``, or the output itself / its first element."""
    if getattr(output, "logits", None) is not None:
        return output.logits
    if hasattr(output, "to_tuple"):  # a ModelOutput without logits: PP-LCNet returns its scores first
        output = output.to_tuple()
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise ModelError(f"The model returned {type(output).__name__}, not a (batch, labels) tensor of logits; use an "
                         "image-classification architecture (AutoModelForImageClassification).")
    return output


def first_parameter(model: nn.Module) -> Optional[torch.Tensor]:
    """The model's first parameter (its device and precision), or None for a model without any: a runtime session
    such as `tl_hub.onnx_runtime.OnnxModel`, which has nothing to place, wrap or train."""
    return next(model.parameters(), None)


def model_inputs(model: nn.Module, batch: dict) -> dict:
    """A batch as the model's keyword arguments: without ``labels``, floating tensors in the model's precision (a
    model kept in float64 or bfloat16 gets its inputs in it; under autocast the weights stay float32)."""
    first = first_parameter(model)  # none: a runtime session, which takes its inputs as they are
    dtype = first.dtype if first is not None else None
    return {k: v.to(dtype) if dtype and torch.is_tensor(v) and v.is_floating_point() and v.dtype != dtype else v
            for k, v in batch.items() if k != "labels"}


@dataclass
class Trace:
    """What one forward and backward showed: each module's first call and last return (a counter), the parameters
    that got a gradient, and the number of logits."""

    start: dict
    end: dict
    used: set
    num_logits: int

    def span(self, path: str) -> tuple[int, int]:
        """When ``path`` and what it holds first ran and last returned (a list such as a stage's ``ModuleList`` is
        never called itself); ``(0, 0)`` if nothing in it ran."""
        inside = [n for n in self.start if _inside(n, [path])]
        if not inside:
            return 0, 0
        return min(self.start[n] for n in inside), max(self.end.get(n, self.start[n]) for n in inside)


def trace(model: nn.Module, inputs: dict) -> Trace:
    """Run ``model`` once on ``inputs`` in eval mode with hooks, back-propagate the logits, and restore the model
    (training mode, ``requires_grad`` flags, no gradients left)."""
    start, end, clock = {}, {}, itertools.count()

    def started(name: str) -> None:
        start.setdefault(name, next(clock))

    def ended(name: str) -> None:
        end[name] = next(clock)

    handles = []
    for name, module in model.named_modules():  # hooks return None: they must not replace inputs or outputs
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: started(n)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: ended(n)))
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            device = next(iter(params.values())).device
            try:
                output = model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()})
            except Exception as e:  # e.g. a vision-language model that needs a text prompt besides the image
                raise ModelError(f"{type(model).__name__} cannot classify an image on its own ({type(e).__name__}: "
                                 f"{first_line(e)}); tl-hub trains models whose input is the image.") from None
            logits = logits_of(output)
            logits.float().sum().backward()
        used = {n for n, p in params.items() if p.grad is not None}
    finally:
        for h in handles:
            h.remove()
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(flags[n])
        model.train(True)  # drops what eval mode caches (LeViT's attention biases, built with gradients here)
        model.train(was_training)
    return Trace(start, end, used, int(logits.shape[-1]))


# ---------------------------------------------------------------------------------------------------------------------
# Blocks, head, groups


def _lists(model: nn.Module, root: str, least: int = 2, include_root: bool = False):
    """``(path, param children)`` of every ``ModuleList``/``Sequential`` below ``root`` (``root`` itself too with
    ``include_root``) with at least ``least`` children that have parameters (absolute paths)."""
    module = model.get_submodule(root) if root else model
    for name, m in module.named_modules(prefix=root):
        if (name != root or include_root) and isinstance(m, (nn.ModuleList, nn.Sequential)):
            kids = [_join(name, k) for k, c in m.named_children() if _n_params(c) > 0]
            if len(kids) >= least:
                yield name, kids


def _weighted_layers(module: nn.Module) -> int:
    """How many modules below ``module`` hold parameters of their own."""
    return sum(1 for m in module.modules() if any(True for _ in m.parameters(recurse=False)))


def _largest_list(model: nn.Module) -> Optional[tuple]:
    """The list holding the most parameters of the model (ties: the shallower), if it holds at least half; else the
    largest list of two or more layers (Perceiver: its self-attention layers, after a large cross-attention)."""
    ranked = sorted(_lists(model, "", least=1),
                    key=lambda f: (-_n_params(model.get_submodule(f[0])), f[0].count(".")))
    if ranked and _n_params(model.get_submodule(ranked[0][0])) >= 0.5 * _n_params(model):
        return ranked[0]
    return next((f for f in ranked if len(f[1]) >= 2), None)


def _stage_blocks(model: nn.Module, stage: str) -> Optional[list[str]]:
    """The blocks of ``stage`` if it is a stage: its shallowest list holding most of its parameters has two or more
    children, each a block of three or more layers (not a conv + norm unit, not an MLP's linear layers)."""
    total = _n_params(model.get_submodule(stage))
    found = [(path, kids) for path, kids in _lists(model, stage, least=1, include_root=True)
             if _n_params(model.get_submodule(path)) >= 0.5 * total]
    if not found:
        return None
    path, kids = min(found, key=lambda f: f[0].count("."))
    if len(kids) >= 2 and all(_weighted_layers(model.get_submodule(k)) >= 3 for k in kids):
        return kids
    return None


def find_blocks(model: nn.Module) -> list[str]:
    """Paths of the encoder blocks in order: the children of the largest list, a stage's children counted as
    blocks (see the module docstring)."""
    found = _largest_list(model)
    if found is None:
        raise ModelError(f"Found no encoder blocks in {type(model).__name__} (no list of layers holding most of its "
                         "parameters); it cannot be fine-tuned by groups.")
    blocks = []
    for child in found[1]:
        blocks += _stage_blocks(model, child) or [child]
    return blocks


def find_head(model: nn.Module, tr: Trace, blocks: list[str]) -> tuple[str, ...]:
    """The used layers with ``tr.num_logits`` outputs that run after the last block: the layers making the logits."""
    after = max((tr.span(b)[1] for b in blocks), default=-1)
    head = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if (weight is None or weight.ndim < 2 or weight.shape[0] != tr.num_logits
                or f"{name}.weight" not in tr.used or _inside(name, blocks)):
            continue
        if tr.start.get(name, after + 1) > after:
            head.append(name)
    if not head:
        raise ModelError(f"Could not find the layer of {type(model).__name__} that produces its {tr.num_logits} "
                         "logits; use an AutoModelForImageClassification architecture.")
    return tuple(head)


def _time(path: str, tr: Trace) -> int:
    """When ``path`` (or what it holds) first ran; its nearest ancestor's time for parameters used outside any call."""
    while path and tr.span(path) == (0, 0):
        path = path.rpartition(".")[0]
    return tr.span(path)[0] if path else 0


def _assign(model: nn.Module, tr: Trace, blocks: list[str], head: tuple[str, ...]) -> dict[str, list[str]]:
    """Group name -> its parameter names; the unused parameters under ``"unused"``.  A parameter outside the blocks
    goes by when its module ran: before the first block (embeddings), after the last (norm), or in between (with
    the next block, e.g. a stage's downsampling layer)."""
    groups: dict[str, list[str]] = {"embeddings": [], **{f"block.{i}": [] for i in range(len(blocks))},
                                    "norm": [], "unused": []}
    spans = [tr.span(b) for b in blocks]
    starts = [s for s, _ in spans]
    first, last = min(starts), max(e for _, e in spans)
    for name, _ in model.named_parameters():
        owner = name.rpartition(".")[0]
        if _inside(owner, head):
            continue
        if name not in tr.used:
            groups["unused"].append(name)
            continue
        block = next((i for i, b in enumerate(blocks) if _inside(owner, [b])), None)
        if block is None:
            t = _time(owner, tr)
            later = [i for i, s in enumerate(starts) if s > t]
            if t < first:
                groups["embeddings"].append(name)
                continue
            if t > last or not later:
                groups["norm"].append(name)
                continue
            block = later[0]
        groups[f"block.{block}"].append(name)
    return groups


def _cover(model: nn.Module, params: set) -> tuple[str, ...]:
    """The largest modules all of whose parameters are in ``params``."""
    out: list[str] = []
    for name, module in model.named_modules():
        names = [_join(name, n) for n, _ in module.named_parameters()]
        if name and names and all(n in params for n in names) and not _inside(name, out):
            out.append(name)
    return tuple(out)


def _body(model: nn.Module, head: tuple[str, ...]) -> tuple[str, ...]:
    """The largest modules that hold no head layer."""
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for n, child in module.named_children():
            path = _join(prefix, n)
            if path in head:
                continue
            if any(h.startswith(path + ".") for h in head):
                visit(path, child)
            else:
                out.append(path)

    visit("", model)
    return tuple(out)


def split_model(model: nn.Module, inputs: Optional[dict] = None, num_labels: Optional[int] = None) -> ModelParts:
    """Find the head, the ordered encoder layer groups and the unused parameters of ``model``.

    Args:
        model (`nn.Module`): an image-classification model, e.g. ``ViTForImageClassification``.
        inputs (`dict`, *optional*): one example input (default: `example_inputs`, shaped from the config).
        num_labels (`int`, *optional*): the logits the model must produce; a head of another size (a checkpoint
            whose head ignores the new labels) is replaced by one of this size.

    Returns:
        `ModelParts`: the encoder path, head paths and groups ``embeddings, block.0 .. block.{N-1}, norm`` (empty
        groups are left out).

    Example:
        >>> parts = split_model(model)
        >>> [g.name for g in parts.groups]
        ['embeddings', 'block.0', 'block.1', 'norm']
    """
    inputs = inputs if inputs is not None else example_inputs(model)
    tr = trace(model, inputs)
    blocks = find_blocks(model)
    head = find_head(model, tr, blocks)
    if num_labels is not None and tr.num_logits != num_labels:
        resize_head(model, head, num_labels)
        tr = trace(model, inputs)
        if tr.num_logits != num_labels:
            raise ModelError(f"{type(model).__name__} produces {tr.num_logits} logits after its head was resized to "
                             f"{num_labels} labels; this architecture cannot be given new labels.")
    assigned = _assign(model, tr, blocks, head)
    groups = []
    for name, params in assigned.items():
        if params and name != "unused":
            kind = name.split(".")[0]
            groups.append(LayerGroup(name, kind, _cover(model, set(params)), tuple(params)))
    body = _body(model, head)
    prefix = getattr(model, "base_model_prefix", "")
    encoder = prefix if prefix in body else max(body, key=lambda p: _n_params(model.get_submodule(p)))
    return ModelParts(encoder=encoder, head=head, groups=tuple(groups), body=body, unused=tuple(assigned["unused"]))


def resize_head(model: nn.Module, head: tuple[str, ...], num_labels: int) -> None:
    """Replace the linear head layers by layers with ``num_labels`` outputs (and record the labels count in the
    config), for architectures whose head ignores the labels given at loading."""
    for path in head:
        old = model.get_submodule(path)
        if not isinstance(old, nn.Linear):
            raise ModelError(f"The head layer {path!r} of {type(model).__name__} is a {type(old).__name__}, not a "
                             "linear layer; it cannot be resized to the new labels.")
        new = nn.Linear(old.in_features, num_labels, bias=old.bias is not None)
        model.set_submodule(path, new.to(old.weight.device, old.weight.dtype))
    if getattr(model, "config", None) is not None:
        model.config.num_labels = num_labels


def reset_head(model: nn.Module, parts: ModelParts, std: Optional[float] = None) -> None:
    """Re-initialise the head layers (even when the checkpoint's head had the right shape): a truncated normal with
    the model's ``initializer_range`` (0.02 by default) for weights, zeros for biases."""
    if std is None:
        std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02) or 0.02)
    with torch.no_grad():
        for path in parts.head:
            module = model.get_submodule(path)
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
