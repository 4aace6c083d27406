"""Fit orchestration: everything `Recipe.fit` does around the training loop, as short steps.

1. set up Accelerate and the checkpoints (fresh run, or resume a checkpoint of the same run);
2. prepare the data and load the model with a new head (automatic settings become concrete for this data);
3. build the loaders: images, and cached encoder features for periods that train only the head (a linear head
   on cached features is solved in one step, see `tl_hub.probe`);
4. run the recipe's periods through `tl_hub.loop.train_periods`;
5. record what was trained, the kept epoch's metrics and the run, on the recipe.

A recipe supplies only ``config``, ``requested_config``, ``source``, ``name``, ``pretrained``, ``card_text`` and
``periods(backbone)``; nothing here depends on which recipe runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .backbone import Backbone
from .checkpoint import Checkpointer, check_same_run, read_checkpoint, resolve_checkpoint
from .cost import Cost, measure_cost
from .data import (
    ImageClassificationDataset,
    ImageCollator,
    PreparedData,
    images_at,
    is_small_validation,
    make_loader,
    prepare_data,
    small_validation_warning,
)
from .errors import ConfigError
from .exporters import trained_kind
from .features import (
    CachedFeatureDataset,
    CachedFeatures,
    FeatureStore,
    HeadModule,
    collate_features,
    data_fingerprint,
    state_fingerprint,
)
from .hub import base_source
from .inference import Classifier
from .loop import Period, train_periods
from .prefix import PrefixModel, find_cut, frozen_in_eval_mode, prefix_groups, reference_batch
from .probe import can_solve, linear_inputs, linear_layer
from .runtime import (
    check_batch_size,
    default_num_workers,
    make_accelerator,
    processes_per_node,
    progress_named,
    progress_shown,
)
from .streaming import StreamData, is_stream, make_stream_loaders, prepare_stream
from .threads import threads_for
from .version import __version__

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What `Recipe.fit` returns.

    Attributes:
        metrics: validation metrics of the kept epoch (``accuracy``, ``f1``, ``loss``): the best epoch by default,
            the last with ``keep_epoch="last"``; ``extra["kept_epoch"]`` says which.
        history: one record per epoch (see `tl_hub.loop.train_periods`).
        test_metrics: metrics on the dataset's ``test`` split, when it has one.
    """

    metrics: dict
    history: list[dict]
    test_metrics: Optional[dict] = None
    data_summary: str = ""
    extra: dict = field(default_factory=dict)


def fit(recipe, train: Any, validation: Any = None, *, accelerator=None, progress: bool = True, on_period_end=None,
        resume_from_checkpoint: Optional[str] = None, overwrite_checkpoints: bool = False) -> FitResult:
    """Train ``recipe`` on ``train`` (what `tl_hub.recipe.Recipe.fit` does).

    Args:
        recipe: a `tl_hub.recipe.Recipe`.
        train: a ``datasets.Dataset``/``DatasetDict``, an image folder, a saved dataset folder or a Hub dataset id.
            A ``DatasetDict`` supplies its ``validation`` and ``test`` splits too.  A streamed ``IterableDataset`` /
            ``IterableDatasetDict`` (data larger than memory) needs a validation split: see `tl_hub.streaming`.
        validation (*optional*): validation data; by default the dataset's validation split, or a stratified
            ``validation_size`` share of ``train``.
        accelerator (*optional*): an ``accelerate.Accelerator`` to use (default: one made from the config).
        progress (`bool`): show progress bars (main process only).
        on_period_end (*optional*): called as ``(period, model, optimizer)`` when a period ends.
        resume_from_checkpoint (*optional*): ``"latest"`` (the newest checkpoint in ``checkpoint_dir``) or the path
            of a checkpoint: continue that interrupted run of this same recipe, data and settings; ``"auto"``: the
            newest checkpoint if there is one, else a fresh start (for requeued jobs).
        overwrite_checkpoints (`bool`): a fresh run may delete the checkpoints an earlier run left in
            ``checkpoint_dir`` (refused otherwise, so that they are not lost by mistake).
    """
    cfg = recipe.requested_config
    recipe.accelerator = accelerator = accelerator or make_accelerator(
        cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.seed, log_with=cfg.trackers(),
        logging_dir=cfg.logging_dir)
    check_batch_size(cfg.batch_size, accelerator.num_processes)
    check_batch_size(cfg.eval_batch_size, accelerator.num_processes, "eval_batch_size")
    checkpointer, resume = open_checkpoints(cfg, resume_from_checkpoint, overwrite_checkpoints)
    data, backbone = prepare(recipe, train, validation)
    threads = threads_for(cfg.threads, recipe.step_flops, processes_per_node(accelerator), accelerator.device.type)
    with progress_shown(progress and accelerator.is_main_process), progress_named(recipe.name), threads:
        return train_prepared(recipe, data, backbone, checkpointer, resume, progress, on_period_end)


