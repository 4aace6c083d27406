"""Load any image-classification model and find its structure.

`load_backbone` loads an ``AutoModelForImageClassification`` checkpoint (a Hub
id or a local folder) with a fresh head for the new labels, plus the model's own
image processor.  `split_model` finds, without per-architecture tables, which
modules form the head and the ordered encoder layer groups::

    embeddings, block.0, ..., block.{N-1}, norm

The blocks are the largest ``ModuleList``/``Sequential`` inside the base model
(``vit.layers``, ``dinov2.encoder.layer``, ``convnext.encoder.stages``,
``swin.encoder.layers``, ``resnet.encoder.stages``...).  Parameters registered
before it are the embeddings, those after it the final norm.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from .config import ModelSource
from .errors import ModelError, first_line
from .filenames import CONFIG_FILE

logger = logging.getLogger(__name__)

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
        encoder: dotted path of the encoder (the base model), e.g. ``"vit"``.
        head: dotted paths of the head modules, e.g. ``("classifier",)``.
        groups: encoder layer groups ordered from the input up.
    """

    encoder: str
    head: tuple[str, ...]
    groups: tuple[LayerGroup, ...]

    @property
    def blocks(self) -> tuple[LayerGroup, ...]:
        return tuple(g for g in self.groups if g.kind == "block")

    def group(self, name: str) -> LayerGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def head_params(self, model: nn.Module) -> list[str]:
        names = []
        for h in self.head:
            names += [f"{h}.{n}" for n, _ in model.get_submodule(h).named_parameters()]
        return names

    def encoder_params(self) -> list[str]:
        return [p for g in self.groups for p in g.params]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def find_head(model: nn.Module) -> tuple[str, tuple[str, ...]]:
    """Return ``(encoder_path, head_paths)`` of a classification model.

    The model is asked first (``base_model_prefix`` of transformers models,
    ``get_classifier()`` as in timm); otherwise the last child with parameters
    is taken as the head and the rest as the encoder.
    """
    children = [(n, m) for n, m in model.named_children() if _n_params(m) > 0]
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and hasattr(model, prefix) and isinstance(getattr(model, prefix), nn.Module):
        head = tuple(n for n, _ in children if n != prefix)
        if head:
            return prefix, head
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        clf = get_classifier()
        for n, m in model.named_modules():
            if m is clf and n:
                rest = [c for c, _ in children if c != n.split(".")[0]]
                if len(rest) == 1:
                    return rest[0], (n,)
    if len(children) < 2:
        raise ModelError(
            f"Could not tell the head from the encoder of {type(model).__name__}: it should have an encoder "
            "module and a classifier module. Use an AutoModelForImageClassification architecture."
        )
    return children[0][0], tuple(n for n, _ in children[1:])


def _blocks_container(encoder: nn.Module) -> Optional[str]:
    """Dotted path (relative to ``encoder``) of the module list holding the blocks."""
    total = _n_params(encoder)
    best, best_n = None, 0
    for name, module in encoder.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2:
            n = _n_params(module)
            if n > best_n or (n == best_n and best is not None and name.count(".") < best.count(".")):
                best, best_n = name, n
    if best is not None and best_n >= 0.5 * total:
        return best
    return None


def _unwrap_single_children(encoder: nn.Module) -> str:
    """With no block list, the encoder's children are the blocks: descend through wrappers that hold a single
    child with parameters, and return the path of the module whose children are the blocks."""
    path, module = "", encoder
    while True:
        kids = [(n, m) for n, m in module.named_children() if _n_params(m) > 0]
        if len(kids) != 1 or any(True for _ in module.named_parameters(recurse=False)):
            return path
        path, module = _join(path, kids[0][0]), kids[0][1]


def _around_blocks(encoder: nn.Module, enc_path: str, container: str):
    """Walk the chain encoder -> ... -> container: siblings before each step are embeddings, siblings after are
    the final norm.  Returns ``(pre_modules, post_modules, direct_params, blocks_prefix)``."""
    pre_modules, post_modules, direct_params = [], [], []
    module, prefix = encoder, enc_path
    for step in container.split(".") if container else []:
        direct_params += [_join(prefix, n) for n, _ in module.named_parameters(recurse=False)]
        seen = False
        for name, child in module.named_children():
            if name == step:
                seen = True
            elif _n_params(child) > 0:
                (post_modules if seen else pre_modules).append(_join(prefix, name))
        module, prefix = module.get_submodule(step), _join(prefix, step)
    return pre_modules, post_modules, direct_params, prefix


