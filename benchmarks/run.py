"""tl-hub against the transformers Trainer and pipeline, in one run, on the same model, data and machine.

    python benchmarks/run.py --model lite0   # the real base at 224 px (--repeats 3 on 2 idle CPU cores)
    python benchmarks/run.py                 # --model vit: about 12 minutes on 2 idle CPU cores (--repeats 5)
    python benchmarks/run.py --quick         # tiny sizes, one timed run each: checks that every path runs (~2-5 min)
    python benchmarks/run.py --device cuda --mixed-precision bf16

Models (``--model``):
- ``lite0``: EfficientNet-Lite0 pretrained on ImageNet-1k (``tl-hub:efficientnet-lite0``, converted offline) with a
  new 10-class head, at 224 px; data: Fashion-MNIST images from the subset shipped with tl-hub, 100 training and 30
  validation images (10 and 3 per class), resized by the model's own image processor;
- ``vit``: a ViT-like config (64x64 input, patch 8, hidden 192, 6 layers), random "pretrained" weights, saved to a
  temporary folder; data: 1,000 training and 100 validation 64x64 images of 10 classes, made in memory.

Protocol, the same for every compared figure:
- each side runs once untimed first (warm-up: imports, thread pools, allocator, page cache), then ``--repeats``
  timed runs (default 5), interleaved: ours, peer, ours, peer, ... (the floor runs in the same rounds as the
  feature-extraction runs it bounds);
- both sides start from the same state: every training run (tl-hub ``fit``, Trainer) loads the model and image
  processor from disk inside its timed region, and builds its own loaders; every inference comparison uses the
  same already-loaded model, processor and images on both sides;
- we report min, median and max of each side; a ratio is median against median;
- a "peer" column is filled only where a peer ran; rows that compare tl-hub with another tl-hub configuration
  say so in the ratio column ("vs ...") and leave the peer column empty.

Figures:
- floor: model + processor loaded from disk, then one inference pass (preprocessing + encoder forward under
  ``torch.inference_mode``, batch ``eval_batch_size``) over every image a feature-extraction run must see
  (train + validation); also the train-only part (load + training images). The floor is the lower bound of
  feature extraction: ``fe_vs_floor`` = median FE fit time / median floor.
- feature extraction, 10 epochs: the whole ``FeatureExtractionRecipe.fit`` vs the Trainer with the encoder's
  parameters frozen (``requires_grad=False``; it still runs the encoder every epoch); both evaluate every epoch.
- fine-tuning throughput: training images/s of tl-hub's fine-tune period (all groups; one head epoch first)
  vs a Trainer full fine-tune of one epoch (its ``train_samples_per_second``).
- top-2 fine-tuning: ``unfreeze=2`` with ``prefix_cache=True`` vs ``prefix_cache=False`` vs all groups (the
  run above), fine-tune period images/s and whole-fit seconds; the prefix cache's size as the recipe exposes it,
  else computed (training images x input shape of the lowest unfrozen block x 4 bytes).
- peak memory growth of a frozen (feature-extraction) run vs a full fine-tune, each in a fresh subprocess after a
  warm-up (CPU: resident set sampled every millisecond; CUDA: ``max_memory_allocated``), ``--repeats`` each.
- inference: ``Classifier.predict`` vs ``pipeline("image-classification")`` on the same model, processor, images
  (400) and batch size; and the first call in a fresh subprocess (imports done before the timer): ``tl_hub.load``
  + ``predict(one image)`` vs ``pipeline(...)`` built from the same folder + one call; one warm-up subprocess of
  each side, then ``--repeats`` of each, interleaved; and the model's forward alone on the same batches,
  preprocessed beforehand (the bound of both sides).
- data path (no peer): preprocessing alone (plain and augmented) and the model's forward alone, images/s.

MB are 2**20 bytes. The last line printed is one JSON object with every figure (min, median, max and the runs),
the ratios, the targets, the device, the date and the host.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch

N_CLASSES, SIZE, BATCH, EVAL_BATCH = 10, 64, 32, 64
# (ratio, "at_least" or "at_most", bound)
TARGETS = [("fe_vs_floor", "at_most", 1.15), ("fe_speedup_vs_trainer", "at_least", 5.0),
           ("ft_throughput_vs_trainer", "at_least", 1.0), ("top2_cached_speedup_vs_top2", "at_least", 1.5),
           ("top2_cached_speedup_vs_full", "at_least", 2.5), ("predict_vs_pipeline", "at_least", 1.1),
           ("frozen_mem_vs_full", "at_most", 0.6), ("onnx_predict_vs_pipeline", "at_least", 1.3),
           ("int8_predict_vs_pipeline", "at_least", 2.0)]


@dataclasses.dataclass(frozen=True)
class Sizes:
    train: int = 1000
    val: int = 100
    fe_epochs: int = 10
    predict_images: int = 400


QUICK = Sizes(train=64, val=20, fe_epochs=2, predict_images=80)
# at 224 px one image costs about 60 ms of forward on 2 CPU cores: fewer images, and 3 frozen epochs (the Trainer
# runs the frozen encoder every epoch)
LITE0_SIZES = Sizes(train=100, val=30, fe_epochs=10, predict_images=100)
LITE0_QUICK = Sizes(train=20, val=10, fe_epochs=1, predict_images=10)


MODEL_NAMES = {"vit": f"ViT 6x192 patch 8 at {SIZE}x{SIZE}, random weights",
               "lite0": "EfficientNet-Lite0 (ImageNet-1k) at 224x224, Fashion-MNIST photos"}


def sizes_for(args) -> Sizes:
    if args.model == "lite0":
        return LITE0_QUICK if args.quick else LITE0_SIZES
    return QUICK if args.quick else Sizes()


@dataclasses.dataclass
class Bench:
    """What every measurement needs."""

    args: argparse.Namespace
    sizes: Sizes
    model_dir: str
    train: object = None
    val: object = None

    @property
    def device(self) -> str:
        return self.args.device


# ----------------------------------------------------------------------------------------------------------------------
# Protocol and statistics


def interleaved(sides: dict, repeats: int) -> dict[str, list[dict]]:
    """One untimed warm-up run of each side, then ``repeats`` rounds of one run of each side, in turn.

    ``sides`` maps a name to a function that makes one run and returns its figures (a dict)."""
    for fn in sides.values():
        fn()
    runs = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            runs[name].append(fn())
    return runs


def figure(runs: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in runs]


def stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": list(values)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast_dtype(mixed_precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


# ----------------------------------------------------------------------------------------------------------------------
# Setup


def make_model(path: str, model: str = "vit") -> str:
    """The model both sides load from ``path``: the real Lite0 with a new 10-class head, or the small ViT."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    if model == "lite0":
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from tl_hub.fashion import CLASSES
        from tl_hub.imagenet import lite0_path

        base = lite0_path()
        labels = dict(enumerate(CLASSES))
        AutoModelForImageClassification.from_pretrained(
            base, num_labels=N_CLASSES, id2label=labels, label2id={v: k for k, v in labels.items()},
            ignore_mismatched_sizes=True).save_pretrained(path)
        AutoImageProcessor.from_pretrained(base).save_pretrained(path)
        return path
    config = ViTConfig(image_size=SIZE, patch_size=8, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                       intermediate_size=768, num_labels=N_CLASSES)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(path)
    return path