def train_prepared(recipe, data: PreparedData, backbone: Backbone, checkpointer, resume, progress: bool,
                   on_period_end) -> FitResult:
    """The loaders, the periods and the result of a `fit` whose data and model are ready."""
    accelerator = recipe.accelerator
    periods = recipe.periods(backbone)
    loaders = (streamed_loaders if isinstance(data, StreamData) else Loaders.build)(recipe, backbone, data, periods,
                                                                                  progress=progress)
    periods = loaders.periods
    if checkpointer is not None and resume is None and all(p.solve for p in periods):
        logger.info("Every period is one solve: no checkpoints (nothing to resume).")
        checkpointer = None
    initial_buffers = buffers_of(backbone.model)
    started_trackers = start_trackers(accelerator, recipe)
    if checkpointer is not None or resume is not None:
        start_run(recipe, backbone, data, checkpointer, resume)
    history = train_periods(
        accelerator, backbone.model, periods, loaders.train, loaders.eval, config=recipe.config,
        feature_loaders=loaders.features, prefix_loaders=loaders.prefix, on_epoch_start=loaders.set_epoch,
        on_period_end=on_period_end, progress=progress, checkpointer=checkpointer, resume=resume,
        validation_images=data.validation_size(),
    )
    result = finish(recipe, backbone, data, periods, history, initial_buffers)
    if started_trackers:
        # the trackers end with the run; the process group stays for a next run in this process and ends at exit
        # (`tl_hub.shutdown`: Accelerate's end_training would destroy it now)
        for tracker in accelerator.trackers:
            tracker.finish()
    return result


def start_trackers(accelerator, recipe) -> bool:
    """Start the accelerator's experiment trackers with the run's settings as their config; False when it has none
    to start (none asked, or a caller's accelerator whose trackers already run: they stay the caller's)."""
    if accelerator.trackers or not getattr(accelerator, "log_with", None):
        return False
    settings = {k: v for k, v in dataclasses.asdict(recipe.config).items()
                if isinstance(v, (int, float, str, bool)) and v is not None}
    accelerator.init_trackers(f"tl_hub-{recipe.name}", config={"recipe": recipe.name, "model": recipe.source.id,
                                                               **settings})
    return True


def open_checkpoints(cfg, resume_from_checkpoint: Optional[str], overwrite: bool):
    """The run's `Checkpointer` (None without ``checkpoint_dir``) and the checkpoint to resume (None: fresh)."""
    checkpointer = (Checkpointer(cfg.checkpoint_dir, save_steps=cfg.save_steps, keep=cfg.save_total_limit)
                    if cfg.checkpoint_dir else None)
    if resume_from_checkpoint == "auto":  # e.g. a requeued cluster job: resume if there is anything to resume
        if checkpointer is None:
            raise ConfigError("resume_from_checkpoint='auto' needs checkpoint_dir (--checkpoint-dir).")
        resume_from_checkpoint = "latest" if checkpointer.existing() else None
    if resume_from_checkpoint:
        return checkpointer, read_checkpoint(resolve_checkpoint(resume_from_checkpoint, cfg.checkpoint_dir))
    if checkpointer is not None and checkpointer.existing() and not overwrite:
        raise ConfigError(
            f"'{checkpointer.directory}' holds checkpoints of an earlier run; resume it with "
            "resume_from_checkpoint='latest' (--resume-from-checkpoint latest), or start again with "
            "overwrite_checkpoints=True (--overwrite), which deletes them."
        )
    return checkpointer, None


