"""Transfer learning inside your own ``transformers.Trainer`` script: `TransferTrainer` and `TransferArguments`.

Change ``Trainer`` to `TransferTrainer` and ``TrainingArguments`` to `TransferArguments`; the rest of the script
stays.  Training then runs tl-hub's two periods:

1. **head** (``head_epochs``): only the new head trains; every encoder parameter is frozen (``requires_grad``
   False) and every encoder module stays in eval mode, so BatchNorm statistics and dropout do not move either;
2. **fine-tune** (the remaining epochs): the head at ``learning_rate``, the unfrozen encoder groups (``unfreeze``:
   all, or the top k blocks) at ``learning_rate * backbone_lr_ratio``, or with ``layer_decay`` per depth; the
   optimizer groups are `tl_hub.param_groups`, with the real learning rate of each group set, so the Trainer's
   schedulers apply to them as they are.  Encoder BatchNorm layers stay in eval mode with ``bn_policy="frozen"``.

Each period is one ``Trainer.train`` run with its own optimizer and schedule (warm-up and decay).  Between them
the model is unwrapped and prepared again, so under DDP the new wrapper registers exactly the parameters that now
train: no ``find_unused_parameters`` (it defaults to False here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from torch import nn
from transformers import Trainer, TrainingArguments

from .config import check_fine_tune_settings
from .errors import ConfigError
from .loop import set_train_mode
from .param_groups import fine_tune_eval_modules, freeze_all_but, param_groups
from .shutdown import end_process_group_at_exit
from .structure import example_inputs, split_model

logger = logging.getLogger(__name__)

@dataclass
class TransferArguments(TrainingArguments):
    """``TrainingArguments`` plus the transfer settings (every other argument as in transformers)."""

    head_epochs: float = field(default=1.0, metadata={
        "help": "Epochs that train only the new head, the encoder frozen and in eval mode (0: none); counted "
                "within num_train_epochs."})
    head_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "Learning rate of the head period (default: learning_rate)."})
    backbone_lr_ratio: Optional[float] = field(default=0.1, metadata={
        "help": "Encoder groups train at learning_rate * this in the fine-tune period (ignored with layer_decay)."})
    layer_decay: Optional[float] = field(default=None, metadata={
        "help": "Instead of backbone_lr_ratio: the group at depth d from the top trains at learning_rate * "
                "layer_decay ** d."})
    unfreeze: str = field(default="all", metadata={
        "help": "Encoder groups trained after the head period: 'all', or the number of top blocks."})
    bn_policy: str = field(default="frozen", metadata={
        "help": "'frozen': encoder BatchNorm layers keep their statistics (eval mode) in the fine-tune period; "
                "'train': they update."})

    def __post_init__(self):
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False  # each period's DDP wrapper holds only what trains
        super().__post_init__()
        if self.head_epochs < 0 or (self.head_epochs >= self.num_train_epochs and self.num_train_epochs > 0):
            raise ConfigError(f"`head_epochs` ({self.head_epochs}) should be >= 0 and below num_train_epochs "
                              f"({self.num_train_epochs}), which counts both periods.")
        if self.max_steps > 0:
            raise ConfigError("`max_steps` would cut across both periods; give num_train_epochs (and head_epochs) "
                              "instead.")
        # the rules of tl-hub's own fine-tune settings (`tl_hub.config.FineTuneConfig`)
        self.unfreeze = check_fine_tune_settings(backbone_lr_ratio=self.backbone_lr_ratio,
                                                 layer_decay=self.layer_decay, unfreeze=self.unfreeze,
                                                 bn_policy=self.bn_policy)
        if self.layer_decay is not None:
            self.backbone_lr_ratio = None  # layer_decay given: it decides the encoder's learning rates


class TransferTrainer(Trainer):
    """A ``transformers.Trainer`` that trains the new head first, then fine-tunes with discriminative learning
    rates (see the module docstring).  ``args`` must be `TransferArguments`."""

    def __init__(self, model: Optional[nn.Module] = None, args: Optional[TransferArguments] = None, *pos, **kwargs):
        if not isinstance(args, TransferArguments):
            raise ConfigError("TransferTrainer needs `args=TransferArguments(...)` (TrainingArguments plus "
                              "head_epochs, backbone_lr_ratio, ...).")
        if model is None:
            raise ConfigError("TransferTrainer needs the model (`model_init` is not supported).")
        processor = kwargs.get("processing_class")
        self.parts = split_model(model, example_inputs(model, processor if hasattr(processor, "preprocess") else None))
        super().__init__(model, args, *pos, **kwargs)
        if self.args.world_size > 1:
            end_process_group_at_exit()  # a finished multi-process script exits 0 (see tl_hub.shutdown)
        # an image classifier's loss is the mean over its batch, whatever ``num_items_in_batch``: the Trainer would
        # otherwise take it for a loss summed over the global batch and multiply it by the number of processes,
        # so N processes would train with N times the gradient of one
        self.model_accepts_loss_kwargs = False
        self.period = "fine-tune"
        self._eval_modules: tuple[str, ...] = ()
        self._handle = self.model.register_forward_pre_hook(self._keep_eval_modules)

    # -- the optimizer: tl-hub's groups for the current period ----------------------------------------------------
    def period_param_groups(self, period: Optional[str] = None) -> list[dict]:
        """The optimizer groups of ``period`` (``"head"`` or ``"fine-tune"``; default: the current one)."""
        args, period = self.args, period or self.period
        if period == "head":
            return param_groups(self.model, lr=args.head_learning_rate or args.learning_rate, unfreeze=0,
                                weight_decay=args.weight_decay, parts=self.parts)
        return param_groups(self.model, lr=args.learning_rate, backbone_lr_ratio=args.backbone_lr_ratio,
                            layer_decay=args.layer_decay, weight_decay=args.weight_decay,
                            unfreeze=args.unfreeze, parts=self.parts)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer class and arguments over the current period's groups (`period_param_groups`),
        with everything outside them frozen."""
        if self.optimizer is None:
            groups = self.period_param_groups()
            freeze_all_but(self.model, groups)
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # -- frozen modules in eval mode, whatever the Trainer's model.train() did ---------------------------------------
    def _keep_eval_modules(self, module, args):
        if module.training:
            set_train_mode(module, self._eval_modules)

    # -- the two periods --------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """Run the head period, then the fine-tune period; returns the second run's ``TrainOutput`` (the head
        period's log history is kept in front of it)."""
        args = self.args
        if resume_from_checkpoint:
            raise ConfigError("TransferTrainer cannot resume from a checkpoint yet: a checkpoint holds one period's "
                              "optimizer, and the periods change which parameters train. Train again from the "
                              "start, or use tl-hub's own recipes, which resume exactly (--resume-from-checkpoint).")
        total = args.num_train_epochs
        history = []
        try:
            if args.head_epochs > 0:
                self._start("head", self.parts.body)  # everything but the head, as in feature extraction
                args.num_train_epochs = args.head_epochs
                super().train(trial=trial, **kwargs)
                history = list(self.state.log_history)
            self._start("fine-tune", fine_tune_eval_modules(self.model, self.parts, args.unfreeze,
                                                            args.bn_policy))
            args.num_train_epochs = total - args.head_epochs
            output = super().train(trial=trial, **kwargs)
            self.state.log_history = history + self.state.log_history
            return output
        finally:
            args.num_train_epochs = total

    def _start(self, period: str, eval_modules) -> None:
        """A fresh optimizer and schedule for ``period``, and the model unwrapped so that it is prepared again
        (a DDP wrapper registers the parameters that train at its construction)."""
        self.period, self._eval_modules = period, tuple(eval_modules)
        self.optimizer, self.lr_scheduler = None, None
        self.model_wrapped = self.model
        groups = self.period_param_groups()
        freeze_all_but(self.model, groups)
        logger.info("TransferTrainer: %s period, training %s", period,
                    sorted({g["name"].split("/")[0] for g in groups}))
