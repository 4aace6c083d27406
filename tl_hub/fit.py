"""Fit orchestration: everything `Recipe.fit` does around the training loop, as short steps.

1. set up Accelerate and the checkpoints (fresh run, or resume a checkpoint of the same run);
2. prepare the data and load the model with a new head; the settings' automatic values become concrete for this
   data.  The run's state is one `tl_hub.fit_state.FitRun`, handed to every later step;
3. decide each period's inputs and build them (`tl_hub.inputs`): images, and cached encoder features for periods
   that train only the head (a linear head on cached features is solved in one step, see `tl_hub.probe`) or only
   top blocks (`tl_hub.prefix`);
4. run the recipe's periods through `tl_hub.loop.train_periods`;
5. return, and set as the recipe's ``result``, the `FitResult`: the kept epoch's metrics, the trained classifier
   with its record, and the run.

A recipe supplies only ``config``, ``source``, ``name``, ``pretrained``, ``card_text``, ``export_kind``,
``load_backbone(labels)`` and ``periods(backbone, config)``; nothing here depends on which recipe runs, and nothing
here writes on the recipe but its ``result``.
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
from .config import TrainingConfig
from .cost import Cost, measure_cost
from .data import images_at, prepare_data
from .errors import ConfigError
from .exporters import trained_kind
from .features import data_fingerprint, state_fingerprint
from .fit_state import FitRun
from .hub import base_source
from .imbalance import class_weights, imbalance_ratio, label_counts
from .inference import Classifier
from .inputs import build_inputs
from .loop import Period, train_periods
from .post_training import finalize
from .runtime import (
    check_batch_size,
    default_num_workers,
    make_accelerator,
    processes_per_node,
    progress_named,
    progress_shown,
)
from .splits import is_small_validation, small_validation_warning
from .streaming import StreamData, is_stream, prepare_stream
from .tasks import set_problem_type
from .threads import threads_for
from .version import __version__
from .wise_ft import StartKeeper, start_keys

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What `Recipe.fit` returns (and keeps as ``recipe.result``).

    Attributes:
        metrics: validation metrics of the kept epoch (``accuracy``, ``f1``, ``loss``): the best epoch by default,
            the last with ``keep_epoch="last"``; ``extra["kept_epoch"]`` says which.
        history: one record per epoch (see `tl_hub.loop.train_periods`).
        test_metrics: metrics on the dataset's ``test`` split, when it has one.
        data_summary: the data as the run saw it (images per split, classes, skipped images).
        extra: the periods as they ran, the kept epoch, the validation size and warning, the feature caches.
        config: the settings the run used: the recipe's, with the automatic ones made concrete for this data.
        classifier: the trained model (`tl_hub.inference.Classifier`), with its record in ``classifier.info``.
        trained: what training changed (the exporter kind, the trained state keys, the trained groups).
        error_examples: ``(image, entry)`` of the kept epoch's most confident validation mistakes.
        run: the run's state (`tl_hub.fit_state.FitRun`: accelerator, data, model, feature store).
    """

    metrics: dict
    history: list[dict]
    test_metrics: Optional[dict] = None
    data_summary: str = ""
    extra: dict = field(default_factory=dict)
    config: Optional[TrainingConfig] = None
    classifier: Optional[Classifier] = None
    trained: dict = field(default_factory=dict)
    error_examples: list = field(default_factory=list, repr=False)
    run: Optional[FitRun] = field(default=None, repr=False)