def split_model(model: nn.Module) -> ModelParts:
    """Find the head and the ordered encoder layer groups of ``model``.

    Args:
        model (`nn.Module`): an image-classification model, e.g. ``ViTForImageClassification``.

    Returns:
        `ModelParts`: the encoder path, head paths and groups
        ``embeddings, block.0 .. block.{N-1}, norm`` (empty groups are left out).

    Example:
        >>> parts = split_model(model)
        >>> [g.name for g in parts.groups]
        ['embeddings', 'block.0', 'block.1', 'norm']
    """
    enc_path, head = find_head(model)
    encoder = model.get_submodule(enc_path)
    container = _blocks_container(encoder)
    if container is None:
        container = _unwrap_single_children(encoder)
    blocks_module = encoder.get_submodule(container) if container else encoder
    block_names = [n for n, m in blocks_module.named_children() if _n_params(m) > 0]

    pre_modules, post_modules, direct_params, blocks_prefix = _around_blocks(encoder, enc_path, container)

    def params_of(paths: Sequence[str]) -> tuple[str, ...]:
        out = []
        for p in paths:
            out += [_join(p, n) for n, _ in model.get_submodule(p).named_parameters()]
        return tuple(out)

    groups = []
    emb_params = tuple(direct_params) + params_of(pre_modules)
    if emb_params:
        groups.append(LayerGroup("embeddings", "embeddings", tuple(pre_modules), emb_params))
    for i, name in enumerate(block_names):
        path = _join(blocks_prefix, name)
        groups.append(LayerGroup(f"block.{i}", "block", (path,), params_of([path])))
    if post_modules:
        groups.append(LayerGroup("norm", "norm", tuple(post_modules), params_of(post_modules)))
    if not any(g.kind == "block" for g in groups):
        raise ModelError(f"Found no encoder blocks in {type(model).__name__}; it cannot be fine-tuned by groups.")
    return ModelParts(encoder=enc_path, head=head, groups=tuple(groups))


def reset_head(model: nn.Module, parts: ModelParts, std: Optional[float] = None) -> None:
    """Re-initialise the head (even when the checkpoint's head had the right shape).

    Linear and convolution weights get a truncated normal with the model's
    ``initializer_range`` (0.02 by default), biases zeros; norm layers are reset.
    """
    if std is None:
        std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02) or 0.02)
    with torch.no_grad():
        for path in parts.head:
            for m in model.get_submodule(path).modules():
                if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d)):
                    nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.LayerNorm, nn.GroupNorm) + BATCHNORM_TYPES):
                    m.reset_parameters()


# ---------------------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class Backbone:
    """A loaded model ready for a recipe.

    Attributes:
        model: the ``...ForImageClassification`` model with a head for the new labels.
        processor: the model's own image processor.
        parts: head and encoder groups, see `split_model`.
        source: the model id or path it was loaded from.
        revision: the resolved commit of a Hub checkpoint (``None`` for local folders).
        pretrained: whether pretrained weights were loaded (``False`` for scratch).
    """

    model: nn.Module
    processor: object
    parts: ModelParts
    source: str
    revision: Optional[str] = None
    pretrained: bool = True


def _processor_kwargs() -> dict:
    # Without torchvision, ask for the PIL processors directly instead of a fallback warning.
    return {} if importlib.util.find_spec("torchvision") else {"backend": "pil"}


def load_image_processor(source: Union[str, ModelSource], **options):
    """Load the image processor that belongs to ``source`` (a Hub id or folder, or a `ModelSource`)."""
    from transformers import AutoImageProcessor

    source = ModelSource.of(source, **options)
    name = source.id
    try:
        return AutoImageProcessor.from_pretrained(name, **source.loading_kwargs(), **_processor_kwargs())
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(
            f"'{name}' has no usable image processor (preprocessor_config.json): {first_line(e)}. tl-hub "
            "preprocesses with the model's own processor; save the processor of the checkpoint next to its weights."
        ) from None


