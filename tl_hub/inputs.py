"""What each period of a run trains on, decided in one place (`build_inputs`, `decide_periods`).

A period trains on one of three inputs (`tl_hub.loop.Period.inputs`):

- ``"images"``: the images, through the whole model (always available);
- ``"features"``: the cached input of the head, for a period in which only the head trains (`Period.head_only`)
  and the head is one module; a linear head there is *solved* in one step (`tl_hub.probe`, ``solve``) unless
  ``head_solver="adamw"`` or the problem is too large for a full-batch solve;
- ``"prefix"``: the cached output of the frozen blocks below the lowest trained block, for the first period that
  trains only top blocks when that output can be cached (`tl_hub.prefix`).

All caches come from one pass over the data (`tl_hub.features.FeatureStore.get_many`).  Streamed data trains on
images only (`tl_hub.streaming`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import torch

from .data import ImageClassificationDataset, ImageCollator, make_loader
from .features import CachedFeatureDataset, CachedFeatures, FeatureStore, HeadModule, collate_features
from .fit_state import FitRun
from .loop import Period, PeriodInputs
from .prefix import PrefixCut, PrefixModel, find_cut, frozen_in_eval_mode, prefix_groups, reference_batch
from .probe import can_solve, linear_inputs, linear_layer
from .streaming import StreamData, make_stream_loaders

logger = logging.getLogger(__name__)


@dataclass
class RunInputs:
    """The inputs of a run's periods by kind, and the periods with their inputs decided (`decide_periods`)."""

    images: PeriodInputs
    periods: list[Period]
    features: Optional[PeriodInputs] = None
    prefix: Optional[PeriodInputs] = None
    epoch_datasets: list = field(default_factory=list)  # reseeded for each epoch's augmentation and order

    def by_kind(self) -> dict[str, PeriodInputs]:
        """``{"images": ..., "features": ..., "prefix": ...}``, for the kinds this run has (what the loop takes)."""
        kinds = {"images": self.images, "features": self.features, "prefix": self.prefix}
        return {k: v for k, v in kinds.items() if v is not None}

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation for ``epoch`` (called by the loop before each epoch)."""
        for ds in self.epoch_datasets:
            ds.set_epoch(epoch)


class PrefixPlan(NamedTuple):
    """The period that trains on the cached prefix (its index in the periods) and where the model is cut."""

    index: int
    cut: PrefixCut


def build_inputs(run: FitRun, periods: list[Period]) -> RunInputs:
    """The inputs of every period of ``run``: images, and what the periods allow to cache, computed in one pass."""
    if isinstance(run.data, StreamData):
        return stream_inputs(run, periods)
    images, train_set = image_inputs(run)
    cfg = run.config
    head = cfg.feature_cache != "off" and any(p.head_only and p.epochs > 0 for p in periods)
    plan = plan_prefix(run, periods)
    features = prefix = None
    if head or plan is not None:
        run.feature_store = store = FeatureStore(
            run.backbone, run.accelerator, cache=cfg.feature_cache, cache_dir=cfg.feature_cache_dir,
            batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers, progress=run.progress,
        )
        if head and not store.available:
            logger.warning("The head of %s has several modules %s; its features are not cached and the frozen "
                           "encoder runs every epoch.", run.source.id, list(run.backbone.parts.head))
        head = head and store.available
        features, prefix = cached_inputs(run, store, head, plan)
    return RunInputs(images, decide_periods(run, periods, features, plan, prefix), features, prefix,
                     epoch_datasets=[train_set] + [i.train.dataset for i in (features, prefix) if i is not None])


def decide_periods(run: FitRun, periods: list[Period], features: Optional[PeriodInputs],
                   plan: Optional[PrefixPlan], prefix: Optional[PeriodInputs]) -> list[Period]:
    """Each period with its ``inputs`` (and ``solve``) decided: the one place this is done."""
    solve = features is not None and can_solve_head(run, features)
    decided = []
    for index, period in enumerate(periods):
        if period.epochs > 0 and period.head_only and features is not None:
            period = dataclasses.replace(period, inputs="features")
            if solve:
                period = dataclasses.replace(period, epochs=1, solve=True, info={**period.info, "solver": "lbfgs"})
        elif period.epochs > 0 and plan is not None and prefix is not None and index == plan.index:
            mb = prefix.cached_train.features.numel() * 4 / 2**20
            period = dataclasses.replace(period, inputs="prefix", info={
                **period.info, "prefix_cache": plan.cut.path, "prefix_cache_mb": round(mb, 1)})
        decided.append(period)
    return decided


def can_solve_head(run: FitRun, features: PeriodInputs) -> bool:
    """Whether head periods on cached features become one converged solve (see `tl_hub.probe`): the head is one
    linear layer, ``head_solver`` is ``"lbfgs"`` and the problem fits a full-batch solve."""
    head, cached = features.module.head, features.cached_train
    if run.config.head_solver != "lbfgs" or linear_inputs(head, cached.features[0, :2]) is None:
        return False
    linear = linear_layer(head)
    if not can_solve(cached.views * len(cached.labels), linear.in_features, linear.out_features):
        logger.info("The head is trained by AdamW: a full-batch solve on %d x %d features is too large.",
                    cached.views * len(cached.labels), linear.in_features)
        return False
    return True


def image_inputs(run: FitRun) -> tuple[PeriodInputs, ImageClassificationDataset]:
    """The whole model over the images (with the training augmentation), and the training dataset."""
    cfg, data = run.config, run.data
    collate = ImageCollator(run.backbone.processor)
    train_set = ImageClassificationDataset(
        data.train, data.image_column, data.label_column, augment=cfg.augment, hflip=cfg.hflip,
        crop_scale=cfg.crop_scale, seed=cfg.seed, passes=run.passes,
    )
    if cfg.sampler == "balanced":
        train_set.balance(torch.as_tensor(data.train_targets()))
    val_set = ImageClassificationDataset(data.validation, data.image_column, data.label_column)
    images = PeriodInputs(
        run.backbone.model,
        make_loader(train_set, cfg.batch_size, collate_fn=collate, shuffle=True, seed=cfg.seed,
                    num_workers=cfg.num_workers),
        make_loader(val_set, cfg.eval_batch_size, collate_fn=collate, num_workers=cfg.num_workers),
    )
    return images, train_set


def cached_inputs(run: FitRun, store: FeatureStore, head: bool, plan: Optional[PrefixPlan]):
    """``(features, prefix)`` inputs (each None when not cached) from one pass over the training and validation
    images (with ``feature_views`` views of each training image)."""
    cfg, data = run.config, run.data
    at = ([store.head_path] if head else []) + ([plan.cut.path] if plan else [])
    if not at:
        return None, None
    augment = {"hflip": cfg.hflip, "crop_scale": cfg.crop_scale, "seed": cfg.seed}
    train = store.get_many(data.train, data.image_column, data.label_column, at=at, views=cfg.feature_views,
                           augment=augment, what="training")
    val = store.get_many(data.validation, data.image_column, data.label_column, at=at, what="validation")
    if run.is_main_process:
        logger.info("Feature caches: %s", ", ".join(f"{k} {v['bytes'] / 2**20:.1f} MB in {v['where']}"
                                                     for k, v in store.sizes.items()))
    features = prefix = None
    if head:
        if run.is_main_process and cfg.augment and cfg.feature_views == 1:
            logger.info("The head trains on cached features of the plain images; augmentation applies once the "
                        "encoder trains (feature_views=k caches k views; feature_cache='off' augments every epoch).")
        module = HeadModule(run.backbone.model.get_submodule(store.head_path))
        features = cached_feature_inputs(run, module, train[0], val[0])
    if plan is not None:
        prefix = cached_feature_inputs(run, PrefixModel(run.backbone.model, plan.cut), train[-1], val[-1])
    return features, prefix


def cached_feature_inputs(run: FitRun, module: Any, train: CachedFeatures, val: CachedFeatures) -> PeriodInputs:
    """``module`` over cached features, with loaders in the order (seed, passes, batch sizes) of the image
    loaders they replace."""
    cfg = run.config
    train_set = CachedFeatureDataset(train, seed=cfg.seed, passes=run.passes)
    if cfg.sampler == "balanced":
        train_set.balance(train.labels)
    return PeriodInputs(
        module,
        make_loader(train_set, cfg.batch_size,
                    collate_fn=collate_features, shuffle=True, seed=cfg.seed),
        make_loader(CachedFeatureDataset(val), cfg.eval_batch_size, collate_fn=collate_features),
        cached_train=train, cached_eval=val,
    )


def plan_prefix(run: FitRun, periods: list[Period]) -> Optional[PrefixPlan]:
    """The first period that trains only top blocks, when its frozen prefix can be cached (see `tl_hub.prefix`),
    else None (with the reason logged when it is not obvious)."""
    cfg, backbone, data = run.config, run.backbone, run.data
    if (not cfg.prefix_cache or cfg.feature_cache == "off" or cfg.gradient_checkpointing
            or (cfg.augment and cfg.feature_views == 1)):
        return None
    names = {id(p): n for n, p in backbone.model.named_parameters()}
    for index, period in enumerate(periods):
        if period.head_only or period.epochs <= 0:
            continue
        trained = {names[id(p)] for g in period.param_groups for p in g["params"] if id(p) in names}
        found = prefix_groups(backbone.parts, trained)
        if found is None:
            continue
        sample = ImageClassificationDataset(data.train, data.image_column, data.label_column)
        cut, why = find_cut(backbone.model, found[0], trained, reference_batch(sample, ImageCollator(
            backbone.processor)))
        why = why or frozen_in_eval_mode(backbone.model, cut, period.eval_modules)
        if why:
            logger.info("Period '%s' runs the whole encoder: its frozen prefix cannot be cached (%s).", period.name,
                        why)
            return None
        return PrefixPlan(index, cut)
    return None


def stream_inputs(run: FitRun, periods: list[Period]) -> RunInputs:
    """The inputs of streamed data (see `tl_hub.streaming`): images only.  Encoder features are not cached for a
    stream: a frozen encoder runs on every batch, so ``feature_cache`` becomes 'off' and a head trains by AdamW."""
    if any(p.head_only and p.epochs > 0 for p in periods) and run.config.feature_cache != "off":
        if run.is_main_process:
            logger.info("Streamed data: encoder features are not cached (feature_cache=%r becomes 'off'); the frozen "
                        "encoder runs every epoch and the head trains by AdamW.", run.config.feature_cache)
        run.config = dataclasses.replace(run.config, feature_cache="off")
    train, val = make_stream_loaders(run.accelerator, run.config, run.backbone.processor, run.data, run.passes)
    return RunInputs(PeriodInputs(run.backbone.model, train, val), list(periods))
