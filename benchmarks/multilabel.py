"""Multi-label transfer and imbalanced classes: tl-hub with DEFAULT settings against the references a user would
write, on real images (the real tier: EfficientNet-Lite0 pretrained on ImageNet-1k, `tl_hub.imagenet.LITE0`, at
224 px with its own image processor).

**Part 1, multi-label** (``--parts ml``): 2x2 mosaics of Fashion-MNIST items (four 28 px cells, a 56 px RGB image).
Each mosaic draws 4 cells: the first cell's class cycles through a shuffled order of the 10 classes (so that every
class shows in every split of at least 10 mosaics); each further cell repeats a class the mosaic already shows with
probability 0.5, else takes a class it does not show yet, so a mosaic has 1 to 4 distinct classes (1 + Binomial(3,
0.5)); the cells' positions are shuffled and a class shown twice shows two different items.  The labels are the set
of classes present (a ``Sequence(ClassLabel)`` column ``labels``, image column ``image``).  Training mosaics are
made of pool items, validation mosaics of other pool items (each class's pool split in proportion to the two sizes,
seeded), test mosaics of the test file's items, the same for every seed.  Default 200 / 60 / 300 mosaics.
Methods, per seed, scored on the same test mosaics by mAP (macro, over the labels with a test positive) and
macro-F1 (over the 10 labels):

- ``feature-extraction``, ``fine-tune``: tl-hub's recipes with default settings (the multi-label task detected from
  the column; macro-F1 at the per-label thresholds tl-hub chose on validation);
- ``hand BCE fine-tune``: the transformers-docs loop: ``AutoModelForImageClassification(...,
  problem_type="multi_label_classification")``, AdamW at 1e-4 (head 1e-3), batch 32, 10 epochs, the model's own
  BCE-with-logits loss on float multi-hot labels, last epoch kept, decisions at 0.5;
- ``probe``: scikit-learn ``OneVsRestClassifier(LogisticRegression(C))`` on the frozen features (the input of the
  model's classifier), ``C`` in 10^-4..10^4 (half-decades) chosen by validation mAP, decisions at 0.5.

**Part 2, imbalanced classes** (``--parts imbalance``, single-label): Fashion-MNIST training sets with a geometric
class-size profile, the largest class 50 images and the smallest 50/ratio (at least 1), for ratio 1 (balanced), 10
and 50; which class gets which size is shuffled by the seed.  The validation set has the same profile at 20% of
each class (at least 1 image), from other pool images; the test set is balanced, 30 per class.  Methods per ratio
and seed: tl-hub feature extraction with default settings (``class_weighting="auto"``) and with
``class_weighting="none"``; ``--imbalance-recipes fine-tune`` runs the fine-tune recipe both ways (slow).  Scored by
test accuracy, balanced accuracy and macro-F1.

Targets (reported, never tuned to): default fine-tune mAP >= hand BCE fine-tune mAP; feature-extraction mAP >= probe
mAP - 0.01; at 10:1 and 50:1 the default's macro-F1 > ``none``'s (mean over seeds, per recipe); at 1:1 the default's
accuracy >= ``none``'s - 0.01.

    python benchmarks/multilabel.py                        # both parts, seeds 0 1 2, Lite0 at 224 px (long)
    python benchmarks/multilabel.py --parts ml             # multi-label only
    python benchmarks/multilabel.py --parts imbalance --imbalance-recipes fine-tune --ratios 10 50
    python benchmarks/multilabel.py --output benchmarks/results/multilabel.json
    python benchmarks/multilabel.py --quick                # the glyph ResNet at 32 px, tiny sizes, 1 seed (a minute)

Progress goes to stderr; stdout gets a table (mean [min-max] over seeds) and, last, one JSON line with every
figure, the targets and whether each is met, the date and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from run import host, report  # noqa: E402  (the same machine description as the main benchmark)
from transfer import _classifier_inputs  # noqa: E402  (the probe's frozen features, as transfer.py takes them)

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe  # noqa: E402
from tl_hub.fashion import CLASSES, _arrays, _dataset  # noqa: E402
from tl_hub.imagenet import LITE0, lite0_path  # noqa: E402

GLYPH = os.path.join(ROOT, "tl_hub", "assets", "glyph-resnet")  # --quick: the letter-pretrained ResNet at 32 px
K = len(CLASSES)
CELLS = 4  # a 2x2 mosaic
REPEAT = 0.5  # the chance that a further cell repeats a class the mosaic already shows
TEST_SEED = 2026  # the test mosaics are the same for every seed (as fashion_data's test set)
C_GRID = 10.0 ** np.arange(-4, 4.5, 0.5)
VALIDATION_SHARE = 0.2
RECIPES = {"feature-extraction": FeatureExtractionRecipe, "fine-tune": FineTuneRecipe}


@dataclasses.dataclass
class Sizes:
    train: int = 200  # mosaics
    validation: int = 60
    test: int = 300
    hand_epochs: int = 10
    ratios: tuple = (1, 10, 50)
    largest: int = 50  # images of the largest class
    test_per_class: int = 30


QUICK = Sizes(train=40, validation=20, test=60, hand_epochs=2, ratios=(1, 10, 50), largest=20, test_per_class=10)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------------------------
def draw_mosaics(n: int, items: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, classes)``, each ``(n, 4)``: the item (row of its image file) and class of every cell of ``n``
    mosaics; ``items[c]`` are the rows of class ``c`` that may be used (at least 4)."""
    first = rng.permutation(np.resize(np.arange(K), n))
    rows, classes = np.zeros((n, CELLS), dtype=np.int64), np.zeros((n, CELLS), dtype=np.int64)
    for i in range(n):
        cells = [int(first[i])]
        for _ in range(CELLS - 1):
            shown = sorted(set(cells))
            if rng.random() < REPEAT:
                cells.append(int(rng.choice(shown)))
            else:
                cells.append(int(rng.choice([c for c in range(K) if c not in shown])))
        classes[i] = rng.permutation(cells)
        for c in set(classes[i].tolist()):
            where = np.flatnonzero(classes[i] == c)
            rows[i, where] = rng.choice(items[c], size=len(where), replace=False)
    return rows, classes


