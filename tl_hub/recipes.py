"""Transfer-learning recipes for any ``AutoModelForImageClassification`` checkpoint.

A recipe is a `Recipe` subclass with a config class and ONE hook, `Recipe.periods`, which says what trains
in which period.  Everything else (data, model loading, the Accelerate loop, evaluation, saving) is shared.

- `FeatureExtractionRecipe`: the pretrained encoder is frozen (``requires_grad=False`` and eval mode, so
  BatchNorm statistics and dropout do not change; no autograd graph is built through it); a new head trains.
- `FineTuneRecipe`: period 1 is exactly feature extraction of the new head (LP-FT, Kumar et al. 2022);
  period 2 unfreezes all or the top ``unfreeze`` blocks with discriminative or layer-wise LRs.
- `ScratchRecipe`: the same architecture randomly initialised, all parameters trained: the baseline.

Example:
    >>> recipe = FineTuneRecipe(model="google/vit-base-patch16-224-in21k", head_epochs=1, epochs=4, lr=1e-3,
    ...                         backbone_lr_ratio=0.1)
    >>> result = recipe.fit(train_ds, eval_ds)
    >>> recipe.evaluate(test_ds); recipe.predict([image]); recipe.save("out/")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import torch

from . import __version__
from .backbone import BATCHNORM_TYPES, Backbone, load_backbone
from .checkpoint import Checkpointer, check_same_run, read_checkpoint, resolve_checkpoint
from .config import FeatureExtractionConfig, FineTuneConfig, LoRAConfig, ScratchConfig, TrainingConfig
from .data import ImageClassificationDataset, ImageCollator, PreparedData, prepare_data
from .errors import ConfigError, TlHubError
from .features import CachedFeatureDataset, FeatureStore, HeadModule, collate_features, data_fingerprint, state_fingerprint
from .inference import INFO_FILE, Classifier
from .loop import Period, check_batch_size, make_accelerator, process_state, train_periods
from .outputs import atomic_output_dir, write_json
from .param_groups import (
    discriminative_param_groups,
    full_param_groups,
    groups_to_unfreeze,
    head_param_groups,
    layer_decay_param_groups,
    named_param_groups,
)
from .plots import plot_learning_curves

logger = logging.getLogger(__name__)

RECIPES: dict[str, type["Recipe"]] = {}


def register_recipe(name: str):
    """Class decorator: make a recipe available by ``name`` (CLI ``--recipe name``)."""

    def wrap(cls):
        cls.name = name
        RECIPES[name] = cls
        return cls

    return wrap


def get_recipe(name: str) -> type["Recipe"]:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"Unknown recipe {name!r}; choose one of: {', '.join(sorted(RECIPES))}.") from None


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


def _collate_workers(cfg: TrainingConfig) -> dict:
    return {"num_workers": cfg.num_workers, "persistent_workers": False}


class Recipe:
    """Base class: load a model, train it through `periods`, evaluate, predict, save.

    Args:
        model (`str`): Hub model id or local folder of an image-classification checkpoint.
        revision (`str`, *optional*): branch, tag or commit of the checkpoint.
        trust_remote_code (`bool`, defaults to `False`): allow custom modelling code.
        allow_pickle (`bool`, defaults to `False`): allow pickle (``.bin``) weights.
        cache_dir (`str`, *optional*): Hub cache folder.
        **settings: fields of the recipe's config class (see `tl_hub.config`).

    Subclasses set ``config_class`` and implement `periods`.
    """

    name: ClassVar[str] = "recipe"
    config_class: ClassVar[type[TrainingConfig]] = TrainingConfig
    pretrained: ClassVar[bool] = True

    def __init__(self, model: str, *, revision: Optional[str] = None, trust_remote_code: bool = False,
                 allow_pickle: bool = False, cache_dir: Optional[str] = None, **settings: Any):
        if not isinstance(model, str) or not model:
            raise ConfigError("`model` should be a Hub model id or the path of a model folder.")
        self.model_name = model
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.allow_pickle = allow_pickle
        self.cache_dir = cache_dir
        self.requested_config = self.config = self.config_class.from_kwargs(**settings)
        self.backbone: Optional[Backbone] = None
        self.classifier: Optional[Classifier] = None
        self.data: Optional[PreparedData] = None
        self.result: Optional[FitResult] = None
        self.accelerator = None
        self.feature_store: Optional[FeatureStore] = None
        self.trained: dict = {}
        self.passes = 1
        self.dataset_name: Optional[str] = None

    # -- the one hook --------------------------------------------------------------------------------------------
    def periods(self, backbone: Backbone) -> list[Period]:
        """What trains in which period, at which learning rates."""
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------------------------
    def load_backbone(self, labels: Sequence[str]) -> Backbone:
        return load_backbone(
            self.model_name, labels, pretrained=self.pretrained, revision=self.revision,
            trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle, cache_dir=self.cache_dir,
        )

    def _loaders(self, backbone: Backbone, data: PreparedData):
        cfg = self.config
        collate = ImageCollator(backbone.processor)
        train_set = ImageClassificationDataset(
            data.train, data.image_column, data.label_column, augment=cfg.augment, hflip=cfg.hflip,
            crop_scale=cfg.crop_scale, seed=cfg.seed, passes=self.passes,
        )
        val_set = ImageClassificationDataset(data.validation, data.image_column, data.label_column)
        generator = torch.Generator().manual_seed(cfg.seed)
        train_loader = torch.utils.data.DataLoader(
            train_set, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator,
            **_collate_workers(cfg),
        )
        eval_loader = self._eval_loader(val_set, collate)
        return train_set, train_loader, eval_loader

    def _eval_loader(self, dataset, collate):
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.config.eval_batch_size, shuffle=False, collate_fn=collate,
            **_collate_workers(self.config),
        )

    def _feature_loaders(self, backbone: Backbone, data: PreparedData, accelerator):
        """Loaders over cached encoder features for the periods that train only the head (None if the model's
        head cannot be fed from one cached tensor)."""
        cfg = self.config
        self.feature_store = store = FeatureStore(
            backbone, accelerator, cache=cfg.feature_cache, cache_dir=cfg.feature_cache_dir,
            batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers,
        )
        if not store.available:
            logger.warning("The head of %s has several modules %s; its features are not cached and the frozen "
                           "encoder runs every epoch.", self.model_name, list(backbone.parts.head))
            return None
        augment = {"hflip": cfg.hflip, "crop_scale": cfg.crop_scale, "seed": cfg.seed}
        train = store.get(data.train, data.image_column, data.label_column, views=cfg.feature_views,
                          augment=augment, what="training")
        val = store.get(data.validation, data.image_column, data.label_column, what="validation")
        if accelerator.is_main_process and cfg.augment and cfg.feature_views == 1:
            logger.info("The head trains on cached features of the plain images; augmentation applies once the "
                        "encoder trains (feature_views=k caches k views; feature_cache='off' augments every epoch).")
        head = HeadModule(backbone.model.get_submodule(store.head_path))
        train_loader = torch.utils.data.DataLoader(
            CachedFeatureDataset(train, seed=cfg.seed, passes=self.passes), batch_size=cfg.batch_size, shuffle=True,
            collate_fn=collate_features, generator=torch.Generator().manual_seed(cfg.seed),
        )
        eval_loader = torch.utils.data.DataLoader(CachedFeatureDataset(val), batch_size=cfg.eval_batch_size,
                                                  shuffle=False, collate_fn=collate_features)
        return head, train_loader, eval_loader

    def fit(self, train: Any, validation: Any = None, *, accelerator=None, progress: bool = True,
            on_period_end=None, resume_from_checkpoint: Optional[str] = None,
            overwrite_checkpoints: bool = False) -> FitResult:
        """Train on ``train`` and evaluate on ``validation`` after every epoch.

        Args:
            train: a ``datasets.Dataset``/``DatasetDict``, an image folder, a saved dataset folder or a Hub
                dataset id.  A ``DatasetDict`` supplies its ``validation`` and ``test`` splits too.
            validation (*optional*): validation data; by default the dataset's validation split, or a
                stratified ``validation_size`` share of ``train``.
            accelerator (*optional*): an ``accelerate.Accelerator`` to use (default: one made from the config).
            progress (`bool`): show progress bars (main process only).
            on_period_end (*optional*): called as ``(period, model, optimizer)`` when a period ends.
            resume_from_checkpoint (*optional*): ``"latest"`` (the newest checkpoint in ``checkpoint_dir``) or the
                path of a checkpoint: continue that interrupted run of this same recipe, data and settings;
                ``"auto"``: the newest checkpoint if there is one, else a fresh start (for requeued jobs).
            overwrite_checkpoints (`bool`): a fresh run may delete the checkpoints an earlier run left in
                ``checkpoint_dir`` (refused otherwise, so that they are not lost by mistake).

        Returns:
            `FitResult`
        """
        from accelerate.utils import set_seed

        cfg = self.config
        self.accelerator = accelerator = accelerator or make_accelerator(
            cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.seed
        )
        check_batch_size(cfg.batch_size, accelerator.num_processes)
        check_batch_size(cfg.eval_batch_size, accelerator.num_processes, "eval_batch_size")
        checkpointer = (Checkpointer(cfg.checkpoint_dir, save_steps=cfg.save_steps, keep=cfg.save_total_limit)
                        if cfg.checkpoint_dir else None)
        resume = None
        if resume_from_checkpoint == "auto":  # e.g. a requeued cluster job: resume if there is anything to resume
            if checkpointer is None:
                raise ConfigError("resume_from_checkpoint='auto' needs checkpoint_dir (--checkpoint-dir).")
            resume_from_checkpoint = "latest" if checkpointer.existing() else None
        if resume_from_checkpoint:
            resume = read_checkpoint(resolve_checkpoint(resume_from_checkpoint, cfg.checkpoint_dir))
        elif checkpointer is not None and checkpointer.existing() and not overwrite_checkpoints:
            raise ConfigError(
                f"'{checkpointer.directory}' holds checkpoints of an earlier run; resume it with "
                "resume_from_checkpoint='latest' (--resume-from-checkpoint latest), or start again with "
                "overwrite_checkpoints=True (--overwrite), which deletes them."
            )
        set_seed(cfg.seed)
        with accelerator.main_process_first():
            data = prepare_data(
                train, validation, image_column=cfg.image_column, label_column=cfg.label_column,
                validation_size=cfg.validation_size, seed=cfg.seed,
            )
            set_seed(cfg.seed)
            backbone = self.load_backbone(data.labels)
        # automatic settings (epochs) become concrete for this data; the periods and the loop read them
        self.config = cfg = self.requested_config.resolved(len(data.train))
        self.passes = self.requested_config.passes_per_epoch(len(data.train))
        if self.passes > 1 and accelerator.is_main_process:
            logger.info("An epoch is %d passes over the %d training images, so that training gets at least "
                        "min_steps=%d optimizer steps.", self.passes, len(data.train), cfg.min_steps)
        self.data, self.backbone = data, backbone
        self.dataset_name = _dataset_name(train)
        if accelerator.is_main_process:
            logger.info("Data: %s", data.summary())
        if cfg.gradient_checkpointing:
            if not getattr(backbone.model, "supports_gradient_checkpointing", False):
                raise ConfigError(f"{type(backbone.model).__name__} does not support gradient checkpointing; "
                                  "turn gradient_checkpointing off.")
            backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        periods = self.periods(backbone)
        train_set, train_loader, eval_loader = self._loaders(backbone, data)
        epoch_datasets = [train_set]
        feature_loaders = None
        if any(p.features for p in periods) and cfg.feature_cache != "off":
            feature_loaders = self._feature_loaders(backbone, data, accelerator)
            if feature_loaders is not None:
                epoch_datasets.append(feature_loaders[1].dataset)
                periods = self._solved_periods(periods, feature_loaders)

        def on_epoch_start(epoch: int) -> None:
            for ds in epoch_datasets:
                ds.set_epoch(epoch)

        param_names = {n for n, _ in backbone.model.named_parameters()}
        initial_buffers = {k: v.detach().clone() for k, v in backbone.model.state_dict().items()
                           if k not in param_names}
        if checkpointer is not None or resume is not None:
            run = self._run_identity(backbone, data, accelerator.num_processes)
            if resume is not None:
                check_same_run(resume, run)
            elif accelerator.is_main_process:
                checkpointer.clear()  # only reached with overwrite_checkpoints
            accelerator.wait_for_everyone()
            if checkpointer is not None:
                checkpointer.run = run
        history = train_periods(
            accelerator, backbone.model, periods, train_loader, eval_loader, config=cfg,
            feature_loaders=feature_loaders, on_epoch_start=on_epoch_start, on_period_end=on_period_end,
            progress=progress, checkpointer=checkpointer, resume=resume,
        )
        self.trained = trained_state(backbone.model, backbone.parts, periods, initial_buffers)
        self.classifier = Classifier(backbone.model, backbone.processor, data.labels,
                                     info={"image_column": data.image_column, "label_column": data.label_column})
        kept = next((h for h in history if h.get("best")), history[-1])
        metrics = {k: kept[k] for k in ("accuracy", "f1", "loss")}
        test_metrics = self.evaluate(data.test) if data.test is not None else None
        self.result = FitResult(metrics=metrics, history=history, test_metrics=test_metrics,
                                data_summary=data.summary(),
                                extra={"periods": [{"name": p.name, "epochs": p.epochs, **p.info} for p in periods],
                                       "kept_epoch": kept["epoch"]})
        return self.result

    def _solved_periods(self, periods: list[Period], feature_loaders) -> list[Period]:
        """Head periods on cached features whose head is one linear layer become one converged solve (see
        `tl_hub.probe`), unless ``head_solver="adamw"`` or the problem is too large for a full-batch solve."""
        from .probe import can_solve, linear_inputs, linear_layer

        head, cached = feature_loaders[0].head, feature_loaders[1].dataset.cached
        if self.config.head_solver != "lbfgs" or linear_inputs(head, cached.features[0, :2]) is None:
            return periods
        linear = linear_layer(head)
        if not can_solve(cached.views * len(cached.labels), linear.in_features, linear.out_features):
            logger.info("The head is trained by AdamW: a full-batch solve on %d x %d features is too large.",
                        cached.views * len(cached.labels), linear.in_features)
            return periods
        return [dataclasses.replace(p, epochs=1, solve=True, info={**p.info, "solver": "lbfgs"})
                if p.features and p.epochs > 0 else p for p in periods]

    def _run_identity(self, backbone: Backbone, data: PreparedData, num_processes: int) -> dict:
        """What makes a run the same run: recorded in its checkpoints and compared when resuming (as JSON)."""
        run = {
            "recipe": self.name,
            "model": self.model_name,
            "revision": backbone.revision or self.revision,
            "initial_weights": state_fingerprint(backbone.model),  # a local model folder that changed is another run
            "settings": self.config.training_settings(),
            "labels": list(data.labels),
            "data": {"train": data_fingerprint(data.train, data.image_column),
                     "validation": data_fingerprint(data.validation, data.image_column)},
            "processes": num_processes,
        }
        return json.loads(json.dumps(run, default=str))

    def _require_fitted(self) -> None:
        if self.classifier is None:
            raise TlHubError("This recipe has not been trained yet; call fit() first (or tl_hub.load a saved one).")

    def evaluate(self, data: Any, *, split: Optional[str] = None) -> dict:
        """Accuracy, macro-F1 and loss of the trained model on ``data`` (its ``test`` split by default)."""
        self._require_fitted()
        return self.classifier.evaluate(data, split=split, batch_size=self.config.eval_batch_size,
                                        accelerator=self.accelerator)

    def predict(self, images: Any, top_k: int = 1):
        """Top-``k`` ``{"label", "score"}`` per image; see `Classifier.predict`."""
        self._require_fitted()
        return self.classifier.predict(images, top_k=top_k, batch_size=self.config.eval_batch_size)

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token=None,
                    overwrite_card: bool = False) -> str:
        """Save (to a temporary folder) and push what training changed to ``repo_id``; see `tl_hub.hub.push_to_hub`."""
        import tempfile

        from .hub import push_to_hub

        self._require_fitted()
        with tempfile.TemporaryDirectory(prefix="tl_hub_save_") as tmp:
            folder = os.path.join(tmp, "model")
            self.save(folder)
            return push_to_hub(folder, repo_id, private=private, token=token, overwrite_card=overwrite_card)

    def info(self) -> dict:
        """What is recorded about this run in ``tl_hub.json``."""
        assert self.backbone is not None and self.data is not None and self.result is not None
        return {
            "tl_hub_version": __version__,
            "recipe": self.name,
            "base_model": self.model_name,
            "base_model_revision": self.backbone.revision or self.revision,
            "pretrained": self.pretrained,
            "settings": self.config.training_settings(),
            "labels": self.data.labels,
            "image_column": self.data.image_column,
            "label_column": self.data.label_column,
            "dataset": self.dataset_name,
            "data": self.data.summary(),
            "skipped_images": self.data.skipped,
            "encoder_groups": [g.name for g in self.backbone.parts.groups],
            "head_modules": list(self.backbone.parts.head),
            "periods": self.result.extra.get("periods", []),
            "passes_per_epoch": self.passes,
            "kept_epoch": {"epoch": self.result.extra.get("kept_epoch"), "rule": self.config.keep_epoch},
            "trained": self.trained,
        }

    def save(self, output_dir: str, *, overwrite: bool = False) -> str:
        """Write the trained model folder (only on the main process).

        Contents: ``model.safetensors`` + ``config.json`` (with the labels), ``preprocessor_config.json``,
        ``tl_hub.json`` (recipe, settings, base model), ``metrics.json``, ``history.json`` and
        ``learning_curve.png``.  The folder is written to a temporary sibling and renamed into place; an
        existing non-empty folder is replaced only with ``overwrite=True``.
        """
        self._require_fitted()
        assert self.result is not None
        state = process_state()
        if state.is_main_process:
            with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
                model = self.classifier.model
                if is_peft_model(model):  # a standard PEFT adapter, plus the config with the labels
                    model.save_pretrained(tmp)
                    model.get_base_model().config.save_pretrained(tmp)
                else:
                    model.save_pretrained(tmp, safe_serialization=True)
                self.classifier.processor.save_pretrained(tmp)
                write_json(os.path.join(tmp, INFO_FILE), self.info())
                metrics = {"validation": self.result.metrics}
                if self.result.test_metrics is not None:
                    metrics["test"] = self.result.test_metrics
                write_json(os.path.join(tmp, "metrics.json"), metrics)
                write_json(os.path.join(tmp, "history.json"), self.result.history)
                plot_learning_curves({self.name: self.result.history}, os.path.join(tmp, "learning_curve.png"),
                                     title=f"{self.name} on {self.model_name}")
            logger.info("Saved the model to %s", os.path.abspath(output_dir))
        state.wait_for_everyone()
        return output_dir


def trained_state(model: torch.nn.Module, parts, periods: Sequence[Period], initial_buffers: dict) -> dict:
    """What training changed: the parameters any period trained and the buffers (e.g. BatchNorm statistics) whose
    values moved.  ``kind`` is ``"head"`` (only the head), ``"partial"`` (the head and some encoder groups) or
    ``"full"`` (every parameter)."""
    names = {id(p): n for n, p in model.named_parameters()}
    trained = {names[id(p)] for period in periods if period.epochs > 0
               for g in period.param_groups for p in g["params"]}
    buffers = [k for k, v in model.state_dict().items()
               if k in initial_buffers and not torch.equal(v, initial_buffers[k])]
    if is_peft_model(model):
        kind = "lora"
    elif len(trained) == len(names):
        kind = "full"
    elif trained <= set(parts.head_params(model)):
        kind = "head"
    else:
        kind = "partial"
    return {"kind": kind, "state_keys": sorted(trained) + sorted(buffers)}


def _dataset_name(source: Any) -> Optional[str]:
    """A name for the model card: the Hub id or folder name given, else the dataset's own name if it has one."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return os.path.basename(os.path.normpath(path)) if os.path.exists(path) else path
    info = getattr(source, "info", None)
    return getattr(info, "dataset_name", None) or None


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def lora_targets(model: torch.nn.Module, parts) -> list[str]:
    """Every ``nn.Linear`` inside the encoder blocks: attention and MLP projections, found without names."""
    return [name for g in parts.blocks for path in g.modules
            for name, m in model.get_submodule(path).named_modules(prefix=path) if isinstance(m, torch.nn.Linear)]