def fit(recipe, train: Any, validation: Any = None, *, accelerator=None, progress: bool = True, on_period_end=None,
        resume_from_checkpoint: Optional[str] = None, overwrite_checkpoints: bool = False) -> FitResult:
    """Train ``recipe`` on ``train`` (what `tl_hub.recipe.Recipe.fit` does); the result is also ``recipe.result``.

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
    cfg = recipe.config
    accelerator = accelerator or make_accelerator(
        cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.seed, log_with=cfg.trackers(),
        logging_dir=cfg.logging_dir)
    check_batch_size(cfg.batch_size, accelerator.num_processes)
    check_batch_size(cfg.eval_batch_size, accelerator.num_processes, "eval_batch_size")
    checkpointer, resume = open_checkpoints(cfg, resume_from_checkpoint, overwrite_checkpoints)
    run = prepare(recipe, train, validation, accelerator, progress)
    threads = threads_for(cfg.threads, run.step_flops, processes_per_node(accelerator), accelerator.device.type)
    with progress_shown(progress and accelerator.is_main_process), progress_named(recipe.name), threads:
        recipe.result = train_prepared(recipe, run, checkpointer, resume, on_period_end)
    return recipe.result


def train_prepared(recipe, run: FitRun, checkpointer, resume, on_period_end) -> FitResult:
    """The inputs, the periods and the result of a `fit` whose data and model are ready."""
    inputs = build_inputs(run, recipe.periods(run.backbone, run.config))
    periods = inputs.periods
    if checkpointer is not None and resume is None and all(p.solve for p in periods):
        logger.info("Every period is one solve: no checkpoints (nothing to resume).")
        checkpointer = None
    initial_buffers = buffers_of(run.backbone.model)
    started_trackers = start_trackers(recipe, run)
    if checkpointer is not None or resume is not None:
        start_run(recipe, run, checkpointer, resume)
    keeper = StartKeeper(start_keys(run.backbone.model, periods) if wise_ft_wanted(run.config) else None, periods,
                         on_period_end)
    history = train_periods(
        run.accelerator, run.backbone.model, periods, inputs.by_kind(), config=run.config,
        on_epoch_start=inputs.set_epoch, on_period_end=keeper, progress=run.progress,
        checkpointer=checkpointer, resume=resume, validation_images=run.data.validation_size(),
        class_weight=run.class_weight,
    )
    result = finish(recipe, run, periods, history, initial_buffers, start=keeper.state,
                    cached=cached_validation(inputs, periods, run))
    if started_trackers:
        # the trackers end with the run; the process group stays for a next run in this process and ends at exit
        # (`tl_hub.shutdown`: Accelerate's end_training would destroy it now)
        for tracker in run.accelerator.trackers:
            tracker.finish()
    return result


def start_trackers(recipe, run: FitRun) -> bool:
    """Start the accelerator's experiment trackers with the run's settings as their config; False when it has none
    to start (none asked, or a caller's accelerator whose trackers already run: they stay the caller's)."""
    accelerator = run.accelerator
    if accelerator.trackers or not getattr(accelerator, "log_with", None):
        return False
    settings = {k: v for k, v in dataclasses.asdict(run.config).items()
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


def prepare(recipe, train: Any, validation: Any, accelerator, progress: bool) -> FitRun:
    """The run: data and model (main process first, so that downloads and dataset caches are made once), then the
    settings with their automatic values made concrete for this data."""
    from accelerate.utils import set_seed

    cfg = recipe.config
    set_seed(cfg.seed)
    with accelerator.main_process_first():
        if is_stream(train) or is_stream(validation):  # see tl_hub.streaming
            if cfg.multi_label:
                raise ConfigError("Multi-label training needs the label sets up front (the decision thresholds are "
                                  "chosen on the whole validation split); streamed data is single-label only. Load "
                                  "the data as a datasets.Dataset (not streaming) to train multi-label.")
            data = prepare_stream(train, validation, cfg)
        else:
            data = prepare_data(train, validation, image_column=cfg.image_column, label_column=cfg.label_column,
                                validation_size=cfg.validation_size, seed=cfg.seed,
                                multi_label=True if cfg.multi_label else None)
        set_seed(cfg.seed)
        backbone = recipe.load_backbone(data.labels)
        set_problem_type(backbone.model.config, is_multi_label_data(data))
    cost = epoch_cost(backbone, data) if cfg.needs_cost() else None  # a counted forward pass, if the schedule needs it
    resolved = cfg.resolved(data.train_size(), cost)
    if is_multi_label_data(data) and not resolved.multi_label:  # detected: recorded as the setting it amounts to
        resolved = dataclasses.replace(resolved, multi_label=True)
    if resolved.num_workers is None:
        resolved = dataclasses.replace(resolved, num_workers=default_num_workers(
            accelerator.device.type, processes_per_node(accelerator)))
    run = FitRun(recipe.source, accelerator, resolved, cfg.passes_per_epoch(data.train_size(), cost),
                 data, backbone, dataset_name=dataset_name(train), progress=progress,
                 step_flops=cost.train_flops * cfg.batch_size / accelerator.num_processes if cost else None,
                 class_weight=run_class_weights(cfg, data))
    if run.is_main_process:
        log_plan(run, cfg, cost)
    if resolved.gradient_checkpointing:
        if not getattr(backbone.model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{type(backbone.model).__name__} does not support gradient checkpointing; "
                              "turn gradient_checkpointing off.")
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return run


def is_multi_label_data(data) -> bool:
    """Whether prepared data is a multi-label task (a stream never is: see `tl_hub.streaming`)."""
    return bool(getattr(data, "multi_label", False))


def training_labels(data) -> Optional[torch.Tensor]:
    """The training split's labels as one tensor (class ids, or multi-hot rows); None for a stream."""
    return None if isinstance(data, StreamData) else torch.as_tensor(data.train_targets())