def prepare(recipe, train: Any, validation: Any) -> tuple[PreparedData, Backbone]:
    """Data and model (main process first, so that downloads and dataset caches are made once); then the config
    with its automatic settings made concrete for this data."""
    from accelerate.utils import set_seed

    cfg, accelerator = recipe.requested_config, recipe.accelerator
    set_seed(cfg.seed)
    with accelerator.main_process_first():
        if is_stream(train) or is_stream(validation):  # see tl_hub.streaming
            data = prepare_stream(train, validation, cfg)
        else:
            data = prepare_data(train, validation, image_column=cfg.image_column, label_column=cfg.label_column,
                                validation_size=cfg.validation_size, seed=cfg.seed)
        set_seed(cfg.seed)
        backbone = recipe.load_backbone(data.labels)
    cost = epoch_cost(backbone, data) if cfg.needs_cost() else None  # a counted forward pass, if the schedule needs it
    recipe.step_flops = cost.train_flops * cfg.batch_size / accelerator.num_processes if cost else None
    recipe.config = cfg.resolved(data.train_size(), cost)
    if recipe.config.num_workers is None:
        recipe.config = dataclasses.replace(recipe.config, num_workers=default_num_workers(
            accelerator.device.type, processes_per_node(accelerator)))
    recipe.passes = cfg.passes_per_epoch(data.train_size(), cost)
    recipe.data, recipe.backbone, recipe.dataset_name = data, backbone, dataset_name(train)
    if accelerator.is_main_process:
        logger.info("Data: %s", data.summary())
        warning = small_validation_warning(data.validation_size())
        if warning:
            logger.warning(warning)
        if recipe.passes > 1:
            logger.info("An epoch is %d passes over the %d training images, so that training gets at least "
                        "min_steps=%d optimizer steps.", recipe.passes, data.train_size(), cfg.min_steps)
        budgeted = cfg.budget_note(data.train_size(), cost)
        if budgeted:
            logger.info(budgeted)
    if recipe.config.gradient_checkpointing:
        if not getattr(backbone.model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{type(backbone.model).__name__} does not support gradient checkpointing; "
                              "turn gradient_checkpointing off.")
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return data, backbone


def epoch_cost(backbone: Backbone, data) -> Optional[Cost]:
    """What an epoch costs (`tl_hub.cost`), or None, with the reason logged, when the model cannot be counted (the
    schedule is then min_steps', uncapped)."""
    try:
        return measure_cost(backbone.model, backbone.processor, data.validation_size() or 0)
    except Exception as error:  # a count is advice: a model PyTorch's counter cannot run trains uncapped
        logger.warning("Could not count the FLOPs of %s (%s: %s); compute_budget does not apply to this run.",
                       type(backbone.model).__name__, type(error).__name__, error)
        return None


