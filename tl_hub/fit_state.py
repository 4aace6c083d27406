"""`FitRun`: the state one `tl_hub.fit.fit` carries, handed to its steps.

A recipe keeps its settings (``recipe.config``, as given) and, after training, its result
(``recipe.result``, a `tl_hub.fit.FitResult` whose ``run`` is this object).  Everything a run works out on the way
lives here: the accelerator, the configuration resolved for this data, the passes per epoch, the prepared data,
the model with its new head and the feature store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .backbone import Backbone
    from .config import ModelSource, TrainingConfig
    from .features import FeatureStore


@dataclass
class FitRun:
    """One fit's state.

    Attributes:
        source: the base model's `tl_hub.config.ModelSource`.
        accelerator: the ``accelerate.Accelerator`` the run uses.
        config: the recipe's settings with the automatic ones made concrete for this data (epochs, workers, ...);
            the recipe's own ``config`` keeps the settings as given.
        passes: passes over the training images per epoch (so that training gets ``min_steps`` optimizer steps).
        data: the prepared data (`tl_hub.data.PreparedData`, or `tl_hub.streaming.StreamData` for a stream).
        backbone: the model with its new head, split into groups (`tl_hub.backbone.Backbone`).
        dataset_name: the dataset's name for the model card, when it has one.
        step_flops: FLOPs of one training step on one process, when counted (for the thread count).
        progress: progress bars are shown (main process only).
        feature_store: where cached encoder features live, once a period uses them (`tl_hub.features`).
        class_weight: the loss's class weights (`tl_hub.imbalance.class_weights`), or None.
    """

    source: ModelSource
    accelerator: Any
    config: TrainingConfig
    passes: int
    data: Any
    backbone: Backbone
    dataset_name: Optional[str] = None
    step_flops: Optional[float] = None
    progress: bool = False
    feature_store: Optional[FeatureStore] = None
    class_weight: Any = None

    @property
    def is_main_process(self) -> bool:
        """Whether this process logs and writes (the main one)."""
        return self.accelerator.is_main_process
