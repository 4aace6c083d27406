"""Tiny models built from configs and small learnable image data, made offline in the test (nothing is downloaded).

The fixtures of `tests/conftest.py` and the helpers of `tests/support/` build on these."""

import os

import numpy as np
from PIL import Image

COLOURS = ["red", "green", "blue"]


def _tiny_models():
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ConvNextImageProcessor,
        DeiTConfig,
        DeiTForImageClassification,
        Dinov2Config,
        Dinov2ForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        SwinConfig,
        SwinForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    vit_like = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8)
    return {
        "vit": (ViTForImageClassification, ViTConfig(**vit_like), ViTImageProcessor),
        "deit": (DeiTForImageClassification, DeiTConfig(**vit_like), ViTImageProcessor),
        "dinov2": (Dinov2ForImageClassification, Dinov2Config(**vit_like), ViTImageProcessor),
        "convnext": (ConvNextForImageClassification,
                     ConvNextConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], image_size=32),
                     ConvNextImageProcessor),
        "resnet": (ResNetForImageClassification,
                   ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1]),
                   ViTImageProcessor),
        "swin": (SwinForImageClassification,
                 SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4),
                 ViTImageProcessor),
    }


ARCHITECTURES = list(_tiny_models())


def save_tiny_model(arch: str, path: str, num_labels: int = 7, seed: int = 0) -> str:
    """A randomly initialised 'pretrained' checkpoint with its image processor, saved as safetensors."""
    import torch

    cls, config, proc_cls = _tiny_models()[arch]
    config.num_labels = num_labels
    torch.manual_seed(seed)
    model = cls(config)
    if arch == "resnet":  # give BatchNorm non-default running statistics, as a pretrained model has
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(pixel_values=torch.randn(8, 3, 32, 32) * 2 + 0.5)
        model.eval()
    model.save_pretrained(path)
    if arch == "convnext":
        processor = proc_cls(size={"shortest_edge": 32}, crop_pct=1.0)
    else:
        processor = proc_cls(size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    return path



def colour_images(n: int, seed: int = 0, size: int = 32, classes=COLOURS):
    """``n`` noisy images whose dominant channel is the class: easy to learn, impossible by chance."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        y = i % len(classes)
        a = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
        a[..., y % 3] = np.clip(a[..., y % 3].astype(int) + 140, 0, 255).astype(np.uint8)
        images.append(Image.fromarray(a))
        labels.append(classes[y])
    return images, labels


def colour_dataset(n: int = 90, seed: int = 0, string_labels: bool = False):
    import datasets

    images, labels = colour_images(n, seed)
    if string_labels:
        return datasets.Dataset.from_dict({"image": images, "label": labels}).cast_column("image", datasets.Image())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=COLOURS)})
    return datasets.Dataset.from_dict({"image": images, "label": [COLOURS.index(l) for l in labels]},
                                      features=features)



def write_image_folder(root, n: int = 60, seed: int = 0, classes=COLOURS) -> str:
    images, labels = colour_images(n, seed, classes=classes)
    for i, (img, label) in enumerate(zip(images, labels)):
        d = os.path.join(root, label)
        os.makedirs(d, exist_ok=True)
        img.save(os.path.join(d, f"{i:04d}.png"))
    return str(root)


def capture_backbone(recipe) -> list:
    """A list that receives the model ``recipe`` loads when it fits: what a test inspects after a failed run (a
    run that raised has no result)."""
    loaded, load = [], recipe.load_backbone
    recipe.load_backbone = lambda labels: loaded.append(load(labels)) or loaded[-1]
    return loaded


CHANNELS = ["red", "green", "blue"]


def multilabel_images(n: int, seed: int = 0, size: int = 32):
    """``n`` noisy images, each channel independently bright or not: the labels are the set of bright channels
    (possibly none), a learnable multi-label task."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        on = [c for c in range(3) if rng.random() < 0.5]
        if i < 3:  # every label occurs, whatever the seed
            on = sorted(set(on) | {i})
        a = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
        for c in on:
            a[..., c] = np.clip(a[..., c].astype(int) + 140, 0, 255).astype(np.uint8)
        images.append(Image.fromarray(a))
        labels.append([CHANNELS[c] for c in on])
    return images, labels


def multilabel_dataset(n: int = 90, seed: int = 0):
    """A ``datasets.Dataset`` with a ``Sequence(ClassLabel)`` ``labels`` column (a multi-label task)."""
    import datasets

    images, labels = multilabel_images(n, seed)
    features = datasets.Features({"image": datasets.Image(),
                                  "labels": datasets.Sequence(datasets.ClassLabel(names=CHANNELS))})
    return datasets.Dataset.from_dict({"image": images, "labels": [[CHANNELS.index(x) for x in row] for row in labels]},
                                      features=features)


def write_multilabel_folder(root, n: int = 60, seed: int = 0, metadata: str = "csv") -> str:
    """An image folder with ``metadata.csv`` (labels joined by ``;``) or ``metadata.jsonl`` (a list per image)."""
    import json

    images, labels = multilabel_images(n, seed)
    os.makedirs(root, exist_ok=True)
    rows = []
    for i, (img, names) in enumerate(zip(images, labels)):
        img.save(os.path.join(root, f"{i:04d}.png"))
        rows.append((f"{i:04d}.png", names))
    if metadata == "csv":
        with open(os.path.join(root, "metadata.csv"), "w", encoding="utf-8") as f:
            f.write("file_name,labels\n" + "".join(f"{name},{';'.join(ls)}\n" for name, ls in rows))
    else:
        with open(os.path.join(root, "metadata.jsonl"), "w", encoding="utf-8") as f:
            f.write("".join(json.dumps({"file_name": name, "labels": ls}) + "\n" for name, ls in rows))
    return str(root)
