"""``tl-hub demo``: the whole idea, offline, in a few minutes on a CPU.

A small ResNet pretrained by tl-hub on rendered letters (the *base task*, shipped in this package; see
``recipes/pretrain_base.py``) is transferred to real handwritten digits (scikit-learn's ``load_digits``) with a
few examples per class:

1. **advise**: how many examples per class, and do the pretrained features separate the digits better than
   random features?  -> one of four cases and a recipe;
2. **compare**: feature extraction, fine-tuning and training from scratch with the same budget; start, slope and
   asymptote of each learning curve;
3. the best model is evaluated on the held-out digits and saved, ready for ``tl-hub predict`` / ``tl_hub.load``.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from .filenames import INFO_FILE
from .outputs import cache_root, write_json

BASE_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "glyph-resnet")

FULL = {"per_class": 5, "epochs": None, "validation": 500}  # every recipe with its default settings
QUICK = {"per_class": 5, "epochs": 4, "validation": 100}  # seconds, for tests


def base_model_path() -> str:
    """The shipped base model (transformers format)."""
    return BASE_MODEL


def demo_model(cache_dir: Optional[str] = None) -> str:
    """The folder of the offline demo's trained model: ``runs/demo/model`` if ``tl-hub demo`` ran here, else one made
    once (the quick demo, about 10 s) under ``cache_dir`` (default: tl-hub's cache, ``$TL_HUB_CACHE``)."""
    local = os.path.join("runs", "demo", "model")
    if os.path.exists(os.path.join(local, INFO_FILE)):
        return local
    root = cache_dir or os.path.join(cache_root(), "space-demo")
    model = os.path.join(root, "model")
    if not os.path.exists(os.path.join(model, INFO_FILE)):
        run_demo(root, quick=True, print_fn=lambda *a: None)
    return model


def target_data(per_class: int, validation: int, seed: int = 1):
    """``(train, validation, test)`` digits: ``per_class`` training examples of each digit, a stratified
    validation set of about ``validation`` images for the learning curves, and every other digit as test set."""
    import numpy as np

    from .demo_data import digits_dataset

    train, used = digits_dataset(per_class=per_class, seed=seed)
    rest, _ = digits_dataset(exclude=used)
    rng = np.random.default_rng(seed)
    val_rows = np.sort(rng.permutation(len(rest))[:validation])
    test_rows = np.setdiff1d(np.arange(len(rest)), val_rows)
    return train, rest.select(val_rows.tolist()), rest.select(test_rows.tolist())


def run_demo(output_dir: str = "runs/demo", *, quick: bool = False, overwrite: bool = True,
             per_class: Optional[int] = None, epochs: Optional[int] = None, print_fn=print) -> dict:
    """Run advise -> compare -> save; return the paths and figures (also written to ``results.json``)."""
    from .advisor import advise
    from .compare import compare, write_comparison

    plan = dict(QUICK if quick else FULL)
    plan.update({k: v for k, v in (("per_class", per_class), ("epochs", epochs)) if v is not None})
    start = time.perf_counter()
    base = base_model_path()
    train, validation, test = target_data(plan["per_class"], plan["validation"])
    print_fn(f"tl-hub demo: a ResNet pretrained on rendered letters -> handwritten digits, "
             f"{plan['per_class']} examples per digit ({len(train)} images); {len(validation)} validation and "
             f"{len(test)} test digits\n")

    print_fn("1) advise")
    advice = advise(base, train)
    print_fn("   " + advice.report().replace("\n", "\n   ") + "\n")

    print_fn("2) compare: every recipe with its default settings, same data")
    common = {"seed": 0, "feature_cache": "memory"}
    comparison = compare(base, train, validation, epochs=plan["epochs"], common=common)
    comparison.advice = advice.to_dict()
    print_fn("   " + comparison.table().replace("\n", "\n   ") + "\n")

    best = comparison.best
    test_metrics = {name: recipe.evaluate(test) for name, recipe in comparison.recipes.items()}
    for name, m in test_metrics.items():
        comparison.summaries[name]["test_accuracy"] = m["accuracy"]
    model_dir = os.path.join(output_dir, "model")
    comparison.recipes[best].save(model_dir, overwrite=overwrite)
    paths = write_comparison(comparison, output_dir,
                             title=f"Letters -> digits, {plan['per_class']} per class: transfer vs scratch")
    results = comparison.to_dict()
    results.update({"advisor_case": advice.case, "advisor_recipe": advice.recipe, "best": best, "model": model_dir,
                    "test": test_metrics, "plan": plan, "seconds": time.perf_counter() - start})
    write_json(paths["results"], results)
    gain = test_metrics[best]["accuracy"] - test_metrics["scratch"]["accuracy"] if "scratch" in test_metrics else 0
    print_fn(f"3) best: {best}, test accuracy {test_metrics[best]['accuracy']:.3f} "
             f"({gain:+.3f} vs scratch); the advisor chose {advice.recipe} ({advice.case})")
    print_fn(f"   results:  {os.path.abspath(paths['results'])}")
    print_fn(f"   curves:   {os.path.abspath(paths['plot'])}")
    print_fn(f"   model:    {os.path.abspath(model_dir)}")
    print_fn(f"   serve it: tl-hub predict {model_dir} digit.png   |   python -c \"import tl_hub; "
             f"print(tl_hub.load('{model_dir}').predict('digit.png'))\"")
    print_fn(f"   ({time.perf_counter() - start:.0f} s)")
    return results