def _head_period(backbone: Backbone, epochs: int, lr: float, weight_decay: float) -> Period:
    parts = backbone.parts
    return Period(
        "head", epochs, head_param_groups(backbone.model, parts, lr, weight_decay),
        eval_modules=(parts.encoder,), features=True, info={"trains": ["head"]},
    )


@register_recipe("feature-extraction")
class FeatureExtractionRecipe(Recipe):
    """Train only a new head on the frozen pretrained encoder (small data, similar task).

    The encoder's parameters have ``requires_grad=False`` and the encoder stays in eval mode, so its weights
    and BatchNorm statistics are exactly the pretrained ones after training.
    """

    config_class = FeatureExtractionConfig

    def periods(self, backbone: Backbone) -> list[Period]:
        cfg = self.config
        return [_head_period(backbone, cfg.epochs, cfg.lr, cfg.weight_decay)]


@register_recipe("fine-tune")
class FineTuneRecipe(Recipe):
    """Head first, then fine-tune (large data, similar task).

    Period 1 (``head_epochs``): feature extraction of the new head at ``head_lr``.  Period 2 (the remaining
    epochs): the top ``unfreeze`` blocks (or all groups) train too, pretrained groups at ``lr *
    backbone_lr_ratio`` or, with ``layer_decay``, at ``lr * layer_decay ** depth``.

    BatchNorm policy (``bn_policy``): ``"frozen"`` (default) keeps every encoder BatchNorm in eval mode in
    period 2, so running statistics stay the pretrained ones while the affine weights train (stable with small
    batches and small data); ``"train"`` updates them.  Frozen groups are always in eval mode.
    """

    config_class = FineTuneConfig

    def periods(self, backbone: Backbone) -> list[Period]:
        cfg = self.config
        model, parts = backbone.model, backbone.parts
        head = _head_period(backbone, cfg.head_epochs, cfg.head_lr or cfg.lr, cfg.weight_decay)
        unfrozen = groups_to_unfreeze(parts, cfg.unfreeze)
        if cfg.layer_decay is not None:
            groups = layer_decay_param_groups(model, parts, cfg.lr, cfg.layer_decay, cfg.weight_decay, cfg.unfreeze)
        else:
            groups = discriminative_param_groups(model, parts, cfg.lr, cfg.backbone_lr_ratio, cfg.weight_decay,
                                                 cfg.unfreeze)
        frozen = [g for g in parts.groups if g not in unfrozen]
        eval_modules = [m for g in frozen for m in g.modules]
        if cfg.bn_policy == "frozen":
            encoder = model.get_submodule(parts.encoder)
            eval_modules += [f"{parts.encoder}.{n}" for n, m in encoder.named_modules()
                             if isinstance(m, BATCHNORM_TYPES)]
        tune = Period("fine-tune", cfg.epochs - cfg.head_epochs, groups, eval_modules=tuple(eval_modules),
                      info={"trains": ["head"] + [g.name for g in unfrozen], "bn_policy": cfg.bn_policy})
        return [head, tune]