@dataclass
class Loaders:
    """The loaders of a run: images for every period; cached features for head-only periods (``features``) and
    cached prefix outputs for a top-k fine-tuning period (``prefix``), each ``(module, train, eval)`` or None."""

    train: Any
    eval: Any
    features: Optional[tuple] = None
    prefix: Optional[tuple] = None
    periods: list = field(default_factory=list)
    epoch_datasets: list = field(default_factory=list)

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation for ``epoch`` (called by the loop before each epoch)."""
        for ds in self.epoch_datasets:
            ds.set_epoch(epoch)

    @classmethod
    def build(cls, recipe, backbone: Backbone, data: PreparedData, periods: list[Period], *,
              progress: bool = False) -> Loaders:
        cfg = recipe.config
        collate = ImageCollator(backbone.processor)
        train_set = ImageClassificationDataset(
            data.train, data.image_column, data.label_column, augment=cfg.augment, hflip=cfg.hflip,
            crop_scale=cfg.crop_scale, seed=cfg.seed, passes=recipe.passes,
        )
        val_set = ImageClassificationDataset(data.validation, data.image_column, data.label_column)
        loaders = cls(
            make_loader(train_set, cfg.batch_size, collate_fn=collate, shuffle=True, seed=cfg.seed,
                        num_workers=cfg.num_workers),
            make_loader(val_set, cfg.eval_batch_size, collate_fn=collate, num_workers=cfg.num_workers),
            periods=list(periods), epoch_datasets=[train_set],
        )
        loaders.add_cached(recipe, backbone, data, progress)
        return loaders

    def add_cached(self, recipe, backbone: Backbone, data: PreparedData, progress: bool = False) -> None:
        """Cache what the periods allow, in one pass over the data: the head's input for head-only periods, and
        the input of the lowest trained block for a top-k fine-tuning period (see `tl_hub.prefix`)."""
        cfg = recipe.config
        head = cfg.feature_cache != "off" and any(p.features and p.epochs > 0 for p in self.periods)
        plan = plan_prefix(recipe, backbone, data, self.periods)
        if not head and plan is None:
            return
        recipe.feature_store = store = FeatureStore(
            backbone, recipe.accelerator, cache=cfg.feature_cache, cache_dir=cfg.feature_cache_dir,
            batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers, progress=progress,
        )
        if head and not store.available:
            logger.warning("The head of %s has several modules %s; its features are not cached and the frozen "
                           "encoder runs every epoch.", recipe.source.id, list(backbone.parts.head))
        at = ([store.head_path] if head and store.available else []) + ([plan[1].path] if plan else [])
        if not at:
            return
        train, val = cached_splits(recipe, store, data, at)
        if head and store.available:
            self.features = head_loaders(recipe, backbone, store, train[0], val[0])
            self.epoch_datasets.append(self.features[1].dataset)
            self.periods = solved_periods(cfg, self.periods, self.features)
        if plan is not None:
            self.prefix = prefix_loaders(recipe, backbone, plan[1], train[-1], val[-1])
            self.epoch_datasets.append(self.prefix[1].dataset)
            index, cut = plan
            mb = train[-1].features.numel() * 4 / 2**20
            self.periods[index] = dataclasses.replace(
                self.periods[index], prefix=True, info={**self.periods[index].info, "prefix_cache": cut.path,
                                                        "prefix_cache_mb": round(mb, 1)})


def cached_splits(recipe, store: FeatureStore, data: PreparedData, at: list[str]):
    """The training (with ``feature_views`` views) and validation inputs of the modules ``at``, cached."""
    cfg = recipe.config
    augment = {"hflip": cfg.hflip, "crop_scale": cfg.crop_scale, "seed": cfg.seed}
    train = store.get_many(data.train, data.image_column, data.label_column, at=at, views=cfg.feature_views,
                           augment=augment, what="training")
    val = store.get_many(data.validation, data.image_column, data.label_column, at=at, what="validation")
    if recipe.accelerator.is_main_process:
        logger.info("Feature caches: %s", ", ".join(f"{k} {v['bytes'] / 2**20:.1f} MB in {v['where']}"
                                                     for k, v in store.sizes.items()))
    return train, val


def head_loaders(recipe, backbone: Backbone, store: FeatureStore, train: CachedFeatures, val: CachedFeatures):
    """``(head, train_loader, eval_loader)`` over cached head inputs, for the periods that train only the head."""
    cfg = recipe.config
    if recipe.accelerator.is_main_process and cfg.augment and cfg.feature_views == 1:
        logger.info("The head trains on cached features of the plain images; augmentation applies once the "
                    "encoder trains (feature_views=k caches k views; feature_cache='off' augments every epoch).")
    head = HeadModule(backbone.model.get_submodule(store.head_path))
    return head, *cached_feature_loaders(recipe, train, val)


def prefix_loaders(recipe, backbone: Backbone, cut, train: CachedFeatures, val: CachedFeatures):
    """``(model from the cut, train_loader, eval_loader)`` over the cached input of the cut."""
    return PrefixModel(backbone.model, cut), *cached_feature_loaders(recipe, train, val)


def cached_feature_loaders(recipe, train: CachedFeatures, val: CachedFeatures):
    """Loaders over cached features in the order (seed, passes, batch sizes) of the image loaders they replace."""
    cfg = recipe.config
    return (make_loader(CachedFeatureDataset(train, seed=cfg.seed, passes=recipe.passes), cfg.batch_size,
                        collate_fn=collate_features, shuffle=True, seed=cfg.seed),
            make_loader(CachedFeatureDataset(val), cfg.eval_batch_size, collate_fn=collate_features))


def plan_prefix(recipe, backbone: Backbone, data: PreparedData, periods: list[Period]):
    """``(period index, cut)`` for the first period that trains only top blocks when its frozen prefix can be
    cached (see `tl_hub.prefix`), else None (with the reason logged when it is not obvious)."""
    cfg = recipe.config
    if (not cfg.prefix_cache or cfg.feature_cache == "off" or cfg.gradient_checkpointing
            or (cfg.augment and cfg.feature_views == 1)):
        return None
    names = {id(p): n for n, p in backbone.model.named_parameters()}
    for index, period in enumerate(periods):
        if period.features or period.epochs <= 0:
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
        return index, cut
    return None


def solved_periods(cfg, periods: list[Period], features) -> list[Period]:
    """Head periods on cached features whose head is one linear layer become one converged solve (see
    `tl_hub.probe`), unless ``head_solver="adamw"`` or the problem is too large for a full-batch solve."""
    head, cached = features[0].head, features[1].dataset.cached
    if cfg.head_solver != "lbfgs" or linear_inputs(head, cached.features[0, :2]) is None:
        return periods
    linear = linear_layer(head)
    if not can_solve(cached.views * len(cached.labels), linear.in_features, linear.out_features):
        logger.info("The head is trained by AdamW: a full-batch solve on %d x %d features is too large.",
                    cached.views * len(cached.labels), linear.in_features)
        return periods
    return [dataclasses.replace(p, epochs=1, solve=True, info={**p.info, "solver": "lbfgs"})
            if p.features and p.epochs > 0 else p for p in periods]


def streamed_loaders(recipe, backbone: Backbone, data: StreamData, periods: list[Period], *,
                     progress: bool = False) -> Loaders:
    """The loaders of streamed data (see `tl_hub.streaming`).  Encoder features are not cached for a stream: a
    frozen encoder runs on every batch, so ``feature_cache`` becomes 'off' and a head trains by AdamW steps."""
    if any(p.features and p.epochs > 0 for p in periods) and recipe.config.feature_cache != "off":
        if recipe.accelerator.is_main_process:
            logger.info("Streamed data: encoder features are not cached (feature_cache=%r becomes 'off'); the frozen "
                        "encoder runs every epoch and the head trains by AdamW.", recipe.config.feature_cache)
        recipe.config = dataclasses.replace(recipe.config, feature_cache="off")
    train, val = make_stream_loaders(recipe.accelerator, recipe.config, backbone.processor, data, recipe.passes)
    return Loaders(train, val, periods=list(periods))


def buffers_of(model: torch.nn.Module) -> dict:
    """Copies of the model's buffers (e.g. BatchNorm statistics), to tell later which ones training moved."""
    params = {n for n, _ in model.named_parameters()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in params}