def make_image(rng, y: int, base):
    from PIL import Image

    a = rng.normal(0, 40, (SIZE, SIZE, 3)) + base[y]
    a[:: (y % 4) + 2] += 60  # class-specific stripes
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_data(n: int, seed: int, model: str = "vit"):
    """``n`` images of 10 classes: for the real model, Fashion-MNIST photos from the shipped subset (an even ``seed``:
    a seeded draw from its training pool; an odd one: its test images, disjoint from the pool); for the ViT,
    synthetic 64x64 stripes."""
    import datasets

    if model == "lite0":
        from tl_hub.fashion import fashion_data

        per_class = max(n // N_CLASSES, 1)
        train, _, test = fashion_data(per_class, 0, per_class, seed=seed)
        return train if seed % 2 == 0 else test
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(123).integers(0, 255, (N_CLASSES, 3), dtype=np.int64)
    labels = [i % N_CLASSES for i in range(n)]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"c{i}" for i in range(N_CLASSES)])})
    return datasets.Dataset.from_dict({"image": [make_image(rng, y, base) for y in labels], "label": labels},
                                      features=features)


def peer_processor(model_dir: str):
    """The peer's own image processor (the PIL backend when torchvision is missing, as transformers advises)."""
    import importlib.util

    from transformers import AutoImageProcessor

    options = {} if importlib.util.find_spec("torchvision") else {"backend": "pil"}
    return AutoImageProcessor.from_pretrained(model_dir, **options)


