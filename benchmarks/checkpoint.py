"""What a checkpoint costs: time to write and to load, and size on disk, for a ViT-Base-sized model (random weights,
86M parameters) in the two kinds of period.

    python benchmarks/checkpoint.py [--output-dir DIR]

- head period: the module being trained is the head (the encoder is frozen and unchanged), so the checkpoint holds
  the head, its AdamW state and the RNG states;
- fine-tune period: the whole model and its AdamW state (two moments per parameter).

Both also carry the best epoch's copy of the trained weights (``best.safetensors``, written by default,
``keep_epoch="best"``), as `Recipe.fit` writes them.

The last line is a JSON object with the figures and the ratio head / fine-tune.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6


def measure(accelerator, module, directory: str) -> dict:
    import torch

    from tl_hub.checkpoint import Checkpointer, TrainingState, load_checkpoint, read_checkpoint
    from tl_hub.loop import BestEpoch, Period, make_optimizer
    from tl_hub.runtime import release_prepared

    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer([{"params": trainable}], 1e-4)
    wrapped, optimizer = accelerator.prepare(module, optimizer)
    features = torch.randn(2, 768) if not hasattr(module, "config") else None
    out = wrapped(features) if features is not None else wrapped(pixel_values=torch.randn(2, 3, 224, 224)).logits
    out.float().sum().backward()
    optimizer.step()  # creates the AdamW moments that a checkpoint carries
    checkpointer = Checkpointer(directory, keep=1)
    best = BestEpoch(module, [Period("period", 1, [{"params": trainable}])])
    best.update({"epoch": 1, "accuracy": 1.0, "loss": 0.0}, TrainingState(history=[]))
    start = time.perf_counter()
    path = checkpointer.save(accelerator, TrainingState(step=1, best_epoch=1), extra=best.save)
    saved = time.perf_counter() - start
    start = time.perf_counter()
    load_checkpoint(accelerator, read_checkpoint(path))
    loaded = time.perf_counter() - start
    size = folder_mb(path)
    release_prepared(accelerator)
    return {"save_seconds": round(saved, 3), "load_seconds": round(loaded, 3), "size_mb": round(size, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=None, help="Where to write the checkpoints (default: a temp folder).")
    args = parser.parse_args()

    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from tl_hub.features import HeadModule
    from tl_hub.runtime import make_accelerator

    root = args.output_dir or tempfile.mkdtemp(prefix="tl_hub_ckpt_bench_")
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=10))
    params = sum(p.numel() for p in model.parameters())
    accelerator = make_accelerator()
    for p in model.vit.parameters():
        p.requires_grad_(False)
    head = measure(accelerator, HeadModule(model.classifier), os.path.join(root, "head"))
    for p in model.parameters():
        p.requires_grad_(True)
    full = measure(accelerator, model, os.path.join(root, "fine-tune"))
    if not args.output_dir:
        shutil.rmtree(root, ignore_errors=True)
    print(f"ViT-Base-sized model, {params / 1e6:.1f}M parameters, device {accelerator.device}")
    for name, r in (("head period", head), ("fine-tune period", full)):
        print(f"{name:>17}: {r['size_mb']:9.2f} MB  save {r['save_seconds']:6.2f} s  load {r['load_seconds']:6.2f} s")
    print(f"head / fine-tune size: {head['size_mb'] / full['size_mb']:.5f}")
    print(json.dumps({"parameters": params, "head": head, "fine_tune": full,
                      "size_ratio": head["size_mb"] / full["size_mb"]}))


if __name__ == "__main__":
    main()