def start_run(recipe, backbone: Backbone, data: PreparedData, checkpointer, resume) -> None:
    """Check that a resumed checkpoint is of this same run, or clear an earlier run's checkpoints (allowed by
    ``overwrite_checkpoints``); the checkpointer records the run's identity in every checkpoint."""
    accelerator = recipe.accelerator
    run = run_identity(recipe, backbone, data, accelerator.num_processes)
    if resume is not None:
        check_same_run(resume, run)
    elif accelerator.is_main_process:
        checkpointer.clear()
    accelerator.wait_for_everyone()
    if checkpointer is not None:
        checkpointer.run = run


def run_identity(recipe, backbone: Backbone, data: PreparedData, num_processes: int) -> dict:
    """What makes a run the same run: recorded in its checkpoints and compared when resuming (as JSON)."""
    run = {
        "recipe": recipe.name,
        "model": recipe.source.id,
        "revision": backbone.revision or recipe.source.revision,
        "initial_weights": state_fingerprint(backbone.model),  # a local model folder that changed is another run
        "settings": recipe.config.training_settings(),
        "labels": list(data.labels),
        "data": data.fingerprints() if isinstance(data, StreamData) else {
            "train": data_fingerprint(data.train, data.image_column),
            "validation": data_fingerprint(data.validation, data.image_column)},
        "processes": num_processes,
    }
    return json.loads(json.dumps(run, default=str))


DETAIL_KEYS = ("per_class", "confusion_matrix", "errors")  # evaluation results too large to keep per epoch


