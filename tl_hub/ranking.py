"""Which pretrained model should I start from?  Rank candidates on your data before training any of them.

For each candidate, tl-hub runs the frozen encoder once over a (stratified) sample of the data, through the
feature cache (`tl_hub.features`), so ranking again, or training a recipe on the same data afterwards, reuses the
features.  The features are the exact input of the model's classification head, as the cache captures it: what a
new head would see.  From them, without training the encoder, it computes transferability scores
(`tl_hub.scores`):

- ``logme``: LogME, the evidence of a Bayesian linear model from the features to the labels (per example);
- ``hscore``: H-score with shrinkage, how well class means separate relative to the features' covariance;
- ``knn`` (the default, ties broken by ``ensemble``): leave-one-out k-nearest-neighbour accuracy (cosine);
- ``probe``: held-out accuracy of a linear probe (the converged head of `tl_hub.probe`, ``C`` chosen on that
  split);
- ``leep`` and ``nce``: from the candidate's own (source) head, when the checkpoint has one: how well its
  predictions over the source classes explain the target labels;
- ``ensemble``: the mean of the normalised ranks of `ENSEMBLE`.

Candidates of different sizes are compared on what their heads see: a ViT's CLS token (after its final norm), a
ConvNeXt's or ResNet's globally pooled map, a Swin's mean-pooled tokens, whatever dimension.  LogME and H-score
are invariant to scaling the features and account for their dimension (evidence; shrinkage), k-NN uses cosine
similarity, and the probe standardises the features, so a larger dimension gets no free advantage.

Then the top candidate goes through the advisor (`tl_hub.advisor`): its size x similarity case gives the recipe
(`Ranking.make_recipe()`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import torch

from .advisor import Advice, Thresholds, advise_measured, advise_one_model
from .config import ModelSource
from .errors import ConfigError, TlHubError, first_line
from .frozen import Encoded, Sample, encode, prepare_sample
from .outputs import atomic_path, write_json
from .scores import DESCRIPTIONS, leep, nce
from .scores import FEATURE_SCORES as FEATURE_SCORE_FUNCTIONS
from .scores import SOURCE_SCORES as SOURCE_SCORE_FUNCTIONS

logger = logging.getLogger(__name__)

FEATURE_SCORES = (*FEATURE_SCORE_FUNCTIONS, "probe")  # from the features (and labels) alone
SOURCE_SCORES = tuple(SOURCE_SCORE_FUNCTIONS)  # from the candidate's own head
ENSEMBLE = FEATURE_SCORES  # "ensemble" averages the normalised ranks of these
# the default: leave-one-out 5-NN accuracy, the best-ordered score on both tiers of benchmarks/rank.py (6 glyph bases
# on 4 targets, and 5 bases at 224 px, ImageNet Lite0 among them, on 3 real targets), the only one with zero regret
# on all 7; LogME and H-score put a random-init Lite0 first on digits at 224 px.  Ties go to the ensemble.
DEFAULT_SCORE = "knn"
ON_ERROR = ("report", "raise")

SCORE_HELP = {
    "ensemble": "mean normalised rank of " + ", ".join(ENSEMBLE) + " (1 = first on every one); higher is better.",
    **DESCRIPTIONS,
    "probe": "held-out accuracy of a converged linear probe; 0 to 1; higher is better.",
}


# ---------------------------------------------------------------------------------------------------------------------
# Scores of one candidate


def candidate_scores(encoded: Encoded, classes: int) -> tuple[dict, dict]:
    """Every score of one candidate and the seconds each took: ``(scores, seconds)``."""
    from .probe import fit_probe

    x = torch.cat([encoded.features[n] for n in encoded.features])
    y = torch.cat([encoded.labels[n] for n in encoded.labels])
    out, seconds = {}, {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        out[name] = float(fn(*args, **kwargs))
        seconds[name] = time.perf_counter() - start

    for name, score in FEATURE_SCORE_FUNCTIONS.items():
        timed(name, score, x, y)
    if "held_out" in encoded.features and len(encoded.labels["held_out"]):
        timed("probe", lambda: max(p["val_accuracy"] for p in fit_probe(
            encoded.features["train"], encoded.labels["train"], encoded.features["held_out"],
            encoded.labels["held_out"], classes).path))
    else:
        out["probe"] = None
    if encoded.source_probs is not None:
        probs = torch.cat([encoded.source_probs[n] for n in encoded.source_probs])
        timed("leep", leep, probs, y)
        timed("nce", nce, probs.argmax(1), y)
    else:
        out["leep"] = out["nce"] = None
    return out, seconds


def normalised_ranks(values: dict) -> dict:
    """Per model, 1 for the best value, 0 for the worst, ties sharing their mean rank; None stays None."""
    from scipy.stats import rankdata

    scored = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
    result = dict.fromkeys(values)
    if scored:
        ranks = rankdata([-v for v in scored.values()], method="average") - 1  # 0 = the best
        n = len(scored)
        result.update({m: 1.0 if n == 1 else 1.0 - r / (n - 1) for m, r in zip(scored, ranks.tolist())})
    return result


def ensemble(scores: dict, members: Sequence[str] = ENSEMBLE) -> dict:
    """Per model, the mean of its normalised ranks over ``members`` (those it has)."""
    ranks = [normalised_ranks({m: s.get(name) for m, s in scores.items()}) for name in members]
    out = {}
    for m in scores:
        values = [r[m] for r in ranks if r[m] is not None]
        out[m] = sum(values) / len(values) if values else None
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The ranking


@dataclass
class Ranking:
    """Candidates ranked by transferability to the data.

    Attributes:
        scores: model -> score name -> value (None where the score does not apply, e.g. LEEP without a source
            head); higher is better for every score.
        default_score: the score `order` and `best` use by default.
        seconds: model -> ``{"encode": loading + encoder pass, <score>: its own time}``.
        failed: model -> why it could not be ranked (it failed to load, or has no single head).
        info: model -> feature dimension, capture point, whether it has a source head.
        data: examples used (train / held-out), classes, examples per class.
        advice: the advisor's case and recipe for the top model (``None`` if not asked, or if every model
            failed).
    """

    scores: dict
    default_score: str = DEFAULT_SCORE
    seconds: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    advice: Optional[Any] = None

    def order(self, score: Optional[str] = None) -> list[str]:
        """Ranked models, best first, by ``score`` (default: `default_score`); those without it last."""
        score = score or self.default_score
        return sorted(self.scores, key=lambda m: (self.scores[m].get(score) is None,
                                                  -(self.scores[m].get(score) or 0.0),
                                                  -(self.scores[m].get("ensemble") or 0.0)))

    @property
    def best(self) -> Optional[str]:
        """The top-ranked model, or None when no candidate could be ranked."""
        order = self.order()
        return order[0] if order else None

    def make_recipe(self, **overrides):
        """The advisor's recommended recipe for the top model, ready to ``fit``."""
        if self.advice is None:
            raise ConfigError("This ranking has no recommendation (no candidate could be ranked, or "
                              "`recommend=False`); rank again, or build a recipe with `tl_hub.get_recipe`.")
        return self.advice.make_recipe(**overrides)

    def to_dict(self) -> dict:
        """The ranking as plain JSON-ready data, with the order, the advice and the recommendation."""
        out = asdict(self)
        out["order"] = self.order()
        out["advice"] = self.advice.to_dict() if self.advice is not None else None
        out["recommendation"] = self.recommendation()
        out["score_help"] = SCORE_HELP
        return out

    def table(self) -> str:
        """The printed table: one row per model in rank order, its feature size, scores and encoding time."""
        names = self.columns()
        width = max([len(short_name(m)) for m in [*self.scores, *self.failed]] + [5])
        lines = [f"{'#':>2} {'model':<{width}} {'dim':>5} " + " ".join(f"{n:>8}" for n in names) + f" {'encode s':>8}"]
        for i, m in enumerate(self.order(), 1):
            cells = " ".join(_cell(self.scores[m].get(n)) for n in names)
            lines.append(f"{i:>2} {short_name(m):<{width}} {self.info[m]['feature_dim']:>5} {cells} "
                         f"{self.seconds[m]['encode']:>8.1f}")
        for m, why in self.failed.items():
            lines.append(f"{'-':>2} {short_name(m):<{width}} failed: {why}")
        lines.append(f"default score: {self.default_score}: {SCORE_HELP[self.default_score]}")
        if self.advice is not None:
            lines.append(f"recommendation: {self.recommendation()}")
        return "\n".join(lines)

    def columns(self) -> list[str]:
        """Every score, the one that orders the candidates first."""
        return [self.default_score, *(n for n in ("ensemble", *FEATURE_SCORES, *SOURCE_SCORES)
                                      if n != self.default_score)]

    def recommendation(self) -> Optional[str]:
        """The advice in one sentence: which model to start from with which recipe, or to train from scratch."""
        if self.advice is None:
            return None
        why = f"(case {self.advice.case}: {self.advice.reason})"
        if self.advice.recipe == "scratch":  # no transfer: the candidate only lends its architecture
            return (f"train from scratch {why}; the best-ranked candidate, {short_name(self.best)}, is not "
                    "expected to help as a starting point")
        return f"start from {self.best} with {self.advice.recipe} {why}"

    def save(self, output_dir: str) -> dict:
        """Write ``ranking.json`` and ``ranking.png`` (the scores per model) to ``output_dir``; returns paths."""
        os.makedirs(output_dir, exist_ok=True)
        paths = {"json": os.path.join(output_dir, "ranking.json"), "png": os.path.join(output_dir, "ranking.png")}
        write_json(paths["json"], self.to_dict())
        with atomic_path(paths["png"]) as tmp:
            plot_ranking(self, tmp)
        return paths


