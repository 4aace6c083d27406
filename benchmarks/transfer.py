"""Do tl-hub's defaults transfer?  Every recipe with DEFAULT settings on offline tasks nobody tuned for, against two
references run on the same data (in the same process, unless ``--references`` reuses their earlier results):

- ``hand``: a hand-written PyTorch two-period fine-tune (head 100 full-batch Adam steps on the frozen encoder, then
  30 epochs of AdamW with the backbone at 1e-4 and the head at 1e-3, batch 32, last epoch kept), and the same loop
  from random initialisation (all parameters at 1e-3, 30 epochs) as the hand scratch baseline;
- ``probe``: scikit-learn ``LogisticRegression`` on the frozen features (the input of the model's classifier), its
  ``C`` tuned on the validation split.

A task is base model x target x examples per class, in two tiers:

- **real** (first): EfficientNet-Lite0 pretrained on ImageNet-1k (`tl_hub.imagenet`, ``tl-hub:efficientnet-lite0``)
  at 224 px on real images: Fashion-MNIST clothing at 5 and 10 per class (the subset shipped in
  ``tl_hub/assets/fashion-mnist``) and scikit-learn's handwritten digits at 10 per class; 3 validation and 30 test
  images per class (each costs a 224 px forward pass).  Fashion-MNIST at 50 per class runs when named
  (``--tasks lite0/fashion/50``): its hand references alone take about an hour per seed on 2 CPU cores;
- **glyph**: the shipped letter-pretrained ResNet (``tl_hub/assets/glyph-resnet``) and ViT
  (``benchmarks/assets/glyph-vit``) at 32 px on handwritten digits (scikit-learn's, similar: strokes), printed digits
  (rendered from other fonts' digits, similar) and the hue of random textures (different: colour, which letters
  never carried); 20 validation images per class and a large test set.

Every method gets the same training and validation images and is scored on the same disjoint test set.

The references do not depend on tl-hub's code: ``--references FILE`` keeps their results per task and seed (with
the date and machine of each) and reuses them, so that a change to tl-hub is measured without re-running an hour of
hand loops; the JSON line lists every reused entry.  Without it every reference runs.

An oracle runs a small grid of fine-tune settings (``lr`` x ``head_epochs`` x ``augment``) on four tasks (one of
the real tier), picks the best on validation and scores it on test: the default should be within 2 points of it.

    python benchmarks/transfer.py                 # both tiers, 3 seeds, oracle (hours on 2 CPU cores)
    python benchmarks/transfer.py --tier real     # the real tier only
    python benchmarks/transfer.py --tier glyph    # the glyph tier only (about 30 minutes on 2 CPU cores)
    python benchmarks/transfer.py --tier real --references benchmarks/results/transfer_references.json
    python benchmarks/transfer.py --quick         # one glyph task, one seed, no oracle (about a minute)

Prints a table (mean and spread over seeds) and, last, one JSON line with every figure and target.
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
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tl_hub import get_recipe  # noqa: E402
from tl_hub.demo_data import digits_dataset, glyph_dataset, hue_dataset  # noqa: E402
from tl_hub.fashion import fashion_data  # noqa: E402
from tl_hub.imagenet import LITE0, lite0_path  # noqa: E402
from tl_hub.outputs import atomic_path  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import report  # noqa: E402  (benchmarks/run.py)

ASSETS = os.path.join(ROOT, "tl_hub", "assets")
BASES = {"resnet": os.path.join(ASSETS, "glyph-resnet"), "vit": os.path.join(ROOT, "benchmarks", "assets", "glyph-vit"),
         "lite0": LITE0}
REAL_TASKS = [
    # the real tier: EfficientNet-Lite0 pretrained on ImageNet-1k, at 224 px, on real images
    ("lite0/fashion/5", "lite0", "fashion", 5, True),
    ("lite0/fashion/10", "lite0", "fashion", 10, True),
    ("lite0/handwritten/10", "lite0", "handwritten", 10, True),
]
# run only when named (--tasks lite0/fashion/50): its two hand references take about an hour per seed on 2 CPU cores
LARGE_REAL_TASKS = [("lite0/fashion/50", "lite0", "fashion", 50, True)]
REAL_VALIDATION_PER_CLASS = 3  # 30 validation images, as a user with few images has (and the fewest tl-hub trusts)
REAL_TEST_PER_CLASS = 30
GLYPH_TASKS = [
    # name, base, target, per class, similar to the base task
    ("resnet/handwritten/5", "resnet", "handwritten", 5, True),
    ("resnet/handwritten/30", "resnet", "handwritten", 30, True),
    ("resnet/printed/10", "resnet", "printed", 10, True),
    ("resnet/hue/10", "resnet", "hue", 10, False),
    ("vit/handwritten/10", "vit", "handwritten", 10, True),
    ("vit/printed/100", "vit", "printed", 100, True),
]
TASKS = REAL_TASKS + GLYPH_TASKS
ORACLE_TASKS = ("lite0/fashion/10", "resnet/handwritten/5", "resnet/printed/10", "vit/handwritten/10")
ORACLE_GRID = [{"lr": lr, "head_epochs": he, "augment": aug}
               for lr in (3e-4, 1e-3, 3e-3) for he in (0, None) for aug in (True, False)]
ABLATION_TASKS = ("resnet/handwritten/5", "resnet/printed/10", "vit/handwritten/10")
ABLATIONS = {"default": {}, "no augmentation": {"augment": False}, "with flips": {"hflip": True}}
RECIPES = ("feature-extraction", "fine-tune", "scratch")
VALIDATION_PER_CLASS = 20
HAND_EPOCHS = 30


def real_tier_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of a benchmark over the real tier (`REAL_TASKS`): ``--tasks``, ``--seeds`` and ``--output``."""
    parser.add_argument("--tasks", nargs="+", default=[t[0] for t in REAL_TASKS],
                        choices=[t[0] for t in REAL_TASKS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", help="Also write the JSON summary here.")
    return parser


def real_tier(names: list[str], cache: str):
    """``(name, target, per_class)`` of each real-tier task in ``names``, with the ImageNet Lite0 converted once into
    ``cache`` (``TL_HUB_CACHE``) first."""
    os.environ["TL_HUB_CACHE"] = cache
    lite0_path()
    for name, _, target, per_class, _ in REAL_TASKS:
        if name in names:
            yield name, target, per_class


def task_data(target: str, per_class: int, seed: int, real: bool = False):
    """``(train, validation, test)`` as ``datasets.Dataset``: disjoint, the same for every method.  The real tier
    (``real``) keeps 3 validation and 30 test images per class: its models cost 224 px forward passes."""
    if target == "fashion":
        return fashion_data(per_class, REAL_VALIDATION_PER_CLASS, REAL_TEST_PER_CLASS, seed=seed)
    if target == "handwritten" and real:
        train, used = digits_dataset(per_class=per_class, seed=seed)
        val, used_val = digits_dataset(per_class=REAL_VALIDATION_PER_CLASS, seed=seed + 1000, exclude=used)
        test, _ = digits_dataset(per_class=REAL_TEST_PER_CLASS, seed=seed + 2000,
                                 exclude=np.concatenate([used, used_val]))
        return train, val, test
    if target == "handwritten":
        train, used = digits_dataset(per_class=per_class, seed=seed)
        val, used_val = digits_dataset(per_class=VALIDATION_PER_CLASS, seed=seed + 1000, exclude=used)
        test, _ = digits_dataset(exclude=np.concatenate([used, used_val]))
        return train, val, test
    if target == "printed":
        digits = tuple("0123456789")
        return (glyph_dataset(per_class, seed=seed, classes=digits),
                glyph_dataset(VALIDATION_PER_CLASS, seed=seed + 1000, classes=digits),
                glyph_dataset(100, seed=seed + 2000, classes=digits))
    return (hue_dataset(per_class, seed=seed), hue_dataset(VALIDATION_PER_CLASS, seed=seed + 1000),
            hue_dataset(100, seed=seed + 2000))


# -- references ------------------------------------------------------------------------------------------------------
def _tensors(processor, ds):
    pixels = processor([im.convert("RGB") for im in ds["image"]], return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor(ds["label"])


def _load(base: str, classes: int, pretrained: bool):
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    base = lite0_path() if base == LITE0 else base  # the references load the converted folder themselves

    if pretrained:
        model = AutoModelForImageClassification.from_pretrained(base, num_labels=classes,
                                                                ignore_mismatched_sizes=True)
    else:
        config = AutoConfig.from_pretrained(base, num_labels=classes)
        model = AutoModelForImageClassification.from_config(config)
    return model, AutoImageProcessor.from_pretrained(base)


def _classifier_inputs(model, pixels):
    """The input of ``model.classifier`` for every image (the frozen features a linear probe sees)."""
    seen = []
    handle = model.classifier.register_forward_pre_hook(lambda m, a: seen.append(a[0].flatten(1)))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(pixels), 256):
            model(pixel_values=pixels[i:i + 256])
    handle.remove()
    return torch.cat(seen)


def _accuracy(model, pixels, labels):
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(pixel_values=pixels[i:i + 256]).logits.argmax(-1) for i in range(0, len(pixels), 256)])
    return float((preds == labels).float().mean())


