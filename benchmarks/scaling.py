"""Feature extraction at growing data sizes: the cost per image stays flat and memory stays bounded.

    python benchmarks/scaling.py                    # 1k, 10k, 100k images: 3-6 minutes on 2 idle CPU cores (estimated)
    python benchmarks/scaling.py --quick            # 200, 1k and 2k images: a smoke test (~1.5 min)
    python benchmarks/scaling.py --sizes 1000,30000 --output-dir /tmp/scaling

Model: a tiny ViT (32x32 input, patch 8, hidden 64, 2 layers, 4 heads, intermediate 128), 10 classes, random
"pretrained" weights. Data: for each size N, N training and N/10 validation 32x32 synthetic images, written ONCE to
a temporary folder by ``datasets.Dataset.from_generator`` (PNG-encoded ``datasets.Image()`` + ``ClassLabel``,
saved with ``save_to_disk``) and loaded memory-mapped (``load_from_disk``), so the images do not sit in the
measuring process's memory.

Protocol: each size runs in a fresh subprocess, which loads its data, warms up (a feature-extraction fit on 100
training and 20 validation images, in-memory cache: imports, thread pools, metric modules), then times
``--repeats`` (default 3; the median is reported, with min and max) of
``FeatureExtractionRecipe(model, epochs=E, augment=False, feature_cache="disk", feature_cache_dir=<empty temp
folder>).fit(train, validation)`` with every other setting at its default. Measured:
- wall seconds of ``fit``, and ms per image over training + validation images; of the seconds, those inside the
  training loop (the epochs' records in ``result.history``: the head solve or epochs on cached features, and
  evaluation) and the rest (data checks, model loading, the encoder pass that fills the cache);
- peak growth of the process's memory during ``fit``, sampled from ``/proc/self/statm`` every millisecond: the
  resident set (RSS, which also counts file-backed pages: the memory-mapped dataset and any memory-mapped cache,
  which the OS can drop) and its anonymous part (RSS minus shared/file-backed pages);
- the cached features: expected size (images x feature dim x 4 bytes; the dim read from the cache file) and the
  size of the cache folder on disk.
The ratio of the largest to the smallest ms/image across sizes should be at most 1.15.

Writes ``scaling.png`` (ms/image and peak memory vs N, log x) and ``scaling.json`` to ``--output-dir`` (default
``benchmarks/results``; with ``--quick`` a temporary folder). MB are 2**20 bytes. The last line printed is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import host  # the same host description as the main benchmark

N_CLASSES, SIZE, HIDDEN = 10, 32, 64
SIZES, QUICK_SIZES = (1_000, 10_000, 100_000), (200, 1_000, 2_000)
TARGET_TIME_RATIO = 1.15  # largest / smallest ms per image, at most
MB = 2**20


# ----------------------------------------------------------------------------------------------------------------------
# Model and data (main process)


def make_model(path: str) -> str:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=SIZE, patch_size=8, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, num_labels=N_CLASSES)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(path)
    return path


def examples(n: int, seed: int):
    """``n`` PNG-encoded images of 10 classes (a class colour, noise and class-specific stripes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.random.default_rng(123).integers(0, 255, (N_CLASSES, 3), dtype=np.int64)
    for i in range(n):
        y = i % N_CLASSES
        a = rng.normal(0, 40, (SIZE, SIZE, 3)) + base[y]
        a[:: (y % 4) + 2] += 60
        buf = io.BytesIO()
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        yield {"image": {"bytes": buf.getvalue(), "path": None}, "label": y}


def build_dataset(n: int, folder: str) -> str:
    """Write ``n`` training and ``n // 10`` validation images to ``folder/data`` (``save_to_disk``)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"c{i}" for i in range(N_CLASSES)])})
    cache = os.path.join(folder, "generator-cache")
    splits = {name: datasets.Dataset.from_generator(examples, features=features, cache_dir=cache,
                                                    gen_kwargs={"n": count, "seed": seed})
              for name, count, seed in (("train", n, 0), ("validation", max(n // 10, N_CLASSES), 1))}
    path = os.path.join(folder, "data")
    datasets.DatasetDict(splits).save_to_disk(path)
    del splits
    shutil.rmtree(cache, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# One size (fresh subprocess)


class PeakMemory:
    """Peak growth of the resident set and of its anonymous part while the block runs (sampled every ms)."""

    def __enter__(self):
        self.start = self.peak = _statm()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self._update()
            time.sleep(0.001)

    def _update(self):
        now = _statm()
        self.peak = (max(self.peak[0], now[0]), max(self.peak[1], now[1]))

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self._update()
        self.rss_growth = self.peak[0] - self.start[0]
        self.anon_growth = self.peak[1] - self.start[1]


def _statm() -> tuple[int, int]:
    """``(resident, resident - shared)`` bytes of this process."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    page = os.sysconf("SC_PAGE_SIZE")
    return int(fields[1]) * page, (int(fields[1]) - int(fields[2])) * page


def cached_features(cache_dir: str) -> tuple[int, int]:
    """``(feature dim, bytes on disk)`` of a feature-cache folder (its ``.features.npy`` files, shape ``(views, N,
    dim)``, read by their headers only; dim 0 when none is found)."""
    dim, size = 0, 0
    for root, _, files in os.walk(cache_dir):
        for name in files:
            path = os.path.join(root, name)
            size += os.path.getsize(path)
            if name.endswith(".features.npy") and not dim:
                dim = int(np.prod(np.load(path, mmap_mode="r").shape[2:]))
    return dim, size


def measure_size(data_dir: str, model_dir: str, epochs: int, repeats: int) -> dict:
    """Warm up, then time ``repeats`` disk-cached feature-extraction fits on the memory-mapped data in ``data_dir``
    (the median; memory: the first timed fit's peak growth)."""
    import datasets

    from tl_hub import FeatureExtractionRecipe

    data = datasets.load_from_disk(data_dir)
    train, val = data["train"], data["validation"]
    FeatureExtractionRecipe(model_dir, epochs=epochs, augment=False, feature_cache="memory").fit(
        train.select(range(min(100, len(train)))), val.select(range(min(20, len(val)))), progress=False)
    times, loops, memory = [], [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="tl_hub_scaling_cache_") as cache_dir:  # a cold cache each time
            recipe = FeatureExtractionRecipe(model_dir, epochs=epochs, augment=False, feature_cache="disk",
                                             feature_cache_dir=cache_dir)
            with PeakMemory() as mem:
                start = time.perf_counter()
                result = recipe.fit(train, val, progress=False)
                times.append(time.perf_counter() - start)
            loops.append(sum(h["seconds"] for h in result.history))
            memory = memory or mem  # the first timed fit's peak: nothing of an earlier fit is reused
            dim, disk = cached_features(cache_dir)
    images = len(train) + len(val)
    seconds, loop, mem = statistics.median(times), statistics.median(loops), memory
    dim_source = "cache file" if dim else f"computed: hidden size {HIDDEN}"
    dim = dim or HIDDEN
    return {"n_train": len(train), "n_val": len(val), "seconds": seconds, "seconds_min": min(times),
            "seconds_max": max(times), "repeats": repeats, "ms_per_image": 1000 * seconds / images,
            "loop_seconds": loop, "outside_loop_seconds": seconds - loop,
            "rss_growth_mb": mem.rss_growth / MB, "anon_growth_mb": mem.anon_growth / MB,
            "feature_dim": dim, "feature_dim_source": dim_source, "features_mb": images * dim * 4 / MB,
            "cache_disk_mb": disk / MB, "rss_growth_minus_features_mb": (mem.rss_growth - images * dim * 4) / MB,
            "accuracy": result.metrics["accuracy"]}


def in_subprocess(data_dir: str, model_dir: str, epochs: int, repeats: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", data_dir, "--model-dir", model_dir, "--epochs",
           str(epochs), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------------
# Report


COLUMNS = (  # key, header, decimals
    ("n_train", "N train", 0), ("n_val", "N val", 0), ("seconds", "seconds", 1), ("loop_seconds", "in loop s", 1),
    ("outside_loop_seconds", "rest s", 1), ("ms_per_image", "ms/image", 3), ("rss_growth_mb", "peak RSS growth MB", 1),
    ("anon_growth_mb", "peak anon growth MB", 1), ("features_mb", "features MB", 1),
    ("cache_disk_mb", "cache on disk MB", 1), ("rss_growth_minus_features_mb", "RSS growth - features MB", 1),
)


def print_table(rows: list[dict]) -> None:
    print("\n| " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for _, h, _ in COLUMNS) + "|")
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.{d}f}".rjust(len(h)) for k, h, d in COLUMNS) + " |")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n_train"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(n, [r["ms_per_image"] for r in rows], "o-")
    left.set(xscale="log", xlabel="training images (N)", ylabel="ms per image (train + validation)",
             title="Feature extraction: time per image")
    left.set_ylim(bottom=0)
    for key, label in (("rss_growth_mb", "peak RSS growth"), ("anon_growth_mb", "peak anonymous growth"),
                       ("features_mb", "cached features (N x dim x 4 B)")):
        right.plot(n, [r[key] for r in rows], "o-", label=label)
    right.set(xscale="log", xlabel="training images (N)", ylabel="MB", title="Memory during fit")
    right.legend()
    for ax in (left, right):
        ax.minorticks_off()
        ax.set_xticks(n, [f"{x:,}" for x in n])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated training set sizes (default 1000,10000,100000)")
    parser.add_argument("--quick", action="store_true", help="sizes 200,1000,2000: a smoke test")
    parser.add_argument("--epochs", type=int, default=3, help="feature-extraction epochs (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per size, median reported (default 3)")
    parser.add_argument("--output-dir", default=None,
                        help="where scaling.png and scaling.json go (default benchmarks/results; --quick: a temp dir)")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.measure:
        print(json.dumps(measure_size(args.measure, args.model_dir, args.epochs, args.repeats)))
        return

    total = time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    out_dir = args.output_dir or (os.path.join(tempfile.gettempdir(), "tl_hub_scaling_quick") if args.quick
                                  else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    print(f"Feature extraction scaling: tiny ViT {SIZE}x{SIZE}, patch 8, hidden {HIDDEN}, 2 layers; sizes {sizes}; "
          f"{args.epochs} epochs; disk feature cache; one fresh process per size", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tl_hub_scaling_") as tmp:
        model_dir = make_model(os.path.join(tmp, "vit"))
        for n in sizes:
            folder = os.path.join(tmp, f"n{n}")
            start = time.perf_counter()
            data_dir = build_dataset(n, folder)
            built = time.perf_counter() - start
            row = in_subprocess(data_dir, model_dir, args.epochs, 1 if args.quick else args.repeats)
            row["build_seconds"] = built
            rows.append(row)
            shutil.rmtree(folder, ignore_errors=True)
            print(f"- N={n}: {row['seconds']:.1f} s, {row['ms_per_image']:.3f} ms/image, peak RSS growth "
                  f"{row['rss_growth_mb']:.0f} MB (dataset built in {built:.0f} s)", flush=True)

    print_table(rows)
    per_image = [r["ms_per_image"] for r in rows]
    ratio = max(per_image) / min(per_image)
    print(f"\nms/image, largest / smallest: {ratio:.2f} (target <= {TARGET_TIME_RATIO}); largest N / smallest N: "
          f"{per_image[-1] / per_image[0]:.2f}")
    os.makedirs(out_dir, exist_ok=True)
    png, json_path = os.path.join(out_dir, "scaling.png"), os.path.join(out_dir, "scaling.json")
    plot(rows, png)
    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "host": host(),
        "model": {"image_size": SIZE, "patch_size": 8, "hidden_size": HIDDEN, "layers": 2, "heads": 4,
                  "intermediate_size": 128, "classes": N_CLASSES},
        "epochs": args.epochs, "quick": args.quick, "sizes": sizes, "results": rows,
        "time_per_image_max_over_min": ratio, "time_per_image_largest_n_over_smallest_n": per_image[-1] / per_image[0],
        "time_per_image_target": TARGET_TIME_RATIO, "time_per_image_target_met": ratio <= TARGET_TIME_RATIO,
        "max_rss_growth_mb": max(r["rss_growth_mb"] for r in rows),
        "max_rss_growth_minus_features_mb": max(r["rss_growth_minus_features_mb"] for r in rows),
        "png": png, "json": json_path, "benchmark_seconds": time.perf_counter() - total,
    }
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {png} and {json_path}; total {report['benchmark_seconds']:.0f} s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
