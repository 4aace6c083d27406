"""A zoo of tiny but realistically deep image classifiers: one recipe per transformers model type.

Every model type in ``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES`` is enumerated at import time (`TYPES`), so a
type added by a later transformers release shows up as "no recipe" (`NoRecipe`, and `missing_recipes()`) instead of
being silently left out. A type is in `SKIP` only when it cannot be built here at all (a missing dependency); the
reason says what is missing.

The recipes keep widths tiny (hidden sizes about 8-32, image size 32, 64 where the architecture needs it) but keep
the *depth* of a real checkpoint: stage depth lists such as ConvNeXt-T's [3, 3, 9, 3], Swin-T's [2, 2, 6, 2] or
ResNet-50's [3, 4, 6, 3], and at least 4 layers for ViT-like encoders. That way code that walks, groups, freezes or
re-maps layers (layer-wise learning rates, partial freezing, PEFT target modules, state-dict surgery) sees the same
module structure as on a real checkpoint, for a checkpoint of a few hundred kB that builds in well under a second.

``save_tiny(model_type, folder)`` saves such a model (safetensors) with its own image processor, as a stand-in for a
pretrained checkpoint (`build_tiny` gives the same model in memory). Its BatchNorm layers carry statistics of real
activations (`calibrate_batch_norm`), as a trained network's do; without them these narrow nets' eval-mode outputs
vanish and stop depending on the image. With ``shift=True`` (the default) every saved floating tensor - parameters
and persistent buffers, BatchNorm running statistics included - gets its own non-zero offset (`shift_tensors`), so
a loader that re-initialises a "pretrained" tensor (even a bias that is zero at init, or a LayerNorm weight that is
one) is caught by comparing with the saved tensors.

Quirks worth knowing (see `NOTES`):

* the processor output keys differ by type: most return ``pixel_values`` only; siglip2 adds ``pixel_attention_mask``
  and ``spatial_shapes``; shieldgemma2's Gemma 3 processor adds ``num_crops``; imagegpt returns ``input_ids``
  (colour-quantised pixels) instead of pixel values;
* shieldgemma2 is a vision-language model: its forward needs ``input_ids`` with image tokens (`model_inputs` builds
  them) and its logits are always (batch, 2), the Yes/No token logits, whatever ``num_labels`` says;
* pp_lcnet's classifier returns its class scores as ``last_hidden_state``: there is no ``.logits``;
* some types have no PIL image processor here (torchvision is absent) or none in the AutoImageProcessor mapping at
  all; those get the closest PIL processor instead (`processor_substitute`);
* ``model.safetensors`` holds the original (Hub) tensor names, which for several types (vit, deit, dinov2, beit,
  ijepa, segformer, swin, shieldgemma2, ...) differ from the module names of transformers 5: compare a loaded
  model's ``state_dict()`` with `build_tiny`'s, not with the file's keys.

Usage::

    from support.arch_zoo import TYPES, SKIP, save_tiny
    for model_type in TYPES:
        if model_type not in SKIP:
            folder = save_tiny(model_type, str(tmp_path / model_type))
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from transformers.models.auto.image_processing_auto import (
    IMAGE_PROCESSOR_MAPPING_NAMES,
    get_image_processor_class_from_name,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

__all__ = [
    "NOTES",
    "RECIPES",
    "SKIP",
    "TYPES",
    "NoRecipe",
    "build_tiny",
    "calibrate_batch_norm",
    "depth_summary",
    "image_size",
    "missing_recipes",
    "model_inputs",
    "random_images",
    "processor_substitute",
    "save_tiny",
    "shift_tensors",
    "tiny_config",
    "tiny_processor",
]

TYPES: list[str] = sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
"""Every model type transformers can build an image classifier for, read from the installed release."""


class NoRecipe(KeyError):
    """The model type is new to this zoo: add a recipe to `RECIPES` (and an image size / processor if needed)."""


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _natten_problem() -> str | None:
    if not _has("natten"):
        return (
            "needs `natten` (neighbourhood attention), which is not installed. No natten wheel installs here (`pip "
            "download --only-binary=:all: natten` finds none, for any version: the index has sdists only), so it "
            "would have to be compiled against this torch; and transformers' DiNAT imports "
            "`natten.functional.natten2dqkrpb`/`natten2dav`, which natten 0.15.1 has but 0.17.5, 0.20.1 and 0.21.7 "
            "do not (they have na2d/na2d_qk/na2d_av), so only an old natten with its C++ extension `libnatten` works"
        )
    try:
        from natten.functional import natten2dav, natten2dqkrpb  # noqa: F401
    except ImportError as e:
        return f"the installed natten lacks natten2dqkrpb/natten2dav, which transformers' DiNAT imports ({e})"
    return None


def _timm_problem() -> str | None:
    if not _has("torchvision"):
        return (
            "needs `timm`, and timm imports torchvision unconditionally (timm/layers/create_norm.py: "
            "`from torchvision.ops.misc import FrozenBatchNorm2d`; checked for timm 1.0.23, the oldest release "
            "transformers accepts, and 1.0.31, the newest) and TimmWrapperImageProcessor itself requires torchvision; "
            "torchvision is not installed here"
        )
    if not _has("timm"):
        return "needs `timm` (>= 1.0.23), which is not installed"
    return None


def _skips() -> dict[str, str]:
    checks = {"dinat": _natten_problem, "timm_wrapper": _timm_problem}
    found = {t: check() for t, check in checks.items() if t in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES}
    return {t: reason for t, reason in found.items() if reason}


SKIP: dict[str, str] = _skips()
"""model_type -> why it cannot be built here. Once the dependency is there the type becomes "no recipe"."""

# ----------------------------------------------------------------------------------------------------------------
# Config recipes: model_type -> keyword arguments of its config class (AutoConfig.for_model).
# ----------------------------------------------------------------------------------------------------------------

_S = 32  # the default image size


def _vit(**extra) -> dict:
    """A ViT-like encoder: 4 layers, width 32, 2 heads, 32x32 images in 8x8 patches (16 tokens)."""
    return dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=_S,
                patch_size=8, **extra)


def _clip_like(**vision_extra) -> dict:
    """A dual-encoder config (CLIP, SigLIP, ...): only the vision tower is used for classification."""
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=_S,
                  patch_size=8, **vision_extra)
    return dict(text_config=text, vision_config=vision)


def _swin(**extra) -> dict:
    """Swin-T depths [2, 2, 6, 2]; widths 8-64; 64x64 images give 16/8/4/2 tokens a side, windows of 2.

    As in Swin-T (56/28/14/7 with windows of 7) the last stage is exactly one window and the others use shifted
    windows; 32x32 images would leave a 1x1 last stage, smaller than the window, which Swin cannot run.
    """
    return dict(image_size=64, patch_size=4, embed_dim=8, depths=[2, 2, 6, 2], num_heads=[1, 2, 4, 8],
                window_size=2, **extra)


def _efficientnet() -> dict:
    # EfficientNet-B0's block structure (16 MBConv blocks in 7 stages) at 1/8 of its width; hidden_dim must be the
    # width of the final 1x1 conv, round_filters(1280).
    width, divisor = 0.125, 8
    channels = 1280 * width
    hidden = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    hidden += divisor if hidden < 0.9 * channels else 0
    return dict(image_size=_S, width_coefficient=width, depth_coefficient=1.0, depth_divisor=divisor,
                num_block_repeats=[1, 2, 2, 3, 3, 4, 1], hidden_dim=hidden, dropout_rate=0.2)


def _shieldgemma2() -> dict:
    # Gemma 3 with a SigLIP vision tower (4 layers). The vocabulary must hold the Yes/No token ids the head reads
    # (10784 and 3771, ShieldGemma2ForImageClassification's defaults), so it is 10800 tokens; the image tokens are
    # put inside it. A 4x4-patch image is pooled to mm_tokens_per_image = 4 soft tokens.
    text = dict(vocab_size=10800, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                max_position_embeddings=64)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=_S,
                  patch_size=8)
    return dict(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=10790,
                eoi_token_index=10791, image_token_index=10792)


RECIPES: dict[str, Callable[[], dict]] = {
    "beit": lambda: _vit(use_relative_position_bias=True, use_mean_pooling=True),
    "bit": lambda: dict(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[3, 4, 6, 3], num_groups=2,
                        layer_type="preactivation", global_padding="SAME", embedding_dynamic_padding=True),
    "clip": lambda: _clip_like(projection_dim=16),
    "convnext": lambda: dict(hidden_sizes=[8, 16, 24, 32], depths=[3, 3, 9, 3], image_size=_S),
    "convnextv2": lambda: dict(hidden_sizes=[8, 16, 24, 32], depths=[3, 3, 9, 3], image_size=_S),
    # CvT-13: depth [1, 2, 10]
    "cvt": lambda: dict(embed_dim=[8, 16, 32], num_heads=[1, 2, 4], depth=[1, 2, 10]),
    "data2vec-vision": lambda: _vit(use_relative_position_bias=True, use_mean_pooling=True),
    "deit": lambda: _vit(),
    "dinov2": lambda: _vit(),
    "dinov2_with_registers": lambda: _vit(num_register_tokens=4),
    "donut-swin": lambda: _swin(),
    "efficientnet": _efficientnet,
    # FocalNet-T (srf): depths [2, 2, 6, 2]; hidden_sizes must double from embed_dim like the real ones
    "focalnet": lambda: dict(image_size=_S, patch_size=4, embed_dim=8, hidden_sizes=[16, 32, 64, 64],
                             depths=[2, 2, 6, 2], focal_levels=[2, 2, 2, 2], focal_windows=[3, 3, 3, 3]),
    # HGNetV2-B4's block layout (blocks per stage [1, 1, 3, 1], 6 conv layers in every block, light blocks and 5x5
    # kernels in stages 3-4); depths/hidden_sizes only describe it (they feed the backbone API)
    "hgnet_v2": lambda: dict(stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 24, 32],
                             stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 24, 32, 32],
                             stage_num_blocks=[1, 1, 3, 1], stage_numb_of_layers=[6, 6, 6, 6],
                             stage_light_block=[False, False, True, True], stage_kernel_size=[3, 3, 5, 5],
                             depths=[1, 1, 3, 1], hidden_sizes=[16, 24, 32, 32], embedding_size=8),
    # Hiera-B: depths [2, 3, 16, 3]; 32x32 images are one 8x8-token mask unit
    "hiera": lambda: dict(embed_dim=8, image_size=[_S, _S], depths=[2, 3, 16, 3], num_heads=[1, 2, 4, 8]),
    "ijepa": lambda: _vit(),
    # ImageGPT: 32x32 pixels = 1024 tokens from a 16-colour palette (+1 start token)
    "imagegpt": lambda: dict(vocab_size=17, n_positions=_S * _S, n_embd=32, n_layer=4, n_head=2),
    # LeViT-128: depths [4, 4, 4]; its 16x patch stem needs 64x64 images to keep 4x4 / 2x2 / 1x1 stages
    "levit": lambda: dict(image_size=64, hidden_sizes=[16, 24, 32], num_attention_heads=[2, 3, 4],
                          depths=[4, 4, 4], key_dim=[8, 8, 8]),
    "metaclip_2": lambda: _clip_like(projection_dim=16),
    # MobileNet V1/V2: fixed layer lists (13 separable convs; 17 inverted residuals), made narrow by the multiplier
    "mobilenet_v1": lambda: dict(image_size=_S, depth_multiplier=0.0625, min_depth=8),
    "mobilenet_v2": lambda: dict(image_size=_S, depth_multiplier=0.25, finegrained_output=False),
    # MobileViT: transformer depths are fixed (2, 4, 3); widths below MobileViT-XXS; 64x64 images keep a 2x2 map
    # (one 2x2 patch) in the last stage, where 32x32 would leave 1x1 (v2 cannot unfold that)
    "mobilevit": lambda: dict(image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 64],
                              num_attention_heads=4),
    "mobilevitv2": lambda: dict(image_size=64, width_multiplier=0.125, n_attn_blocks=[2, 4, 3]),
    # Perceiver IO (learned position encodings): the 512-wide input (256 conv + 256 position channels) is fixed by
    # the architecture; latents are tiny, 4 self-attention layers (26 in the real one)
    "perceiver": lambda: dict(image_size=_S, num_latents=16, d_latents=32, d_model=512, qk_channels=32, v_channels=32,
                              num_self_attends_per_block=4, num_self_attention_heads=2, num_cross_attention_heads=1),
    # PoolFormer-S12: depths [2, 2, 6, 2]
    "poolformer": lambda: dict(hidden_sizes=[8, 16, 24, 32], depths=[2, 2, 6, 2]),
    # PP-LCNet x0.25: blocks per stage [1, 2, 2, 6, 2] (the default block_configs), final 1x1 conv 32 wide
    "pp_lcnet": lambda: dict(scale=0.25, class_expand=32),
    # PVT-Tiny: depths [2, 2, 2, 2]
    "pvt": lambda: dict(image_size=_S, hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4],
                        depths=[2, 2, 2, 2]),
    # PVTv2-B2: depths [3, 4, 6, 3]
    "pvt_v2": lambda: dict(image_size=_S, hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4],
                           depths=[3, 4, 6, 3]),
    # RegNetY-040: depths [2, 6, 12, 2]
    "regnet": lambda: dict(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[2, 6, 12, 2], groups_width=8,
                           layer_type="y"),
    # ResNet-50: bottleneck depths [3, 4, 6, 3]
    "resnet": lambda: dict(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[3, 4, 6, 3],
                           layer_type="bottleneck"),
    # MiT-B2: depths [3, 4, 6, 3]
    "segformer": lambda: dict(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4], depths=[3, 4, 6, 3],
                              decoder_hidden_size=32),
    "shieldgemma2": _shieldgemma2,
    "siglip": lambda: _clip_like(),
    # NaFlex: up to 16 patches of 8x8 pixels, the aspect ratio kept; position embeddings for a 4x4 grid
    "siglip2": lambda: {**_clip_like(), "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                                              num_attention_heads=2, patch_size=8, num_patches=16)},
    # SwiftFormer-XS: depths [3, 3, 6, 4]
    "swiftformer": lambda: dict(image_size=_S, embed_dims=[8, 16, 24, 32], depths=[3, 3, 6, 4]),
    "swin": lambda: _swin(),
    "swinv2": lambda: _swin(),
    # TextNet (FAST-T): stage depths [3, 4, 4, 4] with its asymmetric kernels
    "textnet": lambda: dict(image_size=[_S, _S], stem_out_channels=8, hidden_sizes=[8, 8, 16, 24, 32],
                            depths=[3, 4, 4, 4]),
    "vit": lambda: _vit(),
    "vit_msn": lambda: _vit(),
}
"""model_type -> a function returning the keyword arguments of its config (tiny widths, realistic depths)."""

# Where 32x32 is too small for the architecture (see the recipes)
_IMAGE_SIZE = dict.fromkeys(("donut-swin", "levit", "mobilevit", "mobilevitv2", "swin", "swinv2"), 64)

NOTES: dict[str, str] = {
    "imagegpt": "the processor returns input_ids (a palette index per pixel), not pixel_values",
    "siglip2": "the processor returns pixel_values (patches), pixel_attention_mask and spatial_shapes",
    "shieldgemma2": (
        "a vision-language model: forward needs input_ids with image tokens (model_inputs builds them); logits are "
        "the (batch, 2) Yes/No token logits whatever num_labels is; there is no classification head"
    ),
    "pp_lcnet": (
        "PPLCNetForImageClassification returns a BaseModelOutputWithNoAttention: the class scores are in "
        "last_hidden_state, there is no .logits and no loss (it takes no labels)"
    ),
    "pvt": "PvtConfig has its own num_labels field (default 1000) that setting id2label does not update",
    "deit": "two classes in the mapping; from_config needs config.architectures (set by tiny_config)",
    "levit": "two classes in the mapping; from_config needs config.architectures (set by tiny_config)",
    "perceiver": (
        "three classes in the mapping (Learned is the first; from_config needs config.architectures); d_model is "
        "fixed at 512 by PerceiverForImageClassificationLearned (256 conv + 256 position channels)"
    ),
}
"""model_type -> what is unusual about it for a generic image-classification pipeline."""


def missing_recipes() -> list[str]:
    """Model types of the installed transformers with neither a recipe nor a reason to skip."""
    return [t for t in TYPES if t not in RECIPES and t not in SKIP]


def image_size(model_type: str) -> int:
    """The (square) image size the recipe of ``model_type`` is built for."""
    return _IMAGE_SIZE.get(model_type, _S)


def _recipe(model_type: str) -> dict:
    if model_type in SKIP:
        raise ValueError(f"{model_type} cannot be built here: {SKIP[model_type]}")
    if model_type not in RECIPES:
        raise NoRecipe(f"no recipe for model type {model_type!r} (new in this transformers release?): add one to "
                       f"tests/arch_zoo.py RECIPES")
    return RECIPES[model_type]()


def tiny_config(model_type: str, num_labels: int = 5):
    """A config of ``model_type`` with tiny widths and realistic depths, and labels "l0".."l{num_labels-1}"."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **_recipe(model_type))
    config.num_labels = num_labels  # PvtConfig keeps its own num_labels field (1000) that id2label does not change
    config.id2label = {i: f"l{i}" for i in range(num_labels)}
    config.label2id = {f"l{i}": i for i in range(num_labels)}
    # As in a saved checkpoint. Also needed: from_config fails on a config without architectures when the type maps
    # to several classes (deit, levit, perceiver: "'NoneType' object is not iterable" in transformers 5.24).
    classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    config.architectures = [classes[0] if isinstance(classes, (list, tuple)) else classes]
    return config


