"""Where the time of a feature-extraction ``fit`` goes: the phases of `benchmarks/run.py`'s feature extraction, timed.

    python benchmarks/fe_breakdown.py            # about 1 minute on 2 CPU cores
    python benchmarks/fe_breakdown.py --quick

Same model and data as `benchmarks/run.py` (ViT-like 64x64, patch 8, hidden 192, 6 layers; 1,000 training and 100
validation images).  One warm-up fit, then ``--repeats`` timed fits (default 5) with the disk cache (a fresh
folder each time, so the cache is written, never read) and as many with the in-memory cache, interleaved.  Each
phase is timed by wrapping the library function that does it (``time.perf_counter`` around the call):

- image checks: `tl_hub.data.drop_undecodable` (PNG chunk checksums, JPEG at 1/8 scale; no full decode);
- data preparation: the rest of `tl_hub.fit.prepare` before the model (columns, labels, splits);
- model load: `Recipe.load_backbone` (weights, new head, the structure found by running the model once);
- training pass / validation pass: the encoder over each split (`FeatureStore._compute`: decode, preprocess,
  forward up to the head's input);
- writing the cache: `FeatureStore._finish` (the memory-mapped file flushed and renamed; labels saved);
- cache key: `tl_hub.features.encoder_fingerprint` (a hash of the weights; the disk cache only);
- head training: the linear probe's solve (`tl_hub.probe.fit_probe`);
- evaluation: the head on the cached validation features (`tl_hub.evaluation.evaluate_loader`, as the loop calls it);
- other: everything else in ``fit`` (Accelerate set-up, loaders, the record).

Prints a table (median and min–max seconds per phase, and its share of the median fit) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("ACCELERATE_USE_CPU", "true")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # the same model and data

PHASES = {}  # phase -> seconds in the current fit


def timed(owner, name: str, phase: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES[phase] = PHASES.get(phase, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def instrument() -> None:
    import tl_hub.data
    import tl_hub.features
    import tl_hub.fit
    import tl_hub.loop
    import tl_hub.probe
    from tl_hub.recipe import Recipe

    timed(tl_hub.data, "drop_undecodable", "image checks")
    timed(tl_hub.fit, "prepare_data", "data preparation (incl. image checks)")
    timed(Recipe, "load_backbone", "model load")
    timed(tl_hub.features.FeatureStore, "_finish", "writing the cache")
    timed(tl_hub.features, "encoder_fingerprint", "cache key (hash of the weights)")
    timed(tl_hub.probe, "fit_probe", "head training (probe solve)")
    timed(tl_hub.loop, "evaluate_loader", "evaluation")  # the name the loop calls
    original = tl_hub.features.FeatureStore._compute

    def compute(self, ds, image_column, label_column, views, augment, what, paths):
        start = time.perf_counter()
        try:
            return original(self, ds, image_column, label_column, views, augment, what, paths)
        finally:
            key = f"{what} pass (encoder)"
            PHASES[key] = PHASES.get(key, 0.0) + time.perf_counter() - start

    tl_hub.features.FeatureStore._compute = compute


def one_fit(model_dir: str, train, val, cache: str, epochs: int) -> dict:
    from tl_hub import FeatureExtractionRecipe

    PHASES.clear()
    with tempfile.TemporaryDirectory() as cache_dir:
        recipe = FeatureExtractionRecipe(model_dir, epochs=epochs, lr=1e-3, batch_size=bench.BATCH,
                                         eval_batch_size=bench.EVAL_BATCH, augment=False, feature_cache=cache,
                                         feature_cache_dir=cache_dir, seed=0)
        start = time.perf_counter()
        recipe.fit(train, val, progress=False)
        total = time.perf_counter() - start
    phases = dict(PHASES)
    checks = phases.get("image checks", 0.0)
    phases["data preparation (incl. image checks)"] = phases.get("data preparation (incl. image checks)", 0.0) - checks
    phases = {("data preparation" if k.startswith("data preparation") else k): v for k, v in phases.items()}
    phases["other"] = total - sum(phases.values())
    phases["whole fit"] = total
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = bench.QUICK if args.quick else bench.Sizes()
    repeats = 1 if args.quick else args.repeats
    instrument()
    runs = {"disk": [], "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bench.make_model(os.path.join(tmp, "vit"))
        train, val = bench.make_data(sizes.train, 0), bench.make_data(sizes.val, 1)
        for cache in runs:
            one_fit(model_dir, train, val, cache, sizes.fe_epochs)  # warm-up
        for _ in range(repeats):
            for cache in runs:
                runs[cache].append(one_fit(model_dir, train, val, cache, sizes.fe_epochs))
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": bench.host(), "repeats": repeats,
           "sizes": {"train": sizes.train, "validation": sizes.val, "epochs": sizes.fe_epochs}}
    for cache, fits in runs.items():
        phases = [p for p in fits[0] if p != "whole fit"] + ["whole fit"]
        total = statistics.median(f["whole fit"] for f in fits)
        print(f"\nfeature_cache={cache!r}: {sizes.train} training + {sizes.val} validation images, "
              f"{repeats} fits (median, min–max seconds, share of the median fit)")
        print(f"| {'phase':<36} | {'seconds':>20} | share")
        out[cache] = {}
        for p in phases:
            values = [f.get(p, 0.0) for f in fits]
            med = statistics.median(values)
            out[cache][p] = {"median": med, "min": min(values), "max": max(values)}
            print(f"| {p:<36} | {med:7.3f} ({min(values):.3f}–{max(values):.3f}) | {100 * med / total:5.1f}%")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
