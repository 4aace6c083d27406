"""Transfer-learning recipes for any ``AutoModelForImageClassification`` checkpoint (base class: `tl_hub.recipe`).

- `FeatureExtractionRecipe`: the pretrained encoder is frozen (``requires_grad=False`` and eval mode, so
  BatchNorm statistics and dropout do not change; no autograd graph is built through it); a new head trains.
- `FineTuneRecipe`: period 1 is exactly feature extraction of the new head (LP-FT, Kumar et al. 2022);
  period 2 unfreezes all or the top ``unfreeze`` blocks with discriminative or layer-wise LRs.
- `TrainAllRecipe`: every group trains from the start at one learning rate, initialised from the pretrained weights.
- `ScratchRecipe`: the same architecture randomly initialised, all parameters trained: the baseline.
- `LoRARecipe`: low-rank updates of the encoder's linear layers and a new head, through PEFT.

Example:
    >>> recipe = FineTuneRecipe("google/vit-base-patch16-224-in21k")
    >>> result = recipe.fit(train_ds, eval_ds)
    >>> recipe.evaluate(test_ds); recipe.predict([image]); recipe.save("out/")
"""

from __future__ import annotations

from .backbone import Backbone
from .config import (
    FeatureExtractionConfig,
    FineTuneConfig,
    LoRAConfig,
    ScratchConfig,
    TrainAllConfig,
    TrainingConfig,
)
from .errors import ConfigError
from .loop import Period
from .param_groups import (
    discriminative_param_groups,
    encoder_batchnorms,
    fine_tune_eval_modules,
    full_param_groups,
    groups_to_unfreeze,
    head_param_groups,
    layer_decay_param_groups,
    lora_targets,
    named_param_groups,
)
from .recipe import Recipe, register_recipe


def head_period(backbone: Backbone, epochs: int, lr: float, weight_decay: float) -> Period:
    """Only the new head trains, on the frozen encoder (its features may be cached)."""
    parts = backbone.parts
    return Period("head", epochs, head_param_groups(backbone.model, parts, lr, weight_decay),
                  eval_modules=parts.body, head_only=True, info={"trains": ["head"]})


@register_recipe("feature-extraction")
class FeatureExtractionRecipe(Recipe):
    """Train only a new head on the frozen pretrained encoder (small data, similar task).

    The encoder's parameters have ``requires_grad=False`` and the encoder stays in eval mode, so its weights
    and BatchNorm statistics are exactly the pretrained ones after training.
    """

    config_class = FeatureExtractionConfig
    card_text = "the pretrained encoder was frozen and a new head was trained on its features."

    def periods(self, backbone: Backbone, config: TrainingConfig) -> list[Period]:
        """One period: the new head on the frozen encoder, for ``epochs``."""
        cfg = config
        return [head_period(backbone, cfg.epochs, cfg.lr, cfg.weight_decay)]


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
    card_text = ("a new head was trained on the frozen encoder, then encoder groups were unfrozen with smaller "
                 "learning rates.")

    def periods(self, backbone: Backbone, config: TrainingConfig) -> list[Period]:
        """The head period (``head_epochs``), then the unfrozen groups at their learning rates."""
        cfg = config
        model, parts = backbone.model, backbone.parts
        head = head_period(backbone, cfg.head_epochs, cfg.head_lr or cfg.lr, cfg.weight_decay)
        unfrozen = groups_to_unfreeze(parts, cfg.unfreeze)
        if cfg.layer_decay is not None:
            groups = layer_decay_param_groups(model, parts, cfg.lr, cfg.layer_decay, cfg.weight_decay, cfg.unfreeze)
        else:
            groups = discriminative_param_groups(model, parts, cfg.lr, cfg.backbone_lr_ratio, cfg.weight_decay,
                                                 cfg.unfreeze)
        tune = Period("fine-tune", cfg.epochs - cfg.head_epochs, groups,
                      eval_modules=fine_tune_eval_modules(model, parts, cfg.unfreeze, cfg.bn_policy),
                      info={"trains": ["head"] + [g.name for g in unfrozen], "bn_policy": cfg.bn_policy})
        return [head, tune]


@register_recipe("train-all")
class TrainAllRecipe(FineTuneRecipe):
    """Train every parameter from the start, initialised from the pretrained weights (large data, different task):
    fine-tuning with no head period and one learning rate for all groups (`TrainAllConfig`)."""

    config_class = TrainAllConfig
    card_text = "every parameter was trained, starting from the pretrained weights."


@register_recipe("scratch")
class ScratchRecipe(Recipe):
    """The same architecture, randomly initialised and trained fully: the baseline for transfer."""

    config_class = ScratchConfig
    pretrained = False
    card_text = "the architecture was trained from random initialisation."

    def periods(self, backbone: Backbone, config: TrainingConfig) -> list[Period]:
        """One period: every parameter, from random initialisation, at ``lr``."""
        cfg = config
        return [Period("full", cfg.epochs, full_param_groups(backbone.model, cfg.lr, cfg.weight_decay, backbone.parts),
                       info={"trains": ["all"]})]


@register_recipe("lora")
class LoRARecipe(Recipe):
    """LoRA on the encoder's linear projections (attention and MLP, found generically) and a new head, through PEFT.

    The encoder's weights stay frozen; low-rank updates of rank ``lora_r`` are trained in every linear layer of
    the encoder blocks, and the head is a PEFT ``modules_to_save`` module, so the saved adapter is a standard PEFT
    adapter that carries the new head.  BatchNorm layers of the encoder stay in eval mode.
    """

    config_class = LoRAConfig
    card_text = ("low-rank (LoRA) updates of the encoder's linear layers and a new head were trained; the pretrained "
                 "weights stayed frozen.")

    def periods(self, backbone: Backbone, config: TrainingConfig) -> list[Period]:
        """One period: LoRA adapters on the encoder blocks' linear layers and the new head (the model becomes a
        PEFT model)."""
        from peft import LoraConfig, get_peft_model

        cfg, model, parts = config, backbone.model, backbone.parts
        targets = lora_targets(model, parts)
        if not targets:
            raise ConfigError(f"{type(model).__name__} has no linear layers in its encoder blocks for LoRA; use "
                              "fine-tune with unfreeze=k instead.")
        bn = encoder_batchnorms(model, parts, prefix="base_model.model.")
        backbone.model = peft_model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
            modules_to_save=list(parts.head)))
        trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        groups = named_param_groups(peft_model, "lora+head", trainable, cfg.lr, cfg.weight_decay)
        return [Period("lora", cfg.epochs, groups, eval_modules=tuple(bn),
                       info={"trains": ["lora", "head"], "lora_targets": len(targets)})]
