"""Offline end-to-end transfer on real handwritten digits (scikit-learn's ``load_digits``).

1. A small ResNet is trained from scratch on digits 0-4: this is the "pretrained" base model.
2. Its knowledge is transferred to digits 5-9 with few examples per class: feature extraction and
   fine-tuning, against the same architecture trained from scratch.
3. The best model is saved with its learning curve; `tl-hub predict` / `tl_hub.load` use it.

Everything runs on the CPU in about a minute, with no network:

    python recipes/digits_transfer.py --output-dir runs/digits
"""

import argparse
import logging
import os
import tempfile

import datasets
import numpy as np
from PIL import Image

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe, ScratchRecipe
from tl_hub.plots import plot_learning_curves


def digits_dataset(classes, per_class=None, seed=0, exclude=None):
    """Digits of ``classes`` as 32x32 RGB images (``per_class`` of each, or all), labels as digit strings."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images, labels, used = [], [], []
    for c in classes:
        idx = np.flatnonzero(digits.target == c)
        if exclude is not None:
            idx = np.setdiff1d(idx, exclude)
        idx = rng.permutation(idx)[:per_class] if per_class else idx
        for i in idx:
            pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            images.append(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).convert("RGB"))
            labels.append(str(c))
            used.append(int(i))
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(c) for c in classes])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [str(l) for l in labels]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("string")}))
    ds = ds.cast(features)
    return ds, np.array(used)


def make_base_model(path):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], num_labels=5,
                          downsample_in_first_stage=False)
    ResNetForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/digits")
    parser.add_argument("--per-class", type=int, default=10, help="Target examples per class.")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.output_dir, exist_ok=True)
    common = dict(batch_size=32, augment=False, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        init_dir = os.path.join(tmp, "init")
        make_base_model(init_dir)
        base_train, _ = digits_dataset(range(5))
        print(f"1) pretraining the base model on digits 0-4 ({len(base_train)} images)")
        base = ScratchRecipe(init_dir, epochs=6, lr=3e-3, **common)
        base.fit(base_train, progress=False)
        base_dir = os.path.join(args.output_dir, "base-digits-0-4")
        base.save(base_dir, overwrite=True)
        print(f"   base accuracy on held-out 0-4: {base.result.metrics['accuracy']:.3f}")

    target, used = digits_dataset(range(5, 10), per_class=args.per_class, seed=1)
    test, _ = digits_dataset(range(5, 10), exclude=used)
    print(f"2) transferring to digits 5-9 with {args.per_class} examples per class "
          f"({len(target)} images; {len(test)} test images)")
    runs = {
        "feature-extraction": FeatureExtractionRecipe(base_dir, epochs=args.epochs, lr=1e-2, **common),
        "fine-tune": FineTuneRecipe(base_dir, head_epochs=args.epochs // 2, epochs=args.epochs, lr=1e-2,
                                    backbone_lr_ratio=0.1, **common),
        "scratch": ScratchRecipe(base_dir, epochs=args.epochs, lr=3e-3, **common),
    }
    scores = {}
    for name, recipe in runs.items():
        recipe.fit(target, test, progress=False)
        scores[name] = recipe.evaluate(test)["accuracy"]
        print(f"   {name:<20} test accuracy {scores[name]:.3f}")
    best = max(scores, key=scores.get)
    out = os.path.join(args.output_dir, "best")
    runs[best].save(out, overwrite=True)
    curves = plot_learning_curves({n: r.result.history for n, r in runs.items()},
                                  os.path.join(args.output_dir, "learning_curves.png"),
                                  title=f"Digits 5-9, {args.per_class} per class: transfer vs scratch")
    print(f"3) best: {best} ({scores[best]:.3f}); model saved to {out}")
    print(f"   curves: {curves}")
    print(f"   try: tl-hub evaluate {out} --dataset <image folder>  |  tl-hub predict {out} img.png")


if __name__ == "__main__":
    main()
