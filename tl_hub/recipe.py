"""The recipe base class and registry.

A recipe is its config class, ONE hook (`Recipe.periods`: what trains in which period, at which learning rates),
its defaults (the config's) and its card text.  It keeps its settings (``config``) and, once trained, its result
(``result``, a `tl_hub.fit.FitResult`); the state of a run lives in the run (`tl_hub.fit_state.FitRun`).
Data, model loading, the loop, evaluation and saving are shared (`tl_hub.fit`, `tl_hub.loop`,
`tl_hub.model_folder`); the recipes themselves are in `tl_hub.recipes`.

Example (a recipe of your own; `tl_hub.recipes.head_period` is the frozen-encoder head period):
    >>> @register_recipe("head-only-sgd")
    ... class HeadOnly(Recipe):
    ...     config_class = FeatureExtractionConfig
    ...     card_text = "a new head was trained on the frozen encoder."
    ...     def periods(self, backbone, config):
    ...         return [head_period(backbone, config.epochs, config.lr, config.weight_decay)]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Optional, Union

from .backbone import Backbone, load_backbone
from .config import (
    ModelSource,
    TrainingConfig,
)
from .errors import ConfigError, TlHubError
from .filenames import ERRORS_FILE
from .fit import FitResult, fit
from .inference import Classifier
from .loop import Period
from .model_folder import TrainedModel
from .plots import plot_errors, render_png
from .runtime import PROGRESS_LOGGER, process_state

logger = logging.getLogger(__name__)
progress_log = logging.getLogger(PROGRESS_LOGGER)  # the lines a run shows by default

RECIPES: dict[str, type[Recipe]] = {}
"""The registered recipes by name (`register_recipe`)."""
SOURCE_OPTIONS = ("revision", "trust_remote_code", "allow_pickle", "cache_dir")


def register_recipe(name: str):
    """Class decorator: make a recipe available by ``name`` (CLI ``--recipe name``, `get_recipe`)."""

    def wrap(cls):
        cls.name = name
        RECIPES[name] = cls
        return cls

    return wrap


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered as ``name`` (``"fine-tune"``, ...); a `ConfigError` lists the names otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"Unknown recipe {name!r}; choose one of: {', '.join(sorted(RECIPES))}.") from None


class Recipe:
    """Base class: load a model, train it through `periods`, evaluate, predict, save, push.

    Args:
        model (`str` or `ModelSource`): Hub model id or local folder of an image-classification checkpoint.
        **settings: fields of the recipe's config class (see `tl_hub.config`), and, with a string ``model``,
            its loading options (``revision``, ``trust_remote_code``, ``allow_pickle``, ``cache_dir``).

    Subclasses set ``config_class`` and ``card_text`` and implement `periods`; a recipe that changes the model's
    structure (e.g. another head) also names the ``export_kind`` of a registered `tl_hub.Exporter` that can rebuild it.
    """

    name: ClassVar[str] = "recipe"
    config_class: ClassVar[type[TrainingConfig]] = TrainingConfig
    pretrained: ClassVar[bool] = True
    card_text: ClassVar[str] = ""
    export_kind: ClassVar[Optional[str]] = None  # an exporter kind for models the recipe changes (see exporters)

    def __init__(self, model: Union[str, ModelSource], **settings: Any):
        options = {k: settings.pop(k) for k in SOURCE_OPTIONS if k in settings}
        self.source = ModelSource.of(model, **options)
        self.config = self.config_class.from_kwargs(**settings)  # the settings as given ("auto" stays "auto")
        self.result: Optional[FitResult] = None  # set by `fit`

    def periods(self, backbone: Backbone, config: TrainingConfig) -> list[Period]:
        """What trains in which period, at which learning rates (the one hook).

        Args:
            backbone: the model with its new head, split into ordered layer groups (`tl_hub.backbone.Backbone`).
            config: the recipe's settings with the automatic ones made concrete for this run's data (epochs, ...).
        """
        raise NotImplementedError

    @property
    def classifier(self) -> Optional[Classifier]:
        """The trained model (`tl_hub.inference.Classifier`), or None before `fit`."""
        return self.result.classifier if self.result is not None else None

    def load_backbone(self, labels: Sequence[str]) -> Backbone:
        """The model with a new head for ``labels``: pretrained, or randomly initialised for ``pretrained=False``."""
        return load_backbone(self.source, labels, pretrained=self.pretrained)

    def fit(self, train: Any, validation: Any = None, *, accelerator=None, progress: bool = True,
            on_period_end=None, resume_from_checkpoint: Optional[str] = None,
            overwrite_checkpoints: bool = False) -> FitResult:
        """Train on ``train`` and evaluate on ``validation`` after every epoch.

        ``train``: a ``datasets.Dataset``/``DatasetDict`` (its ``validation`` and ``test`` splits are used), an image
        folder, a saved dataset folder or a Hub dataset id; ``validation`` defaults to the dataset's validation
        split, else a stratified ``validation_size`` share of ``train``.  Streamed data (an ``IterableDataset`` or
        ``IterableDatasetDict``, larger than memory) is read process by process; see `tl_hub.streaming` for its
        limits.  ``resume_from_checkpoint``: ``"latest"``, a checkpoint path, or ``"auto"`` (resume if there is a
        checkpoint).  All arguments: `tl_hub.fit.fit`.
        """
        return fit(self, train, validation, accelerator=accelerator, progress=progress, on_period_end=on_period_end,
                   resume_from_checkpoint=resume_from_checkpoint, overwrite_checkpoints=overwrite_checkpoints)

    def _require_fitted(self) -> None:
        if self.result is None:
            raise TlHubError("This recipe has not been trained yet; call fit() first (or tl_hub.load a saved one).")

    def evaluate(self, data: Any, *, split: Optional[str] = None, tta: Optional[int] = None) -> dict:
        """The trained model's metrics on ``data`` (its ``test`` split by default), with ``tta`` views per image
        (test-time augmentation); see `Classifier.evaluate`."""
        self._require_fitted()
        return self.classifier.evaluate(data, split=split, batch_size=self.config.eval_batch_size,
                                        accelerator=self.result.run.accelerator, tta=tta)

    def predict(self, images: Any, top_k: Optional[int] = None, tta: Optional[int] = None):
        """Top-``k`` ``{"label", "score"}`` per image, with ``tta`` views per image; see `Classifier.predict`."""
        self._require_fitted()
        return self.classifier.predict(images, top_k=top_k, batch_size=self.config.eval_batch_size, tta=tta)

    def info(self) -> dict:
        """What is recorded about this run in ``tl_hub.json``."""
        self._require_fitted()
        return dict(self.classifier.info)

    def trained_model(self) -> TrainedModel:
        """The trained classifier with its record, metrics and history, ready to save or push."""
        self._require_fitted()
        metrics = {"validation": self.result.metrics}
        if self.result.test_metrics is not None:
            metrics["test"] = self.result.test_metrics
        errors = self.result.error_examples
        figures = {ERRORS_FILE: render_png(plot_errors, errors)} if errors else {}
        return TrainedModel(self.classifier, metrics=metrics, history=self.result.history, source=self.source.id,
                            figures=figures)

    def save(self, output_dir: str, *, overwrite: bool = False) -> str:
        """Write the trained model folder (on the main process; see `tl_hub.model_folder`).  It is written to a
        temporary sibling and renamed into place; an existing non-empty folder is replaced only with
        ``overwrite=True``."""
        trained = self.trained_model()
        state = process_state()
        if state.is_main_process:
            trained.save(output_dir, overwrite=overwrite)
            progress_log.info("Saved the model to %s", output_dir)
        state.wait_for_everyone()
        return output_dir

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token=None,
                    overwrite_card: bool = False) -> str:
        """Push what training changed to ``repo_id`` in one commit, with a model card; see `TrainedModel.push`."""
        return self.trained_model().push(repo_id, private=private, token=token, overwrite_card=overwrite_card,
                                         dataset_name=self.result.run.dataset_name)