def finish(recipe, backbone: Backbone, data: PreparedData, periods: Sequence[Period], history: list[dict],
           initial_buffers: dict) -> FitResult:
    """What the run produced: the trained state, the classifier with its record, and the `FitResult`."""
    recipe.trained = trained_state(backbone.model, backbone.parts, periods, initial_buffers, recipe.export_kind)
    recipe.classifier = Classifier(backbone.model, backbone.processor, data.labels)
    kept = next((h for h in history if h.get("best")), history[-1])
    test_metrics = recipe.evaluate(data.test) if data.test is not None else None
    details = [k for k in DETAIL_KEYS if k in kept]  # per class, confusion matrix, errors: the kept epoch's only
    errors = kept.get("errors", [])
    recipe.error_examples = list(zip(images_at(data.validation, data.image_column, [e["index"] for e in errors]),
                                     errors))
    history = [{k: v for k, v in h.items() if k not in DETAIL_KEYS} for h in history]
    recipe.result = FitResult(
        metrics={k: kept[k] for k in ("accuracy", "f1", "loss", *details)}, history=history,
        test_metrics=test_metrics,
        data_summary=data.summary(),
        extra={"periods": [{"name": p.name, "epochs": p.epochs, **p.info} for p in periods],
               "kept_epoch": kept["epoch"], "validation_images": data.validation_size(),
               "validation_warning": small_validation_warning(data.validation_size()),
               "feature_caches": dict(recipe.feature_store.sizes) if recipe.feature_store is not None else {}},
    )
    recipe.classifier.info = run_record(recipe)
    return recipe.result


def run_record(recipe) -> dict:
    """What ``tl_hub.json`` records about a fitted recipe's run."""
    backbone, data, result = recipe.backbone, recipe.data, recipe.result
    return {
        "tl_hub_version": __version__,
        "recipe": recipe.name,
        "recipe_text": recipe.card_text,
        "base_model": recipe.source.id,
        "base_model_revision": backbone.revision or recipe.source.revision,
        "base_model_source": base_source(recipe.source.id, recipe.source.location),
        "pretrained": recipe.pretrained,
        "settings": recipe.config.training_settings(),
        "labels": data.labels,
        "image_column": data.image_column,
        "label_column": data.label_column,
        "dataset": recipe.dataset_name,
        "data": data.summary(),
        "validation_warning": result.extra.get("validation_warning"),
        "skipped_images": data.skipped,
        "encoder_groups": [g.name for g in backbone.parts.groups],
        "head_modules": list(backbone.parts.head),
        "periods": result.extra.get("periods", []),
        "passes_per_epoch": recipe.passes,
        "kept_epoch": {"epoch": result.extra.get("kept_epoch"), "rule": recipe.config.keep_epoch,
                       "smoothed": recipe.config.keep_epoch == "best"
                       and is_small_validation(result.extra.get("validation_images"))},
        "trained": recipe.trained,
    }


def trained_state(model: torch.nn.Module, parts, periods: Sequence[Period], initial_buffers: dict,
                  kind: Optional[str] = None) -> dict:
    """What training changed: the parameters any period trained and the buffers (e.g. BatchNorm statistics) whose
    values moved.  ``kind`` (given by the recipe, else `tl_hub.exporters.trained_kind`) picks the exporter;
    ``groups`` names the encoder groups that trained."""
    names = {id(p): n for n, p in model.named_parameters()}
    trained = {names[id(p)] for period in periods if period.epochs > 0
               for g in period.param_groups for p in g["params"]}
    buffers = [k for k, v in model.state_dict().items()
               if k in initial_buffers and not torch.equal(v, initial_buffers[k])]
    kind = kind or trained_kind(model, trained, set(names.values()) - set(parts.unused), set(parts.head_params(model)))
    groups = [g.name for g in parts.groups if any(n in trained for n in g.params)]
    return {"kind": kind, "state_keys": sorted(trained) + sorted(buffers), "groups": groups}


def dataset_name(source: Any) -> Optional[str]:
    """A name for the model card: the Hub id or folder name given, else the dataset's own name if it has one."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return os.path.basename(os.path.normpath(path)) if os.path.exists(path) else path
    info = getattr(source, "info", None)
    return getattr(info, "dataset_name", None) or None