def host() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def report(summary: dict, output=None) -> None:
    """A benchmark's last step: ``summary`` written to ``output`` as JSON when given (through a temporary file and a
    rename, so a reader never sees half of it), then printed as one JSON line."""
    from tl_hub.outputs import atomic_path

    if output:
        with atomic_path(output) as tmp, open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary))


# ----------------------------------------------------------------------------------------------------------------------
# Floor and data path (tl-hub only)


def image_loader(processor, ds, batch_size: int, augment: bool = False):
    """tl-hub's own batched reading and preprocessing (no workers)."""
    from tl_hub.data import ImageClassificationDataset, ImageCollator, make_loader

    return make_loader(ImageClassificationDataset(ds, "image", "label", augment=augment), batch_size,
                       collate_fn=ImageCollator(processor))


def floor_run(bench: Bench) -> dict:
    """Load the model, then one inference pass (preprocess + encoder forward) over train, then over validation."""
    from transformers import AutoModelForImageClassification

    from tl_hub import split_model
    from tl_hub.backbone import load_image_processor

    dtype = autocast_dtype(bench.args.mixed_precision)
    start = time.perf_counter()
    processor = load_image_processor(bench.model_dir)
    model = AutoModelForImageClassification.from_pretrained(bench.model_dir).to(bench.device).eval()
    encoder = model.get_submodule(split_model(model).encoder)
    loaded = time.perf_counter()
    marks = []
    with torch.inference_mode(), torch.autocast(bench.device, dtype=dtype, enabled=dtype is not None):
        for ds in (bench.train, bench.val):
            for batch in image_loader(processor, ds, EVAL_BATCH):
                encoder(pixel_values=batch["pixel_values"].to(bench.device))
            sync(bench.device)
            marks.append(time.perf_counter())
    return {"load": loaded - start, "train_only": marks[0] - start, "seconds": marks[1] - start}


def data_path_run(bench: Bench) -> dict:
    """Preprocessing alone (plain, augmented) and the model's forward alone over the training set, images/s."""
    from transformers import AutoModelForImageClassification

    from tl_hub.backbone import load_image_processor

    n, processor = len(bench.train), load_image_processor(bench.model_dir)
    start = time.perf_counter()
    batches = [b["pixel_values"] for b in image_loader(processor, bench.train, EVAL_BATCH)]
    plain = time.perf_counter() - start
    start = time.perf_counter()
    for _ in image_loader(processor, bench.train, BATCH, augment=True):
        pass
    augmented = time.perf_counter() - start
    model = AutoModelForImageClassification.from_pretrained(bench.model_dir).to(bench.device).eval()
    dtype = autocast_dtype(bench.args.mixed_precision)
    with torch.inference_mode(), torch.autocast(bench.device, dtype=dtype, enabled=dtype is not None):
        model(pixel_values=batches[0].to(bench.device))  # first call on this model object
        sync(bench.device)
        start = time.perf_counter()
        for x in batches:
            model(pixel_values=x.to(bench.device))
        sync(bench.device)
        forward = time.perf_counter() - start
    return {"preprocess": n / plain, "preprocess_augmented": n / augmented, "forward": n / forward}


# ----------------------------------------------------------------------------------------------------------------------
# Training: tl-hub and the Trainer


