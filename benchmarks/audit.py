"""Does the data audit find what is wrong, and does acting on it help?  `tl_hub.audit` on the real tier's
``lite0/fashion/10`` task (ImageNet EfficientNet-Lite0 at 224 px, 10 Fashion-MNIST images per class, 3 validation
and 30 test images per class, `benchmarks/transfer.py`'s `task_data`), per seed:

- 5% and 10% of the training labels flipped at random (to another class): precision and recall of the flagged
  images against the flips;
- test accuracy of the default feature-extraction recipe trained on the noisy labels (``keep``), on them without
  the flagged images (``drop``), and on the clean labels (``clean``).  The test images' features are the audit's
  (the head's input, cached), so each recipe is scored by its head on them: the same logits as the full model
  in eval mode (checked once against `Recipe.evaluate`, ``evaluate_check`` in the JSON);
- near-duplicates: 3 exact and 3 half-size copies of training images planted inside the training split, and as
  many (of other images) in the test split: recall (must be 1.0) and the pairs found that were not planted.

    OMP_NUM_THREADS=1 python benchmarks/audit.py            # 3 seeds (about 6 minutes on 2 CPU cores)
    python benchmarks/audit.py --seeds 0                    # one seed

Prints a table and, last, one JSON line, also written to ``benchmarks/results/audit.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import datasets  # noqa: E402
from run import host  # noqa: E402  (the same machine description as the main benchmark)
from transfer import task_data  # noqa: E402

from tl_hub import FeatureExtractionRecipe, audit, split_model  # noqa: E402
from tl_hub.features import HeadModule  # noqa: E402
from tl_hub.imagenet import LITE0  # noqa: E402
from tl_hub.outputs import write_json  # noqa: E402

RATES = (0.05, 0.10)
COPIES = 3  # exact and as many half-size copies, inside train and into test
RESULT = os.path.join(HERE, "results", "audit.json")


def flipped(labels: list, rate: float, classes: int, rng: np.random.Generator) -> tuple[list, set]:
    """``labels`` with ``round(rate * N)`` of them changed to another class at random, and the indices changed."""
    chosen = set(rng.choice(len(labels), round(rate * len(labels)), replace=False).tolist())
    noisy = [int((y + rng.integers(1, classes)) % classes) if i in chosen else y for i, y in enumerate(labels)]
    return noisy, chosen


def with_copies(ds, originals: list, images: list, labels: list):
    """``ds`` with a copy of each of ``originals`` (rows of ``images``) appended: the first half exact, the rest at
    half size; returns the dataset and the planted ``(original, copy)`` rows."""
    copies, pairs = [], []
    for k, i in enumerate(originals):
        image = images[i]
        copies.append(image.copy() if k < len(originals) // 2 else image.resize((image.width // 2, image.height // 2)))
        pairs.append((i, len(ds) + k))
    extra = datasets.Dataset.from_dict({"image": copies, "label": [labels[i] for i in originals]},
                                       features=ds.features)
    return datasets.concatenate_datasets([ds, extra]), pairs


def head_accuracy(recipe, features: torch.Tensor, labels: list) -> float:
    """Test accuracy of a trained recipe's head on the cached test features (its input)."""
    model = recipe.classifier.model
    head = HeadModule(model.get_submodule(split_model(model, num_labels=len(recipe.classifier.labels)).head[0]))
    with torch.inference_mode():
        predicted = head.eval()(features).argmax(-1)
    return float((predicted == torch.tensor(labels)).double().mean())


def train(train_ds, val, seed: int, cache: str):
    recipe = FeatureExtractionRecipe(LITE0, seed=seed, feature_cache_dir=cache, checkpoint_dir=None)
    recipe.fit(train_ds, val, progress=False)
    return recipe