def mosaic_plan(n_train: int, n_validation: int, n_test: int, seed: int) -> dict:
    """``{split: (rows, classes)}`` of the mosaics (`draw_mosaics`): training and validation cells are rows of the
    pool (``_arrays()["train_images"]``, each class's pool split between the two in proportion to their sizes, no
    row in both), test cells rows of the test file, drawn the same for every seed."""
    arrays = _arrays()
    rng = np.random.default_rng(seed)
    share = n_validation / max(n_train + n_validation, 1)
    train_items, val_items = {}, {}
    for c in range(K):
        rows = rng.permutation(np.flatnonzero(arrays["train_labels"] == c))
        cut = min(max(CELLS, round(len(rows) * share)), len(rows) - CELLS)
        val_items[c], train_items[c] = rows[:cut], rows[cut:]
    test_items = {c: np.flatnonzero(arrays["test_labels"] == c) for c in range(K)}
    return {"train": draw_mosaics(n_train, train_items, rng),
            "validation": draw_mosaics(n_validation, val_items, rng),
            "test": draw_mosaics(n_test, test_items, np.random.default_rng(TEST_SEED))}


def mosaic_dataset(images: np.ndarray, rows: np.ndarray, classes: np.ndarray):
    """A ``datasets.Dataset`` of 56 px RGB mosaics (``image``) and the set of classes each shows (``labels``, a
    ``Sequence(ClassLabel)``)."""
    import datasets
    from PIL import Image

    pictures = [Image.fromarray(np.block([[images[r[0]], images[r[1]]], [images[r[2]], images[r[3]]]])).convert("RGB")
                for r in rows]
    features = datasets.Features({"image": datasets.Image(),
                                  "labels": datasets.Sequence(datasets.ClassLabel(names=list(CLASSES)))})
    return datasets.Dataset.from_dict({"image": pictures, "labels": [sorted(set(c.tolist())) for c in classes]},
                                      features=features)


def mosaic_data(n_train: int, n_validation: int, n_test: int, seed: int):
    """``(train, validation, test)`` mosaic datasets (`mosaic_plan`)."""
    arrays = _arrays()
    plan = mosaic_plan(n_train, n_validation, n_test, seed)
    return (mosaic_dataset(arrays["train_images"], *plan["train"]),
            mosaic_dataset(arrays["train_images"], *plan["validation"]),
            mosaic_dataset(arrays["test_images"], *plan["test"]))


def class_sizes(ratio: float, largest: int, seed: int) -> np.ndarray:
    """Training images per class: a geometric profile from ``largest`` down to ``largest / ratio`` (at least 1),
    the class that gets each size shuffled by ``seed``."""
    rank = np.random.default_rng(seed).permutation(K)
    return np.maximum(1, np.round(largest * float(ratio) ** (-rank / (K - 1)))).astype(np.int64)