def tl_hub_fe_run(bench: Bench, keep: dict) -> dict:
    from tl_hub import FeatureExtractionRecipe

    start = time.perf_counter()
    recipe = FeatureExtractionRecipe(bench.model_dir, epochs=bench.sizes.fe_epochs, lr=1e-3, batch_size=BATCH,
                                     eval_batch_size=EVAL_BATCH, augment=False, feature_cache="memory", seed=0,
                                     mixed_precision=bench.args.mixed_precision)
    result = recipe.fit(bench.train, bench.val, progress=False)
    sync(bench.device)
    seconds = time.perf_counter() - start
    keep["recipe"] = recipe  # the last fitted recipe is saved for the first-predict measurement
    return {"seconds": seconds, "accuracy": result.metrics["accuracy"]}


def trainer_run(bench: Bench, *, epochs: int, freeze_encoder: bool, evaluate: bool) -> dict:
    """One Trainer run; the timer covers loading the processor and model, building the Trainer and ``train()``."""
    from transformers import AutoModelForImageClassification, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from tl_hub import split_model

    mp = bench.args.mixed_precision
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        processor = peer_processor(bench.model_dir)
        model = AutoModelForImageClassification.from_pretrained(bench.model_dir)
        if freeze_encoder:
            for p in model.get_submodule(split_model(model).encoder).parameters():
                p.requires_grad_(False)

        def transform(batch):
            out = processor(images=[im.convert("RGB") for im in batch["image"]], return_tensors="pt")
            out["labels"] = batch["label"]
            return out

        def compute_metrics(pred):
            return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=BATCH, per_device_eval_batch_size=EVAL_BATCH,
            num_train_epochs=epochs, learning_rate=1e-3, eval_strategy="epoch" if evaluate else "no",
            save_strategy="no", report_to=[], logging_strategy="no", disable_tqdm=True, seed=0,
            remove_unused_columns=False, dataloader_num_workers=0, use_cpu=bench.device == "cpu",
            bf16=mp == "bf16", fp16=mp == "fp16",
        )
        trainer = Trainer(model=model, args=targs, train_dataset=bench.train.with_transform(transform),
                          eval_dataset=bench.val.with_transform(transform), compute_metrics=compute_metrics)
        trainer.remove_callback(PrinterCallback)
        out = trainer.train()
        sync(bench.device)
        seconds = time.perf_counter() - start
        evals = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
    return {"seconds": seconds, "images_per_second": out.metrics["train_samples_per_second"],
            "accuracy": evals[-1] if evals else float("nan")}


def tl_hub_ft_run(bench: Bench, unfreeze="all", prefix_cache: bool = True) -> dict:
    """One head epoch (solved on cached features), then one fine-tune epoch; the fine-tune period's images/s."""
    from tl_hub import FineTuneRecipe

    start = time.perf_counter()
    recipe = FineTuneRecipe(bench.model_dir, head_epochs=1, epochs=2, lr=1e-3, batch_size=BATCH,
                            eval_batch_size=EVAL_BATCH, augment=False, feature_cache="memory", unfreeze=unfreeze,
                            prefix_cache=prefix_cache, seed=0, mixed_precision=bench.args.mixed_precision)
    result = recipe.fit(bench.train, bench.val, progress=False)
    sync(bench.device)
    seconds = time.perf_counter() - start
    rates = [h["train_images_per_second"] for h in result.history if h["period"] == "fine-tune"]
    cut = result.extra["periods"][-1].get("prefix_cache")
    caches = result.extra["feature_caches"]
    prefix = sum(caches[f"{split} {cut}"]["bytes"] for split in ("training", "validation")) if cut else None
    return {"seconds": seconds, "images_per_second": statistics.harmonic_mean(rates), "prefix_bytes": prefix,
            "prefix_cut": cut}


# ----------------------------------------------------------------------------------------------------------------------
# Inference


