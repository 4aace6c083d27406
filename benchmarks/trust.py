"""Models you can trust, measured on the real tier (EfficientNet-Lite0 pretrained on ImageNet-1k at 224 px, the tasks
of ``benchmarks/transfer.py``'s real tier: Fashion-MNIST at 5 and 10 per class, handwritten digits at 10 per class;
3 validation and 30 test images per class), 3 seeds, default settings:

- **calibration**: test ECE (15 bins) and NLL of each recipe's model without and with the temperature fitted on
  validation (`tl_hub.calibration`), for feature extraction (the recipe's own calibrated model; "before" is the same
  logits times its temperature) and fine-tuning (the temperature fitted by the same function on the kept model);
- **WiSE-FT**: one default fine-tune per seed with ``wise_ft="off"`` and ``calibrate=False`` keeps θ_start (the end
  of its head period) and θ_ft; θ(α) is evaluated for α in `tl_hub.wise_ft.ALPHA_GRID` on validation, α chosen by
  `tl_hub.wise_ft.choose` on `tl_hub.tasks.selection_key` (what ``wise_ft="auto"`` does), and scored on the test set
  and on a shifted copy of it (each image at half resolution, scaled back up, with its contrast at 60%): plain
  fine-tuning is α = 1, the fixed α = 0.5 of the paper is shown too;
- **test-time augmentation**: each model's test accuracy, ECE and evaluation seconds with ``tta=1`` and with every
  view the training augmentation allows (`tl_hub.tta`); for fine-tuning, the chosen θ(α) before calibration.

    python benchmarks/trust.py --output benchmarks/results/trust.json     # about 55 minutes on 2 CPU cores
    python benchmarks/trust.py --tasks lite0/fashion/10 --seeds 0         # one task, one seed

Prints a table and, last, one JSON line (mean and spread over seeds of every figure).
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
from PIL import ImageEnhance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from multilabel import _quiet  # noqa: E402
from run import host, report  # noqa: E402
from transfer import real_tier, real_tier_arguments, task_data  # noqa: E402

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe  # noqa: E402
from tl_hub.calibration import calibration_figures, fit_temperature  # noqa: E402
from tl_hub.evaluation import outputs_metrics  # noqa: E402
from tl_hub.imagenet import LITE0  # noqa: E402
from tl_hub.tasks import selection_key  # noqa: E402
from tl_hub.tta import tta_views  # noqa: E402
from tl_hub.wise_ft import ALPHA_GRID, choose, load_alpha  # noqa: E402

SHIFT = "half resolution, contrast 60%"


def shifted(ds):
    """The test set under a distribution shift: each image at half resolution, scaled back, at 60% contrast."""
    def shift(example):
        image = example["image"].convert("RGB")
        w, h = image.size
        small = image.resize((max(1, w // 2), max(1, h // 2)))
        example["image"] = ImageEnhance.Contrast(small.resize((w, h))).enhance(0.6)
        return example
    return ds.map(shift)


def logits_of(classifier, ds):
    logits, refs, _, _ = classifier.outputs(ds, batch_size=64)
    return logits, refs


def accuracy(logits, refs) -> float:
    return float((logits.argmax(-1) == refs).float().mean())


def tta_figures(classifier, test, none: dict) -> dict:
    """Accuracy, ECE and seconds with every allowed view, next to ``none`` (the same figures with ``tta=1``)."""
    views = len(tta_views(classifier.info.get("settings") or {}))
    start = time.perf_counter()
    metrics = classifier.evaluate(test, tta=views, batch_size=64)
    return {"views": views, "none": none,
            "all views": {"accuracy": metrics["accuracy"], "ece": metrics["ece"],
                          "seconds": time.perf_counter() - start}}


def feature_extraction(data, seed: int) -> dict:
    train, val, test = data
    recipe = FeatureExtractionRecipe(LITE0, seed=seed)
    start = time.perf_counter()
    result = recipe.fit(train, val, progress=False)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = result.classifier.evaluate(test, batch_size=64)
    plain = {"accuracy": metrics["accuracy"], "ece": metrics["ece"], "seconds": time.perf_counter() - start}
    cal = metrics.get("calibration") or {}
    return {"seconds": seconds, "accuracy": metrics["accuracy"], "temperature": cal.get("temperature"),
            "ece_before": cal.get("ece_before", metrics["ece"]), "ece_after": metrics["ece"],
            "nll_before": cal.get("nll_before", metrics["loss"]), "nll_after": metrics["loss"],
            "tta": tta_figures(result.classifier, test, plain)}


def fine_tune(data, seed: int) -> dict:
    """Plain fine-tuning and θ(α), from one run that keeps θ_start; calibration and TTA of the chosen θ(α)."""
    train, val, test = data
    kept = {}

    def keep_start(period, model, optimizer):
        if period.head_only:
            kept["start"] = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    recipe = FineTuneRecipe(LITE0, seed=seed, wise_ft="off", calibrate=False)
    start_time = time.perf_counter()
    result = recipe.fit(train, val, progress=False, on_period_end=keep_start)
    seconds = time.perf_counter() - start_time
    clf, start = result.classifier, kept["start"]
    end = {k: v.detach().clone() for k, v in clf.model.state_dict().items() if k in start}
    shift_test = shifted(test)
    grid, scores = {}, []
    for alpha in ALPHA_GRID:  # validation at every alpha: the choice
        load_alpha(clf.model, start, end, alpha)
        val_logits, val_refs = logits_of(clf, val)
        scores.append((alpha, selection_key(outputs_metrics(val_logits, val_refs))))
        grid[alpha] = {"validation": scores[-1][1][0], "val_logits": val_logits, "val_refs": val_refs}
    chosen = choose(scores)
    for alpha in sorted({0.0, 0.5, 1.0, chosen}):  # test and shifted test where the table needs them
        load_alpha(clf.model, start, end, alpha)
        begin = time.perf_counter()
        test_logits, test_refs = logits_of(clf, test)
        grid[alpha]["test_seconds"] = time.perf_counter() - begin
        shift_logits, shift_refs = logits_of(clf, shift_test)
        grid[alpha].update(test=accuracy(test_logits, test_refs), shifted=accuracy(shift_logits, shift_refs),
                           test_logits=test_logits, test_refs=test_refs)
    g = grid[chosen]
    temperature = fit_temperature(g["val_logits"], g["val_refs"])
    before = calibration_figures(g["test_logits"], g["test_refs"])
    after = calibration_figures(g["test_logits"] / temperature, g["test_refs"])
    load_alpha(clf.model, start, end, chosen)
    return {"seconds": seconds, "alpha": chosen,
            "plain": {"test": grid[1.0]["test"], "shifted": grid[1.0]["shifted"]},
            "wise_auto": {"test": g["test"], "shifted": g["shifted"]},
            "wise_half": {"test": grid[0.5]["test"], "shifted": grid[0.5]["shifted"]},
            "start": {"test": grid[0.0]["test"], "shifted": grid[0.0]["shifted"]},
            "grid": {str(a): {k: v for k, v in row.items() if not k.endswith(("logits", "refs"))}
                     for a, row in grid.items()},
            "temperature": float(temperature), "ece_before": before["ece"], "ece_after": after["ece"],
            "nll_before": before["nll"], "nll_after": after["nll"],
            "tta": tta_figures(clf, test, {"accuracy": g["test"], "ece": before["ece"], "seconds": g["test_seconds"]})}


def spread(values) -> dict:
    values = [v for v in values if v is not None]
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "runs": values}


# the per-seed figures of each recipe summarised over seeds
FIGURES = {"feature-extraction": ("accuracy", "ece_before", "ece_after", "nll_before", "nll_after", "temperature",
                                  "seconds"),
           "fine-tune": ("ece_before", "ece_after", "nll_before", "nll_after", "temperature", "alpha", "seconds")}


def summarise(runs: list[dict]) -> dict:
    """Mean, min and max over seeds of every figure of the per-seed records."""
    out = {}
    for recipe, keys in FIGURES.items():
        rows = [r[recipe] for r in runs]
        out[recipe] = {k: spread([r[k] for r in rows]) for k in keys}
        out[recipe].update({f"tta_{label.replace(' ', '_')}_{k}": spread([r["tta"][label][k] for r in rows])
                            for label in ("none", "all views") for k in ("accuracy", "ece", "seconds")})
        out[recipe]["tta_views"] = rows[0]["tta"]["views"]
    out["fine-tune"].update({f"{name}_{split}": spread([r["fine-tune"][name][split] for r in runs])
                             for name in ("plain", "wise_auto", "wise_half", "start") for split in ("test", "shifted")})
    return out


def print_table(tasks: dict) -> None:
    print(f"\n{'task':22} {'recipe':8} {'ECE before':>10} {'after':>7} {'NLL before':>10} {'after':>7}")
    for name, s in tasks.items():
        for recipe, short in (("feature-extraction", "FE"), ("fine-tune", "FT")):
            r = s[recipe]
            print(f"{name:22} {short:8} {r['ece_before']['mean']:10.3f} {r['ece_after']['mean']:7.3f} "
                  f"{r['nll_before']['mean']:10.3f} {r['nll_after']['mean']:7.3f}")
    print(f"\n{'task':22} {'plain':>7} {'WiSE auto':>9} {'a=0.5':>7} | shifted: {'plain':>7} {'auto':>7} {'a=0.5':>7}")
    for name, s in tasks.items():
        r = s["fine-tune"]
        print(f"{name:22} {r['plain_test']['mean']:7.3f} {r['wise_auto_test']['mean']:9.3f} "
              f"{r['wise_half_test']['mean']:7.3f} | {'':8} {r['plain_shifted']['mean']:7.3f} "
              f"{r['wise_auto_shifted']['mean']:7.3f} {r['wise_half_shifted']['mean']:7.3f}")
    print(f"\n{'task':22} {'recipe':8} {'TTA none':>8} {'all':>7} {'s none':>7} {'s all':>7}")
    for name, s in tasks.items():
        for recipe, short in (("feature-extraction", "FE"), ("fine-tune", "FT")):
            r = s[recipe]
            print(f"{name:22} {short:8} {r['tta_none_accuracy']['mean']:8.3f} {r['tta_all_views_accuracy']['mean']:7.3f}"
                  f" {r['tta_none_seconds']['mean']:7.1f} {r['tta_all_views_seconds']['mean']:7.1f}")


def parse_args(argv=None):
    parser = real_tier_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _quiet()
    start = time.perf_counter()
    tasks = {}
    with tempfile.TemporaryDirectory(prefix="tl_hub_trust_") as cache:
        for name, target, per_class in real_tier(args.tasks, cache):
            runs = []
            for seed in args.seeds:
                data = task_data(target, per_class, seed, real=True)
                runs.append({"feature-extraction": feature_extraction(data, seed), "fine-tune": fine_tune(data, seed)})
                ft = runs[-1]["fine-tune"]
                print(f"  {name} seed {seed}: FE ECE {runs[-1]['feature-extraction']['ece_before']:.3f} -> "
                      f"{runs[-1]['feature-extraction']['ece_after']:.3f}; FT plain {ft['plain']['test']:.3f} "
                      f"WiSE a={ft['alpha']} {ft['wise_auto']['test']:.3f}", flush=True)
            tasks[name] = summarise(runs)
    print_table(tasks)
    total = time.perf_counter() - start
    print(f"total {total:.0f} s")
    summary = {"benchmark": "trust", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "host": host(), "base_model": LITE0, "seeds": args.seeds, "shift": SHIFT, "alpha_grid": ALPHA_GRID,
               "tasks": tasks, "seconds": total}
    report(summary, args.output)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