def run_class_weights(cfg: TrainingConfig, data) -> Optional[torch.Tensor]:
    """The class weights ``class_weighting`` gives on the training labels (`tl_hub.imbalance`), or None."""
    if cfg.sampler != "shuffle" and isinstance(data, StreamData):
        raise ConfigError(f"sampler={cfg.sampler!r} needs the training labels up front; a stream has them only as "
                          "it is read. Use sampler='shuffle' with streamed data.")
    labels = training_labels(data)
    if labels is None:
        if cfg.class_weighting == "balanced":
            raise ConfigError("class_weighting='balanced' needs the class counts of the training data; a stream has "
                              "them only as it is read. Use class_weighting='auto' or 'none' with streamed data.")
        return None
    weighting = "none" if cfg.sampler == "balanced" and cfg.class_weighting == "auto" else cfg.class_weighting
    return class_weights(weighting, labels, len(data.labels))


def log_plan(run: FitRun, cfg: TrainingConfig, cost: Optional[Cost]) -> None:
    """Log the data, a small-validation warning, the passes per epoch and the compute budget's effect."""
    data = run.data
    logger.info("Data: %s", data.summary())
    warning = small_validation_warning(data.validation_size())
    if warning:
        logger.warning(warning)
    if run.passes > 1:
        logger.info("An epoch is %d passes over the %d training images, so that training gets at least "
                    "min_steps=%d optimizer steps.", run.passes, data.train_size(), cfg.min_steps)
    budgeted = cfg.budget_note(data.train_size(), cost)
    if budgeted:
        logger.info(budgeted)


def epoch_cost(backbone: Backbone, data) -> Optional[Cost]:
    """What an epoch costs (`tl_hub.cost`), or None, with the reason logged, when the model cannot be counted (the
    schedule is then min_steps', uncapped)."""
    try:
        return measure_cost(backbone.model, backbone.processor, data.validation_size() or 0)
    except Exception as error:  # a count is advice: a model PyTorch's counter cannot run trains uncapped
        logger.warning("Could not count the FLOPs of %s (%s: %s); compute_budget does not apply to this run.",
                       type(backbone.model).__name__, type(error).__name__, error)
        return None


def buffers_of(model: torch.nn.Module) -> dict:
    """Copies of the model's buffers (e.g. BatchNorm statistics), to tell later which ones training moved."""
    params = {n for n, _ in model.named_parameters()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in params}


def start_run(recipe, run: FitRun, checkpointer, resume) -> None:
    """Check that a resumed checkpoint is of this same run, or clear an earlier run's checkpoints (allowed by
    ``overwrite_checkpoints``); the checkpointer records the run's identity in every checkpoint."""
    accelerator = run.accelerator
    identity = run_identity(recipe, run)
    if resume is not None:
        check_same_run(resume, identity)
    elif accelerator.is_main_process:
        checkpointer.clear()
    accelerator.wait_for_everyone()
    if checkpointer is not None:
        checkpointer.run = identity


def run_identity(recipe, run: FitRun) -> dict:
    """What makes a run the same run: recorded in its checkpoints and compared when resuming (as JSON)."""
    backbone, data = run.backbone, run.data
    identity = {
        "recipe": recipe.name,
        "model": recipe.source.id,
        "revision": backbone.revision or recipe.source.revision,
        "initial_weights": state_fingerprint(backbone.model),  # a local model folder that changed is another run
        "settings": run.config.training_settings(),
        "labels": list(data.labels),
        "data": data.fingerprints() if isinstance(data, StreamData) else {
            "train": data_fingerprint(data.train, data.image_column),
            "validation": data_fingerprint(data.validation, data.image_column)},
        "processes": run.accelerator.num_processes,
    }
    return json.loads(json.dumps(identity, default=str))


DETAIL_KEYS = ("per_class", "per_label", "confusion_matrix", "errors", "reliability")  # too large to keep per epoch
# the kept epoch's figures in `FitResult.metrics` (those the task has: tl_hub.evaluation)
HEADLINE_KEYS = ("accuracy", "balanced_accuracy", "f1", "mAP", "f1_micro", "loss", "ece", "calibration")


def cached_validation(inputs, periods: Sequence[Period], run: FitRun) -> Optional[tuple]:
    """The head over cached features and the cached validation features, when every period trained only the head
    (the encoder is the pretrained one) and the whole validation split is cached: the steps after training then
    read the validation logits without an encoder pass."""
    features = inputs.features
    if features is None or features.cached_eval is None or not all(p.head_only for p in periods if p.epochs > 0):
        return None
    if features.cached_eval.labels.shape[0] != run.data.validation_size():
        return None
    return features.module, features.cached_eval