def load_config(source: ModelSource):
    """The model's config, checked to be one transformers can build an image classifier from."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    name, trust_remote_code = source.id, source.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(name, **source.loading_kwargs())
    except (OSError, ValueError, KeyError) as e:
        msg = first_line(e)
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"'{name}' needs custom code from its repository; pass trust_remote_code=True "
                "(--trust-remote-code) only if you trust it."
            ) from None
        raise ModelError(
            f"Could not load model '{name}': it is neither a local folder with a config.json nor a model id "
            f"that could be fetched from the Hub ({msg}). Check the name, or pass the path of a saved model."
        ) from None
    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES and not (
        trust_remote_code and "AutoModelForImageClassification" in auto_map
    ):
        raise ModelError(
            f"'{name}' is a '{config.model_type}' model, which has no image-classification architecture in "
            "transformers. Use an image classification checkpoint (ViT, DeiT, ConvNeXt, ResNet, Swin, DINOv2, ...)."
        )
    return config


def resolved_commit(name: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> Optional[str]:
    """The commit a Hub checkpoint was loaded from (its snapshot folder in the cache); ``None`` for local folders."""
    if os.path.isdir(name):
        return None
    try:
        from transformers.utils import cached_file

        path = cached_file(name, CONFIG_FILE, revision=revision, cache_dir=cache_dir)
    except Exception:  # not resolvable: nothing to pin
        return None
    parts = os.path.normpath(path).split(os.sep) if path else []
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        return parts[parts.index("snapshots") + 1]
    return None


def _load_pretrained(source: ModelSource, id2label: dict, label2id: dict) -> nn.Module:
    """The pretrained weights with a new head for the labels; only safetensors unless ``allow_pickle``."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" notice is expected: we log our own
    try:
        return AutoModelForImageClassification.from_pretrained(
            source.id, **source.loading_kwargs(), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True,
            use_safetensors=None if source.allow_pickle else True,
        )
    except Exception as e:  # OSError, ValueError, safetensors' SafetensorError for a damaged file, ...
        text = str(e)
        if not source.allow_pickle and ("safetensors" in text or "model.safetensors" in text):
            raise ModelError(
                f"'{source.id}' has no safetensors weights, only a pickle checkpoint. Pickle files can run code "
                "when loaded: pass allow_pickle=True (--allow-pickle) if you trust the source, or convert it "
                "to safetensors."
            ) from None
        raise ModelError(f"Could not load the weights of '{source.id}' ({type(e).__name__}: {first_line(e)}); the "
                         "file may be damaged: download or save it again.") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_backbone(source: Union[str, ModelSource], labels: Sequence[str], *, pretrained: bool = True,
                  **options: Any) -> Backbone:
    """Load ``source`` with a new head for ``labels`` and its image processor.

    Args:
        source (`str` or `ModelSource`): a Hub model id (``"google/vit-base-patch16-224-in21k"``) or a local
            folder, with its loading options (revision, trust_remote_code, allow_pickle, cache_dir).
        labels (`Sequence[str]`): class names, in label-id order.
        pretrained (`bool`, defaults to `True`): load the pretrained weights; ``False`` builds the same
            architecture randomly initialised (the scratch baseline).
        **options: loading options when ``source`` is a string (see `ModelSource`).

    Returns:
        `Backbone`

    Raises:
        ModelError: unknown id or path, not an image-classification model, pickle-only checkpoint without
            ``allow_pickle``, missing image processor.
    """
    from transformers import AutoModelForImageClassification

    source = ModelSource.of(source, **options)
    labels = [str(l) for l in labels]
    id2label = dict(enumerate(labels))
    label2id = {l: i for i, l in id2label.items()}
    config = load_config(source)
    processor = load_image_processor(source)
    commit = getattr(config, "_commit_hash", None) or resolved_commit(source.id, source.revision, source.cache_dir)
    if pretrained:
        model = _load_pretrained(source, id2label, label2id)
    else:
        config.id2label, config.label2id = id2label, label2id
        config.num_labels = len(labels)
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=source.trust_remote_code)
    parts = split_model(model)
    reset_head(model, parts)
    logger.info(
        "Loaded %s (%s) with a new %d-class head %s; encoder groups: %s",
        source.id, "pretrained" if pretrained else "random init", len(labels), list(parts.head),
        ", ".join(g.name for g in parts.groups),
    )
    return Backbone(model=model, processor=processor, parts=parts, source=source.id, revision=commit,
                    pretrained=pretrained)
