"""Pretrain the demo's base models: a small ResNet, or a small ViT, that reads rendered letters (or another task).

The base task is glyph classification: the 52 Latin letters rendered from the fonts that ship with matplotlib
(random font, size, position, rotation, shear, stroke width, blur, noise, resolution loss; see
`tl_hub.demo_data`).  It is trained from scratch with tl-hub's own `ScratchRecipe` and saved in standard
transformers format (safetensors + config + image processor), which is what `tl-hub demo` ships and transfers
to handwritten digits.

Other base tasks (``--task``) give bases that differ from the shipped ResNet only in what they learned, for a
model zoo (see ``recipes/build_zoo.py``):

- ``digits04``: the digits 0-4 rendered by the same glyph renderer (5 classes; not scikit-learn's handwritten
  digits, which are a transfer target);
- ``textures``: the hue of random blotchy colour textures (8 classes; `tl_hub.demo_data.hue_dataset`, seeds from
  50,000, far from the benchmarks' seeds);
- ``noise``: random noise images with random labels (10 classes): trained, but nothing to learn that transfers.

``--random-init`` saves the untrained architecture with its image processor (no training).

    python recipes/pretrain_base.py --output-dir tl_hub/assets/glyph-resnet              # the shipped ResNet
    python recipes/pretrain_base.py --arch vit --output-dir benchmarks/assets/glyph-vit # the benchmarks' ViT
    python recipes/pretrain_base.py --task textures --output-dir /tmp/textures-resnet    # about 2 min on 2 cores
    python recipes/pretrain_base.py --random-init --output-dir /tmp/random-resnet        # seconds
    python recipes/pretrain_base.py --quick --output-dir /tmp/base                       # seconds, for tests
"""

import argparse
import logging
import os
import sys
import tempfile

import numpy as np

from tl_hub import ScratchRecipe
from tl_hub.demo_data import GLYPH_CLASSES, HUE_CLASSES, IMAGE_SIZE, glyph_dataset, hue_dataset
from tl_hub.outputs import atomic_output_dir, check_output_dir

# The architecture and the glyph plan, per --arch; the other tasks change only per_class and epochs.
PLANS = {
    "resnet": {"full": dict(per_class=160, epochs=8, lr=3e-3, hidden_sizes=[32, 64, 128, 128]),
               "quick": dict(per_class=6, epochs=1, lr=3e-3, hidden_sizes=[8, 16, 16, 16])},
    "vit": {"full": dict(per_class=160, epochs=20, lr=2e-3, hidden_size=96, layers=6),
            "quick": dict(per_class=6, epochs=1, lr=1e-3, hidden_size=16, layers=2)},
}
DIGITS04 = tuple("01234")
NOISE_CLASSES = tuple(f"noise{i}" for i in range(10))
# task -> (classes, seed offset, what the images are); offsets keep the data away from the benchmarks' seeds
TASKS = {
    "glyphs": (GLYPH_CLASSES, 0, f"rendered glyphs of {len(GLYPH_CLASSES)} letters"),
    "digits04": (DIGITS04, 60_000, "rendered digits 0-4"),
    "textures": (HUE_CLASSES, 50_000, f"colour textures of {len(HUE_CLASSES)} hues"),
    "noise": (NOISE_CLASSES, 70_000, f"noise images with random labels ({len(NOISE_CLASSES)} classes)"),
}
# Sized on 2 CPU cores (full ResNet: about 2,000 training images/s; a rendered glyph about 1.5 ms): each full plan
# pretrains in 1-3 minutes (textures, 750 per class: 34 s measured, so 2,000 per class: about 1.5 min).
TASK_PLANS = {
    "glyphs": {"full": {}, "quick": {}},
    "digits04": {"full": dict(per_class=3000, epochs=8), "quick": dict(per_class=12, epochs=1)},
    "textures": {"full": dict(per_class=2000, epochs=8), "quick": dict(per_class=8, epochs=1)},
    "noise": {"full": dict(per_class=1500, epochs=8), "quick": dict(per_class=6, epochs=1)},
}


