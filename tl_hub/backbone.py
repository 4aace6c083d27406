"""Load any image-classification model with a new head for your labels, and its own image processor.

`load_backbone` loads an ``AutoModelForImageClassification`` checkpoint (a Hub id or a local folder, see
`tl_hub.config.ModelSource`), finds its structure with `tl_hub.structure.split_model` (head, ordered encoder
groups, unused parameters) and re-initialises only the layers that produce the logits.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import nn

from .config import ModelSource
from .errors import ModelError, first_line
from .filenames import CONFIG_FILE
from .paths import looks_local, not_found
from .structure import BATCHNORM_TYPES, LayerGroup, ModelParts, example_inputs, reset_head, split_model

__all__ = ["BATCHNORM_TYPES", "Backbone", "LayerGroup", "ModelParts", "load_backbone", "load_image_processor",
           "split_model"]

logger = logging.getLogger(__name__)

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
        return AutoImageProcessor.from_pretrained(source.location, **source.loading_kwargs(), **_processor_kwargs())
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
    if looks_local(source.location) and not os.path.exists(source.location):
        raise ModelError(not_found(source.location, "model folder") + ". Give the folder of a saved model, or a "
                         "Hub model id (owner/name).")
    try:
        config = AutoConfig.from_pretrained(source.location, **source.loading_kwargs())
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


def load_weights(source: ModelSource, **kwargs: Any):
    """The pretrained weights (``kwargs`` for ``from_pretrained``: new labels, ``output_loading_info``); only
    safetensors unless ``allow_pickle``."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" notice is expected: we log our own
    try:
        return AutoModelForImageClassification.from_pretrained(
            source.location, **source.loading_kwargs(), **kwargs, use_safetensors=None if source.allow_pickle else True,
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


NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def identity_norms(model: nn.Module) -> int:
    """Start every normalisation layer of a randomly initialised model as PyTorch does: scale 1, shift 0, BatchNorm
    statistics 0 / 1 updated at PyTorch's default momentum (0.1) or faster.

    Some architectures' ``_init_weights`` draw the scales from ``N(0, 0.02)`` like a linear layer's weights
    (transformers' EfficientNet does): each block then shrinks its input about 50-fold and a deep network's output
    is ~1e-29, which no optimizer recovers from (a scratch baseline stuck at chance).  And a checkpoint's slow
    BatchNorm momentum (EfficientNet-Lite0's 0.01) suits its long pretraining; over a short run from random weights
    the running statistics would stay near their initial values, and evaluation would see the wrong scale.
    Returns how many layers were reset."""
    reset = 0
    for module in model.modules():
        if isinstance(module, NORMS) and getattr(module, "weight", None) is not None:
            module.reset_parameters()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
                module.momentum = max(module.momentum, 0.1)
            reset += 1
    return reset


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
    commit = getattr(config, "_commit_hash", None) or resolved_commit(source.location, source.revision,
                                                                           source.cache_dir)
    if pretrained:
        model = load_weights(source, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)
    else:
        config.id2label, config.label2id = id2label, label2id
        config.num_labels = len(labels)
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=source.trust_remote_code)
        identity_norms(model)
    parts = split_model(model, example_inputs(model, processor), num_labels=len(labels))
    reset_head(model, parts)
    logger.info(
        "Loaded %s (%s) with a new %d-class head %s; encoder groups: %s",
        source.id, "pretrained" if pretrained else "random init", len(labels), list(parts.head),
        ", ".join(g.name for g in parts.groups),
    )
    return Backbone(model=model, processor=processor, parts=parts, source=source.id, revision=commit,
                    pretrained=pretrained)
