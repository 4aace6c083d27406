"""Which epoch to keep when the validation split is small?  Rules compared on the same runs, against test accuracy.

The user's case: Fashion-MNIST photos with 5 or 10 images per class and no validation split, so tl-hub holds out 20%
(1 or 2 images per class: 10 or 20 validation images).  The default fine-tune of ImageNet EfficientNet-Lite0 runs
once per task and seed; after every epoch the model is also scored on 200 test images (20 per class, never used for
any choice).  Each rule then picks an epoch from the validation figures alone, and its test accuracy is read off:

- ``accuracy, then loss``: the best validation accuracy, ties broken by the lower loss (tl-hub at 30 or more
  validation images);
- ``2-epoch mean``: the same on the mean of each epoch's and the previous epoch's (same period) accuracy and loss
  (tl-hub under 30 validation images);
- ``lowest loss``, ``lowest 3-epoch mean loss`` (centred), ``last epoch``; and ``best on test``, the unattainable
  bound.

    python benchmarks/best_epoch.py                         # fashion/5 and fashion/10, seeds 0-2 (~45 min, 2 cores)
    python benchmarks/best_epoch.py --runs results.json     # only the comparison, from saved runs

Prints one line per run and the mean difference of each rule against ``accuracy, then loss``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def window(history, i, key, span):
    same = [i + d for d in span if 0 <= i + d < len(history) and history[i + d]["period"] == history[i]["period"]]
    return statistics.mean(history[j][key] for j in same)


def pair(history, i, span):
    return window(history, i, "accuracy", span), -window(history, i, "loss", span)


RULES = {
    "accuracy, then loss": lambda h: max(range(len(h)), key=lambda i: (h[i]["accuracy"], -h[i]["loss"])),
    "2-epoch mean": lambda h: max(range(len(h)), key=lambda i: pair(h, i, (-1, 0))),
    "lowest loss": lambda h: min(range(len(h)), key=lambda i: h[i]["loss"]),
    "lowest 3-epoch mean loss": lambda h: min(range(len(h)), key=lambda i: window(h, i, "loss", (-1, 0, 1))),
    "last epoch": lambda h: len(h) - 1,
    "best on test": lambda h: max(range(len(h)), key=lambda i: h[i]["test_accuracy"]),
}


def run(per_class: int, seed: int) -> dict:
    """One default fine-tune with every epoch also scored on the test images."""
    import torch
    from transformers import AutoImageProcessor

    from tl_hub import FineTuneRecipe, loop
    from tl_hub.fashion import fashion_data
    from tl_hub.imagenet import LITE0, lite0_path

    train, _, test = fashion_data(per_class, 0, 20, seed=seed)
    processor = AutoImageProcessor.from_pretrained(lite0_path())
    pixels = processor([im.convert("RGB") for im in test["image"]], return_tensors="pt")["pixel_values"]
    labels = torch.tensor(test["label"])
    update = loop.BestEpoch.update

    def scored(self, record, state):
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            preds = torch.cat([self.model(pixel_values=pixels[i:i + 100]).logits.argmax(-1)
                               for i in range(0, len(pixels), 100)])
        self.model.train(training)
        record["test_accuracy"] = float((preds.cpu() == labels).float().mean())
        return update(self, record, state)

    loop.BestEpoch.update = scored
    try:
        start = time.perf_counter()
        result = FineTuneRecipe(LITE0, seed=seed).fit(train, progress=False)
    finally:
        loop.BestEpoch.update = update
    keys = ("epoch", "period", "loss", "accuracy", "test_accuracy")
    return {"task": f"lite0/fashion/{per_class}", "seed": seed, "validation_images": result.extra["validation_images"],
            "history": [{k: h[k] for k in keys} for h in result.history], "seconds": time.perf_counter() - start}


def compare(runs: list[dict]) -> dict:
    picks = {name: [] for name in RULES}
    for r in runs:
        h = r["history"]
        chosen = {name: rule(h) for name, rule in RULES.items()}
        print(f"{r['task']} seed {r['seed']} ({len(h)} epochs): " +
              "; ".join(f"{n} e{i + 1} {h[i]['test_accuracy']:.3f}" for n, i in chosen.items()), flush=True)
        for name, i in chosen.items():
            picks[name].append(h[i]["test_accuracy"])
    base = picks["accuracy, then loss"]
    out = {}
    for name, values in picks.items():
        diffs = [a - b for a, b in zip(values, base)]
        out[name] = {"mean_test": statistics.mean(values), "mean_diff": statistics.mean(diffs),
                     "min_diff": min(diffs), "max_diff": max(diffs)}
        print(f"{name:26s} test {out[name]['mean_test']:.4f}  vs accuracy, then loss {out[name]['mean_diff']:+.4f} "
              f"(min {out[name]['min_diff']:+.3f}, max {out[name]['max_diff']:+.3f})")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", help="Compare the runs saved in this JSON file instead of running.")
    parser.add_argument("--per-class", default="5,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", help="Write the runs and the comparison here.")
    args = parser.parse_args(argv)
    if args.runs:
        with open(args.runs) as f:
            saved = json.load(f)
        runs = saved["runs"] if isinstance(saved, dict) else saved
    else:
        logging.basicConfig(level=logging.ERROR)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        runs = []
        with tempfile.TemporaryDirectory(prefix="tl_hub_best_epoch_") as cache:
            os.environ["TL_HUB_CACHE"] = cache
            for per_class in map(int, args.per_class.split(",")):
                for seed in map(int, args.seeds.split(",")):
                    runs.append(run(per_class, seed))
                    print(f"  ran {runs[-1]['task']} seed {seed}: {runs[-1]['seconds']:.0f} s", flush=True)
    summary = {"runs": runs, "comparison": compare(runs)}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary["comparison"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