def imbalanced_plan(ratio: float, largest: int, seed: int) -> dict:
    """``{"train": rows, "validation": rows}`` of the pool: `class_sizes` training images per class and a validation
    set of the same profile at `VALIDATION_SHARE` of each class (at least 1), no row in both."""
    arrays = _arrays()
    sizes = class_sizes(ratio, largest, seed)
    rng = np.random.default_rng([seed, 1])
    train, validation = [], []
    for c in range(K):
        rows = rng.permutation(np.flatnonzero(arrays["train_labels"] == c))
        n_val = max(1, round(VALIDATION_SHARE * sizes[c]))
        if sizes[c] + n_val > len(rows):
            raise ValueError(f"class {CLASSES[c]} needs {sizes[c]} + {n_val} images; the pool has {len(rows)}")
        train += rows[:sizes[c]].tolist()
        validation += rows[sizes[c]:sizes[c] + n_val].tolist()
    return {"train": np.array(sorted(train)), "validation": np.array(sorted(validation))}


def imbalanced_data(ratio: float, largest: int, test_per_class: int, seed: int):
    """``(train, validation, test)`` single-label datasets (`imbalanced_plan`); the test set is balanced: the first
    ``test_per_class`` test images of each class, as `tl_hub.fashion.fashion_data` takes them."""
    arrays = _arrays()
    plan = imbalanced_plan(ratio, largest, seed)
    test = np.array(sorted(r for c in range(K) for r in np.flatnonzero(arrays["test_labels"] == c)[:test_per_class]))
    return (_dataset(arrays["train_images"][plan["train"]], arrays["train_labels"][plan["train"]]),
            _dataset(arrays["train_images"][plan["validation"]], arrays["train_labels"][plan["validation"]]),
            _dataset(arrays["test_images"][test], arrays["test_labels"][test]))


# -- references ------------------------------------------------------------------------------------------------------
def multilabel_scores(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """scikit-learn's mAP (macro, over the labels with a positive) and macro-F1 of decisions at ``threshold``."""
    from sklearn.metrics import average_precision_score, f1_score

    targets = np.asarray(targets, dtype=np.int64)
    present = targets.sum(0) > 0
    m_ap = average_precision_score(targets[:, present], scores[:, present], average="macro")
    f1 = f1_score(targets, (scores >= threshold).astype(np.int64), average="macro", zero_division=0)
    return {"mAP": float(m_ap), "f1": float(f1)}


def _load_multilabel(base: str):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    base = lite0_path() if base == LITE0 else base  # the references load the converted folder themselves
    model = AutoModelForImageClassification.from_pretrained(
        base, num_labels=K, problem_type="multi_label_classification", ignore_mismatched_sizes=True)
    return model, AutoImageProcessor.from_pretrained(base)


def _multilabel_tensors(processor, ds):
    pixels = processor([im.convert("RGB") for im in ds["image"]], return_tensors="pt")["pixel_values"]
    targets = torch.zeros(len(ds), K)
    for i, labels in enumerate(ds["labels"]):
        targets[i, labels] = 1.0
    return pixels, targets


def _sigmoid_scores(model, pixels) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(pixel_values=pixels[i:i + 256]).logits.sigmoid()
                          for i in range(0, len(pixels), 256)]).numpy()


