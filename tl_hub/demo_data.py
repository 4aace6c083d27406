"""Offline image data for the demo and its base model: rendered glyphs and handwritten digits.

- `glyph_dataset`: letters rendered from the fonts that ship with matplotlib (DejaVu, STIX, Computer Modern),
  with random size, position, rotation, shear, stroke width, blur, noise and resolution loss.  This is the
  *base task* the demo's pretrained model learns: shapes made of strokes.
- `digits_dataset`: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download), upsampled.
  This is the *target task*: related (strokes), but new classes, new writers, a new style.

Both give ``datasets.Dataset`` objects with an ``image`` (RGB, white ink on black) and a ``label``
(``ClassLabel``) column.
"""

from __future__ import annotations

import functools
import os
import string
from collections.abc import Sequence
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

IMAGE_SIZE = 32
GLYPH_CLASSES = tuple(string.ascii_uppercase + string.ascii_lowercase)
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf",
    "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmss10.ttf",
    "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
)


@functools.cache
def _font_paths() -> tuple[str, ...]:
    import matplotlib

    root = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    return tuple(os.path.join(root, f) for f in FONT_FILES if os.path.exists(os.path.join(root, f)))


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int):
    return ImageFont.truetype(path, size)


def render_glyph(char: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One randomly styled glyph, white on black, ``size`` x ``size`` RGB."""
    canvas = 64
    fonts = _font_paths()
    font = _font(fonts[rng.integers(len(fonts))], int(rng.integers(30, 46)))
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
    x = (canvas - (right - left)) / 2 - left + rng.normal(0, 3)
    y = (canvas - (bottom - top)) / 2 - top + rng.normal(0, 3)
    draw.text((x, y), char, fill=255, font=font)
    stroke = int(rng.integers(0, 4))
    if stroke:
        img = img.filter(ImageFilter.MaxFilter(2 * stroke + 1))
    shear = rng.normal(0, 0.15)
    img = img.transform((canvas, canvas), Image.Transform.AFFINE,
                        (1, shear, -shear * canvas / 2, 0, 1, 0), resample=Image.Resampling.BILINEAR)
    img = img.rotate(rng.normal(0, 10), resample=Image.Resampling.BILINEAR)
    scale = rng.uniform(0.6, 0.95)  # crop around the centre: the glyph fills more or less of the frame
    half = canvas * scale / 2 * 0.85
    box = (canvas / 2 - half, canvas / 2 - half, canvas / 2 + half, canvas / 2 + half)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.6:  # loss of resolution, as in scanned or tiny digits
        low = int(rng.integers(8, 17))
        img = img.resize((low, low), Image.Resampling.BOX).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.7, 1.0) + rng.normal(0, rng.uniform(0, 12), (size, size))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")


def glyph_dataset(per_class: int, seed: int = 0, classes: Sequence[str] = GLYPH_CLASSES, size: int = IMAGE_SIZE):
    """``per_class`` rendered glyphs of each of ``classes`` (default: the 52 Latin letters)."""
    import datasets

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(per_class):
        for label, char in enumerate(classes):
            images.append(render_glyph(char, rng, size))
            labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def digits_dataset(classes: Sequence[int] = tuple(range(10)), per_class: Optional[int] = None, seed: int = 0,
                   exclude: Optional[Sequence[int]] = None, size: int = IMAGE_SIZE):
    """scikit-learn's handwritten digits as ``size`` x ``size`` RGB images.

    Args:
        classes: which digits.
        per_class: how many of each (a seeded random choice), or all.
        exclude: indices into ``load_digits()`` to leave out (e.g. the training examples, for a test set).

    Returns:
        ``(dataset, indices)``: the dataset and the ``load_digits`` indices it holds.
    """
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images, labels, used = [], [], []
    for c in classes:
        idx = np.flatnonzero(digits.target == c)
        if exclude is not None:
            idx = np.setdiff1d(idx, np.asarray(exclude))
        idx = np.sort(rng.permutation(idx)[:per_class]) if per_class else idx
        for i in idx:
            pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            images.append(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).convert("RGB"))
            labels.append(str(c))
            used.append(int(i))
    names = [str(c) for c in classes]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": images, "label": [names.index(l) for l in labels]}, features=features)
    return ds, np.asarray(used)


HUE_CLASSES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")


def hue_dataset(per_class: int, seed: int = 0, classes: Sequence[str] = HUE_CLASSES, size: int = IMAGE_SIZE):
    """A task the letter-reading base never saw: the class is the *hue* of a random blotchy texture (random
    shapes, brightness and saturation), so shape features do not help."""
    import colorsys

    import datasets

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(per_class):
        for label, _name in enumerate(classes):
            hue = (label + rng.uniform(-0.3, 0.3)) / len(classes) % 1.0
            blobs = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC)
            value = np.asarray(blobs, dtype=np.float32) / 255 * rng.uniform(0.5, 1.0) + rng.uniform(0, 0.3)
            r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.35, 0.9), 1.0)
            arr = np.clip(value[..., None] * np.array([r, g, b]) * 255 + rng.normal(0, 8, (size, size, 3)), 0, 255)
            images.append(Image.fromarray(arr.astype(np.uint8)))
            labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
