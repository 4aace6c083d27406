"""Should I transfer, and how?  Measure the data, then pick one of four cases.

Two measurements, both from the data itself:

- **size**: examples per class (median over the classes that have any);
- **similarity** between the pretraining task and this data: how well *frozen pretrained features* separate
  the classes (leave-one-out k-nearest-neighbour accuracy, cosine distance) compared with the same measurement
  on the features of a *randomly initialised copy* of the architecture.  A pretrained encoder that helps gives
  clearly better neighbours than random features; one that learned nothing relevant does not.

The four cases (size x similarity) and what tl-hub recommends:

| case            | recipe                                                        |
|-----------------|---------------------------------------------------------------|
| small + similar | `FeatureExtractionRecipe`: train a new head on frozen features |
| small + different | don't transfer: `ScratchRecipe`, the cheapest baseline, or collect more data |
| large + similar | `FineTuneRecipe`: head first, then unfreeze with smaller LRs    |
| large + different | `TrainAllRecipe`: train everything at one learning rate, initialised from the pretrained weights |
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import torch

from .config import ModelSource, setting
from .errors import ConfigError
from .frozen import encode, prepare_sample
from .scores import knn_accuracy

logger = logging.getLogger(__name__)

# each case is a recipe, with that recipe's defaults
CASES = {
    ("small", "similar"): "feature-extraction",
    ("small", "different"): "scratch",
    ("large", "similar"): "fine-tune",
    ("large", "different"): "train-all",
}

REASONS = {
    ("small", "similar"): "few examples per class and pretrained features that already separate the classes: "
                          "train only a new head on the frozen encoder, the cheapest and most robust choice with "
                          "little data (fine-tuning may gain a few points or overfit; `tl-hub compare` measures it).",
    ("small", "different"): "few examples per class and pretrained features no better than random ones: "
                            "transfer would not help. Start with the cheapest baseline (a small model trained "
                            "from scratch), or collect more data.",
    ("large", "similar"): "many examples per class and pretrained features that separate the classes: train the "
                          "head first, then fine-tune the encoder with smaller learning rates.",
    ("large", "different"): "many examples per class but pretrained features no better than random ones: train "
                            "everything, starting from the pretrained weights (they still speed up training).",
}


@dataclass
class Thresholds:
    """Where the four cases begin.

    Attributes:
        large_per_class: median examples per class from which the data counts as large.
        similarity_gap: by how much the pretrained features' neighbour accuracy must exceed the random features'
            for the task to count as similar.
        k: neighbours in the k-NN probe.
        max_examples: at most this many examples (stratified) are embedded for the probe.
    """

    large_per_class: int = setting(100, "Median examples per class from which the data counts as large.")
    similarity_gap: float = setting(0.10, "Pretrained minus random k-NN accuracy from which the task counts as "
                                    "similar.")
    k: int = setting(5, "Neighbours in the k-NN probe.")
    max_examples: int = setting(2000, "At most this many examples (stratified) are embedded for the probe.")

    def __post_init__(self):
        if self.large_per_class < 2:
            raise ConfigError(f"`large_per_class` should be >= 2, got {self.large_per_class}.")
        if not -1 < self.similarity_gap < 1:
            raise ConfigError(f"`similarity_gap` should be in (-1, 1), got {self.similarity_gap}.")
        if self.k < 1 or self.max_examples < 2:
            raise ConfigError("`k` should be >= 1 and `max_examples` >= 2.")


@dataclass
class Advice:
    """The advisor's measurements, its case and its recommendation."""

    model: str
    case: str
    size: str
    similarity: str
    recipe: str
    reason: str
    examples: int
    classes: int
    per_class: dict
    median_per_class: float
    pretrained_knn_accuracy: Optional[float]
    random_knn_accuracy: Optional[float]
    similarity_gap: Optional[float]
    thresholds: dict
    warnings: list = field(default_factory=list)
    ranking: Optional[dict] = None

    def to_dict(self) -> dict:
        """The advice as plain JSON-ready data (what ``tl-hub advise --json`` prints)."""
        return asdict(self)

    def make_recipe(self, **overrides):
        """The recommended recipe, ready to ``fit``."""
        from .recipe import get_recipe

        return get_recipe(self.recipe)(self.model, **overrides)

    def report(self) -> str:
        """The printed explanation: the data's size, the similarity measured, the case and the recipe."""
        t = self.thresholds

        def fmt(x):
            return "n/a" if x is None else f"{x:.3f}"

        lines = [
            f"data: {self.examples} examples, {self.classes} classes, median {self.median_per_class:g} per class "
            f"(min {min(self.per_class.values()) if self.per_class else 0}) -> {self.size} "
            f"(large from {t['large_per_class']} per class)",
            f"similarity: {t['k']}-NN accuracy with pretrained features {fmt(self.pretrained_knn_accuracy)} vs "
            f"random features {fmt(self.random_knn_accuracy)}, gap {fmt(self.similarity_gap)} -> {self.similarity} "
            f"(similar from a gap of {t['similarity_gap']})",
            f"case: {self.case}",
            f"recommendation: {self.recipe} (its default settings)",
            f"why: {self.reason}",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def advise_measured(source: ModelSource, splits: dict, image_column: str, label_column: str, names: list,
                    per_class: dict, present: dict, warnings: list, *, thresholds: Thresholds,
                    pretrained_features=None, seed: int = 0, accelerator=None, feature_cache: str = "disk",
                    feature_cache_dir: Optional[str] = None, batch_size: int = 64) -> Advice:
    """The case of ``source`` on the sampled ``splits`` (name -> dataset): size from ``per_class``, similarity
    from the k-NN accuracy of its frozen features against a randomly initialised copy's (`tl_hub.ranking.encode`,
    `tl_hub.scores.knn_accuracy`).  ``pretrained_features`` (a `tl_hub.ranking.Encoded`) are reused if given."""
    warnings = list(warnings)
    median = float(statistics.median(present.values()))
    size = "large" if median >= thresholds.large_per_class else "small"
    pre_acc = rand_acc = gap = None
    if max(present.values()) < 2:
        warnings.append("Every class has a single example, so no neighbour of the same class exists and similarity "
                        "cannot be measured; assuming similar (the cheapest transfer). Collect at least 2-5 "
                        "examples per class for a measured answer.")
        similarity = "similar"
    else:
        def knn(pretrained: bool) -> float:
            encoded = pretrained_features if pretrained and pretrained_features is not None else encode(
                source, splits, image_column, label_column, names, pretrained=pretrained, accelerator=accelerator,
                feature_cache=feature_cache, feature_cache_dir=feature_cache_dir, batch_size=batch_size, seed=seed)
            x = torch.cat([encoded.features[n] for n in encoded.features])
            return knn_accuracy(x, torch.cat([encoded.labels[n] for n in encoded.labels]), k=thresholds.k)

        pre_acc, rand_acc = knn(True), knn(False)
        gap = pre_acc - rand_acc
        similarity = "similar" if gap >= thresholds.similarity_gap else "different"
        if min(present.values()) < 2:
            warnings.append("Some classes have a single example; their neighbours can never match, which lowers both "
                            "probe accuracies equally.")
    return Advice(
        model=source.id, case=f"{size}+{similarity}", size=size, similarity=similarity,
        recipe=CASES[(size, similarity)],
        reason=REASONS[(size, similarity)], examples=sum(per_class.values()), classes=len(present),
        per_class=per_class, median_per_class=median, pretrained_knn_accuracy=pre_acc, random_knn_accuracy=rand_acc,
        similarity_gap=gap, thresholds=asdict(thresholds), warnings=warnings,
    )


def advise_one_model(model: Union[str, ModelSource, Sequence[Union[str, ModelSource]]], dataset: Any, *,
                     thresholds: Optional[Thresholds] = None, image_column: Optional[str] = None,
           label_column: Optional[str] = None, seed: int = 0, batch_size: int = 64, accelerator=None,
           feature_cache: str = "disk", feature_cache_dir: Optional[str] = None, **options: Any) -> Advice:
    """Measure ``dataset`` against one ``model`` and recommend a recipe (what the public `tl_hub.advise` does for
    one model).

    Args:
        model (`str` or `ModelSource`): the pretrained model (Hub id or folder); ``options`` (revision,
            trust_remote_code, allow_pickle, cache_dir) apply to a string.  For several models, `tl_hub.advise`
            ranks them first and advises on the top one.
        dataset: a dataset, folder or Hub id (its training split is measured).
        thresholds (`Thresholds`, *optional*): where the cases begin.
        feature_cache: where the frozen features are kept (``"disk"``, ``"memory"``, ``"off"``; shared with the
            recipes).
        feature_cache_dir: the folder of disk caches.

    Returns:
        `Advice` (``.report()`` for the printed explanation, ``.make_recipe()`` for the recipe).

    Raises:
        DataError: no labelled images, or fewer than two classes with examples.
    """
    from .runtime import make_accelerator

    thresholds = thresholds or Thresholds()
    if not isinstance(model, (str, ModelSource)):
        models = list(model)
        if len(models) != 1:
            raise ConfigError("`advise_one_model` measures one model; to rank several and advise on the best, "
                              "call `tl_hub.advise([...])` or `tl_hub.rank([...])`.")
        model = models[0]

    source = ModelSource.of(model, **options)
    sample = prepare_sample(dataset, image_column=image_column, label_column=label_column,
                            max_examples=thresholds.max_examples, seed=seed)  # the sample `rank` would take
    return advise_measured(source, sample.splits, sample.image_column, sample.label_column, sample.names,
                           sample.per_class, sample.present, sample.warnings, thresholds=thresholds, seed=seed,
                           accelerator=accelerator or make_accelerator(seed=seed),
                           feature_cache=feature_cache, feature_cache_dir=feature_cache_dir, batch_size=batch_size)