def hand_bce(base: str, data, seed: int, epochs: int) -> dict:
    """The hand-written BCE fine-tune: every parameter from the start, last epoch kept, decisions at 0.5."""
    torch.manual_seed(seed)
    train, _, test = data
    model, processor = _load_multilabel(base)
    x, y = _multilabel_tensors(processor, train)
    tx, ty = _multilabel_tensors(processor, test)
    head = list(model.classifier.parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": backbone, "lr": 1e-4}, {"params": head, "lr": 1e-3}])
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(32):
            loss = model(pixel_values=x[idx], labels=y[idx]).loss  # BCE-with-logits: problem_type is multi-label
            opt.zero_grad()
            loss.backward()
            opt.step()
    return multilabel_scores(_sigmoid_scores(model, tx), ty.numpy())


def probe(base: str, data) -> dict:
    """One-vs-rest logistic regression on the frozen features, ``C`` chosen by validation mAP; decisions at 0.5."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    model, processor = _load_multilabel(base)
    (x, y), (vx, vy), (tx, ty) = (_multilabel_tensors(processor, d) for d in data)
    f, vf, tf = (_classifier_inputs(model, p).numpy() for p in (x, vx, tx))
    best = None
    for C in C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = OneVsRestClassifier(LogisticRegression(C=C, max_iter=5000)).fit(f, y.numpy())
        score = multilabel_scores(clf.predict_proba(vf), vy.numpy())["mAP"]
        if best is None or score > best[0]:
            best = (score, clf)
    return multilabel_scores(best[1].predict_proba(tf), ty.numpy())


# -- tl-hub ----------------------------------------------------------------------------------------------------------
def tlhub(recipe: str, base: str, data, seed: int, keys: tuple, **settings) -> dict:
    """One recipe through the public API with default settings (plus ``settings``); the test metrics ``keys``."""
    train, val, test = data
    r = RECIPES[recipe](base, seed=seed, **settings)
    r.fit(train, val, progress=False)
    metrics = r.evaluate(test)
    out = {k: float(metrics[k]) for k in keys}
    weighting = r.info().get("class_weighting") or {}
    if "applied" in weighting:
        out["weighted"] = bool(weighting["applied"])
    return out


def _timed(runs: dict, label: str, fn, *args, **kwargs) -> None:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    out["seconds"] = time.perf_counter() - start
    for key, value in out.items():
        runs.setdefault(label, {}).setdefault(key, []).append(value)


def run_multilabel(base: str, sizes: Sizes, seeds) -> dict:
    """Part 1: ``{method: {"mAP": [per seed], "f1": [...], "seconds": [...]}}``."""
    runs = {}
    for seed in seeds:
        data = mosaic_data(sizes.train, sizes.validation, sizes.test, seed)
        for recipe in RECIPES:
            _timed(runs, recipe, tlhub, recipe, base, data, seed, ("mAP", "f1"))
        _timed(runs, "hand BCE fine-tune", hand_bce, base, data, seed, sizes.hand_epochs)
        _timed(runs, "probe", probe, base, data)
        log(f"  multi-label seed {seed}: " + ", ".join(
            f"{m} mAP {r['mAP'][-1]:.3f} f1 {r['f1'][-1]:.3f} ({r['seconds'][-1]:.0f} s)" for m, r in runs.items()))
    return runs


def run_imbalance(base: str, sizes: Sizes, seeds, recipes) -> dict:
    """Part 2: ``{"R:1": {method: {"accuracy": [per seed], "balanced_accuracy", "f1", "seconds"}}}``."""
    keys = ("accuracy", "balanced_accuracy", "f1")
    out = {}
    for ratio in sizes.ratios:
        runs = out[f"{ratio:g}:1"] = {}
        for seed in seeds:
            data = imbalanced_data(ratio, sizes.largest, sizes.test_per_class, seed)
            for recipe in recipes:
                _timed(runs, recipe, tlhub, recipe, base, data, seed, keys)
                _timed(runs, f"{recipe}, none", tlhub, recipe, base, data, seed, keys, class_weighting="none")
            log(f"  imbalance {ratio:g}:1 seed {seed}: " + ", ".join(
                f"{m} acc {r['accuracy'][-1]:.3f} f1 {r['f1'][-1]:.3f} ({r['seconds'][-1]:.0f} s)"
                for m, r in runs.items()))
    return out


# -- report ----------------------------------------------------------------------------------------------------------
def _mean(runs: dict, method: str, key: str) -> float:
    return statistics.mean(runs[method][key])


def check_targets(ml: dict, imbalance: dict) -> list:
    """Every target that the parts run allow: ``{"part", "target", "margin", "ok"}`` (ok: the margin is >= 0, or
    > 0 for the strict ones)."""
    rows = []
    if ml:
        rows.append(("ml", "fine-tune mAP >= hand BCE fine-tune mAP",
                     _mean(ml, "fine-tune", "mAP") - _mean(ml, "hand BCE fine-tune", "mAP"), False))
        rows.append(("ml", "feature-extraction mAP >= probe mAP - 0.01",
                     _mean(ml, "feature-extraction", "mAP") - _mean(ml, "probe", "mAP") + 0.01, False))
    for name, runs in imbalance.items():
        for recipe in (m for m in runs if not m.endswith(", none")):
            if float(name.split(":")[0]) >= 10:
                rows.append((f"imbalance {name}", f"{recipe} default macro-F1 > class_weighting='none'",
                             _mean(runs, recipe, "f1") - _mean(runs, f"{recipe}, none", "f1"), True))
            elif float(name.split(":")[0]) == 1:
                rows.append((f"imbalance {name}", f"{recipe} default accuracy >= class_weighting='none' - 0.01",
                             _mean(runs, recipe, "accuracy") - _mean(runs, f"{recipe}, none", "accuracy") + 0.01,
                             False))
    return [{"part": part, "target": target, "margin": margin, "ok": margin > 0 if strict else margin >= -1e-9}
            for part, target, margin, strict in rows]


def _cell(values) -> str:
    return f"{statistics.mean(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def print_tables(ml: dict, imbalance: dict, seeds) -> None:
    if ml:
        print(f"\nmulti-label mosaics: test scores, mean over {len(seeds)} seed(s) [min-max]; default settings for "
              "tl-hub")
        print("| method | mAP | macro-F1 | median seconds |\n|---|---|---|---|")
        for method, r in ml.items():
            print(f"| {method} | {_cell(r['mAP'])} | {_cell(r['f1'])} | {statistics.median(r['seconds']):.1f} |")
    if imbalance:
        print(f"\nimbalanced classes (balanced test set): mean over {len(seeds)} seed(s) [min-max]; 'none' = "
              "class_weighting='none', the others default ('auto')")
        print("| ratio | method | accuracy | balanced accuracy | macro-F1 | median seconds |\n|---|---|---|---|---|---|")
        for name, runs in imbalance.items():
            for method, r in runs.items():
                print(f"| {name} | {method} | {_cell(r['accuracy'])} | {_cell(r['balanced_accuracy'])} | "
                      f"{_cell(r['f1'])} | {statistics.median(r['seconds']):.1f} |")


def _summary(runs: dict) -> dict:
    return {method: {"mean": {k: statistics.mean(v) for k, v in r.items() if k != "weighted"},
                     "median_seconds": statistics.median(r["seconds"]), "runs": r} for method, r in runs.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Sizes()
    parser.add_argument("--quick", action="store_true",
                        help="The glyph ResNet at 32 px, tiny sizes, seed 0 (about a minute): a smoke test.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", default="ml,imbalance", help="Comma-separated: ml, imbalance (default both).")
    parser.add_argument("--train", type=int, default=default.train, help="Training mosaics.")
    parser.add_argument("--validation", type=int, default=default.validation, help="Validation mosaics.")
    parser.add_argument("--test", type=int, default=default.test, help="Test mosaics.")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(default.ratios),
                        help="Largest over smallest class size of the imbalanced sets.")
    parser.add_argument("--imbalance-recipes", nargs="+", default=["feature-extraction"],
                        choices=["feature-extraction", "fine-tune"],
                        help="The recipes of part 2, each with its default and class_weighting='none' (fine-tune is "
                             "slow: about 2-3 minutes a run at 224 px here).")
    parser.add_argument("--output", help="Also write the JSON here (atomically).")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - {"ml", "imbalance"}
    if unknown or not args.parts:
        parser.error(f"--parts takes ml and/or imbalance, comma-separated; got {sorted(unknown) or 'nothing'}")
    return args


def _quiet() -> None:
    import datasets

    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.ERROR)
    for name in ("transformers", "tl_hub", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv=None) -> int:
    args = parse_args(argv)
    _quiet()
    if args.quick:
        base, sizes, seeds = GLYPH, QUICK, [0]
    else:
        base, seeds = LITE0, args.seeds
        sizes = Sizes(train=args.train, validation=args.validation, test=args.test, ratios=tuple(args.ratios))
    start = time.perf_counter()
    log(f"multilabel benchmark: {base}, seeds {seeds}, parts {args.parts}, {sizes}")
    with tempfile.TemporaryDirectory(prefix="tl_hub_multilabel_") as cache:
        os.environ["TL_HUB_CACHE"] = cache  # the default disk feature cache, fresh for this run
        if base == LITE0:
            lite0_path()  # converted once before any method is timed
        ml = run_multilabel(base, sizes, seeds) if "ml" in args.parts else {}
        imbalance = run_imbalance(base, sizes, seeds, args.imbalance_recipes) if "imbalance" in args.parts else {}
    checks = check_targets(ml, imbalance)
    print_tables(ml, imbalance, seeds)
    missed = [c for c in checks if not c["ok"]]
    print(f"\ntargets: {len(checks) - len(missed)} of {len(checks)} hold")
    for c in missed:
        print(f"  missed: {c['part']}: {c['target']} (margin {c['margin']:+.3f})")
    total = time.perf_counter() - start
    print(f"total {total:.0f} s")
    summary = {"benchmark": "multilabel", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "host": host(), "base_model": base, "quick": args.quick, "seeds": seeds, "parts": args.parts,
               "sizes": dataclasses.asdict(sizes), "multilabel": _summary(ml),
               "imbalance": {name: _summary(runs) for name, runs in imbalance.items()},
               "targets": checks, "targets_met": not missed, "seconds": total}
    report(summary, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