# ----------------------------------------------------------------------------------------------------------------
# Image processors
# ----------------------------------------------------------------------------------------------------------------

_SUBSTITUTES = {
    # model_type -> (base class name, why)
    "dinov2_with_registers": ("BitImageProcessor", "not in the AutoImageProcessor mapping; the facebook/dinov2-with-"
                                                   "registers-* checkpoints ship BitImageProcessor, as DINOv2 does"),
    "hgnet_v2": ("ConvNextImageProcessor", "not in the AutoImageProcessor mapping; ConvNeXt's resize-then-crop "
                                           "(crop_pct 0.875) matches PaddleClas' resize-256 / crop-224"),
    "pp_lcnet": ("ConvNextImageProcessor", "PPLCNetImageProcessor has only a torchvision backend; ConvNeXt's "
                                           "resize-then-crop (crop_pct 0.875) matches its resize_short 256 / crop "
                                           "224 (without its RGB->BGR flip)"),
}


def _backend() -> str:
    return "torchvision" if _has("torchvision") else "pil"


def _usable(name: str | None):
    cls = get_image_processor_class_from_name(name) if name else None
    return None if cls is None or getattr(cls, "is_dummy", False) else cls


def _own_processor_class(model_type: str):
    """The class AutoImageProcessor maps ``model_type`` to, preferring the backend tl_hub uses; None if unusable."""
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    preferred = _backend()
    for backend in [preferred] + [b for b in names if b != preferred]:
        cls = _usable(names.get(backend))
        if cls is not None:
            return cls
    return None