def hand_reference(base: str, data, seed: int, pretrained: bool) -> float:
    """A hand-written two-period fine-tune (or, not pretrained, training from scratch); test accuracy."""
    torch.manual_seed(seed)
    train, _, test = data
    classes = len(train.features["label"].names)
    model, processor = _load(base, classes, pretrained)
    x, y = _tensors(processor, train)
    tx, ty = _tensors(processor, test)
    head = list(model.classifier.parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    if pretrained:  # period 1: the head alone, 100 full-batch steps on the frozen features
        feats = _classifier_inputs(model, x)
        linear = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][0]
        opt = torch.optim.Adam(linear.parameters(), lr=1e-2)
        for _ in range(100):
            loss = torch.nn.functional.cross_entropy(linear(feats), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        groups = [{"params": backbone, "lr": 1e-4}, {"params": head, "lr": 1e-3}]
    else:
        groups = [{"params": list(model.parameters()), "lr": 1e-3}]
    opt = torch.optim.AdamW(groups)
    for _ in range(HAND_EPOCHS):  # period 2 (or scratch): every parameter, batch 32, last epoch kept
        model.train()
        for idx in torch.randperm(len(y)).split(32):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _accuracy(model, tx, ty)


def probe_reference(base: str, data) -> float:
    """scikit-learn ``LogisticRegression`` on the frozen features, ``C`` tuned on validation; test accuracy."""
    from sklearn.linear_model import LogisticRegression

    train, val, test = data
    model, processor = _load(base, len(train.features["label"].names), True)
    (x, y), (vx, vy), (tx, ty) = (_tensors(processor, d) for d in data)
    f, vf, tf = (_classifier_inputs(model, p).numpy() for p in (x, vx, tx))
    best = None
    for C in 10.0 ** np.arange(-4, 4.5, 0.5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(C=C, max_iter=5000).fit(f, y.numpy())
        score = clf.score(vf, vy.numpy())
        if best is None or score > best[0]:
            best = (score, clf)
    return float(best[1].score(tf, ty.numpy()))


# -- tl-hub ----------------------------------------------------------------------------------------------------------
def tlhub(recipe: str, base: str, data, seed: int, **settings) -> dict:
    """One recipe through the public API; only the seed (and, for the oracle, the grid point) is set."""
    train, val, test = data
    start = time.perf_counter()
    r = get_recipe(recipe)(base, seed=seed, **settings)
    result = r.fit(train, val, progress=False)
    return {"validation": result.metrics["accuracy"], "test": r.evaluate(test)["accuracy"],
            "seconds": time.perf_counter() - start}


def is_real(name: str) -> bool:
    return name in {t[0] for t in REAL_TASKS + LARGE_REAL_TASKS}


REFERENCES = ("hand fine-tune", "hand scratch", "probe")


class ReferenceStore:
    """The references' results per task and seed, kept in a JSON file (``--references FILE``) so that a run of new
    tl-hub code can reuse the figures of the hand loops and the probe, which do not depend on tl-hub: each entry
    records when and on what it was measured.  Without a file every reference runs, as the other methods do."""

    def __init__(self, path: str | None):
        self.path = path
        self.entries = {}
        if path and os.path.exists(path):
            with open(path) as f:
                self.entries = json.load(f)
        self.reused = []

    def get(self, key: str, label: str):
        entry = self.entries.get(key, {}).get(label)
        if entry is not None:
            self.reused.append(f"{key} {label}")
        return entry

    def put(self, key: str, label: str, test: float, seconds: float) -> None:
        if not self.path:
            return
        self.entries.setdefault(key, {})[label] = {
            "test": test, "seconds": seconds, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"}
        with atomic_path(self.path) as tmp, open(tmp, "w") as f:
            json.dump(self.entries, f, indent=1)


def run_task(name, base_key, target, per_class, similar, seeds, references: ReferenceStore | None = None,
             recipes=RECIPES) -> dict:
    base = BASES[base_key]
    references = references or ReferenceStore(None)
    runs = {m: [] for m in (*recipes, *REFERENCES)}
    seconds = {m: [] for m in runs}
    for seed in seeds:
        data = task_data(target, per_class, seed, real=is_real(name))
        for recipe in recipes:
            out = tlhub(recipe, base, data, seed)
            runs[recipe].append(out["test"])
            seconds[recipe].append(out["seconds"])
        for label, fn, args in (("hand fine-tune", hand_reference, (base, data, seed, True)),
                                ("hand scratch", hand_reference, (base, data, seed, False)),
                                ("probe", probe_reference, (base, data))):
            key = f"{name}/seed{seed}"
            kept = references.get(key, label)
            if kept is None:
                start = time.perf_counter()
                kept = {"test": fn(*args), "seconds": time.perf_counter() - start}
                references.put(key, label, kept["test"], kept["seconds"])
            runs[label].append(kept["test"])
            seconds[label].append(kept["seconds"])
        print(f"  {name} seed {seed}: " + ", ".join(f"{m} {v[-1]:.3f}" for m, v in runs.items()), flush=True)
    return {"runs": runs, "seconds": {m: statistics.median(v) for m, v in seconds.items()}}


def oracle(name, base_key, target, per_class, similar, seed: int) -> dict:
    """The best fine-tune of the grid on validation, scored on test (one seed)."""
    data = task_data(target, per_class, seed, real=is_real(name))
    trials = []
    for point in ORACLE_GRID:
        settings = {k: v for k, v in point.items() if v is not None}
        out = tlhub("fine-tune", BASES[base_key], data, seed, **settings)
        trials.append({**point, **out})
    chosen = max(trials, key=lambda t: t["validation"])
    default = tlhub("fine-tune", BASES[base_key], data, seed)
    print(f"  oracle {name}: {chosen} vs default {default['test']:.3f}", flush=True)
    return {"oracle_test": chosen["test"], "oracle_settings": {k: chosen[k] for k in ORACLE_GRID[0]},
            "default_test": default["test"], "default_minus_oracle": default["test"] - chosen["test"]}


def ablation(name, base_key, target, per_class, similar, seeds) -> dict:
    """Augmentation defaults measured: fine-tune and scratch with the default augmentation (random resized crop, no
    flips), without augmentation, and with flips added; test accuracy per seed."""
    out = {}
    for recipe in ("fine-tune", "scratch"):
        for label, settings in ABLATIONS.items():
            out[f"{recipe}, {label}"] = [tlhub(recipe, BASES[base_key], task_data(target, per_class, seed), seed,
                                               **settings)["test"] for seed in seeds]
    print(f"  ablation {name}: " + ", ".join(f"{k} {statistics.mean(v):.3f}" for k, v in out.items()), flush=True)
    return out


def _stats(values):
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


def check_targets(results: dict, oracles: dict) -> dict:
    """Each target of the benchmark, per task: ``{"target": ..., "task": ..., "ok": bool, "margin": float}``."""
    checks = []
    for (name, _b, _t, per_class, similar) in TASKS:
        if name not in results:
            continue
        m = {k: statistics.mean(v) for k, v in results[name]["runs"].items()}
        rows = [("fine-tune >= hand fine-tune", m["fine-tune"] - m["hand fine-tune"]),
                ("feature-extraction >= probe - 1pt", m["feature-extraction"] - m["probe"] + 0.01),
                ("scratch >= hand scratch", m["scratch"] - m["hand scratch"])]
        if similar and per_class <= 10:
            rows += [("fine-tune >= feature-extraction - 1pt", m["fine-tune"] - m["feature-extraction"] + 0.01),
                     ("transfer >= scratch + 10pt", max(m["fine-tune"], m["feature-extraction"]) - m["scratch"] - 0.1)]
        checks += [{"task": name, "target": t, "margin": margin, "ok": margin >= -1e-6} for t, margin in rows]
    for name, o in oracles.items():
        margin = o["default_minus_oracle"] + 0.02
        checks.append({"task": name, "target": "fine-tune >= oracle - 2pt", "margin": margin, "ok": margin >= -1e-6})
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One glyph task, one seed, no oracle.")
    parser.add_argument("--tier", choices=("all", "real", "glyph"), default="all",
                        help="The real tier (ImageNet Lite0 at 224 px), the glyph tier, or both (default).")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", help="Task names to run (default: all).")
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--oracle-only", action="store_true", help="Only the oracle (for a second process).")
    parser.add_argument("--ablation", action="store_true",
                        help="Only the augmentation ablation (fine-tune and scratch, augmentation off / flips on).")
    parser.add_argument("--references", metavar="FILE",
                        help="Keep the references' results (hand loops, probe) per task and seed in this JSON file: "
                             "entries there are reused, missing ones are measured and added.")
    parser.add_argument("--references-only", action="store_true",
                        help="Only measure the references (into --references FILE); no tl-hub recipe runs.")
    parser.add_argument("--output", help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    for name in ("transformers", "tl_hub", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tier = {"all": TASKS, "real": REAL_TASKS, "glyph": GLYPH_TASKS}[args.tier]
    if args.tasks:
        tier = tier + [t for t in LARGE_REAL_TASKS if args.tier in ("all", "real")]
        unknown = set(args.tasks) - {t[0] for t in tier}
        if unknown:
            parser.error(f"unknown task(s) {sorted(unknown)} for --tier {args.tier}; choose from "
                         f"{[t[0] for t in tier]}")
    tasks = GLYPH_TASKS[:1] if args.quick else [t for t in tier if not args.tasks or t[0] in args.tasks]
    seeds = [0] if args.quick else list(range(args.seeds))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tl_hub_transfer_") as cache:
        os.environ["TL_HUB_CACHE"] = cache  # the default disk feature cache, fresh for this run
        if args.ablation:
            ablations = {t[0]: ablation(*t, seeds) for t in TASKS if t[0] in ABLATION_TASKS}
            print(json.dumps({"seeds": seeds, "ablation": ablations,
                              "seconds": time.perf_counter() - start}))
            return 0
        references = ReferenceStore(args.references)
        recipes = () if args.references_only else RECIPES
        results = {} if args.oracle_only else {t[0]: run_task(*t, seeds, references, recipes) for t in tasks}
        if args.references_only:
            print(json.dumps({"references": args.references, "seconds": time.perf_counter() - start}))
            return 0
        oracles = {} if args.quick or args.no_oracle else {
            t[0]: oracle(*t, seed=0) for t in tasks if t[0] in ORACLE_TASKS}
    checks = check_targets(results, oracles)
    methods = list(next(iter(results.values()))["runs"]) if results else []
    print(f"\ntest accuracy, mean over {len(seeds)} seed(s) [min-max]; default settings for tl-hub")
    print("| task | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for name, r in results.items():
        cells = [f"{s['mean']:.3f} [{s['min']:.3f}-{s['max']:.3f}]" for s in map(_stats, r["runs"].values())]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nmedian seconds per run: " + "; ".join(
        f"{name}: " + ", ".join(f"{m} {s:.1f}" for m, s in r["seconds"].items()) for name, r in results.items()))
    for name, o in oracles.items():
        print(f"oracle {name}: best of {len(ORACLE_GRID)} on validation {o['oracle_test']:.3f} "
              f"({o['oracle_settings']}), default {o['default_test']:.3f} ({o['default_minus_oracle']:+.3f})")
    missed = [c for c in checks if not c["ok"]]
    print(f"\ntargets: {len(checks) - len(missed)} of {len(checks)} hold")
    for c in missed:
        print(f"  missed: {c['task']}: {c['target']} (by {-c['margin']:.3f})")
    total = time.perf_counter() - start
    print(f"total {total:.0f} s")
    summary = {"seeds": seeds, "seconds": total,
               "tasks": {n: {"mean": {m: statistics.mean(v) for m, v in r["runs"].items()}, "runs": r["runs"],
                             "seconds": r["seconds"]} for n, r in results.items()},
               "oracle": oracles, "targets": checks, "targets_met": not missed,
               "references_reused": {"file": args.references, "entries": references.reused}}
    report(summary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
