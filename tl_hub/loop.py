"""The one Accelerate training loop that every recipe uses (evaluation after each epoch: `tl_hub.evaluation`).

A recipe describes its training as a list of `Period` objects (which parameter groups train, at which
learning rates, which modules stay in eval mode, for how many epochs).  `train_periods` runs them in
order.  At each period start it sets ``requires_grad`` from the period's groups, builds a fresh optimizer
and warmup schedule and *re-prepares* model, optimizer and data loaders with Accelerate: under DDP the
set of parameters that need gradients is fixed when the model is wrapped, so changing it mid-run needs a
new wrapper (``find_unused_parameters=True`` would only hide the problem and slow every step).
Each epoch then trains (or, for a ``solve`` period, fits the head in one step), is evaluated and recorded in
the history, and may be checkpointed; at the period end the prepared objects are unwrapped and released.

With a `tl_hub.checkpoint.Checkpointer`, the loop checkpoints at every epoch end and every ``save_steps``
optimizer steps; given a `tl_hub.checkpoint.ResumePoint`, it skips the finished periods, loads the checkpoint into
the period's prepared objects and continues from its epoch and batch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import Checkpointer, ResumePoint, TrainingState, load_checkpoint
from .errors import ConfigError, TrainingError
from .evaluation import evaluate_loader, forward_logits, headline, label_names
from .param_groups import count_parameters, freeze_all_but
from .runtime import PROGRESS_LOGGER, release_prepared
from .splits import is_small_validation
from .tasks import selection_key, task_loss

logger = logging.getLogger(__name__)
progress_log = logging.getLogger(PROGRESS_LOGGER)  # the lines a run shows by default


@dataclass
class Period:
    """One phase of training.

    Attributes:
        name: shown in logs and history (``"head"``, ``"fine-tune"``, ``"full"``).
        epochs: number of epochs.
        param_groups: optimizer groups (from `tl_hub.param_groups`); exactly these parameters train.
        eval_modules: module paths kept in eval mode while training (frozen encoder parts, frozen BatchNorm):
            their BatchNorm running statistics and dropout do not change.
        head_only: only the head trains and the encoder is frozen (set by the recipe), so the period may train on
            cached encoder features instead of images.
        inputs: what the period trains on: ``"images"``, ``"features"`` (the cached input of the head) or
            ``"prefix"`` (the cached output of the frozen blocks below the trained ones, see `tl_hub.prefix`).
            Decided for a run by `tl_hub.inputs.decide_periods`; a recipe leaves it at ``"images"``.
        solve: the head is a linear layer fitted to convergence on the cached features in one step (see
            `tl_hub.probe`) instead of ``epochs`` of gradient steps; the period then has one epoch.  Decided with
            ``inputs``.
        info: what the run records about the period (what trains, the solver, the prefix cache, ...).
    """

    name: str
    epochs: int
    param_groups: list[dict]
    eval_modules: tuple[str, ...] = ()
    head_only: bool = False
    inputs: str = "images"
    solve: bool = False
    info: dict = field(default_factory=dict)


@dataclass
class PeriodInputs:
    """What a period's epochs run on: the module that runs forward (the model; the head over cached features; the
    model from its cut over the cached prefix) and its training and evaluation loaders, with the cached tensors
    behind those loaders when they are cached (a solved head is fitted on them directly)."""

    module: nn.Module
    train: Any
    eval: Any
    cached_train: Optional[Any] = None  # `tl_hub.features.CachedFeatures`
    cached_eval: Optional[Any] = None


def set_train_mode(model: nn.Module, eval_modules: Sequence[str]) -> None:
    model.train()
    for path in eval_modules:
        model.get_submodule(path).eval()


def diverged(loss: torch.Tensor, grad_norm, *, loss_scaling: bool) -> bool:
    """Whether training must stop: the gradient norm (or, with fp16 loss scaling, the loss) is not finite.

    With loss scaling an overflowing gradient is routine: the gradient scaler skips that step and lowers the
    scale, so only a non-finite loss means divergence there.
    """
    if grad_norm is None or torch.isfinite(torch.as_tensor(grad_norm)):
        return False
    return not loss_scaling or not bool(torch.isfinite(loss.detach()).all())


def non_finite_error(loss, norm, epoch: int, period: Period, params, config,
                     checkpointer: Optional[Checkpointer] = None) -> TrainingError:
    """The error for a non-finite gradient or weights: this step is not applied; says whether an earlier update had
    already overflowed the weights (possible only with an absurd learning rate), so the message never claims too
    much, and which checkpoint is the last good one."""
    overflowed = any(not torch.isfinite(p).all() for p in params)
    state = ("the previous update had already made some weights non-finite (the learning rate is far too high)"
             if overflowed else "this step was not applied, the weights are those of the last good step")
    kept = checkpointer.existing() if checkpointer is not None else []
    saved = (f"the last good checkpoint, {kept[-1][1]}, is kept" if kept
             else "no model was saved")
    return TrainingError(
        f"Training diverged in epoch {epoch + 1} ({period.name}): the loss or its gradient is not finite (loss "
        f"{loss.item():.4g}, gradient norm {float(norm):.4g}); "
        f"{state}; {saved}. Lower the learning rate (now {config.lr:g}), check the data for broken images, "
        "or use bf16 instead of fp16."
    )


def make_optimizer(param_groups: Sequence[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel per step where the installed torch supports it for these parameters."""
    try:
        return torch.optim.AdamW(param_groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(param_groups, lr=lr)


def _scheduler(name: str, optimizer, warmup: int, total: int):
    from transformers import get_scheduler

    hf_name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[name]
    return get_scheduler(hf_name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def log_to_trackers(accelerator, record: dict, optimizer=None) -> None:
    """One epoch's scalars to the accelerator's experiment trackers (none: nothing): metrics, throughput and the
    learning rate of each optimizer group, at step = the epoch."""
    if not accelerator.trackers:
        return
    keys = ("train_loss", "loss", "accuracy", "f1", "seconds", "train_images_per_second", "trainable_params")
    values = {k: float(record[k]) for k in keys if isinstance(record.get(k), (int, float))}
    for group in optimizer.param_groups if optimizer is not None else ():
        values[f"lr/{group.get('name', 'group')}"] = float(group["lr"])
    accelerator.log(values, step=record["epoch"])


def train_periods(accelerator, model: nn.Module, periods: Sequence[Period], inputs: Mapping[str, PeriodInputs], *,
                  config, on_epoch_start: Optional[Callable[[int], None]] = None,
                  on_period_end: Optional[Callable[[Period, nn.Module, Any], None]] = None,
                  progress: bool = True, checkpointer: Optional[Checkpointer] = None,
                  resume: Optional[ResumePoint] = None, validation_images: Optional[int] = None,
                  class_weight: Optional[torch.Tensor] = None) -> list[dict]:
    """Run ``periods`` in order; return the per-epoch history.

    Args:
        accelerator: an ``accelerate.Accelerator`` (see `tl_hub.runtime.make_accelerator`).
        model: the unwrapped model; its forward takes the batch without ``labels`` and returns logits.
        periods: what to train, see `Period`.
        inputs: `PeriodInputs` by kind (``"images"``, and ``"features"`` / ``"prefix"`` when cached): each period
            runs on ``inputs[period.inputs]`` (loaders are plain ``DataLoader`` objects, prepared here per period;
            the modules share their parameters with ``model``).  A ``solve`` period fits the head on the cached
            features with `tl_hub.probe` instead of gradient steps.
        config: a `TrainingConfig` (scheduler, warmup, weight decay, clipping, label smoothing, ``keep_epoch``).
        on_epoch_start: called with the global epoch index before each epoch (e.g. to reseed augmentation).
        on_period_end: called as ``(period, model, optimizer)`` after the last epoch of each period that ends
            in this call.
        checkpointer: saves a checkpoint at every epoch end and every ``save_steps`` optimizer steps.
        resume: a checkpoint of this same run to continue from (see `tl_hub.checkpoint`): the periods before
            its period are skipped, its state is loaded into the period's prepared objects and training goes on
            from its epoch and batch.
        validation_images: the validation split's size (a small one smooths the best-epoch choice: `BestEpoch`).
        class_weight: per-class loss weights (multi-label: per-label positive weights), from
            `tl_hub.imbalance.class_weights`; with them, epochs and the head's solve are chosen by balanced accuracy.

    Returns:
        `list[dict]`: one record per epoch with ``epoch``, ``period``, ``train_loss``, ``loss``, ``accuracy``,
        ``f1``, ``lr``, ``seconds``, ``train_images_per_second`` and the trainable/frozen parameter counts.  With
        ``keep_epoch="best"`` the model ends with the weights of the best epoch (see `BestEpoch`).
    """
    state = TrainingState(history=[]) if resume is None else dataclasses.replace(
        resume.state, history=list(resume.state.history))
    best = BestEpoch.for_run(model, periods, config, validation_images, resume, state,
                             balanced=class_weight is not None)
    epoch = sum(p.epochs for p in periods[:state.period] if p.epochs > 0) + state.period_epoch  # global index
    for index, period in enumerate(periods):
        if period.epochs <= 0 or index < state.period:
            continue
        if period.inputs not in inputs or (period.solve and period.inputs != "features"):
            raise ConfigError(f"Period '{period.name}' asks for inputs={period.inputs!r}"
                              f"{' with solve=True' if period.solve else ''}, but this run has {sorted(inputs)}: a "
                              "recipe leaves `inputs` and `solve` unset (tl_hub.inputs decides them).")
        prepared = _prepare_period(accelerator, model, period, inputs[period.inputs], config)
        _resume_or_start(accelerator, period, index, state, resume, epoch)
        run = _EpochRunner(accelerator, model, prepared, config, checkpointer, state, best, progress, class_weight)
        for _ in range(state.period_epoch, period.epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            trained = run.train(epoch)
            run.evaluate_and_record(epoch, trained)
            if checkpointer is not None:
                run.save(loss=None, epoch=epoch)
            epoch += 1
        _end_period(accelerator, model, prepared, on_period_end)
    best.restore(state.history)
    model.eval()
    return state.history


@dataclass
class _PreparedPeriod:
    """One period's objects after ``accelerator.prepare``, with what the epochs need besides them."""

    period: Period
    inputs: PeriodInputs  # what runs forward (the model, or a module over cached features) and its loaders
    wrapped: nn.Module  # ``inputs.module`` as prepared by Accelerate
    optimizer: Any
    scheduler: Any
    train_dl: Any
    eval_dl: Any
    trainable: list  # the model's parameters that need gradients in this period
    counts: dict  # trainable / frozen parameter counts


def _prepare_period(accelerator, model, period: Period, inputs: PeriodInputs, config) -> _PreparedPeriod:
    """Freeze all but the period's groups, build its optimizer and warmup schedule and prepare them with its
    module and loaders ``inputs``: the model and image loaders, or a module over cached features and their loaders."""
    freeze_all_but(model, period.param_groups)
    counts = count_parameters(model)
    _log_period(accelerator, period, counts)
    optimizer = make_optimizer(period.param_groups, config.lr)
    steps_per_epoch = math.ceil(len(inputs.train) / accelerator.gradient_accumulation_steps)
    total = steps_per_epoch * period.epochs
    scheduler = _scheduler(config.scheduler, optimizer, warmup_steps(config, total), total)
    wrapped, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(
        inputs.module, optimizer, inputs.train, inputs.eval, scheduler
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    return _PreparedPeriod(period, inputs, wrapped, optimizer, scheduler, train_dl, eval_dl, trainable, counts)


def plural(count: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _log_period(accelerator, period: Period, counts: dict) -> None:
    """Log what the period trains, how long, and at which learning rates (on the main process)."""
    if accelerator.is_main_process:
        lrs = sorted({f"{g['name'].split('/')[0]}={g['lr']:.2e}" for g in period.param_groups})
        progress_log.info("Period '%s': %s, %s trainable / %s frozen parameters; %s", period.name,
                          "one solve" if period.solve else plural(period.epochs, "epoch"), f"{counts['trainable']:,}",
                          f"{counts['frozen']:,}", "linear probe, C chosen on validation" if period.solve else
                          f"LRs {lrs}")


def _resume_or_start(accelerator, period: Period, index: int, state: TrainingState,
                     resume: Optional[ResumePoint], epoch: int) -> None:
    """Load the resume checkpoint into the prepared objects if it is of this period; else start at its first epoch."""
    if resume is not None and index == resume.state.period:
        load_checkpoint(accelerator, resume)
        if accelerator.is_main_process:
            progress_log.info("Resumed from %s: period '%s', epoch %d, %d batches into it, step %d", resume.path,
                              period.name, epoch + 1, state.batches, state.step)
    else:
        state.period, state.period_epoch, state.batches = index, 0, 0


def _end_period(accelerator, model, prepared: _PreparedPeriod, on_period_end) -> None:
    """Call ``on_period_end``, then unwrap and release the period's prepared objects."""
    accelerator.wait_for_everyone()
    if on_period_end is not None:
        on_period_end(prepared.period, model, prepared.optimizer)
    accelerator.unwrap_model(prepared.wrapped, keep_fp32_wrapper=False)  # undo the mixed-precision forward patch
    release_prepared(accelerator)  # drop wrappers; the next period re-prepares with its own trainable set


def warmup_steps(config, total: int) -> int:
    """Warmup length in optimizer steps: ``warmup_ratio`` of the period's steps."""
    return int(config.warmup_ratio * total)


class BestEpoch:
    """Keeps the weights of the epoch with the best validation accuracy (ties: the lower validation loss), and puts
    them back at the end, as ``load_best_model_at_end`` does in the transformers ``Trainer``.

    With ``smooth`` (a validation split under `MIN_TRUSTED_VALIDATION` images, where one image moves accuracy by
    several points) an epoch is judged by the mean accuracy and loss of itself and the epoch before it in the same
    period: consecutive epochs' weights are close, so the mean is a steadier estimate of this epoch's quality than
    its own figures, and a single lucky epoch is not kept on the strength of one image.

    Only what training can change is kept: the parameters of every period's groups and the buffers (BatchNorm
    statistics), as CPU copies.  Checkpoints carry the copy (``best.safetensors``), so a resumed run restores the
    same epoch.
    """

    FILE = "best.safetensors"

    def __init__(self, model: nn.Module, periods: Sequence[Period], *, enabled: bool = True, smooth: bool = False,
                 balanced: bool = False):
        self.model = model
        self.enabled = enabled
        self.smooth = smooth
        self.balanced = balanced
        trained = {id(p) for period in periods if period.epochs > 0 for g in period.param_groups for p in g["params"]}
        params = {n for n, p in model.named_parameters() if id(p) in trained}
        buffers = {n for n, _ in model.named_buffers()}
        self.keys = params | buffers
        self.epoch: Optional[int] = None
        self.weights: dict = {}

    def key(self, record: dict) -> tuple:
        """What an epoch is judged by (`tl_hub.tasks.selection_key`): accuracy, balanced accuracy with weighted
        classes, mAP for multi-label; ties: the lower loss."""
        return selection_key(record, balanced=self.balanced)

    @classmethod
    def for_run(cls, model: nn.Module, periods: Sequence[Period], config, validation_images: Optional[int],
                resume: Optional[ResumePoint], state: TrainingState, *, balanced: bool = False) -> BestEpoch:
        """The run's tracker: on with ``keep_epoch="best"``, smoothed under `MIN_TRUSTED_VALIDATION` validation
        images, and holding a resumed run's best epoch."""
        best = cls(model, periods, enabled=config.keep_epoch == "best", smooth=is_small_validation(validation_images),
                   balanced=balanced)
        if resume is not None:
            best.load(resume.path, state)
        return best

    def score(self, history: Sequence[dict], epoch: int) -> tuple:
        """What epoch ``epoch`` (1-based) is judged by: its `key`, or with ``smooth`` the mean key of it and the
        epoch before it in the same period."""
        record = history[epoch - 1]
        if not self.smooth:
            return self.key(record)
        window = [r for r in history[max(epoch - 2, 0):epoch] if r["period"] == record["period"]]
        return tuple(sum(k) / len(window) for k in zip(*map(self.key, window)))

    def update(self, record: dict, state: TrainingState) -> None:
        if not self.enabled:
            return
        history = state.history
        if self.epoch is None or self.score(history, record["epoch"]) > self.score(history, self.epoch):
            self.epoch = record["epoch"]
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                            if k in self.keys}
        state.best_epoch = self.epoch

    def save(self, folder: str) -> None:
        from safetensors.torch import save_file

        if self.enabled and self.weights:
            save_file({k: v.contiguous() for k, v in self.weights.items()}, os.path.join(folder, self.FILE))

    def load(self, folder: str, state: TrainingState) -> None:
        from safetensors.torch import load_file

        path = os.path.join(folder, self.FILE)
        if self.enabled and state.best_epoch and os.path.exists(path):
            self.epoch, self.weights = state.best_epoch, load_file(path)

    def restore(self, history: list[dict]) -> None:
        """Load the best epoch's weights into the model and mark its record with ``"best": True``."""
        if not self.enabled or self.epoch is None:
            return
        if self.epoch != len(history):
            self.model.load_state_dict(self.weights, strict=False)
            progress_log.info("Restored the weights of epoch %d, the best on validation%s (%s)",
                              self.epoch, " (mean of it and the epoch before)" if self.smooth else "",
                              headline(history[self.epoch - 1]))
        history[self.epoch - 1]["best"] = True


class _Trained(NamedTuple):
    """What one epoch's training gave: the mean loss, the images trained on, extra record entries, and timing."""

    loss: float
    images: float
    extra: dict
    start: float  # ``time.perf_counter()`` when the epoch started
    seconds: float  # training time, evaluation excluded


# a period expected to take longer than this shows the time it still needs on each epoch line
ETA_AFTER_S = 60.0


def period_eta(epoch_seconds: Sequence[float], remaining: int) -> str:
    """``"  ETA 3m20s for this period"`` from the epochs timed so far and the epochs remaining, when the period is
    expected to take longer than `ETA_AFTER_S`; else ``""``.

    Example:
        >>> period_eta([50.0, 70.0], 2)
        '  ETA 2m00s for this period'
    """
    if not epoch_seconds or remaining <= 0:
        return ""
    mean = sum(epoch_seconds) / len(epoch_seconds)
    if mean * (len(epoch_seconds) + remaining) <= ETA_AFTER_S:
        return ""
    minutes, seconds = divmod(round(mean * remaining), 60)
    return f"  ETA {minutes}m{seconds:02d}s for this period"


class _EpochRunner:
    """One period's epochs: train an epoch (or solve the head), evaluate and record it, and checkpoint."""

    def __init__(self, accelerator, model, prepared: _PreparedPeriod, config, checkpointer, state, best, progress,
                 class_weight: Optional[torch.Tensor] = None):
        self.accelerator, self.model, self.prepared, self.period = accelerator, model, prepared, prepared.period
        self.config, self.checkpointer, self.state = config, checkpointer, state
        self.best, self.progress, self.class_weight = best, progress, class_weight
        self.last_loss = None
        self.epoch_seconds: list[float] = []  # this period's epochs so far (in this process's run)

    def train(self, epoch: int) -> _Trained:
        """Train one epoch, or fit the head for a ``solve`` period, and time it."""
        start = time.perf_counter()
        if self.period.solve:
            loss, images, extra = self.solve()
        else:
            self.prepared.train_dl.set_epoch(epoch)
            loss, images, extra = self.train_epoch(self.prepared.train_dl, epoch)
        return _Trained(loss, images, extra, start, time.perf_counter() - start)

    def evaluate_and_record(self, epoch: int, trained: _Trained) -> dict:
        """Evaluate, add the epoch's record to the history, update the best epoch, log it, and mark the epoch done
        in the training state."""
        accelerator, prepared, state = self.accelerator, self.prepared, self.state
        record = {
            "epoch": epoch + 1,
            "period": self.period.name,
            "train_loss": trained.loss,
            **evaluate_loader(accelerator, prepared.wrapped, prepared.eval_dl, labels=label_names(self.model),
                              progress=self.progress),
            "lr": None if self.period.solve else prepared.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - trained.start,
            "train_images_per_second": trained.images / trained.seconds if trained.seconds > 0 else None,
            "trainable_params": prepared.counts["trainable"],
            "frozen_params": prepared.counts["frozen"],
            **trained.extra,
        }
        state.history.append(record)
        log_to_trackers(accelerator, record, None if self.period.solve else prepared.optimizer)
        self.best.update(record, state)
        self.epoch_seconds.append(record["seconds"])
        eta = period_eta(self.epoch_seconds, self.period.epochs - state.period_epoch - 1)
        if accelerator.is_main_process:
            progress_log.info("epoch %d [%s] train_loss %.4f  eval_loss %.4f  %s  (%.1fs)%s", record["epoch"],
                              self.period.name, record["train_loss"], record["loss"], headline(record),
                              record["seconds"], eta)
        state.period_epoch += 1
        state.batches, state.loss_sum, state.seen = 0, 0.0, 0.0
        return record

    def solve(self) -> tuple[float, float, dict]:
        """Fit the linear head on the cached features (see `tl_hub.probe`); identical on every process."""
        from accelerate.utils import broadcast

        from .probe import assign, fit_probe, linear_inputs, linear_layer

        inputs = self.prepared.inputs
        head = inputs.module.head
        linear = linear_layer(head)
        train, val = inputs.cached_train, inputs.cached_eval
        x = linear_inputs(head, train.features.flatten(0, 1))  # read in chunks, into one float32 copy
        y = train.labels.repeat(train.views, *([1] * (train.labels.ndim - 1)))  # views x (N,) or (N, K)
        val_x = linear_inputs(head, val.features[0])
        cross_validate = None
        if is_small_validation(len(val.labels)):  # too few to choose C on: cross-validate on train + val
            plain = x[:len(train.labels)]  # view 0 of each image comes first in the flattened views
            cross_validate = (torch.cat([plain, val_x]),
                              torch.cat([train.labels, val.labels]))
        result = fit_probe(x, y, val_x, val.labels, linear.out_features, bias=linear.bias is not None,
                           overwrite=True, cross_validate=cross_validate, class_weight=self.class_weight)
        assign(linear, result)
        if self.accelerator.num_processes > 1:
            for p in linear.parameters():
                p.data.copy_(broadcast(p.data.to(self.accelerator.device), from_process=0).to(p.device))
        return result.train_loss, float(x.shape[0]), {"C": result.C, "solver": "lbfgs",
                                                      "C_chosen_by": result.chosen_by}

    def train_epoch(self, train_dl, epoch: int) -> tuple[float, float, dict]:
        """One pass over the training data; returns the mean training loss and the images trained on."""
        accelerator, state = self.accelerator, self.state
        set_train_mode(self.prepared.inputs.module, ())
        set_train_mode(self.model, self.period.eval_modules)
        # the running loss of the epoch; a resumed epoch starts from the checkpoint's (counted once, on main)
        own = accelerator.is_main_process and state.batches
        loss_sum = torch.tensor(state.loss_sum if own else 0.0, dtype=torch.float64)
        seen = torch.tensor(state.seen if own else 0.0, dtype=torch.float64)
        skipped, carried = state.batches, (state.seen if state.batches else 0.0)
        batches = accelerator.skip_first_batches(train_dl, skipped) if skipped else train_dl
        bar = tqdm(batches, desc=f"epoch {epoch + 1} [{self.period.name}]", leave=False, initial=skipped,
                   total=len(train_dl), disable=not (self.progress and accelerator.is_local_main_process))
        for batch in bar:
            loss = self.step(batch, epoch)
            n = batch["labels"].shape[0]
            loss_sum += loss.detach().double().cpu() * n
            seen += n
            state.batches += 1
            if accelerator.sync_gradients:
                state.step += 1
                # a step checkpoint at the end of the epoch would duplicate the epoch-end one that follows
                if (self.checkpointer is not None and self.checkpointer.due(state.step)
                        and not accelerator.gradient_state.end_of_dataloader):
                    totals = accelerator.reduce(torch.stack([loss_sum, seen]).to(accelerator.device), "sum")
                    state.loss_sum, state.seen = (float(v) for v in totals.cpu())
                    self.save(loss, epoch)
            if not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        totals = accelerator.reduce(torch.stack([loss_sum, seen]).to(accelerator.device), "sum").cpu()
        return float(totals[0] / max(totals[1], 1)), float(totals[1]) - carried, {}

    def step(self, batch, epoch: int) -> torch.Tensor:
        """Forward, backward, divergence check, optimizer and schedule step (under gradient accumulation)."""
        accelerator, config, prepared = self.accelerator, self.config, self.prepared
        with accelerator.accumulate(prepared.wrapped):
            logits = forward_logits(prepared.wrapped, batch).float()
            loss = task_loss(logits, batch["labels"], class_weight=self.class_weight,
                             label_smoothing=config.label_smoothing)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                # the norm of the synchronised gradients is the same on every process, so all of them stop
                # together if it is not finite; the optimizer step that would spoil the weights never runs
                norm = accelerator.clip_grad_norm_(prepared.trainable, config.max_grad_norm or float("inf"))
                if diverged(loss, norm, loss_scaling=accelerator.scaler is not None):
                    raise non_finite_error(loss, norm, epoch, self.period, prepared.trainable, config,
                                           self.checkpointer)
            prepared.optimizer.step()
            prepared.scheduler.step()
            prepared.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss
        return loss

    def save(self, loss, epoch: int) -> None:
        """Checkpoint, unless an absurd update has made weights non-finite: the checkpoints on disk stay good."""
        loss = loss if loss is not None else (self.last_loss if self.last_loss is not None else torch.tensor(0.0))
        trainable = self.prepared.trainable
        if any(not torch.isfinite(p).all() for p in trainable):
            raise non_finite_error(loss, float("nan"), epoch, self.period, trainable, self.config, self.checkpointer)
        self.checkpointer.save(self.accelerator, self.state, extra=self.best.save)
