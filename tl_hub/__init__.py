"""tl-hub: transfer learning for image classification on the Hugging Face stack.

Wrap any ``AutoModelForImageClassification`` checkpoint in a recipe, replace its head for your labels and
train it with Accelerate on one or many devices::

    from tl_hub import FineTuneRecipe
    recipe = FineTuneRecipe(model="google/vit-base-patch16-224-in21k", head_epochs=1, epochs=4, lr=1e-3)
    result = recipe.fit(train_ds, eval_ds)
    recipe.save("out/")
"""

__version__ = "0.1.0"

from .advisor import Advice, Thresholds, advise  # noqa: E402
from .backbone import Backbone, LayerGroup, ModelParts, load_backbone, split_model  # noqa: E402
from .config import FeatureExtractionConfig, FineTuneConfig, LoRAConfig, ScratchConfig, TrainingConfig  # noqa: E402
from .errors import ConfigError, DataError, ModelError, OutputError, TlHubError, TrainingError  # noqa: E402
from .compare import Comparison, compare, curve_summary  # noqa: E402
from .hub import load, push_to_hub  # noqa: E402
from .inference import Classifier  # noqa: E402
from .recipes import (  # noqa: E402
    RECIPES,
    FeatureExtractionRecipe,
    FineTuneRecipe,
    FitResult,
    LoRARecipe,
    Recipe,
    ScratchRecipe,
    get_recipe,
    register_recipe,
)

__all__ = [
    "__version__",
    "Backbone", "LayerGroup", "ModelParts", "load_backbone", "split_model",
    "TrainingConfig", "FeatureExtractionConfig", "FineTuneConfig", "ScratchConfig", "LoRAConfig",
    "TlHubError", "ConfigError", "DataError", "ModelError", "OutputError", "TrainingError",
    "Classifier", "load", "push_to_hub",
    "Recipe", "FeatureExtractionRecipe", "FineTuneRecipe", "ScratchRecipe", "LoRARecipe", "FitResult",
    "RECIPES", "get_recipe", "register_recipe",
    "advise", "Advice", "Thresholds", "compare", "Comparison", "curve_summary",
]