def noise_dataset(per_class: int, seed: int = 0, classes=NOISE_CLASSES, size: int = IMAGE_SIZE):
    """``per_class * len(classes)`` images of random colour noise (grain from 4x4 to full resolution, random
    brightness and contrast) with labels drawn at random: nothing in an image says its label."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(per_class * len(classes)):
        grain = int(rng.choice([4, 8, 16, size]))
        pixels = rng.random((grain, grain, 3)) * rng.uniform(0.3, 1.0) + rng.uniform(0, 0.4)
        img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
        images.append(img.resize((size, size), Image.Resampling.BILINEAR))
    labels = rng.integers(len(classes), size=len(images)).tolist()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def task_dataset(task: str, per_class: int, seed: int = 0):
    """``per_class`` images of each class of base task ``task`` (see TASKS), seeded ``seed`` + the task's offset."""
    classes, offset, _ = TASKS[task]
    seed += offset
    if task in ("glyphs", "digits04"):
        return glyph_dataset(per_class, seed=seed, classes=classes)
    if task == "textures":
        return hue_dataset(per_class, seed=seed, classes=classes)
    return noise_dataset(per_class, seed=seed, classes=classes)


def make_initial_model(path, arch, plan, labels=GLYPH_CLASSES):
    """The untrained architecture and its image processor, the starting point of pretraining."""
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    names = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    if arch == "resnet":
        sizes = plan["hidden_sizes"]
        config = ResNetConfig(embedding_size=sizes[0], hidden_sizes=sizes, depths=[1, 1, 1, 1],
                              downsample_in_first_stage=False, **names)
        ResNetForImageClassification(config).save_pretrained(path)
    else:
        h = plan["hidden_size"]
        config = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=h, num_hidden_layers=plan["layers"],
                           num_attention_heads=4 if h % 4 == 0 else 1, intermediate_size=2 * h, **names)
        ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(path)


def save_random_init(args, plan) -> int:
    """``--random-init``: the untrained architecture (seeded by ``--seed``) with the task's labels, no training."""
    import torch

    check_output_dir(args.output_dir, args.overwrite)
    torch.manual_seed(args.seed)
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as tmp:
        make_initial_model(tmp, args.arch, plan, TASKS[args.task][0])
    print(f"randomly initialised {args.arch} ({len(TASKS[args.task][0])} labels, untrained) saved to "
          f"{args.output_dir}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--quick", action="store_true", help="A tiny model on a few images (for tests).")
    parser.add_argument("--arch", choices=sorted(PLANS), default="resnet")
    parser.add_argument("--task", choices=list(TASKS), default="glyphs", help="What the base learns (see above).")
    parser.add_argument("--random-init", action="store_true",
                        help="Save the untrained architecture and its image processor (no training).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    mode = "quick" if args.quick else "full"
    plan = {**PLANS[args.arch][mode], **TASK_PLANS[args.task][mode]}
    if args.random_init:
        return save_random_init(args, plan)
    train = task_dataset(args.task, plan["per_class"], seed=args.seed)
    validation = task_dataset(args.task, max(2, plan["per_class"] // 8), seed=args.seed + 1)
    print(f"pretraining on {len(train)} {TASKS[args.task][2]}")
    with tempfile.TemporaryDirectory() as tmp:
        make_initial_model(tmp, args.arch, plan, TASKS[args.task][0])
        recipe = ScratchRecipe(tmp, epochs=plan["epochs"], lr=plan["lr"], batch_size=64, augment=False,
                               seed=args.seed, feature_cache="off", keep_epoch="last")
        result = recipe.fit(train, validation, progress=not args.quick)
    recipe.save(args.output_dir, overwrite=args.overwrite)
    size = sum(os.path.getsize(os.path.join(args.output_dir, f)) for f in os.listdir(args.output_dir))
    name = "glyph" if args.task == "glyphs" else args.task
    print(f"{name} accuracy {result.metrics['accuracy']:.3f}; saved to {args.output_dir} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
