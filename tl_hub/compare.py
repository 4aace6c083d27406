"""Did transfer help?  Train transfer recipes and the scratch baseline with the same budget and measure the three
promised benefits of transfer on the learning curves:

- **start**: accuracy at the first evaluation (after one epoch);
- **slope**: mean accuracy gain per epoch over the first ``slope_epochs`` epochs;
- **asymptote**: best accuracy reached.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .config import ModelSource
from .errors import ConfigError
from .outputs import write_json
from .plots import plot_learning_curves

logger = logging.getLogger(__name__)

def curve_summary(history: Sequence[dict], slope_epochs: int = 3) -> dict:
    """``start``, ``slope`` and ``asymptote`` of a per-epoch history (``accuracy`` per record; a multi-label run's
    ``mAP``).

    Example:
        >>> curve_summary([{"accuracy": .2}, {"accuracy": .4}, {"accuracy": .5}, {"accuracy": .45}])
        {'start': 0.2, 'slope': 0.15, 'asymptote': 0.5, 'final': 0.45, 'best_epoch': 3}

    A curve of one record (a head solved to convergence in one step) has no slope (None).
    """
    if not history:
        raise ConfigError("An empty history has no learning curve.")
    if slope_epochs < 2:
        raise ConfigError(f"`slope_epochs` should be >= 2, got {slope_epochs}.")
    key = "mAP" if "mAP" in history[0] else "accuracy"
    acc = [float(h[key]) for h in history]
    k = min(slope_epochs, len(acc))
    slope = (acc[k - 1] - acc[0]) / (k - 1) if k > 1 else None
    best = max(range(len(acc)), key=lambda i: acc[i])
    return {"start": acc[0], "slope": slope, "asymptote": acc[best], "final": acc[-1], "best_epoch": best + 1}


@dataclass
class Comparison:
    """Per recipe: the summary (start, slope, asymptote), the history, and the trained recipe."""

    summaries: dict
    histories: dict
    recipes: dict = field(default_factory=dict)
    epochs: int = 0
    advice: Optional[dict] = None

    @property
    def best(self) -> str:
        """The recipe with the highest asymptote."""
        return max(self.summaries, key=lambda n: self.summaries[n]["asymptote"])

    def table(self) -> str:
        """Start, slope, asymptote and final accuracy per recipe, and each transfer recipe's gains over scratch."""
        rows = [f"{'recipe':<20} {'start':>7} {'slope/epoch':>12} {'asymptote':>10} {'final':>7}"]
        for name, s in self.summaries.items():
            slope = "converged" if s["slope"] is None else f"{s['slope']:+.3f}"
            rows.append(f"{name:<20} {s['start']:>7.3f} {slope:>12} {s['asymptote']:>10.3f} {s['final']:>7.3f}")
        if "scratch" in self.summaries:
            base = self.summaries["scratch"]
            for name, s in self.summaries.items():
                if name != "scratch":
                    slope = ("converged at epoch 1" if s["slope"] is None or base["slope"] is None
                             else f"{s['slope'] - base['slope']:+.3f}/epoch")
                    rows.append(f"{name} vs scratch: start {s['start'] - base['start']:+.3f}, slope {slope}, "
                                f"asymptote {s['asymptote'] - base['asymptote']:+.3f}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        """The comparison as plain JSON-ready data (summaries, histories, the advice)."""
        return {"epochs": self.epochs, "best": self.best, "recipes": self.summaries, "histories": self.histories,
                "advice": self.advice}


def compare(model: Union[str, ModelSource], train: Any, validation: Any = None, *,
            recipes: Sequence[str] = ("feature-extraction", "fine-tune", "scratch"), epochs: Optional[int] = None,
            slope_epochs: int = 3, settings: Optional[dict] = None,
            output_dir: Optional[str] = None, common: Optional[dict] = None, progress: bool = False) -> Comparison:
    """Train each recipe for the same ``epochs`` on the same data and compare their learning curves.

    Args:
        model (`str` or `ModelSource`): the pretrained model (the scratch baseline uses its architecture, randomly
            initialised).
        train: the training data, as for `Recipe.fit`.
        validation: the validation data, as for `Recipe.fit` (default: the dataset's, or a stratified share).
        recipes: registry names to compare (default: feature extraction, fine-tune, scratch).
        epochs (`int`, *optional*): the epochs of every recipe (default: each recipe's automatic epochs, the same
            for every trained period; see `TrainingConfig.resolve_epochs`).
        settings (`dict`, *optional*): per-recipe settings, e.g. ``{"scratch": {"lr": 1e-3}}``; every recipe runs
            with its defaults otherwise.
        output_dir (`str`, *optional*): where to write ``results.json`` and ``learning_curves.png``.
        common (`dict`, *optional*): settings given to every recipe (batch size, seed, ...).

    Returns:
        `Comparison`
    """
    from .recipe import get_recipe

    settings = settings or {}
    common = common or {}
    summaries, histories, trained = {}, {}, {}
    for name in recipes:
        cls = get_recipe(name)
        kwargs = {**common, **settings.get(name, {})}
        if epochs is not None:
            kwargs["epochs"] = epochs
        recipe = cls(model, **{k: v for k, v in kwargs.items() if k in cls.config_class.field_names()})
        result = recipe.fit(train, validation, progress=progress)
        histories[name] = result.history
        summaries[name] = curve_summary(result.history, slope_epochs)
        trained[name] = recipe
        logger.info("%s: %s", name, summaries[name])
    comparison = Comparison(summaries, histories, trained, epochs)
    if output_dir:
        write_comparison(comparison, output_dir, title=f"Transfer vs scratch ({ModelSource.of(model).id})")
    return comparison


def write_comparison(comparison: Comparison, output_dir: str, title: str) -> dict:
    """``results.json`` and ``learning_curves.png`` in ``output_dir``; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"results": os.path.join(output_dir, "results.json"),
             "plot": os.path.join(output_dir, "learning_curves.png")}
    write_json(paths["results"], comparison.to_dict())
    plot_learning_curves(comparison.histories, paths["plot"], title=title)
    return paths
