"""int8's accuracy change on the real tier: EfficientNet-Lite0 pretrained on ImageNet-1k at 224 px, the tasks of
``benchmarks/transfer.py``'s real tier (Fashion-MNIST at 5 and 10 per class, handwritten digits at 10 per class; 3
validation and 30 test images per class), 3 seeds, each recipe with its default settings.

For every run the trained model is exported twice with `tl_hub.export`, fp32 and int8 (calibrated on the training
images, as a user's export is), and both exports are scored through ONNX Runtime on the 300 test images by the same
function the export uses on validation (`tl_hub.onnx_export.int8_parity`): accuracy of each, top-1 agreement, and
each class's accuracy (where the damage falls).

    python benchmarks/int8.py --output benchmarks/results/int8.json     # about 25 minutes on 2 CPU cores
    python benchmarks/int8.py --tasks lite0/fashion/10 --seeds 0        # one task, one seed

Prints a line per run and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from multilabel import _quiet  # noqa: E402
from run import host, report  # noqa: E402
from transfer import real_tier, real_tier_arguments, task_data  # noqa: E402

import tl_hub  # noqa: E402
from tl_hub.filenames import ONNX_FILE  # noqa: E402
from tl_hub.imagenet import LITE0  # noqa: E402
from tl_hub.onnx_export import CALIBRATION_IMAGES, FLOAT_FRONT, QUANTIZED_OPS, int8_parity  # noqa: E402

RECIPES = {"feature-extraction": tl_hub.FeatureExtractionRecipe, "fine-tune": tl_hub.FineTuneRecipe}


def one_run(recipe: str, data, seed: int, tmp: str) -> dict:
    """Train ``recipe`` with its defaults, export fp32 and int8, score both on the test split."""
    import datasets

    train, validation, test = data
    model = RECIPES[recipe](LITE0, seed=seed)
    started = time.perf_counter()
    model.fit(train, validation, progress=False)
    trained = time.perf_counter() - started
    folder = os.path.join(tmp, recipe)
    model.save(folder)
    exports, seconds = {}, {}
    for name, quantize in (("fp32", None), ("int8", "int8")):
        started = time.perf_counter()
        tl_hub.export(folder, output_dir=os.path.join(tmp, f"{recipe}-{name}"), quantize=quantize,
                      dataset=datasets.DatasetDict(train=train, validation=validation), overwrite=True)
        seconds[name] = time.perf_counter() - started
        exports[name] = os.path.join(tmp, f"{recipe}-{name}", ONNX_FILE)
    classifier = tl_hub.load(folder)
    figures = int8_parity(classifier, classifier.model.config, exports["fp32"], exports["int8"], test, "test",
                          "image", "label")
    return {**figures, "train_seconds": trained, "export_seconds": seconds,
            "int8_bytes": os.path.getsize(exports["int8"]), "fp32_bytes": os.path.getsize(exports["fp32"])}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict]) -> dict:
    """Mean and range over seeds of accuracy, change and agreement; per class, the mean change in points."""
    out = {key: spread([r[key] for r in runs])
           for key in ("accuracy_fp32", "accuracy_int8", "accuracy_change_points", "top1_agreement")}
    classes = runs[0]["per_class"]
    out["per_class_change_points"] = {
        label: statistics.mean(100 * (r["per_class"][label]["accuracy_int8"] - r["per_class"][label]["accuracy_fp32"])
                               for r in runs) for label in classes}
    out["runs"] = runs
    return out


def parse_args(argv=None):
    parser = real_tier_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _quiet()
    start = time.perf_counter()
    tasks = {}
    with tempfile.TemporaryDirectory(prefix="tl_hub_int8_") as cache:
        for name, target, per_class in real_tier(args.tasks, cache):
            runs = {recipe: [] for recipe in args.recipes}
            for seed in args.seeds:
                data = task_data(target, per_class, seed, real=True)
                for recipe in args.recipes:
                    with tempfile.TemporaryDirectory(prefix="tl_hub_int8_run_") as tmp:
                        r = one_run(recipe, data, seed, tmp)
                    runs[recipe].append(r)
                    print(f"  {name} {recipe} seed {seed}: accuracy {r['accuracy_fp32']:.3f} -> "
                          f"{r['accuracy_int8']:.3f} ({r['accuracy_change_points']:+.1f} points), agreement "
                          f"{r['top1_agreement']:.1%}", flush=True)
            tasks[name] = {recipe: summarise(r) for recipe, r in runs.items()}
    total = time.perf_counter() - start
    print(f"total {total:.0f} s")
    changes = [r["accuracy_change_points"] for t in tasks.values() for s in t.values() for r in s["runs"]]
    summary = {"benchmark": "int8", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "host": host(), "base_model": LITE0, "seeds": args.seeds, "test_images_per_class": 30,
               "calibration_images": CALIBRATION_IMAGES, "quantized_ops": list(QUANTIZED_OPS), "float_front": FLOAT_FRONT, "tasks": tasks,
               "mean_change_points": statistics.mean(changes), "worst_change_points": min(changes),
               "seconds": total}
    report(summary, args.output)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