def processor_substitute(model_type: str) -> str | None:
    """Why ``model_type`` gets another type's image processor here, or None when it gets its own."""
    if _own_processor_class(model_type) is not None:
        return None
    return _SUBSTITUTES.get(model_type, ("?", "no usable image processor and no substitute"))[1]


def _processor_class(model_type: str):
    cls = _own_processor_class(model_type)
    if cls is None and model_type in _SUBSTITUTES:
        base = _SUBSTITUTES[model_type][0]
        cls = _usable(base if _backend() == "torchvision" else base + "Pil") or _usable(base + "Pil")
    if cls is None:
        raise NoRecipe(f"no usable image processor for {model_type!r}")
    return cls


def _hw(s: int) -> dict:
    return {"height": s, "width": s}


def _processor_kwargs(model_type: str, config, s: int) -> dict[str, Any]:
    """Processor settings whose output is an s x s image (or what the model's input format needs) for any input."""
    resize_crop = {"size": {"shortest_edge": s}, "crop_size": _hw(s), "do_center_crop": True}
    convnext = {"size": {"shortest_edge": s}, "crop_pct": 0.875}
    special: dict[str, Callable[[], dict[str, Any]]] = {
        "deit": lambda: {"size": _hw(s * 8 // 7), "crop_size": _hw(s)},  # resize 256, crop 224, scaled
        "beit": lambda: {"size": _hw(s), "do_center_crop": False},
        "data2vec-vision": lambda: {"size": _hw(s), "do_center_crop": False},
        "donut-swin": lambda: {"size": _hw(s), "do_thumbnail": True, "do_pad": True, "do_align_long_axis": False},
        "efficientnet": lambda: {"size": _hw(s), "do_center_crop": False},
        # Perceiver crops (size / crop_size) of the short side, then resizes: 224/256 as in the real one
        "perceiver": lambda: {"size": _hw(s), "crop_size": _hw(s * 8 // 7)},
        "poolformer": lambda: {"size": {"shortest_edge": s}, "crop_size": _hw(s), "crop_pct": 0.9},
        "siglip2": lambda: {"patch_size": config.vision_config.patch_size,
                            "max_num_patches": config.vision_config.num_patches},
        "textnet": lambda: {**resize_crop, "size_divisor": 32},
        "imagegpt": lambda: {"size": _hw(s), "clusters": _palette(config.vocab_size - 1)},
    }
    if model_type in special:
        return special[model_type]()
    cls = _processor_class(model_type)
    if "ConvNext" in cls.__name__:
        return convnext
    if "shortest_edge" in (getattr(cls, "size", None) or {}):
        return resize_crop
    return {"size": _hw(s)}


def _palette(n: int):
    import numpy as np

    return np.random.default_rng(0).uniform(-1, 1, (n, 3)).round(4).tolist()


def tiny_processor(model_type: str, config):
    """The model type's own image processor (PIL backend without torchvision), set up for the tiny config's input.

    Types without a usable processor class of their own get the closest substitute (see `processor_substitute`).
    """
    cls = _processor_class(model_type)
    return cls(**_processor_kwargs(model_type, config, image_size(model_type)))


# ----------------------------------------------------------------------------------------------------------------
# Saving and running
# ----------------------------------------------------------------------------------------------------------------


def shift_tensors(model, scale: float = 0.01) -> int:
    """Add a distinct non-zero offset to every saved floating tensor of ``model``, in place; returns how many.

    "Saved" means the state dict: parameters and persistent buffers (BatchNorm running mean/var included;
    non-persistent buffers are rebuilt on load and are left alone). Tied tensors are shifted once. Tensor ``i`` of
    ``n`` gets ``scale * (1 + i / n) * m``, where ``m`` is the tensor's root mean square (1 for an all-zero tensor),
    divided by its fan-in (``numel / shape[0]``) when it has two or more dimensions. So:

    * every offset is non-zero and differs from the other tensors' (even for biases that are zero and norm weights
      that are one at initialisation), and 1-2% of the tensor's own scale: any re-initialisation, even with the same
      seed, shows up when a loaded tensor is compared with the saved file;
    * running variances stay positive and BatchNorm statistics stay matched to the activations (an absolute 0.01 on
      a variance of 1e-4 would shrink every layer's output tenfold);
    * a weight matrix's offset adds at most ``scale * m`` per output times the input mean, so deep networks whose
      eval-mode BatchNorm does not renormalise do not blow up.
    """
    import torch

    seen, tensors = set(), []
    for tensor in model.state_dict(keep_vars=True).values():
        if tensor.is_floating_point() and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors.append(tensor)
    with torch.no_grad():
        for i, tensor in enumerate(tensors):
            rms = float(tensor.double().pow(2).mean().sqrt()) if tensor.numel() else 0.0
            fan_in = tensor.numel() // tensor.shape[0] if tensor.dim() >= 2 and tensor.numel() else 1
            tensor.add_(scale * (1 + i / len(tensors)) * (rms or 1.0) / fan_in)
    return len(tensors)


def random_images(n: int = 16, *, seed: int = 0) -> list:
    """``n`` RGB PIL images of assorted sizes (24-96 px a side): smooth colour fields with some noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(24, 97, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
        noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-30, 31, (h, w, 3))
        images.append(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)))
    return images


def calibrate_batch_norm(model, inputs: dict) -> int:
    """Give every BatchNorm the statistics of one batch (``model(**inputs)``), as a trained one has; returns how many.

    A freshly initialised BatchNorm has mean 0 / variance 1, so in eval mode it does not normalise; in these narrow
    nets (initialised with std ``initializer_range`` = 0.02 like a wide one) the activations then shrink layer by
    layer until the logits no longer depend on the image at all (MobileNet, TextNet, HGNetV2, LeViT, ...). The
    affine parameters are reset to torch's weight 1 / bias 0 first: transformers draws EfficientNet's and
    MobileViT(V2)'s BatchNorm weights from N(0, 0.02), which zeroes the activations just the same.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d,
                                                             torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm))]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_parameters()  # running statistics and affine parameters
        m.momentum = None  # a cumulative average: one batch gives its exact statistics
    model.train()
    with torch.no_grad():
        model(**inputs)
    model.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return len(norms)


def build_tiny(model_type: str, *, num_labels: int = 5, shift: bool = True, seed: int = 0):
    """The ``(model, processor)`` pair that `save_tiny` saves, in memory; the model is in eval mode.

    The model is built with ``AutoModelForImageClassification.from_config`` from `tiny_config` after
    ``torch.manual_seed(seed)``; its BatchNorm statistics are set by `calibrate_batch_norm` on 16 `random_images`
    put through the processor; then, with ``shift``, every saved floating tensor is offset by `shift_tensors`, so
    that a re-initialised tensor can be told apart from a loaded one. The same arguments give the same tensors.
    """
    import torch
    from transformers import AutoModelForImageClassification

    config = tiny_config(model_type, num_labels)
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(config).eval()
    processor = tiny_processor(model_type, config)
    calibrate_batch_norm(model, model_inputs(model_type, config, processor, random_images(16, seed=seed)))
    if shift:
        shift_tensors(model)
    return model, processor


def save_tiny(model_type: str, folder: str, *, num_labels: int = 5, shift: bool = True, seed: int = 0) -> str:
    """Save a tiny "pretrained" checkpoint of ``model_type`` to ``folder`` and return ``folder``.

    The model (from `build_tiny`: tiny widths, realistic depths, calibrated BatchNorm, every tensor shifted unless
    ``shift=False``) is saved as safetensors, under the original (Hub) tensor names, with its image processor.
    """
    model, processor = build_tiny(model_type, num_labels=num_labels, shift=shift, seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def model_inputs(model_type: str, config, processor, images) -> dict:
    """The keyword arguments for ``model(**...)`` on ``images``: the processor's output (as PyTorch tensors).

    shieldgemma2 also needs a prompt: here ``[bos, boi, image tokens..., eoi, 5 text tokens]`` per image, the
    minimal sequence the Gemma 3 language model accepts with an image.
    """
    import torch

    inputs = dict(processor(images=images, return_tensors="pt"))
    if model_type == "shieldgemma2":
        text = config.text_config
        row = ([text.bos_token_id, config.boi_token_index] + [config.image_token_index] * config.mm_tokens_per_image
               + [config.eoi_token_index] + list(range(100, 105)))
        inputs["input_ids"] = torch.tensor([row] * len(images))
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs


_DEPTH_FIELDS = ("depths", "depth", "num_block_repeats", "stage_num_blocks", "n_attn_blocks", "num_hidden_layers",
                 "n_layer", "num_self_attends_per_block")


def depth_summary(model_type: str, config) -> str:
    """The depth settings of a config, e.g. ``"depths=[3, 3, 9, 3]"`` or ``"vision num_hidden_layers=4"``."""
    if model_type in ("clip", "metaclip_2", "siglip", "siglip2", "shieldgemma2"):
        return f"vision num_hidden_layers={config.vision_config.num_hidden_layers}"
    fixed = {
        "mobilenet_v1": "13 depthwise-separable conv layers (fixed)",
        "mobilenet_v2": "17 inverted-residual blocks, stages [1, 2, 3, 4, 3, 3, 1] (fixed)",
        "mobilevit": "MobileNetV2 blocks + transformer depths [2, 4, 3] (fixed)",
    }
    if model_type in fixed:
        return fixed[model_type]
    for field in _DEPTH_FIELDS:
        value = getattr(config, field, None)
        if value is not None:
            return f"{field}={list(value) if isinstance(value, (list, tuple)) else value}"
    return "?"
