"""A candidate model's frozen features on a sample of the data: what ranking and the advisor measure.

`prepare_sample` loads, checks and samples the data (stratified; a held-out part for the probe), and `encode`
loads a checkpoint as it was saved (its own head kept) and returns the input of its head for each split, in one
encoder pass through the feature cache that the recipes share.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .config import ModelSource
from .errors import DataError

HELD_OUT = 0.2  # share of the sample held out for the probe when no validation split is given


@dataclass
class Encoded:
    """A candidate's frozen features over the sample (one encoder pass, through the feature cache).

    Attributes:
        features: per split name (``"train"``, ``"held_out"``), features ``(N, D)`` (flattened head inputs).
        labels: per split name, labels ``(N,)``.
        source_probs: per split name, the source head's class probabilities ``(N, Z)``; ``None`` when the
            checkpoint has no trained head of its own.
        capture: the module(s) whose input the features are (the model's head).
        source_classes: the number of classes of the checkpoint's own head.
        seconds: loading plus the encoder pass.
    """

    features: dict
    labels: dict
    source_probs: Optional[dict]
    capture: str
    source_classes: int
    seconds: float


def load_source_model(source: ModelSource):
    """The model as it was saved, source head included; returns ``(backbone, has_source_head)``.

    ``has_source_head`` is False when the checkpoint has no weights for the head (a bare encoder checkpoint,
    whose head transformers initialises at random)."""
    from .backbone import Backbone, load_config, load_image_processor, load_weights
    from .structure import example_inputs, split_model

    config = load_config(source)
    processor = load_image_processor(source)
    model, info = load_weights(source, output_loading_info=True)
    parts = split_model(model, example_inputs(model, processor), num_labels=config.num_labels)
    missing = set(info.get("missing_keys", ())) | set(info.get("mismatched_keys", ()))
    head_params = {f"{h}.{n}" for h in parts.head for n, _ in model.get_submodule(h).named_parameters()}
    has_head = config.num_labels >= 2 and not (head_params & {str(k) for k in missing})
    return Backbone(model=model, processor=processor, parts=parts, source=source.id), has_head


def encode(source: ModelSource, splits: dict, image_column: str, label_column: str, labels: Sequence[str], *,
           pretrained: bool = True, accelerator=None, feature_cache: str = "disk",
           feature_cache_dir: Optional[str] = None, batch_size: int = 64, seed: int = 0) -> Encoded:
    """Load ``source`` and return the input features of its head for each dataset of ``splits`` (name ->
    dataset), from the feature cache or one encoder pass.  With ``pretrained=False``, the same architecture
    randomly initialised (seeded), for the advisor's baseline."""
    from accelerate.utils import set_seed

    from .backbone import load_backbone
    from .features import FeatureStore, HeadModule
    from .runtime import make_accelerator

    start = time.perf_counter()
    accelerator = accelerator or make_accelerator(seed=seed)
    set_seed(seed)
    if pretrained:
        backbone, has_head = load_source_model(source)
    else:
        backbone, has_head = load_backbone(source, labels, pretrained=False), False
    store = FeatureStore(backbone, accelerator, cache=feature_cache, cache_dir=feature_cache_dir,
                         batch_size=batch_size)
    # a head of several modules (SwiftFormer's head and distillation head): the inputs of all of them, side by side
    heads = [store.head_path] if store.available else list(backbone.parts.head)
    has_head = has_head and store.available  # the source probabilities come from one head module
    features, targets, probs = {}, {}, {} if has_head else None
    head = HeadModule(backbone.model.get_submodule(heads[0])).eval()
    for name, ds in splits.items():
        cached = store.get_many(ds, image_column, label_column, at=heads, what=f"ranking {name}")
        if probs is not None:
            x = cached[0].features[0]
            with torch.inference_mode():
                probs[name] = torch.cat([head(x[i:i + 4096].to(accelerator.device)).float().softmax(-1).cpu()
                                         for i in range(0, len(x), 4096)])
        features[name] = torch.cat([c.features[0].flatten(1) for c in cached], 1)
        targets[name] = cached[0].labels
    return Encoded(features=features, labels=targets, source_probs=probs, capture=", ".join(heads),
                   source_classes=int(backbone.model.config.num_labels), seconds=time.perf_counter() - start)


def _sample(ds, label_column: str, max_examples: Optional[int], max_per_class: Optional[int], seed: int):
    """A stratified sample: at most ``max_per_class`` per class, then at most ``max_examples`` in all."""
    from .splits import stratified_split

    labels = ds[label_column]
    keep = list(range(len(labels)))
    if max_per_class is not None:
        rng, by_class = random.Random(seed), {}
        for i, y in enumerate(labels):
            by_class.setdefault(y, []).append(i)
        keep = sorted(i for idx in by_class.values() for i in rng.sample(idx, min(len(idx), max_per_class)))
    if max_examples is not None and len(keep) > max_examples:
        _, chosen = stratified_split([labels[i] for i in keep], max_examples / len(keep), seed, warn=False)
        keep = [keep[i] for i in chosen]
    return ds.select(keep) if len(keep) < len(labels) else ds


@dataclass
class Sample:
    """The images a ranking looks at: ``splits`` maps ``"train"`` (and ``"held_out"``, for the probe) to a
    dataset; ``per_class`` / ``present`` / ``warnings`` describe the whole training split."""

    splits: dict
    image_column: str
    label_column: str
    names: list
    per_class: dict
    present: dict
    warnings: list


def refuse_multi_label(dataset: Any, image_column: Optional[str], label_column: Optional[str]) -> None:
    """One clear error for a multi-label dataset: the scores rank frozen features for single-label targets."""
    from .data import load_source, multi_label_column

    column = multi_label_column(load_source(dataset), image_column, label_column)
    if column is not None:
        raise DataError(
            f"The label column '{column}' holds a set of labels per image (a multi-label task); ranking scores "
            "models for single-label targets (LogME, k-NN and the probe assume one class per image), and the "
            "advisor's measurement is the same probe. Compare candidates on a multi-label task by training each "
            "with feature extraction (tl-hub train --recipe feature-extraction, one solve per model) and comparing "
            "their validation mAP.")


def prepare_sample(dataset: Any, validation_dataset: Any = None, *, image_column: Optional[str] = None,
                   label_column: Optional[str] = None, max_examples: Optional[int] = 2000,
                   max_per_class: Optional[int] = None, seed: int = 0) -> Sample:
    """Load, check and sample the data a ranking uses (see `rank`)."""
    from .data import align_split, drop_undecodable, load_labelled, load_source
    from .splits import class_counts, stratified_split

    dataset = load_source(dataset)  # once: the check and the sample read the same data
    refuse_multi_label(dataset, image_column, label_column)
    train, validation, _, img_col, lbl_col, names, _ = load_labelled(
        dataset, validation_dataset, image_column=image_column, label_column=label_column)
    per_class, present, warnings = class_counts(train[lbl_col], names)
    sampled = _sample(train, lbl_col, max_examples, max_per_class, seed)
    if validation is not None:
        held_out = align_split(validation, img_col, lbl_col, names, "validation")
        held_out, _ = drop_undecodable(held_out, img_col, "validation")
        held_out = _sample(held_out, lbl_col, max_examples and max(4, max_examples // 4), max_per_class, seed)
        splits = {"train": sampled, "held_out": held_out}
    else:
        tr, ho = stratified_split(sampled[lbl_col], HELD_OUT, seed)
        splits = {"train": sampled.select(tr), "held_out": sampled.select(ho)} if ho else {"train": sampled}
    return Sample(splits, img_col, lbl_col, names, per_class, present, warnings)