@register_recipe("scratch")
class ScratchRecipe(Recipe):
    """The same architecture, randomly initialised and trained fully: the baseline for transfer."""

    config_class = ScratchConfig
    pretrained = False

    def periods(self, backbone: Backbone) -> list[Period]:
        cfg = self.config
        return [Period("full", cfg.epochs, full_param_groups(backbone.model, cfg.lr, cfg.weight_decay),
                       info={"trains": ["all"]})]


@register_recipe("lora")
class LoRARecipe(Recipe):
    """LoRA on the encoder's linear projections (attention and MLP, found generically) and a new head, through PEFT.

    The encoder's weights stay frozen; low-rank updates of rank ``lora_r`` are trained in every linear layer of
    the encoder blocks, and the head is a PEFT ``modules_to_save`` module, so the saved adapter is a standard PEFT
    adapter that carries the new head.  BatchNorm layers of the encoder stay in eval mode.
    """

    config_class = LoRAConfig

    def periods(self, backbone: Backbone) -> list[Period]:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        model, parts = backbone.model, backbone.parts
        targets = lora_targets(model, parts)
        if not targets:
            raise ConfigError(f"{type(model).__name__} has no linear layers in its encoder blocks for LoRA; use "
                              "fine-tune with unfreeze=k instead.")
        encoder = model.get_submodule(parts.encoder)
        bn = [f"base_model.model.{parts.encoder}.{n}" for n, m in encoder.named_modules()
              if isinstance(m, BATCHNORM_TYPES)]
        peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                      lora_dropout=cfg.lora_dropout, target_modules=targets,
                                                      modules_to_save=list(parts.head)))
        backbone.model = peft_model
        trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        groups = named_param_groups(peft_model, "lora+head", trainable, cfg.lr, cfg.weight_decay)
        return [Period("lora", cfg.epochs, groups, eval_modules=tuple(bn),
                       info={"trains": ["lora", "head"], "lora_targets": len(targets)})]
