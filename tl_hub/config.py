"""Validated configuration dataclasses for the recipes.

Each recipe has one config class.  Every field carries a ``help`` text (used by
the CLI, which builds its flags from these fields) and ``__post_init__`` checks
the values, raising :class:`~tl_hub.errors.ConfigError` with a message that
says what to change.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from .errors import ConfigError
from .threads import check_threads
from .wise_ft import parse_wise_ft

if TYPE_CHECKING:
    from .cost import Cost

SCHEDULERS = ("cosine", "linear", "constant")
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "all")
KEEP_EPOCHS = ("best", "last")
HEAD_SOLVERS = ("lbfgs", "adamw")
MIXED_PRECISION = ("no", "fp16", "bf16")
BN_POLICIES = ("frozen", "train")
FEATURE_CACHES = ("disk", "memory", "off")
CLASS_WEIGHTINGS = ("auto", "none", "balanced")  # see tl_hub.imbalance
SAMPLERS = ("shuffle", "balanced")
COMPUTE_BUDGET = 2.0  # TFLOP per trained period: ~850 training images of EfficientNet-Lite0 at 224 px
# settings that say where and how often things are written, not what is trained: a run resumed with other values
# of these is the same run, and they are not recorded with the model (they can be machine-local paths)
RUN_ONLY_SETTINGS = ("num_workers", "feature_cache_dir", "checkpoint_dir", "save_steps", "save_total_limit")


def setting(default: Any, help: str) -> Any:
    """A config field with its default and the help text the CLI and the docs show."""
    return field(default=default, metadata={"help": help})


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if allow_zero and value < 0:
        raise ConfigError(f"`{name}` should be >= 0, got {value}.")
    if not allow_zero and value <= 0:
        raise ConfigError(f"`{name}` should be positive, got {value}.")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), list(map(str, choices)), n=1, cutoff=0.6)
        raise ConfigError(f"`{name}` should be one of {', '.join(map(str, choices))}; got {value!r}"
                          + (f" (did you mean {close[0]}?)." if close else "."))


def parse_unfreeze(value: Any) -> Union[str, int]:
    """``unfreeze`` as the fine-tuning code takes it: ``"all"`` or a positive number of top encoder blocks, from an
    int or its text (``"all"``, ``"2"``; the CLI and ``TrainingArguments`` parsers give text).

    Example:
        >>> parse_unfreeze("2"), parse_unfreeze("all")
        (2, 'all')
    """
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    if not isinstance(value, bool) and text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(f"`unfreeze` should be 'all' or a positive number of blocks, got {value!r}.")


def check_fine_tune_settings(*, backbone_lr_ratio: Optional[float], layer_decay: Optional[float],
                             unfreeze: Any, bn_policy: str) -> Union[str, int]:
    """The rules of the fine-tune settings, shared by `FineTuneConfig` and `tl_hub.trainer.TransferArguments`;
    returns ``unfreeze`` parsed (`parse_unfreeze`)."""
    if backbone_lr_ratio is not None and not 0 < backbone_lr_ratio <= 1:
        raise ConfigError(f"`backbone_lr_ratio` should be in (0, 1], got {backbone_lr_ratio}.")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"`layer_decay` should be in (0, 1], got {layer_decay}.")
    _choice("bn_policy", bn_policy, BN_POLICIES)
    return parse_unfreeze(unfreeze)


@dataclass
class ModelSource:
    """Where a model comes from and how it may be loaded; every entry point that loads a model takes one
    (recipes, `tl_hub.load`, the advisor, the CLI's ``--model`` flags).

    Example:
        >>> ModelSource("google/vit-base-patch16-224", revision="main").id
        'google/vit-base-patch16-224'
    """

    id: str = field(metadata={"help": "Hub model id or local folder of an image classifier, or a built-in model "
                                      "('tl-hub:efficientnet-lite0': ImageNet-1k EfficientNet-Lite0, offline).",
                              "aliases": ["--model"]})
    revision: Optional[str] = setting(None, "Branch, tag or commit of the model on the Hub.")
    trust_remote_code: bool = setting(False, "Allow custom code from the model repo.")
    allow_pickle: bool = setting(False, "Allow pickle (.bin) checkpoints; only safetensors are loaded otherwise.")
    cache_dir: Optional[str] = setting(None, "Hub cache folder (default: the Hub's own).")

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError("The model should be a Hub model id or the path of a model folder.")

    @classmethod
    def of(cls, model: Union[str, ModelSource], **options: Any) -> ModelSource:
        """``model`` as a `ModelSource`: a string becomes one with ``options`` (revision, trust_remote_code, ...);
        a `ModelSource` is returned as it is, or updated with the options given."""
        if isinstance(model, cls):
            return dataclasses.replace(model, **options) if options else model
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"Unknown model option(s) {', '.join(unknown)}; valid: revision, trust_remote_code, "
                              "allow_pickle, cache_dir.")
        return cls(model, **options)

    @property
    def location(self) -> str:
        """Where the model loads from: ``id`` itself, or for a model built into tl-hub (``"tl-hub:..."``, e.g.
        ImageNet EfficientNet-Lite0) its local folder, made on first use (see `tl_hub.imagenet`)."""
        from .imagenet import builtin_path, is_builtin

        return builtin_path(self.id) if is_builtin(self.id) else self.id

    def loading_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of a transformers ``from_pretrained`` call."""
        return {"revision": self.revision, "trust_remote_code": self.trust_remote_code, "cache_dir": self.cache_dir}


@dataclass
class TrainingConfig:
    """Settings shared by every recipe: each field below, with its default and its help text (also the CLI's
    ``--help``).  ``epochs=None`` (the default) is automatic: enough epochs for ``min_steps`` optimizer steps within
    ``compute_budget``; `resolved` makes it concrete for the data.

    Raises:
        ConfigError: when a value is out of range.

    Example:
        >>> TrainingConfig(epochs=3, lr=3e-4).epochs
        3
    """

    epochs: Optional[int] = setting(None, "Training epochs; unset: automatic, enough for min_steps optimizer steps, "
                                    "between min_epochs and max_epochs, within compute_budget.")
    min_steps: int = setting(500, "With epochs unset: the fewest optimizer steps a trained period gets; when "
                             "max_epochs passes over small data are fewer, each epoch makes several passes (0: one "
                             "pass per epoch).")
    min_epochs: int = setting(3, "With epochs unset: the fewest epochs (large data).")
    max_epochs: int = setting(30, "With epochs unset: the most epochs (small data; an epoch is then several passes, "
                              "see min_steps).")
    compute_budget: float = setting(COMPUTE_BUDGET, "With epochs unset: the most compute of a trained period, in "
                                    "TFLOP (10^12 floating-point operations: training passes and validation, counted "
                                    "on the model, see tl_hub.cost); it caps the passes min_steps adds and the epochs "
                                    "above min_epochs, so a large model at full resolution stays affordable on small "
                                    "data (0: no cap).")
    calibrate: bool = setting(True, "After training, fit a temperature on the validation split (one per label for "
                                    "multi-label) and fold it into the head, so that probabilities are calibrated; "
                                    "the predicted labels do not change.")
    keep_epoch: str = setting("best", "Which weights the trained model keeps: 'best' (the epoch with the best "
                              "validation accuracy, ties broken by the lower validation loss) or 'last'.")
    head_solver: str = setting("lbfgs", "How a new linear head is trained on cached frozen features: 'lbfgs' (a "
                               "linear probe solved to convergence, its L2 strength chosen on validation) or 'adamw' "
                               "(epochs of gradient steps). Heads that are not one linear layer, or uncached "
                               "features, always use AdamW.")
    lr: float = setting(1e-3, "Peak learning rate of the new head.")
    batch_size: int = setting(32, "Global training batch size; split evenly across processes, so results do not "
                              "depend on the number of processes.")
    eval_batch_size: int = setting(64, "Global evaluation/prediction batch size.")
    weight_decay: float = setting(0.01, "AdamW weight decay (never applied to biases, norms and tokens).")
    warmup_ratio: float = setting(0.1, "Fraction of each period's steps used for LR warmup.")
    scheduler: str = setting("cosine", "LR schedule after warmup: cosine, linear or constant.")
    gradient_accumulation_steps: int = setting(1, "Batches accumulated per optimizer step.")
    max_grad_norm: Optional[float] = setting(1.0, "Gradient clipping norm (none to disable).")
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy loss.")
    multi_label: bool = setting(False, "Each image has a set of labels (multi-label: BCE loss, a threshold per label "
                                       "chosen on validation); detected without this for list-valued label columns; "
                                       "with it, text labels are split on ';', '|' or ','.")
    class_weighting: str = setting("auto", "Class weights of the loss and the head's solve: 'auto' (balanced when the "
                                           "largest class is 3x the smallest or more, single-label only), 'none' or "
                                           "'balanced' (each class weighs the same in total).")
    sampler: str = setting("shuffle", "Training order: 'shuffle' (each image once per pass) or 'balanced' (drawn "
                                      "with replacement, every class equally often).")
    seed: int = setting(42, "Seed for initialisation, data order, splits and augmentation.")
    mixed_precision: str = setting("no", "no, bf16 (recent GPUs and CPUs) or fp16 (GPUs, with loss scaling); weights "
                                   "stay fp32.")
    image_column: Optional[str] = setting(None, "Image column (detected if not given).")
    label_column: Optional[str] = setting(None, "Label column (detected if not given).")
    validation_size: float = setting(0.2, "Fraction of the training data held out (stratified) when no validation "
                                     "split exists.")
    augment: bool = setting(True, "Random resized crops of the training images (see crop_scale); flips only with "
                                  "hflip.")
    hflip: bool = setting(False, "Add random horizontal flips to augmentation; only for labels that a mirror image "
                          "keeps (not text, digits, or left/right classes).")
    crop_scale: float = setting(0.6, "Smallest area fraction kept by the random resized crop (0 < s <= 1).")
    num_workers: Optional[int] = setting(None, "DataLoader worker processes that decode and preprocess images "
                                         "(default: none on the CPU, where they would take cores from the model; "
                                         "with a GPU, the cores per process minus one, at most 8: see "
                                         "tl_hub.runtime.default_num_workers).")
    threads: Union[str, int] = setting("auto", "CPU threads PyTorch computes with: 'auto' (OMP_NUM_THREADS if set; "
                                       "else 1 for small models, where threads only add waiting; else the cores "
                                       "this process may use, less those other processes keep busy: see "
                                       "tl_hub.threads) or a number.")
    train_examples: Optional[int] = setting(None, "Streamed training data only: the examples in one epoch, needed "
                                            "when the stream's length is unknown (no split info, not plain "
                                            "parquet files); smaller than the stream, it makes shorter epochs.")
    shuffle_buffer_size: int = setting(1000, "Streamed training data only: examples in the shuffle buffer "
                                       "(reshuffled every epoch; a larger buffer mixes better and holds more "
                                       "encoded images in memory).")
    gradient_checkpointing: bool = setting(False, "Recompute encoder activations in backward to save memory (slower).")
    feature_cache: str = setting("disk", "While the encoder is frozen, compute its features once and train the head "
                                 "on them: 'disk' (kept in memory and under feature_cache_dir for later runs), "
                                 "'memory', or 'off' (run the encoder every epoch, on freshly augmented images).")
    feature_cache_dir: Optional[str] = setting(None, "Feature cache folder (default $TL_HUB_CACHE/features or "
                                               "~/.cache/tl_hub/features).")
    feature_views: int = setting(1, "Views cached per training image while the encoder is frozen: view 0 is the "
                                 "plain image, the others augmented (k views cost k encoder passes).")
    prefix_cache: bool = setting(True, "When only the top blocks train (fine-tune with unfreeze=k) and the frozen "
                                 "blocks below them see fixed inputs (augment off, or feature_views views cached), "
                                 "compute the frozen blocks' output once and train the top blocks on it; off: run "
                                 "the whole encoder every step.")

    checkpoint_dir: Optional[str] = setting(None, "Folder for resumable checkpoints (model, optimizer, LR schedule, "
                                            "RNG and data position), written at every epoch end and every save_steps "
                                            "steps; none: no checkpoints (the CLI defaults to "
                                            "OUTPUT_DIR-checkpoints; pass 'none' to turn them off).")
    save_steps: int = setting(0, "Also checkpoint every N optimizer steps within epochs (0: at epoch ends only).")
    save_total_limit: int = setting(2, "Checkpoints kept; older ones are deleted.")
    report_to: str = setting("none", "Experiment trackers, through Accelerate: none, tensorboard, wandb, mlflow, "
                             "trackio, or all (every installed one); several as a comma-separated list. Logged: "
                             "the run's settings, and per epoch the metrics, each group's learning rate and the "
                             "throughput. Install them with `pip install tl-hub[tracking]`.")
    logging_dir: Optional[str] = setting(None, "Where file-based trackers (TensorBoard, MLflow) write (default: "
                                         "runs/tl_hub).")

    def trackers(self) -> list[str]:
        """The trackers ``report_to`` names (empty for ``none``)."""
        names = [n.strip().lower() for n in str(self.report_to).split(",") if n.strip()]
        return [] if names in ([], ["none"]) else names

    def __post_init__(self) -> None:
        for name in ("epochs", "lr", "batch_size", "eval_batch_size", "gradient_accumulation_steps",
                     "save_total_limit", "min_epochs", "max_epochs", "train_examples", "shuffle_buffer_size"):
            _positive(name, getattr(self, name))
        for name in ("weight_decay", "num_workers", "label_smoothing", "save_steps", "min_steps", "compute_budget"):
            _positive(name, getattr(self, name), allow_zero=True)
        _positive("max_grad_norm", self.max_grad_norm)
        self.threads = check_threads(self.threads)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"`warmup_ratio` should be in [0, 1), got {self.warmup_ratio}.")
        if not 0 < self.validation_size < 1:
            raise ConfigError(f"`validation_size` should be a fraction in (0, 1), got {self.validation_size}.")
        if not 0 < self.crop_scale <= 1:
            raise ConfigError(f"`crop_scale` should be in (0, 1], got {self.crop_scale}.")
        if self.label_smoothing >= 1:
            raise ConfigError(f"`label_smoothing` should be < 1, got {self.label_smoothing}.")
        if self.min_epochs > self.max_epochs:
            raise ConfigError(f"`min_epochs` ({self.min_epochs}) should not exceed `max_epochs` ({self.max_epochs}).")
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("keep_epoch", self.keep_epoch, KEEP_EPOCHS)
        _choice("head_solver", self.head_solver, HEAD_SOLVERS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("feature_cache", self.feature_cache, FEATURE_CACHES)
        _choice("class_weighting", self.class_weighting, CLASS_WEIGHTINGS)
        _choice("sampler", self.sampler, SAMPLERS)
        for name in self.trackers():
            _choice("report_to", name, TRACKERS)
        _positive("feature_views", self.feature_views)
        if self.feature_views > 1 and not self.augment:
            raise ConfigError(
                f"`feature_views` is {self.feature_views}, but views beyond the first are augmented and `augment` "
                "is off; turn augment on or set feature_views=1."
            )

    def resolve_epochs(self, train_examples: int, cost: Optional[Cost] = None) -> int:
        """The epochs of a trained period: ``epochs`` if set, else enough for ``min_steps`` optimizer steps on
        ``train_examples`` images, clipped to ``[min_epochs, max_epochs]``; given what an epoch costs (``cost``, see
        `tl_hub.cost.Cost`), no more than ``compute_budget`` affords, but at least ``min_epochs``.

        Example:
            >>> TrainingConfig().resolve_epochs(40)      # 2 steps per pass at batch 32: max_epochs
            30
            >>> TrainingConfig().resolve_epochs(10_000)  # 313 steps per pass: min_epochs
            3
            >>> from tl_hub.cost import Cost  # EfficientNet-Lite0 at 224 px, 50 validation images
            >>> TrainingConfig().resolve_epochs(200, Cost(2.3e9, 0.77e9, validation_images=50))  # 2 TFLOP
            4
        """
        if self.epochs is not None:
            return self.epochs
        steps = self.steps_per_pass(train_examples)
        epochs = int(min(max(math.ceil(self.min_steps / steps), self.min_epochs), self.max_epochs))
        if not self.compute_budget or cost is None:
            return epochs
        affordable = int(self.compute_budget * 1e12 // cost.epoch(train_examples))
        return max(self.min_epochs, min(epochs, affordable))

    def needs_cost(self) -> bool:
        """Whether the schedule depends on what an epoch costs (automatic epochs under a budget)."""
        return self.epochs is None and bool(self.compute_budget)

    def budget_note(self, train_examples: int, cost: Optional[Cost]) -> Optional[str]:
        """A line saying how ``compute_budget`` shortened the schedule, or None when it did not."""
        if not self.needs_cost() or cost is None:
            return None
        free = dataclasses.replace(self, compute_budget=0)
        epochs, passes = free.resolved(train_examples).trained_epochs(), free.passes_per_epoch(train_examples)
        got = self.resolved(train_examples, cost).trained_epochs() * self.passes_per_epoch(train_examples, cost)
        if got >= epochs * passes:
            return None
        return (f"Training makes {got} passes over the {train_examples} training images rather than the "
                f"{epochs * passes} that min_steps={self.min_steps} asks for: at {cost.train_flops / 1e9:.2f} GFLOP "
                f"per training image they would cost {epochs * cost.epoch(train_examples, passes) / 1e12:.1f} TFLOP "
                f"with their evaluations, and compute_budget is {self.compute_budget:g} TFLOP per period (raise it, "
                "or set epochs, for longer training).")

    def steps_per_pass(self, train_examples: int) -> int:
        """Optimizer steps of one pass over ``train_examples`` images."""
        batches = math.ceil(max(train_examples, 1) / self.batch_size)
        return max(1, math.ceil(batches / self.gradient_accumulation_steps))

    def trained_epochs(self) -> int:
        """Epochs of the main trained period (of a resolved config)."""
        return self.epochs

    def passes_per_epoch(self, train_examples: int, cost: Optional[Cost] = None) -> int:
        """Passes over the training data per epoch: 1 when ``epochs`` is set (an epoch is one pass, as asked), else
        as many as it takes for the trained period to get ``min_steps`` optimizer steps within its automatic epochs,
        as far as ``compute_budget`` pays for them (given ``cost``); at least 1.

        Example:
            >>> TrainingConfig().passes_per_epoch(40)   # 30 epochs x 9 passes x 2 steps = 540 steps
            9
            >>> from tl_hub.cost import Cost
            >>> TrainingConfig().passes_per_epoch(40, Cost(2.3e9, 0.77e9, validation_images=10))  # 2 TFLOP: 20 x 1
            1
        """
        if self.epochs is not None:
            return 1
        resolved = self.resolved(train_examples, cost)
        epochs = max(resolved.trained_epochs(), 1)
        passes = max(1, math.ceil(self.min_steps / (resolved.steps_per_pass(train_examples) * epochs)))
        if not self.compute_budget or cost is None:
            return passes
        per_epoch = self.compute_budget * 1e12 / epochs - cost.validation_images * cost.eval_flops
        return max(1, min(passes, int(per_epoch // (cost.train_flops * max(train_examples, 1)))))

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as plain data."""
        return dataclasses.asdict(self)

    def resolved(self, train_examples: int, cost: Optional[Cost] = None) -> TrainingConfig:
        """A copy with every automatic setting (``epochs`` and, for fine-tuning, ``head_epochs``) made concrete."""
        return dataclasses.replace(self, epochs=self.resolve_epochs(train_examples, cost))

    def training_settings(self) -> dict[str, Any]:
        """The settings that decide what is trained (all but `RUN_ONLY_SETTINGS`): recorded with the model and
        compared when a run resumes from a checkpoint."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_SETTINGS}

    @classmethod
    def field_names(cls) -> set[str]:
        """The names of this config's settings."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainingConfig:
        """Build the config, naming unknown arguments instead of a bare ``TypeError``."""
        unknown = sorted(set(kwargs) - cls.field_names())
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no setting {', '.join(unknown)}; valid settings are: "
                f"{', '.join(sorted(cls.field_names()))}."
            )
        return cls(**kwargs)


@dataclass
class FeatureExtractionConfig(TrainingConfig):
    """Feature extraction: the encoder is frozen, only the new head trains for ``epochs``."""

    def needs_cost(self) -> bool:
        """Never: the head trains on cached features, so the encoder's cost does not grow with the epochs."""
        return False  # the head trains on cached features: the encoder's cost does not grow with the epochs


@dataclass
class ScratchConfig(TrainingConfig):
    """Training the same architecture from random initialisation (the baseline).

    It gets twice the optimizer steps of the transfer recipes by default (``min_steps=1000``): random weights need
    more steps than pretrained ones, and a weak baseline would inflate every "transfer beats scratch" claim.  Its
    ``compute_budget`` is theirs (the same compute: a model at full resolution on small data is compared with
    fine-tuning at equal cost).
    """

    lr: float = setting(1e-3, "Peak learning rate for all parameters.")
    min_steps: int = setting(1000, "With epochs unset: the fewest optimizer steps (twice the transfer recipes': "
                             "random weights need more).")


@dataclass
class FineTuneConfig(TrainingConfig):
    """Two periods: ``head_epochs`` of feature extraction, then fine-tuning.

    In period 2 the top ``unfreeze`` encoder groups train with smaller learning
    rates: ``lr * backbone_lr_ratio`` (discriminative, as in ULMFiT/fastai), or,
    when ``layer_decay`` is set, ``lr * layer_decay ** depth`` where depth counts
    groups from the top (1 = top block), as in BEiT.  ``lr`` is the head's LR in
    period 2; ``head_lr`` (default ``lr``) its LR in period 1.
    """

    epochs: Optional[int] = setting(None, "Total epochs: head_epochs, then fine-tuning (default: head_epochs plus "
                                    "the automatic epochs of a trained period, see min_steps).")
    head_epochs: Optional[int] = setting(None, "Epochs of period 1 (new head only, encoder frozen) when the head "
                                         "trains by gradient steps (default: automatic like epochs, or 1 when epochs "
                                         "is given); a linear head solved by lbfgs takes one epoch whatever this is. "
                                         "0 skips period 1.")
    head_lr: Optional[float] = setting(None, "Head LR in period 1 (default: lr).")
    backbone_lr_ratio: float = setting(0.1, "Pretrained groups train at lr * ratio in period 2 (discriminative LR).")
    layer_decay: Optional[float] = setting(None, "If set, layer-wise decay: group at depth d from the top trains at "
                                           "lr * decay**d (replaces backbone_lr_ratio).")
    unfreeze: Union[str, int] = setting("all", "'all', or the number of top encoder blocks to unfreeze in period 2.")
    bn_policy: str = setting("frozen", "BatchNorm in period 2: 'frozen' keeps running statistics fixed (eval mode; "
                             "affine weights still train), 'train' updates them.")
    wise_ft: Union[str, float] = setting("off", "WiSE-FT after fine-tuning: the weights (1-a)*start + a*fine-tuned, "
                                         "start being the pretrained encoder with the period-1 head: 'auto' "
                                         "chooses a in {0, .25, .5, .75, 1} on validation, a number fixes it, 'off' "
                                         "(default: measured, neither beat plain fine-tuning) keeps the fine-tuned "
                                         "weights (a=1).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("head_lr", self.head_lr)
        _positive("head_epochs", self.head_epochs, allow_zero=True)
        if self.head_epochs is not None and self.epochs is not None and self.head_epochs >= self.epochs:
            raise ConfigError(
                f"`head_epochs` ({self.head_epochs}) should be smaller than `epochs` ({self.epochs}), leaving "
                "epochs for fine-tuning; to train only the head use FeatureExtractionRecipe."
            )
        if self.backbone_lr_ratio is None:
            raise ConfigError("`backbone_lr_ratio` should be a number in (0, 1], got None.")
        self.unfreeze = check_fine_tune_settings(backbone_lr_ratio=self.backbone_lr_ratio,
                                                 layer_decay=self.layer_decay, unfreeze=self.unfreeze,
                                                 bn_policy=self.bn_policy)
        self.wise_ft = parse_wise_ft(self.wise_ft)

    def trained_epochs(self) -> int:
        """Epochs of the fine-tuning period (of a resolved config)."""
        return self.epochs - self.head_epochs

    def resolved(self, train_examples: int, cost: Optional[Cost] = None) -> FineTuneConfig:
        """Concrete ``head_epochs`` and ``epochs``.  With ``epochs`` unset each period gets `resolve_epochs` (period 1
        only matters when the head trains by gradient steps); with ``epochs`` set and ``head_epochs`` unset, period 1
        is one epoch (a solved head takes exactly one) and fine-tuning the rest."""
        if self.epochs is not None:
            head = self.head_epochs if self.head_epochs is not None else min(1, self.epochs - 1)
            return dataclasses.replace(self, head_epochs=head)
        trained = TrainingConfig.resolve_epochs(self, train_examples, cost)
        # a head trained by gradient steps runs on cached features: the budget, counted on the encoder, spares it
        head = self.head_epochs if self.head_epochs is not None else TrainingConfig.resolve_epochs(self, train_examples)
        return dataclasses.replace(self, head_epochs=head, epochs=head + trained)


@dataclass
class TrainAllConfig(FineTuneConfig):
    """Every group trains from the first epoch, at one learning rate, from the pretrained weights: fine-tuning with
    no head period (``head_epochs=0``) and ``backbone_lr_ratio=1``."""

    head_epochs: Optional[int] = setting(0, "Epochs of a head-only period first (default 0: everything trains at "
                                         "once).")
    backbone_lr_ratio: float = setting(1.0, "Pretrained groups train at lr * ratio (default 1: one learning rate).")


@dataclass
class LoRAConfig(TrainingConfig):
    """LoRA (Hu et al. 2021, via PEFT) on the encoder's linear projections, plus a new head; one period."""

    lora_r: int = setting(8, "Rank of the LoRA update matrices.")
    lora_alpha: float = setting(16.0, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = setting(0.0, "Dropout on the LoRA branch.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("lora_r", self.lora_r)
        _positive("lora_alpha", self.lora_alpha)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"`lora_dropout` should be in [0, 1), got {self.lora_dropout}.")