def wise_ft_wanted(config: TrainingConfig) -> bool:
    """Whether the run keeps its start for WiSE-FT (`tl_hub.wise_ft`): the recipe has the setting and it is on."""
    return getattr(config, "wise_ft", "off") != "off"


def finish(recipe, run: FitRun, periods: Sequence[Period], history: list[dict], initial_buffers: dict,
           start: Optional[dict] = None, cached: Optional[tuple] = None) -> FitResult:
    """What the run produced: the trained state, the classifier with its record, and the `FitResult`.  After the
    kept epoch is restored, `tl_hub.post_training.finalize` interpolates with the run's ``start`` (WiSE-FT),
    calibrates and chooses multi-label thresholds; the metrics are then the final model's."""
    backbone, data = run.backbone, run.data
    classifier = Classifier(backbone.model, backbone.processor, data.labels)
    kept = next((h for h in history if h.get("best")), history[-1])
    final = finalize(classifier, run, start, cached)
    extra = {k: classifier.info.get(k) for k in ("wise_ft", "calibration")}
    if final is not None:
        kept = {**kept, **{k: v for k, v in final.items() if k not in ("wise_ft", "calibration_record")}}
    test_metrics = (classifier.evaluate(data.test, batch_size=run.config.eval_batch_size,
                                        accelerator=run.accelerator) if data.test is not None else None)
    details = [k for k in DETAIL_KEYS if k in kept]  # per class, confusion matrix, errors: the kept epoch's only
    errors = kept.get("errors", [])
    store = run.feature_store
    result = FitResult(
        metrics={k: kept[k] for k in (*HEADLINE_KEYS, *details) if k in kept},
        history=[{k: v for k, v in h.items() if k not in DETAIL_KEYS} for h in history],
        test_metrics=test_metrics, data_summary=data.summary(),
        extra={"periods": [{"name": p.name, "epochs": p.epochs, **p.info} for p in periods],
               "kept_epoch": kept["epoch"], "validation_images": data.validation_size(),
               "validation_warning": small_validation_warning(data.validation_size()),
               "feature_caches": dict(store.sizes) if store is not None else {}, **extra},
        config=run.config, classifier=classifier, run=run,
        trained=trained_state(backbone.model, backbone.parts, periods, initial_buffers, recipe.export_kind),
        error_examples=list(zip(images_at(data.validation, data.image_column, [e["index"] for e in errors]), errors)),
    )
    classifier.info = run_record(recipe, result)
    return result


def run_record(recipe, result: FitResult) -> dict:
    """What ``tl_hub.json`` records about a fitted recipe's run."""
    run = result.run
    backbone, data, config = run.backbone, run.data, result.config
    return {
        "tl_hub_version": __version__,
        "recipe": recipe.name,
        "recipe_text": recipe.card_text,
        "base_model": recipe.source.id,
        "base_model_revision": backbone.revision or recipe.source.revision,
        "base_model_source": base_source(recipe.source.id, recipe.source.location),
        "pretrained": recipe.pretrained,
        "settings": config.training_settings(),
        "labels": data.labels,
        "multi_label": classifier_multi_label(run),
        "thresholds": result.classifier.info.get("thresholds") if result.classifier is not None else None,
        "calibration": result.extra.get("calibration"),
        "wise_ft": result.extra.get("wise_ft"),
        "class_weighting": {"setting": config.class_weighting, "applied": run.class_weight is not None,
                            "imbalance": data_imbalance(data)},
        "image_column": data.image_column,
        "label_column": data.label_column,
        "dataset": run.dataset_name,
        "data": data.summary(),
        "validation_warning": result.extra.get("validation_warning"),
        "skipped_images": data.skipped,
        "encoder_groups": [g.name for g in backbone.parts.groups],
        "head_modules": list(backbone.parts.head),
        "periods": result.extra.get("periods", []),
        "passes_per_epoch": run.passes,
        "kept_epoch": {"epoch": result.extra.get("kept_epoch"), "rule": config.keep_epoch,
                       "smoothed": config.keep_epoch == "best"
                       and is_small_validation(result.extra.get("validation_images"))},
        "trained": result.trained,
    }


def classifier_multi_label(run: FitRun) -> bool:
    """Whether the run trained a multi-label classifier."""
    from .tasks import is_multi_label

    return is_multi_label(run.backbone.model)


def data_imbalance(data) -> Optional[float]:
    """The training data's largest class over its smallest (`tl_hub.imbalance.imbalance_ratio`); None for a stream."""
    labels = training_labels(data)
    return None if labels is None else round(imbalance_ratio(label_counts(labels, len(data.labels))), 3)


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