def short_name(model: str) -> str:
    """A folder's name, or a Hub id as it is."""
    return os.path.basename(os.path.normpath(model)) if os.path.isdir(model) else model


def _cell(value: Optional[float]) -> str:
    return f"{'-':>8}" if value is None else f"{value:>8.3f}"


def bar_base(values: Sequence[float]) -> float:
    """Where a panel's bars start: 0 for scores that are all positive, else a little below the lowest one (LogME,
    LEEP and NCE are often negative), so that a higher score is always a longer bar to the right.

    Example:
        >>> bar_base([0.8, 0.5]), bar_base([-0.9, -1.5])
        (0.0, -1.56)
    """
    low, high = min(values), max(values)
    if low >= 0:
        return 0.0
    return round(low - 0.1 * max(high - low, abs(low) * 0.1, 1e-6), 6)


def plot_ranking(ranking: Ranking, path: str) -> str:
    """One bar panel per score (models in ranked order, the best highlighted) into a PNG at ``path``."""
    from .plots import pyplot, save_figure

    plt = pyplot()

    names = [n for n in ranking.columns() if any(s.get(n) is not None for s in ranking.scores.values())]
    models = ranking.order()
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.45 * len(models) * rows + 1.6 * rows),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = [ranking.scores[m].get(name) for m in models]
        shown = [(short_name(m), v) for m, v in zip(models, values) if v is not None]
        colors = ["C1" if label == short_name(models[0]) else "C0" for label, _ in shown]
        base = bar_base([v for _, v in shown])  # bars grow right from below the lowest score, so better is longer
        ax.barh([label for label, _ in shown][::-1], [v - base for _, v in shown][::-1], left=base,
                color=colors[::-1])
        ax.set_xlim(left=base)
        ax.set_title(f"{name}{' (default)' if name == ranking.default_score else ''}", fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    data = ranking.data
    fig.suptitle(f"Transferability of {len(models)} candidates to {data.get('classes', '?')} classes "
                 f"({data.get('examples', '?')} images); higher is better, top pick in orange", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _check_options(models, max_examples, max_per_class, on_error, score) -> list:
    if isinstance(models, (str, ModelSource)):
        models = [models]
    models = list(models)
    if not models:
        raise ConfigError("Give at least one candidate model to rank (a Hub id or a model folder).")
    if max_examples is not None and max_examples < 4:
        raise ConfigError(f"`max_examples` should be at least 4 (or None for all), got {max_examples}.")
    if max_per_class is not None and max_per_class < 2:
        raise ConfigError(f"`max_per_class` should be at least 2 (or None), got {max_per_class}.")
    if on_error not in ON_ERROR:
        raise ConfigError(f"`on_error` should be one of {ON_ERROR}, got {on_error!r}.")
    if score not in SCORE_HELP:
        raise ConfigError(f"Unknown score {score!r}; choose one of {sorted(SCORE_HELP)}.")
    return models


def _score_candidates(sources: list, sample: Sample, encoding: dict, on_error: str,
                      score: str) -> tuple[Ranking, dict]:
    """Encode and score every candidate (a failure reported, or raised); returns the ranking and the features."""
    scores, seconds, failed, info, encoded = {}, {}, {}, {}, {}
    for source in sources:
        try:
            encoded[source.id] = encode(source, sample.splits, sample.image_column, sample.label_column,
                                        sample.names, **encoding)
        except (TlHubError, OSError, ValueError, RuntimeError) as e:
            if on_error == "raise":
                raise
            failed[source.id] = str(e) if isinstance(e, TlHubError) else first_line(e)
            logger.info("Could not rank %s: %s", source.id, failed[source.id])  # listed once, in the ranking
            continue
        features = encoded[source.id]
        scores[source.id], own = candidate_scores(features, len(sample.names))
        seconds[source.id] = {"encode": features.seconds, **own}
        info[source.id] = {"feature_dim": int(features.features["train"].shape[1]), "capture": features.capture,
                           "source_head": features.source_probs is not None,
                           "source_classes": features.source_classes}
        logger.info("Ranked %s: %s", source.id, ", ".join(f"{k}={v:.3f}" for k, v in scores[source.id].items()
                                                          if v is not None))
    if not scores:
        raise ConfigError("No candidate could be ranked: " + "; ".join(f"{m}: {w}" for m, w in failed.items()))
    for m, value in ensemble(scores).items():
        scores[m]["ensemble"] = value
    splits = sample.splits
    data = {"examples": sum(len(d) for d in splits.values()), "train": len(splits["train"]),
            "held_out": len(splits.get("held_out", [])), "classes": len(sample.present),
            "per_class": sample.per_class, "warnings": sample.warnings}
    return Ranking(scores=scores, default_score=score, seconds=seconds, failed=failed, info=info, data=data), encoded


def advise(model: Union[str, ModelSource, Sequence[Union[str, ModelSource]]], dataset: Any, *,
           thresholds: Optional[Thresholds] = None, **kwargs: Any) -> Advice:
    """Measure ``dataset`` against ``model`` and recommend one of the four cases (`tl_hub.advisor.advise_one_model`);
    for several models, `rank` them first and advise on the top one (``Advice.ranking`` holds the order and the
    default score of each).  Keyword arguments as `rank` and ``advise_one_model`` take them (image and label
    columns, seed, batch size, feature cache, loading options)."""
    if isinstance(model, (str, ModelSource)) or len(list(model)) == 1:
        return advise_one_model(model, dataset, thresholds=thresholds, **kwargs)
    thresholds = thresholds or Thresholds()
    ranking = rank(list(model), dataset, max_examples=thresholds.max_examples, thresholds=thresholds, **kwargs)
    ranking.advice.ranking = {"order": ranking.order(), "score": ranking.default_score, "failed": ranking.failed,
                              "scores": {m: ranking.scores[m][ranking.default_score] for m in ranking.scores}}
    return ranking.advice


def rank(models: Union[str, ModelSource, Sequence[Union[str, ModelSource]]], dataset: Any, *,
         validation_dataset: Any = None, image_column: Optional[str] = None, label_column: Optional[str] = None,
         max_examples: Optional[int] = 2000, max_per_class: Optional[int] = None, score: str = DEFAULT_SCORE,
         on_error: str = "report", recommend: bool = True, thresholds: Optional[Thresholds] = None, seed: int = 0,
         batch_size: int = 64,
         feature_cache: str = "disk", feature_cache_dir: Optional[str] = None, output_dir: Optional[str] = None,
         accelerator=None, **options: Any) -> Ranking:
    """Rank pretrained ``models`` by how well their frozen features suit ``dataset``, without training them.

    Args:
        models: Hub ids, model folders or `ModelSource` objects; ``options`` (revision, trust_remote_code,
            allow_pickle, cache_dir) apply to the strings.
        dataset: a dataset, folder or Hub id (its training split is sampled).
        validation_dataset: held-out images for the probe; default: the dataset's validation split, else 20% of
            the sample, stratified.
        max_examples: the most images in the sample (stratified, seeded); None for no limit.
        max_per_class: the most images per class in the sample; None for no limit.
        score: the score that orders the candidates (default ``"knn"``, ties broken by ``"ensemble"``).
        on_error: ``"report"``: a candidate that fails to load is listed in `Ranking.failed` and the others are
            ranked; ``"raise"``: its error stops the ranking.
        recommend: run the advisor on the top model (one more encoder pass, of its randomly initialised copy).
        feature_cache: where features are kept: ``"disk"``, ``"memory"`` or ``"off"`` (the recipes' cache).
        feature_cache_dir: the folder of disk caches (default: the recipes' one).
        output_dir: also write ``ranking.json`` and ``ranking.png`` there.

    Returns:
        `Ranking` (``.table()``, ``.best``, ``.make_recipe()``).

    Raises:
        ConfigError: bad options, or no candidate could be ranked.
        DataError: no labelled images, fewer than two classes.
    """
    from .runtime import make_accelerator

    models = _check_options(models, max_examples, max_per_class, on_error, score)
    sources = [ModelSource.of(m, **options) if isinstance(m, str) else ModelSource.of(m) for m in models]
    sample = prepare_sample(dataset, validation_dataset, image_column=image_column, label_column=label_column,
                            max_examples=max_examples, max_per_class=max_per_class, seed=seed)
    encoding = {"accelerator": accelerator or make_accelerator(seed=seed), "feature_cache": feature_cache,
                "feature_cache_dir": feature_cache_dir, "batch_size": batch_size, "seed": seed}
    ranking, encoded = _score_candidates(sources, sample, encoding, on_error, score)
    if recommend:
        top, start = ranking.best, time.perf_counter()
        ranking.advice = advise_measured(
            next(s for s in sources if s.id == top), sample.splits, sample.image_column, sample.label_column,
            sample.names, sample.per_class, sample.present, sample.warnings, pretrained_features=encoded[top],
            thresholds=thresholds or Thresholds(), **encoding)
        ranking.seconds[top]["advice"] = time.perf_counter() - start
    if output_dir is not None:
        ranking.save(output_dir)
    return ranking