def predict_sides(bench: Bench, exported: Optional[dict] = None) -> dict:
    """``Classifier.predict`` and the pipeline on the same loaded model, processor, images and batch size; the
    model's forward alone on the same batches, preprocessed beforehand: the bound of both; and ``predict`` through
    ONNX Runtime on each export in ``exported`` (``{"onnx": folder, "int8": folder}``)."""
    from transformers import AutoModelForImageClassification, pipeline

    import tl_hub
    from tl_hub import Classifier
    from tl_hub.backbone import load_image_processor

    processor = load_image_processor(bench.model_dir)
    model = AutoModelForImageClassification.from_pretrained(bench.model_dir).to(bench.device).eval()
    images = [im.convert("RGB") for im in bench.val["image"]]
    images = (images * (bench.sizes.predict_images // len(images) + 1))[: bench.sizes.predict_images]
    clf = Classifier(model, processor)
    pipe = pipeline("image-classification", model=model, image_processor=processor, device=model.device)

    def timed(fn):
        def run():
            start = time.perf_counter()
            fn()
            sync(bench.device)
            return {"images_per_second": len(images) / (time.perf_counter() - start)}
        return run

    batches = [processor(images=images[i:i + BATCH], return_tensors="pt")["pixel_values"].to(bench.device)
               for i in range(0, len(images), BATCH)]  # preprocessed once, outside the timer

    @torch.inference_mode()
    def forward_only():
        for x in batches:
            model(pixel_values=x)

    sides = {"tl_hub": timed(lambda: clf.predict(images, top_k=1, batch_size=BATCH)),
             "pipeline": timed(lambda: pipe(images, top_k=1, batch_size=BATCH)),
             "forward_only": timed(forward_only)}
    for name, folder in (exported or {}).items():
        runtime = tl_hub.load(folder)
        sides[name] = timed(lambda runtime=runtime: runtime.predict(images, top_k=1, batch_size=BATCH))
    return sides


def first_predict(side: str, folder: str, device: str) -> float:
    """In this fresh process: seconds from just before loading ``folder`` to after the first prediction returns."""
    from transformers import pipeline

    import tl_hub  # both sides import tl_hub and transformers before the timer

    image = make_image(np.random.default_rng(0), 0, np.full((N_CLASSES, 3), 100))
    start = time.perf_counter()
    if side == "tl_hub":
        clf = tl_hub.load(folder)
        clf.model.to(device)
        clf.predict(image)
    else:
        pipe = pipeline("image-classification", model=folder, image_processor=peer_processor(folder), device=device)
        pipe(image)
    sync(device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------------
# Subprocess measurements: first prediction and peak memory


class PeakMemory:
    """Peak growth of memory while the block runs: CUDA allocator peak, or resident set sampled every ms."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.peak = _rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.growth = torch.cuda.max_memory_allocated() - self.start
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, _rss())
            self.growth = self.peak - self.start


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def warm_up(model_dir: str, args) -> None:
    """Pay one-time costs (imports, metric modules, thread pools) before a memory measurement."""
    from tl_hub import FeatureExtractionRecipe, FineTuneRecipe

    small, small_val = make_data(20, 8, args.model), make_data(10, 7, args.model)
    common = dict(batch_size=BATCH, eval_batch_size=EVAL_BATCH, augment=False, seed=0,
                  mixed_precision=args.mixed_precision)
    FeatureExtractionRecipe(model_dir, epochs=1, feature_cache="memory", **common).fit(small, small_val, progress=False)
    FineTuneRecipe(model_dir, head_epochs=0, epochs=1, feature_cache="off", **common).fit(small, small_val,
                                                                                          progress=False)


def memory_phase(phase: str, model_dir: str, args) -> int:
    """Peak memory growth in bytes of one frozen or full run, in this (fresh) process, after a warm-up."""
    from tl_hub import FeatureExtractionRecipe, FineTuneRecipe

    sizes = sizes_for(args)
    train, val = make_data(sizes.train, 0, args.model), make_data(sizes.val, 1, args.model)
    warm_up(model_dir, args)
    common = dict(lr=1e-3, batch_size=BATCH, eval_batch_size=EVAL_BATCH, augment=False, seed=0,
                  mixed_precision=args.mixed_precision)
    if phase == "frozen":
        recipe = FeatureExtractionRecipe(model_dir, epochs=1, feature_cache="memory", **common)
    else:
        recipe = FineTuneRecipe(model_dir, head_epochs=0, epochs=1, feature_cache="off", **common)
    with PeakMemory(args.device) as mem:
        recipe.fit(train, val, progress=False)
    return mem.growth


def in_subprocess(phase: str, folder: str, args) -> float:
    """Run ``--phase`` of this script in a fresh process; its last line is ``{"value": ...}``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--model-dir", folder, "--device",
           args.device, "--mixed-precision", args.mixed_precision, "--model", args.model] + (
               ["--quick"] if args.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["value"])


def run_phase(args) -> float:
    if args.phase in ("frozen", "full"):
        return memory_phase(args.phase, args.model_dir, args)
    return first_predict(args.phase.removeprefix("first-predict-"), args.model_dir, args.device)


# ----------------------------------------------------------------------------------------------------------------------
# The whole benchmark


def announce(what: str, repeats: int) -> None:
    print(f"- {what} (1 warm-up + {repeats} timed runs of each side, interleaved)", flush=True)


def measure_data_path(bench: Bench) -> dict:
    announce("data path: preprocessing and the model's forward alone", bench.args.repeats)
    runs = interleaved({"data": lambda: data_path_run(bench)}, bench.args.repeats)
    return {"preprocess_images_per_second": figure(runs["data"], "preprocess"),
            "preprocess_augmented_images_per_second": figure(runs["data"], "preprocess_augmented"),
            "model_inference_images_per_second": figure(runs["data"], "forward")}


def measure_fe(bench: Bench, keep: dict) -> dict:
    """The floor, tl-hub's feature extraction and the Trainer's, in the same rounds: both ratios of the row
    (vs the Trainer, vs the floor) compare runs made under the same machine state."""
    epochs = bench.sizes.fe_epochs
    announce(f"floor, and feature extraction, {epochs} epochs: tl-hub vs Trainer", bench.args.repeats)
    runs = interleaved({"floor": lambda: floor_run(bench),
                        "tl_hub": lambda: tl_hub_fe_run(bench, keep),
                        "trainer": lambda: trainer_run(bench, epochs=epochs, freeze_encoder=True, evaluate=True)},
                       bench.args.repeats)
    return {"floor_seconds": figure(runs["floor"], "seconds"),
            "floor_train_only_seconds": figure(runs["floor"], "train_only"),
            "floor_load_seconds": figure(runs["floor"], "load"),
            "fe_seconds": figure(runs["tl_hub"], "seconds"), "fe_trainer_seconds": figure(runs["trainer"], "seconds"),
            "fe_accuracy": figure(runs["tl_hub"], "accuracy"),
            "fe_trainer_accuracy": figure(runs["trainer"], "accuracy")}


def measure_ft(bench: Bench, notes: dict) -> dict:
    announce("fine-tuning: tl-hub all groups vs Trainer; top-2 with and without the prefix cache", bench.args.repeats)
    runs = interleaved({"all": lambda: tl_hub_ft_run(bench),
                        "trainer": lambda: trainer_run(bench, epochs=1, freeze_encoder=False, evaluate=False),
                        "top2_cached": lambda: tl_hub_ft_run(bench, 2, prefix_cache=True),
                        "top2": lambda: tl_hub_ft_run(bench, 2, prefix_cache=False)}, bench.args.repeats)
    f = {"ft_images_per_second": figure(runs["all"], "images_per_second"),
         "ft_trainer_images_per_second": figure(runs["trainer"], "images_per_second"),
         "ft_all_fit_seconds": figure(runs["all"], "seconds")}
    for name in ("top2_cached", "top2"):
        f[f"ft_{name}_images_per_second"] = figure(runs[name], "images_per_second")
        f[f"ft_{name}_fit_seconds"] = figure(runs[name], "seconds")
    cuts = {r["prefix_cut"] for r in runs["top2_cached"]}
    if cuts == {None} or any(r["prefix_cut"] for r in runs["top2"]):
        raise SystemExit(f"the prefix cache was not used as configured (cuts {cuts}); the top-2 rows would be wrong")
    f["top2_prefix_cache_mb"] = [r["prefix_bytes"] / 2**20 for r in runs["top2_cached"]]
    notes["top2_prefix_cut"] = cuts.pop()
    return f


def export_model(bench: Bench, folder: str, tmp: str, notes: dict) -> dict:
    """The trained ``folder`` exported to ONNX, fp32 and int8 (calibrated on the training images, measured on the
    validation images): ``{"onnx": folder, "int8": folder}``; their sizes on disk and int8's parity go to
    ``notes``."""
    import datasets

    import tl_hub

    exported, data = {}, datasets.DatasetDict(train=bench.train, validation=bench.val)
    for name, quantize in (("onnx", None), ("int8", "int8")):
        start = time.perf_counter()
        result = tl_hub.export(folder, output_dir=os.path.join(tmp, f"export-{name}"), quantize=quantize,
                               dataset=data if quantize else None)
        exported[name] = result.output_dir
        notes[f"{name}_export_seconds"] = time.perf_counter() - start
        notes[f"{name}_model_mb"] = result.size_bytes / 1e6
        notes[f"{name}_parity"] = result.parity
    notes["pytorch_model_mb"] = os.path.getsize(os.path.join(bench.model_dir, "model.safetensors")) / 1e6
    return exported


def measure_inference(bench: Bench, folder: str, exported: dict) -> dict:
    repeats = bench.args.repeats
    announce(f"inference: Classifier.predict (PyTorch, ONNX Runtime fp32 and int8) vs pipeline, "
             f"{bench.sizes.predict_images} images", repeats)
    runs = interleaved(predict_sides(bench, exported), repeats)
    f = {"predict_images_per_second": figure(runs["tl_hub"], "images_per_second"),
         "pipeline_images_per_second": figure(runs["pipeline"], "images_per_second"),
         "predict_forward_only_images_per_second": figure(runs["forward_only"], "images_per_second"),
         **{f"{name}_predict_images_per_second": figure(runs[name], "images_per_second") for name in exported}}
    announce("first prediction in a fresh process: tl_hub.load + predict (PyTorch, ONNX fp32, int8) vs pipeline",
             repeats)
    folders = {"tl_hub": folder, "pipeline": folder, **exported}
    runs = interleaved({side: lambda side=side: {"seconds": in_subprocess(
        f"first-predict-{'pipeline' if side == 'pipeline' else 'tl_hub'}", folders[side], bench.args)}
        for side in folders}, repeats)
    f["first_predict_seconds"] = figure(runs["tl_hub"], "seconds")
    f["first_predict_pipeline_seconds"] = figure(runs["pipeline"], "seconds")
    f.update({f"first_predict_{name}_seconds": figure(runs[name], "seconds") for name in exported})
    return f


def measure_memory(bench: Bench) -> dict:
    """Fresh processes, interleaved; each warms up in-process before its measured fit."""
    print(f"- peak memory growth: frozen vs full fine-tune ({bench.args.repeats} fresh processes of each, "
          "interleaved; each warms up in-process)", flush=True)
    mem = {"frozen": [], "full": []}
    for _ in range(bench.args.repeats):
        for phase in mem:
            mem[phase].append(in_subprocess(phase, bench.model_dir, bench.args) / 2**20)
    return {"frozen_peak_mb": mem["frozen"], "full_peak_mb": mem["full"]}


def measure(bench: Bench, tmp: str) -> tuple[dict, dict]:
    """Every measurement, in protocol order; returns ``(figures, notes)``: figures map a name to its runs."""
    keep, notes = {}, {}
    figures = {**measure_data_path(bench), **measure_fe(bench, keep)}
    folder = keep["recipe"].save(os.path.join(tmp, "fe-model"))  # the last fitted FE recipe
    figures.update(measure_ft(bench, notes))
    figures.update(measure_inference(bench, folder, export_model(bench, folder, tmp, notes)))
    figures.update(measure_memory(bench))
    return figures, notes


def ratios(m: dict) -> dict:
    """Median against median (``m`` maps a figure to its median)."""
    return {
        "fe_vs_floor": m["fe_seconds"] / m["floor_seconds"],
        "fe_vs_floor_train_only": m["fe_seconds"] / m["floor_train_only_seconds"],
        "fe_speedup_vs_trainer": m["fe_trainer_seconds"] / m["fe_seconds"],
        "ft_throughput_vs_trainer": m["ft_images_per_second"] / m["ft_trainer_images_per_second"],
        "top2_cached_speedup_vs_top2": m["ft_top2_cached_images_per_second"] / m["ft_top2_images_per_second"],
        "top2_cached_speedup_vs_full": m["ft_top2_cached_images_per_second"] / m["ft_images_per_second"],
        "top2_speedup_vs_full": m["ft_top2_images_per_second"] / m["ft_images_per_second"],
        "top2_cached_fit_speedup_vs_top2": m["ft_top2_fit_seconds"] / m["ft_top2_cached_fit_seconds"],
        "frozen_mem_vs_full": m["frozen_peak_mb"] / m["full_peak_mb"] if m["full_peak_mb"] else float("nan"),
        "predict_vs_pipeline": m["predict_images_per_second"] / m["pipeline_images_per_second"],
        "predict_vs_forward_only": m["predict_images_per_second"] / m["predict_forward_only_images_per_second"],
        "pipeline_vs_forward_only": m["pipeline_images_per_second"] / m["predict_forward_only_images_per_second"],
        "first_predict_speedup_vs_pipeline": m["first_predict_pipeline_seconds"] / m["first_predict_seconds"],
        "onnx_predict_vs_pipeline": m["onnx_predict_images_per_second"] / m["pipeline_images_per_second"],
        "int8_predict_vs_pipeline": m["int8_predict_images_per_second"] / m["pipeline_images_per_second"],
        "onnx_first_predict_speedup_vs_pipeline": m["first_predict_pipeline_seconds"] / m["first_predict_onnx_seconds"],
        "int8_first_predict_speedup_vs_pipeline": m["first_predict_pipeline_seconds"] / m["first_predict_int8_seconds"],
        "preprocess_augmented_vs_ft_training": m["preprocess_augmented_images_per_second"] / m["ft_images_per_second"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs of each side (default 5, lite0 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one timed run: a smoke test")
    parser.add_argument("--model", default="vit", choices=["vit", "lite0"],
                        help="vit: the small ViT at 64 px on synthetic images; lite0: ImageNet EfficientNet-Lite0 "
                             "at 224 px on Fashion-MNIST photos")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3 if args.model == "lite0" else 5)
    if args.repeats < 3 and not args.quick and not args.phase:
        parser.error(f"--repeats should be at least 3 (a min, a median and a max), got {args.repeats}; "
                     "for a smoke test pass --quick.")
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if args.phase:
        print(json.dumps({"value": run_phase(args)}))
        return

    total = time.perf_counter()
    sizes = sizes_for(args)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"tl-hub benchmark on {where}, mixed precision {args.mixed_precision}; {sizes.train} train / {sizes.val} "
          f"validation images, {MODEL_NAMES[args.model]}; {args.repeats} timed runs of each side",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, sizes, make_model(os.path.join(tmp, args.model), args.model),
                      make_data(sizes.train, 0, args.model), make_data(sizes.val, 1, args.model))
        figures, notes = measure(bench, tmp)

    s = {name: stats(values) for name, values in figures.items()}
    r = ratios({name: v["median"] for name, v in s.items()})
    out = {"device": where, "mixed_precision": args.mixed_precision,
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "host": host(),
           "model": args.model, "quick": args.quick, "repeats": args.repeats, "sizes": dataclasses.asdict(sizes)}
    for name, v in s.items():
        out.update({f"{name}_median": v["median"], f"{name}_min": v["min"], f"{name}_max": v["max"]})
    out.update(r)
    out.update(notes)
    out["targets"] = {k: {side: t, "value": r[k], "met": r[k] >= t if side == "at_least" else r[k] <= t}
                      for k, side, t in TARGETS}
    out["runs"] = {name: v["runs"] for name, v in s.items()}
    out["benchmark_seconds"] = time.perf_counter() - total
    from tables import performance  # the docs' table (benchmarks/tables.py), from the same figures

    print("\n" + performance(out))
    print(f"\naccuracy after {sizes.fe_epochs} feature-extraction epochs (median): tl-hub (kept epoch) "
          f"{s['fe_accuracy']['median']:.3f}, Trainer (last epoch) {s['fe_trainer_accuracy']['median']:.3f}; "
          f"total {out['benchmark_seconds']:.0f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
