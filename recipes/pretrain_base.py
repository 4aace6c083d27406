"""Pretrain the demo's base models: a small ResNet, or a small ViT, that reads rendered letters.

The base task is glyph classification: the 52 Latin letters rendered from the fonts that ship with matplotlib
(random font, size, position, rotation, shear, stroke width, blur, noise, resolution loss; see
`tl_hub.demo_data`).  It is trained from scratch with tl-hub's own `ScratchRecipe` and saved in standard
transformers format (safetensors + config + image processor), which is what `tl-hub demo` ships and transfers
to handwritten digits.

    python recipes/pretrain_base.py --output-dir tl_hub/assets/glyph-resnet              # the shipped ResNet
    python recipes/pretrain_base.py --arch vit --output-dir tl_hub/assets/glyph-vit      # the shipped ViT
    python recipes/pretrain_base.py --quick --output-dir /tmp/base                       # seconds, for tests
"""

import argparse
import logging
import os
import sys
import tempfile

from tl_hub import ScratchRecipe
from tl_hub.demo_data import GLYPH_CLASSES, IMAGE_SIZE, glyph_dataset

PLANS = {
    "resnet": {"full": dict(per_class=160, epochs=8, lr=3e-3, hidden_sizes=[32, 64, 128, 128]),
               "quick": dict(per_class=6, epochs=1, lr=3e-3, hidden_sizes=[8, 16, 16, 16])},
    "vit": {"full": dict(per_class=160, epochs=20, lr=2e-3, hidden_size=96, layers=6),
            "quick": dict(per_class=6, epochs=1, lr=1e-3, hidden_size=16, layers=2)},
}


def make_initial_model(path, arch, plan):
    """The untrained architecture and its image processor, the starting point of pretraining."""
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    if arch == "resnet":
        sizes = plan["hidden_sizes"]
        config = ResNetConfig(embedding_size=sizes[0], hidden_sizes=sizes, depths=[1, 1, 1, 1],
                              downsample_in_first_stage=False, num_labels=len(GLYPH_CLASSES))
        ResNetForImageClassification(config).save_pretrained(path)
    else:
        h = plan["hidden_size"]
        config = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=h, num_hidden_layers=plan["layers"],
                           num_attention_heads=4 if h % 4 == 0 else 1, intermediate_size=2 * h,
                           num_labels=len(GLYPH_CLASSES))
        ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--quick", action="store_true", help="A tiny model on a few glyphs (for tests).")
    parser.add_argument("--arch", choices=sorted(PLANS), default="resnet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    plan = PLANS[args.arch]["quick" if args.quick else "full"]
    train = glyph_dataset(plan["per_class"], seed=args.seed)
    validation = glyph_dataset(max(2, plan["per_class"] // 8), seed=args.seed + 1)
    print(f"pretraining on {len(train)} rendered glyphs of {len(GLYPH_CLASSES)} letters")
    with tempfile.TemporaryDirectory() as tmp:
        make_initial_model(tmp, args.arch, plan)
        recipe = ScratchRecipe(tmp, epochs=plan["epochs"], lr=plan["lr"], batch_size=64, augment=False,
                               seed=args.seed, feature_cache="off", keep_epoch="last")
        result = recipe.fit(train, validation, progress=not args.quick)
    recipe.save(args.output_dir, overwrite=args.overwrite)
    size = sum(os.path.getsize(os.path.join(args.output_dir, f)) for f in os.listdir(args.output_dir))
    print(f"glyph accuracy {result.metrics['accuracy']:.3f}; saved to {args.output_dir} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
