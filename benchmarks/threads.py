"""How many CPU threads should a training step use?  One training step (forward, backward, AdamW) of each model,
timed on 1 thread and on all usable cores, on an idle machine and beside one CPU-bound process.

The models span the step sizes tl-hub meets: the small glyph ResNet and ViT at 32 px (the quick demo's bases), and
EfficientNet-Lite0 at 224 px (the real base), each with a batch of 32.  The competitor is a second Python process
multiplying matrices on one thread, as another job on a shared machine or CI runner would.  For each case: the
median of ``--repeats`` steps after 2 warm-up steps, with the spread (min-max), and what ``threads="auto"``
(`tl_hub.threads.choose_threads`) picks.

    python benchmarks/threads.py                 # ~3 min on 2 cores
    python benchmarks/threads.py --repeats 3     # quicker

Prints a table; the last line is JSON (also written to benchmarks/results/threads.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

COMPETITOR = ("import torch, time\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
              "while True:\n    a = (a @ a).clamp_(-1, 1)\n")


def load_models():
    """``{name: (model, pixel batch, image processor)}``: the models of the table, their weights as shipped."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from recipes import build_zoo
    from tl_hub.imagenet import LITE0, builtin_path

    zoo = os.path.join(os.path.expanduser("~/.cache/tl_hub"), "zoo")
    build_zoo.build_zoo(zoo, names=["glyph-resnet", "glyph-vit"])
    paths = {"glyph-resnet (32 px)": (os.path.join(zoo, "glyph-resnet"), 32),
             "glyph-vit (32 px)": (os.path.join(zoo, "glyph-vit"), 32),
             "lite0 (224 px)": (builtin_path(LITE0), 224)}
    models = {}
    for name, (path, size) in paths.items():
        model = AutoModelForImageClassification.from_pretrained(path)
        models[name] = (model, torch.randn(32, 3, size, size), AutoImageProcessor.from_pretrained(path))
    return models


def step_seconds(model, pixels, threads: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` training steps on ``threads`` threads, after 2 warm-up steps."""
    import torch

    torch.set_num_threads(threads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    labels = torch.zeros(pixels.shape[0], dtype=torch.long)
    model.train()
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def measure(models, repeats: int, cores: int, busy: bool) -> dict:
    from tl_hub.cost import measure_cost
    from tl_hub.threads import choose_threads

    out = {}
    for name, (model, pixels, processor) in models.items():
        step_flops = measure_cost(model, processor).train_flops * pixels.shape[0]
        row = {"step_gflops": step_flops / 1e9}
        row["auto"], row["auto_reason"] = choose_threads("auto", step_flops)
        for threads in sorted({1, cores}):
            t = step_seconds(model, pixels, threads, repeats)
            row[f"threads_{threads}"] = {"median": statistics.median(t), "min": min(t), "max": max(t)}
        out[name] = row
    return out


def print_table(results: dict, cores: int) -> None:
    print(f"{'model':<22} {'machine':<8} {'GFLOPs/step':>11} {'1 thread':>16} {f'{cores} threads':>16} "
          f"{'1 vs ' + str(cores):>7}  auto")
    for machine, rows in results.items():
        for name, r in rows.items():
            one, many = r["threads_1"], r.get(f"threads_{cores}", r["threads_1"])
            cell = lambda m: f"{m['median']:.3f} ({m['min']:.3f}-{m['max']:.3f})"  # noqa: E731
            print(f"{name:<22} {machine:<8} {r['step_gflops']:>11.1f} {cell(one):>16} {cell(many):>16} "
                  f"{many['median'] / one['median']:>6.2f}x  {r['auto']} ({r['auto_reason']})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Timed steps per case (median reported).")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "threads.json"))
    args = parser.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS"):
        raise SystemExit("Unset OMP_NUM_THREADS: this benchmark chooses the thread counts itself.")
    from tl_hub.outputs import atomic_path
    from tl_hub.threads import usable_cpus

    cores = usable_cpus()
    models = load_models()
    results = {"idle": measure(models, args.repeats, cores, busy=False)}
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        time.sleep(2)
        results["busy"] = measure(models, args.repeats, cores, busy=True)
    finally:
        competitor.kill()
        competitor.wait()
    print_table(results, cores)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "cores": cores, "repeats": args.repeats, "results": results}
    with atomic_path(args.output) as tmp, open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
