"""tl-hub: transfer learning for image classification on the Hugging Face stack.

Wrap any ``AutoModelForImageClassification`` checkpoint in a recipe, replace its head for your labels and
train it with Accelerate on one or many devices::

    from tl_hub import FineTuneRecipe
    recipe = FineTuneRecipe("google/vit-base-patch16-224-in21k")
    result = recipe.fit(train_ds, eval_ds)
    recipe.save("out/")

Everything here is the public API; the CLI (`tl_hub.cli`) and the Space (``spaces/app.py``) use nothing else.
"""

from .advisor import Advice, Thresholds
from .audit import AuditResult, audit
from .backbone import Backbone, LayerGroup, ModelParts, load_backbone, split_model
from .compare import Comparison, compare, curve_summary
from .config import (
    FeatureExtractionConfig,
    FineTuneConfig,
    LoRAConfig,
    ModelSource,
    ScratchConfig,
    TrainAllConfig,
    TrainingConfig,
)
from .demo import demo_model, run_demo
from .errors import (
    ConfigError,
    DataError,
    MissingDependency,
    ModelError,
    OutputError,
    TlHubError,
    TrainingError,
    missing_dependency,
)
from .evaluation import headline
from .exporters import EXPORTERS, Exporter, register_exporter
from .fashion import example_folder
from .fit import FitResult
from .inference import Classifier
from .loop import Period
from .model_folder import TrainedModel, export, export_for_hub, load, push_to_hub
from .onnx_export import ExportError, ExportResult
from .outputs import check_output_dir
from .param_groups import param_groups
from .ranking import Ranking, advise, rank
from .recipe import RECIPES, Recipe, get_recipe, register_recipe
from .recipes import FeatureExtractionRecipe, FineTuneRecipe, LoRARecipe, ScratchRecipe, TrainAllRecipe, head_period
from .runtime import PROGRESS_LOGGER, is_main_process
from .space import build_app, example_images, push_space
from .space import launch as launch_app
from .threads import check_threads, threads_for
from .version import __version__

__all__ = [
    "__version__",
    "Backbone", "LayerGroup", "ModelParts", "load_backbone", "split_model", "ModelSource",
    "TrainingConfig", "FeatureExtractionConfig", "FineTuneConfig", "TrainAllConfig", "ScratchConfig", "LoRAConfig",
    "TlHubError", "ConfigError", "DataError", "ModelError", "OutputError", "TrainingError", "MissingDependency",
    "missing_dependency",
    "Classifier", "headline", "TrainedModel", "load", "push_to_hub", "export_for_hub", "EXPORTERS", "Exporter",
    "register_exporter", "Recipe", "FeatureExtractionRecipe", "FineTuneRecipe", "TrainAllRecipe", "ScratchRecipe",
    "LoRARecipe", "FitResult", "Period", "RECIPES", "get_recipe", "register_recipe", "head_period",
    "advise", "Advice", "Thresholds", "rank", "Ranking", "param_groups", "compare", "Comparison", "curve_summary",
    "audit", "AuditResult", "export", "ExportResult", "ExportError",
    "run_demo", "demo_model", "example_folder", "build_app", "example_images", "launch_app", "push_space",
    "check_output_dir",
    "is_main_process", "PROGRESS_LOGGER", "threads_for", "check_threads", "TransferTrainer", "TransferArguments",
]


def __getattr__(name: str):
    # the Trainer integration imports transformers.Trainer, which is slow: only when asked for
    if name in ("TransferTrainer", "TransferArguments"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'tl_hub' has no attribute {name!r}")
