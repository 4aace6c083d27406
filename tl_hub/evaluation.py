"""Evaluation over a data loader: loss, accuracy, macro-F1, per-class report and the most confident mistakes.

One function, `evaluate_loader`, used by the training loop after every epoch (`tl_hub.loop`) and by a trained
model's `tl_hub.inference.Classifier.evaluate`.  It works on prepared loaders of images or of cached features, in
one process or many (results gathered across processes), and on streamed data (each process evaluates its part).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import expected_calibration_error, reliability_bins
from .metrics import class_report, classification_metrics, multilabel_metrics
from .streaming import evaluation_model, gather_shards, is_streamed
from .structure import logits_of, model_inputs
from .tasks import is_multi_hot, probabilities, task_loss

ERROR_EXAMPLES = 16  # misclassified examples kept per evaluation (the most confident ones)


def forward_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """The logits of ``model`` on ``batch`` (a dict of model inputs; ``labels`` is left out of the call)."""
    return logits_of(model(**model_inputs(model, batch)))


def label_names(model: nn.Module) -> Optional[list[str]]:
    """The class names of a classifier (its config's ``id2label``; PEFT models: the base model's), or None."""
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = getattr(model.get_base_model(), "config", None)
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in range(len(id2label))] if id2label else None


@torch.inference_mode()
def evaluate_loader(accelerator, model: nn.Module, loader, *, progress: bool = False,
                    labels: Optional[Sequence[str]] = None, thresholds: Optional[Sequence[float]] = None) -> dict:
    """Loss and metrics over a prepared loader, gathered across processes (duplicates from uneven last batches
    removed by ``gather_for_metrics``).

    Single-label: accuracy, macro-F1 and balanced accuracy; with ``labels`` (the class names), also the per-class
    precision, recall, F1 and support and the confusion matrix (`tl_hub.metrics.class_report`) and the most
    confident mistakes.  Multi-label (multi-hot labels, `tl_hub.tasks`): mAP, macro and micro F1 and subset accuracy
    at ``thresholds`` (default 0.5 per label), with ``labels`` also per label (`tl_hub.metrics.multilabel_metrics`).
    The global RNG is left as it was (the loader draws from it), so evaluating does not change the training that
    follows."""
    with torch.random.fork_rng(devices=[]):
        logits, refs = gather_outputs(accelerator, model, loader, progress)
    return outputs_metrics(logits, refs, labels=labels, thresholds=thresholds,
                           with_errors=labels is not None and not is_streamed(loader))


@torch.no_grad()
def gather_outputs(accelerator, model: nn.Module, loader, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 logits and the labels of every example of a prepared loader, on the CPU, gathered from every
    process (a stream: each process evaluates its own part, of its own length, gathered once at the end)."""
    streamed = is_streamed(loader)
    model = evaluation_model(accelerator, model) if streamed else model
    model.eval()
    logits_parts, refs_parts = [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not (progress and accelerator.is_local_main_process)):
        outputs = (forward_logits(model, batch).float(), batch["labels"])
        logits, ref = outputs if streamed else accelerator.gather_for_metrics(outputs)
        logits_parts.append(logits.cpu()), refs_parts.append(ref.cpu())
    if not logits_parts:  # a stream's process may have no example of its own; gather_shards checks the others
        logits_parts, refs_parts = [torch.empty(0, len(label_names(model) or ()))], [torch.empty(0, dtype=torch.long)]
    logits_t, refs_t = torch.cat(logits_parts), torch.cat(refs_parts)
    if streamed:
        logits_t, refs_t = gather_shards(accelerator, (logits_t, refs_t))
    return logits_t, refs_t


def outputs_metrics(logits: torch.Tensor, refs: torch.Tensor, *, labels: Optional[Sequence[str]] = None,
                    thresholds: Optional[Sequence[float]] = None, with_errors: bool = False) -> dict:
    """The metrics of `evaluate_loader` from gathered logits and labels (class ids, or multi-hot rows)."""
    loss = task_loss(logits, refs, reduction="none")
    multi = is_multi_hot(refs)
    probs = probabilities(logits, multi)
    if multi:
        metrics = multilabel_metrics(probs.numpy(), refs.numpy(), thresholds=thresholds, labels=labels)
        metrics["loss"] = float(loss.mean())
        return {**metrics, **calibration_metrics(probs, refs, labels is not None)}
    confidence, preds = probs.max(-1)
    metrics = classification_metrics(preds.tolist(), refs.tolist())
    metrics["loss"] = float(loss.mean())
    metrics.update(calibration_metrics(probs, refs, labels is not None))
    if labels is not None:
        metrics.update(class_report(preds.tolist(), refs.tolist(), labels))
        if with_errors:  # positions in the dataset's order (a stream's shards are not)
            metrics["errors"] = confident_errors(preds, refs, confidence, labels)
    return metrics


def calibration_metrics(probs: torch.Tensor, refs: torch.Tensor, with_bins: bool) -> dict:
    """``{"ece"}`` (`tl_hub.calibration.expected_calibration_error`), with the reliability diagram's bins
    (``"reliability"``) when ``with_bins``."""
    probs_np, refs_np = probs.numpy(), refs.numpy()
    out = {"ece": expected_calibration_error(probs_np, refs_np)}
    if with_bins:
        out["reliability"] = reliability_bins(probs_np, refs_np)
    return out


def headline(metrics: dict) -> str:
    """The one-line summary of an evaluation: ``"accuracy 0.9120  f1 0.9050"``, with balanced accuracy when the
    classes are imbalanced enough for it to differ, or ``"mAP 0.8120  f1 0.7410 (micro 0.7800)"`` for multi-label."""
    if "mAP" in metrics:
        return f"mAP {metrics['mAP']:.4f}  f1 {metrics['f1']:.4f} (micro {metrics['f1_micro']:.4f})"
    text = f"accuracy {metrics['accuracy']:.4f}" + (f"  f1 {metrics['f1']:.4f}" if "f1" in metrics else "")
    balanced = metrics.get("balanced_accuracy")
    if balanced is not None and abs(balanced - metrics["accuracy"]) >= 0.005:
        text += f"  balanced accuracy {balanced:.4f}"
    return text


def confident_errors(preds: torch.Tensor, refs: torch.Tensor, confidence: torch.Tensor, labels: Sequence[str],
                     top: int = ERROR_EXAMPLES) -> list[dict]:
    """The ``top`` misclassified examples the model was most sure of: position in the evaluated data, true and
    predicted label, the predicted label's probability."""
    wrong = torch.nonzero(preds != refs).flatten()
    order = wrong[torch.argsort(confidence[wrong], descending=True, stable=True)][:top]
    return [{"index": int(i), "label": labels[int(refs[i])], "predicted": labels[int(preds[i])],
             "confidence": float(confidence[i])} for i in order]
