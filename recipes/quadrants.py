"""The advisor's four cases, measured: for each quadrant (dataset size x similarity to the base task), train
every recipe with the same budget and check the advisor's choice against the best measured accuracy.

Base model: the demo's letter-pretrained ResNet (tl_hub/assets/glyph-resnet).
- similar target: handwritten digits (strokes, like letters);
- different target: the hue of random textures (colour, which letters never carried);
- small: 5 examples per class; large: 150 per class.

    python recipes/quadrants.py --output runs/quadrants.json     # ~5 minutes on 2 CPU cores
"""

import argparse
import json
import logging
import os
import sys
import time

from tl_hub import advise, compare
from tl_hub.demo import base_model_path
from tl_hub.demo_data import digits_dataset, hue_dataset

RECIPES = ("feature-extraction", "fine-tune", "train-all", "scratch")  # every recipe with its defaults


def scenario(name, per_class):
    if name == "digits":
        train, used = digits_dataset(per_class=per_class, seed=1)
        val, _ = digits_dataset(per_class=40, seed=2, exclude=used)
        return train, val
    return hue_dataset(per_class, seed=1), hue_dataset(40, seed=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/quadrants.json")
    parser.add_argument("--small", type=int, default=5)
    parser.add_argument("--large", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=None,
                        help="Epochs of every recipe (default: each recipe's automatic epochs; for quick checks).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = base_model_path()
    rows = []
    for similarity, target in (("similar", "digits"), ("different", "hue")):
        for size, per_class in (("small", args.small), ("large", args.large)):
            start = time.perf_counter()
            train, val = scenario(target, per_class)
            advice = advise(base, train)
            accuracy = {}
            for name in RECIPES:
                result = compare(base, train, val, recipes=[name], epochs=args.epochs,
                                 common={"seed": 0, "feature_cache": "memory"})
                accuracy[name] = result.summaries[name]["asymptote"]
            choice = advice.recipe
            best = max(accuracy, key=accuracy.get)
            row = {"intended": f"{size}+{similarity}", "target": target, "per_class": per_class,
                   "advisor_case": advice.case, "advisor_choice": choice,
                   "knn_gap": advice.similarity_gap, "accuracy": accuracy, "best": best,
                   "choice_minus_best": accuracy[choice] - accuracy[best],
                   "choice_ok": accuracy[choice] >= accuracy[best] - 0.02, "seconds": time.perf_counter() - start}
            rows.append(row)
            print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"advisor within 2 points of the best in {sum(r['choice_ok'] for r in rows)} of {len(rows)} quadrants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
