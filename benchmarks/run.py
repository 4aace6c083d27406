"""tl-hub against the transformers Trainer and pipeline, in one run, on the same model, data and machine.

    python benchmarks/run.py            # about 2 minutes on 2 CPU cores
    python benchmarks/run.py --device cuda --mixed-precision bf16

Model: a ViT-like config (64x64 input, patch 8, hidden 192, 6 layers), random "pretrained" weights.
Data: 1,000 training and 100 validation 64x64 images of 10 classes, made in memory.

Measured:
- floor: one pass over the training set (preprocessing + encoder forward under torch.inference_mode), best
  of five;
- feature extraction, 10 epochs: tl-hub (features cached once) vs Trainer with the encoder's parameters frozen
  (``requires_grad=False``; it still runs the encoder every epoch); both evaluate every epoch; tl-hub's
  time is the whole ``fit`` (data checks, model loading, feature extraction, training), best of five;
- fine-tuning throughput (images/s of training): tl-hub period 2 (all groups, and top-2 blocks) vs Trainer
  with everything trainable (one epoch each, three times, interleaved; best of each);
- peak memory of the frozen period vs a full fine-tune (each in a fresh subprocess; CPU: resident set growth
  sampled every millisecond, CUDA: max_memory_allocated);
- inference: ``Classifier.predict`` vs ``pipeline("image-classification")``, same batch size;
- data path: preprocessing alone (plain and with the default augmentation, one process, no workers) vs the
  model, images/s.

The last line printed is one JSON object with every figure and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch

N_TRAIN, N_VAL, N_CLASSES, SIZE = 1000, 100, 10, 64
BATCH, EVAL_BATCH, FE_EPOCHS = 32, 64, 10
SHORT_REPEATS, REPEATS = 5, 3  # the few-second measurements are repeated more: this machine's noise is ~10%


# ----------------------------------------------------------------------------------------------------------------------
# Setup


def best_of(n: int, fn, key: str, worse):
    """Run ``fn`` ``n`` times; keep the run whose ``key`` is best (``worse`` picks the value to drop)."""
    runs = [fn() for _ in range(n)]
    return min(runs, key=lambda r: r[key]) if worse is max else max(runs, key=lambda r: r[key])


def make_model(path: str) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=SIZE, patch_size=8, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                       intermediate_size=768, num_labels=N_CLASSES)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(path)
    return path


def make_data(n: int, seed: int):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.random.default_rng(123).integers(0, 255, (N_CLASSES, 3), dtype=np.int64)
    images, labels = [], []
    for i in range(n):
        y = i % N_CLASSES
        a = rng.normal(0, 40, (SIZE, SIZE, 3)) + base[y]
        a[:: (y % 4) + 2] += 60  # class-specific stripes
        images.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
        labels.append(y)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"c{i}" for i in range(N_CLASSES)])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def device_kwargs(args) -> dict:
    return {"mixed_precision": args.mixed_precision}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------------------------------
# The peer: transformers Trainer and pipeline


def trainer_run(model_dir, train, val, *, epochs, freeze_encoder, evaluate, args):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from tl_hub.backbone import split_model

    processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil") if not _has_torchvision() else \
        AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    if freeze_encoder:
        encoder = model.get_submodule(split_model(model).encoder)
        for p in encoder.parameters():
            p.requires_grad_(False)

    def transform(batch):
        out = processor(images=[im.convert("RGB") for im in batch["image"]], return_tensors="pt")
        out["labels"] = batch["label"]
        return out

    def compute_metrics(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=BATCH, per_device_eval_batch_size=EVAL_BATCH,
            num_train_epochs=epochs, learning_rate=1e-3, eval_strategy="epoch" if evaluate else "no",
            save_strategy="no", report_to=[], logging_strategy="no", disable_tqdm=True, seed=0,
            remove_unused_columns=False, dataloader_num_workers=0, use_cpu=args.device == "cpu",
            bf16=args.mixed_precision == "bf16", fp16=args.mixed_precision == "fp16",
        )
        trainer = Trainer(model=model, args=targs, train_dataset=train.with_transform(transform),
                          eval_dataset=val.with_transform(transform), compute_metrics=compute_metrics)
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        out = trainer.train()
        sync(args.device)
        seconds = time.perf_counter() - start
        accuracy = trainer.evaluate()["eval_accuracy"] if evaluate else None
    return {"seconds": seconds, "images_per_second": out.metrics["train_samples_per_second"], "accuracy": accuracy}


def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


# ----------------------------------------------------------------------------------------------------------------------
# Measurements


def floor_and_data_path(model_dir, train, args):
    """One inference pass over the training set; preprocessing alone; the model alone."""
    from transformers import AutoModelForImageClassification

    from tl_hub.backbone import load_image_processor
    from tl_hub.data import ImageClassificationDataset, ImageCollator

    processor = load_image_processor(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir).to(args.device).eval()
    loader = torch.utils.data.DataLoader(ImageClassificationDataset(train, "image", "label"), batch_size=EVAL_BATCH,
                                         collate_fn=ImageCollator(processor))
    dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float16 if args.mixed_precision == "fp16" \
        else None

    def forward(x):
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            return model(pixel_values=x.to(args.device))

    with torch.inference_mode():
        forward(next(iter(loader))["pixel_values"])  # warm-up
        start = time.perf_counter()
        batches = [b["pixel_values"] for b in loader]
        prep = time.perf_counter() - start
        start = time.perf_counter()
        for x in batches:
            forward(x)
        sync(args.device)
        model_s = time.perf_counter() - start
    augmented = torch.utils.data.DataLoader(ImageClassificationDataset(train, "image", "label", augment=True),
                                            batch_size=BATCH, collate_fn=ImageCollator(processor))
    start = time.perf_counter()
    for _ in augmented:
        pass
    aug_s = time.perf_counter() - start
    return {"floor_seconds": prep + model_s, "preprocess_images_per_second": len(train) / prep,
            "preprocess_augmented_images_per_second": len(train) / aug_s,
            "model_inference_images_per_second": len(train) / model_s}


def tl_hub_fe(model_dir, train, val, args):
    from tl_hub import FeatureExtractionRecipe

    recipe = FeatureExtractionRecipe(model_dir, epochs=FE_EPOCHS, lr=1e-3, batch_size=BATCH,
                                     eval_batch_size=EVAL_BATCH, augment=False, feature_cache="memory", seed=0,
                                     **device_kwargs(args))
    start = time.perf_counter()
    result = recipe.fit(train, val, progress=False)
    sync(args.device)
    return {"seconds": time.perf_counter() - start, "accuracy": result.metrics["accuracy"]}


def tl_hub_finetune(model_dir, train, val, args, unfreeze="all"):
    from tl_hub import FineTuneRecipe

    recipe = FineTuneRecipe(model_dir, head_epochs=1, epochs=2, lr=1e-3, batch_size=BATCH, eval_batch_size=EVAL_BATCH,
                            augment=False, feature_cache="memory", unfreeze=unfreeze, seed=0, **device_kwargs(args))
    result = recipe.fit(train, val, progress=False)
    return {"images_per_second": result.history[-1]["train_images_per_second"]}


def predict_vs_pipeline(model_dir, val, args):
    from transformers import AutoModelForImageClassification, pipeline

    from tl_hub import Classifier
    from tl_hub.backbone import load_image_processor

    processor = load_image_processor(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir).to(args.device).eval()
    images = [im.convert("RGB") for im in val["image"]] * 4
    clf = Classifier(model, processor)
    pipe = pipeline("image-classification", model=model, image_processor=processor, device=model.device)
    out = {}
    for name, fn in (("tl_hub", lambda: clf.predict(images, top_k=1, batch_size=BATCH)),
                     ("pipeline", lambda: pipe(images, top_k=1, batch_size=BATCH))):
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        sync(args.device)
        out[name] = len(images) / (time.perf_counter() - start)
    return out


def warm_up(model_dir, args):
    """Pay one-time costs (imports, metric modules, thread pools) outside the timers, as for the peer, whose
    imports happen before its timer starts."""
    from tl_hub import FeatureExtractionRecipe, FineTuneRecipe
    from tl_hub.metrics import load_metric

    load_metric("accuracy"), load_metric("f1")
    small, small_val = make_data(64, 7), make_data(20, 8)
    common = dict(batch_size=BATCH, eval_batch_size=EVAL_BATCH, augment=False, seed=0, **device_kwargs(args))
    FeatureExtractionRecipe(model_dir, epochs=1, feature_cache="memory", **common).fit(small, small_val, progress=False)
    FineTuneRecipe(model_dir, head_epochs=0, epochs=1, feature_cache="off", **common).fit(small, small_val,
                                                                                          progress=False)


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


def memory_phase(phase, model_dir, args) -> int:
    """Run one phase in this (fresh) process; return its peak memory growth in bytes."""
    from tl_hub import FeatureExtractionRecipe, FineTuneRecipe

    train, val = make_data(N_TRAIN, 0), make_data(N_VAL, 1)
    warm_up(model_dir, args)
    common = dict(lr=1e-3, batch_size=BATCH, eval_batch_size=EVAL_BATCH, augment=False, seed=0, **device_kwargs(args))
    if phase == "frozen":
        recipe = FeatureExtractionRecipe(model_dir, epochs=1, feature_cache="memory", **common)
    else:
        recipe = FineTuneRecipe(model_dir, head_epochs=0, epochs=1, feature_cache="off", **common)
    with PeakMemory(args.device) as mem:
        recipe.fit(train, val, progress=False)
    return mem.growth


def memory_in_subprocess(phase, model_dir, args) -> int:
    cmd = [sys.executable, __file__, "--phase", phase, "--model-dir", model_dir, "--device", args.device,
           "--mixed-precision", args.mixed_precision]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_bytes"])


# ----------------------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if args.phase:
        print(json.dumps({"peak_growth_bytes": memory_phase(args.phase, args.model_dir, args)}))
        return

    total = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(os.path.join(tmp, "vit"))
        train, val = make_data(N_TRAIN, 0), make_data(N_VAL, 1)
        warm_up(model_dir, args)
        where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"tl-hub benchmark on {where}, mixed precision {args.mixed_precision}; "
              f"{N_TRAIN} train / {N_VAL} validation images of {SIZE}x{SIZE}, ViT 6x192 patch 8", flush=True)

        # Short measurements are repeated, interleaved with their peer, and the best of each is kept.
        floor = best_of(SHORT_REPEATS, lambda: floor_and_data_path(model_dir, train, args), "floor_seconds", max)
        fe = best_of(SHORT_REPEATS, lambda: tl_hub_fe(model_dir, train, val, args), "seconds", max)
        peer_fe = trainer_run(model_dir, train, val, epochs=FE_EPOCHS, freeze_encoder=True, evaluate=True, args=args)
        ft_runs, peer_ft_runs = [], []
        for _ in range(REPEATS):
            ft_runs.append(tl_hub_finetune(model_dir, train, val, args))
            peer_ft_runs.append(trainer_run(model_dir, train, val, epochs=1, freeze_encoder=False, evaluate=False,
                                            args=args))
        ft = max(ft_runs, key=lambda r: r["images_per_second"])
        peer_ft = max(peer_ft_runs, key=lambda r: r["images_per_second"])
        ft_top2 = tl_hub_finetune(model_dir, train, val, args, unfreeze=2)
        pred = predict_vs_pipeline(model_dir, val, args)
        mem_frozen = memory_in_subprocess("frozen", model_dir, args)
        mem_full = memory_in_subprocess("full", model_dir, args)

    r = {
        "device": where,
        "mixed_precision": args.mixed_precision,
        "floor_seconds": floor["floor_seconds"],
        "fe_seconds": fe["seconds"],
        "fe_trainer_seconds": peer_fe["seconds"],
        "fe_accuracy": fe["accuracy"],
        "fe_trainer_accuracy": peer_fe["accuracy"],
        "ft_images_per_second": ft["images_per_second"],
        "ft_top2_images_per_second": ft_top2["images_per_second"],
        "ft_trainer_images_per_second": peer_ft["images_per_second"],
        "frozen_peak_mb": mem_frozen / 2**20,
        "full_peak_mb": mem_full / 2**20,
        "predict_images_per_second": pred["tl_hub"],
        "pipeline_images_per_second": pred["pipeline"],
        "preprocess_images_per_second": floor["preprocess_images_per_second"],
        "preprocess_augmented_images_per_second": floor["preprocess_augmented_images_per_second"],
        "model_inference_images_per_second": floor["model_inference_images_per_second"],
    }
    r.update({
        "fe_vs_floor": r["fe_seconds"] / r["floor_seconds"],
        "fe_speedup_vs_trainer": r["fe_trainer_seconds"] / r["fe_seconds"],
        "ft_throughput_vs_trainer": r["ft_images_per_second"] / r["ft_trainer_images_per_second"],
        "top2_speedup_vs_full": r["ft_top2_images_per_second"] / r["ft_images_per_second"],
        "frozen_mem_vs_full": mem_frozen / mem_full,
        "predict_vs_pipeline": r["predict_images_per_second"] / r["pipeline_images_per_second"],
        "preprocess_vs_training": r["preprocess_augmented_images_per_second"] / r["ft_images_per_second"],
        "benchmark_seconds": time.perf_counter() - total,
    })

    rows = [
        ("floor: 1 pass over train (preprocess + forward)", f"{r['floor_seconds']:.2f} s", "", ""),
        (f"feature extraction, {FE_EPOCHS} epochs", f"{r['fe_seconds']:.2f} s", f"{r['fe_trainer_seconds']:.2f} s",
         f"{r['fe_speedup_vs_trainer']:.1f}x faster; {r['fe_vs_floor']:.2f}x floor"),
        ("fine-tune (all groups), train images/s", f"{r['ft_images_per_second']:.0f}",
         f"{r['ft_trainer_images_per_second']:.0f}", f"{r['ft_throughput_vs_trainer']:.2f}x"),
        ("fine-tune top-2 blocks, train images/s", f"{r['ft_top2_images_per_second']:.0f}", "",
         f"{r['top2_speedup_vs_full']:.2f}x vs all groups"),
        ("peak memory growth: frozen period vs full", f"{r['frozen_peak_mb']:.0f} MB", f"{r['full_peak_mb']:.0f} MB",
         f"{r['frozen_mem_vs_full']:.2f}x"),
        ("predict images/s (vs pipeline)", f"{r['predict_images_per_second']:.0f}",
         f"{r['pipeline_images_per_second']:.0f}", f"{r['predict_vs_pipeline']:.2f}x"),
        ("preprocessing images/s, plain", f"{r['preprocess_images_per_second']:.0f}", "", ""),
        ("preprocessing images/s, augmented (vs fine-tune)", f"{r['preprocess_augmented_images_per_second']:.0f}",
         f"{r['ft_images_per_second']:.0f}", f"{r['preprocess_vs_training']:.1f}x"),
        ("model forward images/s (inference)", f"{r['model_inference_images_per_second']:.0f}", "", ""),
    ]
    print(f"\n| {'measure':<48} | {'tl-hub':>10} | {'peer':>10} | ratio")
    print(f"|{'-' * 50}|{'-' * 12}|{'-' * 12}|{'-' * 30}")
    for name, ours, peer, ratio in rows:
        print(f"| {name:<48} | {ours:>10} | {peer:>10} | {ratio}")
    print(f"\naccuracy after {FE_EPOCHS} feature-extraction epochs: tl-hub {r['fe_accuracy']:.3f}, "
          f"Trainer {r['fe_trainer_accuracy']:.3f}; total {r['benchmark_seconds']:.0f} s")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
