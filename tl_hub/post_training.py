"""The steps between a run's last epoch and its saved model, each decided on the validation split:

1. weight-space ensembling with the run's start (`tl_hub.wise_ft`), for runs that have one;
2. a temperature, folded into the head (`tl_hub.calibration`), the folding checked on one batch;
3. for a multi-label model, one decision threshold per label, on the calibrated probabilities.

`finalize` runs them and returns the final model's validation metrics with what each step decided.  They cost
validation passes only: one per WiSE-FT α (the chosen one's outputs are reused), else one, plus
`FOLD_CHECK_IMAGES` images to check the folded temperature; a run whose encoder did not train reads the cached
validation features instead (no encoder pass).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from .calibration import (
    before_and_after,
    calibration_figures,
    calibration_record,
    fit_temperature,
    folds_correctly,
    logit_layers,
    scale_layers,
)
from .evaluation import outputs_metrics
from .tasks import selection_key
from .wise_ft import candidate_alphas, choose, load_alpha, snapshot

logger = logging.getLogger(__name__)

FOLD_CHECK_IMAGES = 8  # validation images run again to check the folded temperature


class ValidationOutputs:
    """The validation logits and labels of the classifier as it is now, and whether the split is a dataset (not a
    stream), so that its mistakes can be shown.

    Through the model on the images; or, given ``cached`` (the head over cached features and the cached validation
    features, `tl_hub.features`) while the encoder is still the pretrained one, through the head alone, with no
    encoder pass."""

    def __init__(self, classifier, run, cached: Optional[tuple] = None):
        self.classifier, self.run, self.cached = classifier, run, cached
        self.current = None  # the outputs of the model as it is now, when a step has computed them

    def remember(self, outputs: Optional[tuple]) -> None:
        """Keep ``outputs`` as those of the model as it is now (None: they are not known)."""
        self.current = outputs

    def now(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The outputs of the model as it is now: those remembered, else computed."""
        return self.current if self.current is not None else self()

    def __call__(self, *, images: bool = False, first: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The logits and labels (of the ``first`` validation examples only, when given and the split is a dataset),
        and whether the split is a dataset; ``images`` forces the pass through the model."""
        if self.cached is not None and not images:
            logits, refs = head_logits(*self.cached, self.run.config.eval_batch_size)
            return (logits[:first], refs[:first], True) if first else (logits, refs, True)
        data, run = self.run.data, self.run
        validation = data.validation
        if first is not None and hasattr(validation, "select") and len(validation) > first:
            validation = validation.select(range(first))
        logits, refs, ds, _ = self.classifier.outputs(validation, image_column=data.image_column,
                                                      label_column=data.label_column,
                                                      batch_size=run.config.eval_batch_size,
                                                      accelerator=run.accelerator)
        return logits, refs, ds is not None


@torch.no_grad()
def head_logits(module: torch.nn.Module, cached, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the head ``module`` over the plain view of cached features, and their labels."""
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    features = cached.features[0]
    parts = [module(torch.as_tensor(features[i:i + batch_size]).to(device)).float().cpu()
             for i in range(0, features.shape[0], batch_size)]
    module.train(was_training)
    return (torch.cat(parts) if parts else torch.empty(0)), cached.labels


def apply_wise_ft(classifier, run, start: Optional[dict], outputs: ValidationOutputs) -> Optional[dict]:
    """Put the chosen θ(α) into the classifier's model (`tl_hub.wise_ft`); return what the record keeps: the
    setting, the α kept and, when α was chosen, each candidate's validation score and loss.  None for recipes
    without the setting."""
    setting = getattr(run.config, "wise_ft", None)
    if setting is None:
        return None
    if setting == "off":
        return {"setting": "off", "applied": False}
    if start is None:
        return {"setting": setting, "applied": False,
                "reason": "the run has no start to interpolate from (no head period before fine-tuning, or it "
                          "resumed after that period)"}
    model = classifier.model
    end = snapshot(model, list(start))
    if all(torch.equal(start[k], end[k]) for k in start):
        return {"setting": setting, "applied": False, "alpha": 1.0,
                "reason": "the kept weights are the start's (the best epoch was the head period's)"}
    alphas = candidate_alphas(setting)
    grid, seen = [], {}
    for alpha in alphas if len(alphas) > 1 else ():
        load_alpha(model, start, end, alpha)
        seen[alpha] = outputs(images=True)
        metrics = outputs_metrics(*seen[alpha][:2])
        key = selection_key(metrics, balanced=run.class_weight is not None)
        grid.append({"alpha": alpha, "score": key[0], "loss": metrics["loss"], "key": key})
    alpha = choose([(g["alpha"], g.pop("key")) for g in grid]) if grid else alphas[0]
    load_alpha(model, start, end, alpha)
    outputs.remember(seen.get(alpha))
    if run.is_main_process and grid:
        logger.info("WiSE-FT: kept alpha=%.2f of %s on validation", alpha,
                    ", ".join(f"{g['alpha']:.2f}: {g['score']:.4f}" for g in grid))
    return {"setting": setting, "applied": True, "alpha": alpha, "grid": grid,
            "chosen_by": "validation" if grid else "setting"}


def calibrate(classifier, run, logits: torch.Tensor, refs: torch.Tensor,
              outputs: ValidationOutputs) -> tuple[Optional[dict], torch.Tensor]:
    """Fit the temperature on the validation ``logits`` and fold it into the head (`tl_hub.calibration`); return
    the record's ``calibration`` entry and the validation logits of the calibrated model.  The head is left as it
    was when its logits are not one layer's output (checked on the validation logits)."""
    temperature = fit_temperature(logits, refs)
    model, parts = classifier.model, run.backbone.parts
    layers = logit_layers(model, parts.head, len(classifier.labels))
    saved = [{k: v.detach().clone() for k, v in layer.state_dict().items()} for layer in layers]
    scale_layers(layers, 1.0 / temperature)
    # the folding checked on one batch: the logits of the first images must be the earlier ones divided by T
    check = outputs(first=FOLD_CHECK_IMAGES)[0] if layers else None
    if check is None or not folds_correctly(logits[:len(check)], check, temperature):
        for layer, state in zip(layers, saved):
            layer.load_state_dict(state)
        if run.is_main_process:
            logger.warning("Calibration skipped: the head's logits are not the output of one linear layer, so the "
                           "temperature cannot be folded into it.")
        return {"temperature": 1.0, "folded_into_head": False,
                "reason": "the logits are not the output of one layer of the head"}, logits
    after = logits / temperature
    record = calibration_record(temperature, calibration_figures(logits, refs), calibration_figures(after, refs),
                                folded=True, fitted_on=len(refs))
    if run.is_main_process:
        v = record["validation"]
        logger.info("Calibrated on %d validation images: temperature %s%s, ECE %.3f -> %.3f, NLL %.3f -> %.3f",
                    len(refs), _temperature_text(record["temperature"]),
                    " (no significant gain over 1)" if bool((temperature == 1).all()) else "",
                    v["ece_before"], v["ece_after"], v["nll_before"], v["nll_after"])
    return record, after


def _temperature_text(value) -> str:
    if isinstance(value, list):
        return f"{min(value):.2f}-{max(value):.2f} (per label)"
    return f"{value:.3f}"


def finalize(classifier, run, start: Optional[dict], cached: Optional[tuple] = None) -> Optional[dict]:
    """Run the steps after training (WiSE-FT, calibration, multi-label thresholds) on the classifier; return the
    final model's validation metrics with ``"wise_ft"`` and ``"calibration"`` (what each step decided, also written
    into ``classifier.info``), or None when no step ran (the kept epoch's metrics stand).  ``cached``: the head
    over cached features and the cached validation features, for a run whose encoder did not train."""
    outputs = ValidationOutputs(classifier, run, cached)
    wise = apply_wise_ft(classifier, run, start, outputs)
    calibrating = run.config.calibrate and run.data.validation_size() != 0
    if not (calibrating or classifier.multi_label or (wise or {}).get("applied")):
        classifier.info.update(wise_ft=wise, calibration=None)
        return None
    logits, refs, positions = outputs.now()
    calibration = None
    if calibrating and len(refs):
        calibration, logits = calibrate(classifier, run, logits, refs, outputs)
    classifier.info.update(wise_ft=wise, calibration=calibration)
    if classifier.multi_label:
        choose_label_thresholds(classifier, run, logits, refs)
    metrics = outputs_metrics(logits, refs, labels=classifier.labels, thresholds=classifier.thresholds,
                              with_errors=positions)
    comparison = before_and_after(logits, refs, calibration)
    return {**metrics, **({"calibration": comparison} if comparison else {}), "wise_ft": wise,
            "calibration_record": calibration}


def choose_label_thresholds(classifier, run, logits: torch.Tensor, refs: torch.Tensor) -> None:
    """A multi-label classifier's decision threshold per label, chosen on the validation outputs to maximise each
    label's F1 (`tl_hub.metrics.choose_thresholds`; a label without a validation positive keeps the default) and
    recorded in ``classifier.info["thresholds"]``."""
    from .metrics import choose_thresholds
    from .tasks import DEFAULT_THRESHOLD, probabilities

    labels = classifier.labels
    thresholds, fell_back = choose_thresholds(probabilities(logits, True).numpy(), refs.numpy(),
                                              default=DEFAULT_THRESHOLD)
    if fell_back and run.is_main_process:
        logger.warning("%d label(s) have no validation image (%s): their decision threshold stays %.2f.",
                       len(fell_back), [labels[i] for i in fell_back][:5], DEFAULT_THRESHOLD)
    classifier.info["thresholds"] = {label: float(t) for label, t in zip(labels, thresholds)}