def run_seed(seed: int, cache: str, check: bool) -> dict:
    train_ds, val, test = task_data("fashion", 10, seed, real=True)
    rng = np.random.default_rng(seed)
    images, clean = list(train_ds["image"]), list(train_ds["label"])
    classes = len(train_ds.features["label"].names)
    test_labels = list(test["label"])
    out = {"rates": {}, "accuracy": {}}
    clean_recipe = train(train_ds, val, seed, cache)
    for rate in RATES:
        noisy, flips = flipped(clean, rate, classes, rng)
        spare = [i for i in rng.permutation(len(clean)).tolist() if i not in flips][:4 * COPIES]
        noisy_ds = datasets.Dataset.from_dict({"image": images, "label": noisy}, features=train_ds.features)
        audited_train, train_pairs = with_copies(noisy_ds, spare[:2 * COPIES], images, noisy)
        audited_test, test_pairs = with_copies(test, spare[2 * COPIES:], images, noisy)
        data = datasets.DatasetDict(train=audited_train, validation=val, test=audited_test)
        result = audit(data, LITE0, feature_cache_dir=cache, seed=seed)
        flagged = {f["index"] for f in result.label_issues}
        found = {(d["split_b"], d["index_a"], d["index_b"]) for d in result.duplicates}
        planted = {("train", a, b) for a, b in train_pairs} | {("test", a, b) for a, b in test_pairs}
        keep = train(noisy_ds, val, seed, cache)
        kept_rows = [i for i in range(len(noisy)) if i not in flagged]
        drop = train(noisy_ds.select(kept_rows), val, seed, cache)
        test_x = result.features["test"][:len(test)]
        out["rates"][str(rate)] = {
            "flipped": len(flips), "flagged": len(flagged), "true_positives": len(flagged & flips),
            "precision": len(flagged & flips) / len(flagged) if flagged else None,
            "recall": len(flagged & flips) / len(flips),
            "duplicates_planted": len(planted), "duplicates_found": len(found & planted),
            "duplicate_recall": len(found & planted) / len(planted), "duplicate_false_positives": len(found - planted),
            "accuracy": {"keep": head_accuracy(keep, test_x, test_labels), "drop": head_accuracy(drop, test_x,
                                                                                              test_labels)},
            "audit_seconds": result.seconds, "encoder_passes": result.encoder_passes,
            "cv_accuracy": result.rules["label_issues"]["cv_accuracy"]}
        out["accuracy"]["clean"] = head_accuracy(clean_recipe, test_x, test_labels)
    if check:
        out["evaluate_check"] = {"recipe": clean_recipe.evaluate(test)["accuracy"], "head": out["accuracy"]["clean"]}
    return out


def summarise(runs: dict) -> dict:
    """Per rate, the mean over seeds of each figure; the duplicate recall's minimum."""
    summary = {}
    for rate in (str(r) for r in RATES):
        rows = [r["rates"][rate] for r in runs.values()]
        mean = {k: statistics.mean(x[k] for x in rows if x[k] is not None)
                for k in ("precision", "recall", "duplicate_recall", "duplicate_false_positives", "flagged")}
        mean.update({f"accuracy_{k}": statistics.mean(x["accuracy"][k] for x in rows) for k in ("keep", "drop")})
        mean["accuracy_clean"] = statistics.mean(r["accuracy"]["clean"] for r in runs.values())
        mean["min_duplicate_recall"] = min(x["duplicate_recall"] for x in rows)
        mean["audit_seconds"] = statistics.mean(x["audit_seconds"]["total"] for x in rows)
        mean["encode_seconds"] = statistics.mean(x["audit_seconds"]["encode"] for x in rows)
        summary[rate] = mean
    return summary


def print_table(summary: dict) -> None:
    print(f"{'flipped':>8} {'precision':>9} {'recall':>7} {'dup recall':>10} {'dup FP':>6} {'keep':>6} {'drop':>6} "
          f"{'clean':>6} {'audit s':>8}")
    for rate, m in summary.items():
        print(f"{float(rate):>8.0%} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['min_duplicate_recall']:>10.3f} "
              f"{m['duplicate_false_positives']:>6.1f} {m['accuracy_keep']:>6.3f} {m['accuracy_drop']:>6.3f} "
              f"{m['accuracy_clean']:>6.3f} {m['audit_seconds']:>8.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-save", action="store_true", help="Do not write benchmarks/results/audit.json.")
    args = parser.parse_args(argv)
    logging.getLogger("tl_hub").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as cache:
        runs = {str(s): run_seed(s, cache, check=i == 0) for i, s in enumerate(args.seeds)}
    summary = summarise(runs)
    print_table(summary)
    result = {"benchmark": "audit", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "host": host(), "task": "lite0/fashion/10", "seeds": args.seeds, "copies": COPIES, "runs": runs,
              "summary": summary, "seconds": time.perf_counter() - start}
    if not args.no_save:
        write_json(RESULT, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
