"""Evaluation over a data loader: loss, accuracy, macro-F1, per-class report and the most confident mistakes.

One function, `evaluate_loader`, used by the training loop after every epoch (`tl_hub.loop`) and by a trained
model's `tl_hub.inference.Classifier.evaluate`.  It works on prepared loaders of images or of cached features, in
one process or many (results gathered across processes), and on streamed data (each process evaluates its part).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .metrics import class_report, classification_metrics
from .streaming import evaluation_model, gather_shards, is_streamed
from .structure import logits_of, model_inputs

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
                    labels: Optional[Sequence[str]] = None) -> dict:
    """Loss, accuracy and macro-F1 over a prepared loader, gathered across processes (duplicates from
    uneven last batches removed by ``gather_for_metrics``); with ``labels`` (the class names), also the per-class
    precision, recall, F1 and support and the confusion matrix (`tl_hub.metrics.class_report`).  The global RNG is
    left as it was (the loader draws from it), so evaluating does not change the training that follows."""
    with torch.random.fork_rng(devices=[]):
        return _evaluate(accelerator, model, loader, progress, labels)


def _evaluate(accelerator, model: nn.Module, loader, progress: bool, labels: Optional[Sequence[str]] = None) -> dict:
    # a stream: each process evaluates its own part, of its own length, and the results are gathered once at the end
    streamed = is_streamed(loader)
    model = evaluation_model(accelerator, model) if streamed else model
    model.eval()
    preds, refs, losses, confidences = ([torch.empty(0, dtype=torch.long)], [torch.empty(0, dtype=torch.long)],
                                        [torch.empty(0)], [torch.empty(0)])
    for batch in tqdm(loader, desc="eval", leave=False, disable=not (progress and accelerator.is_local_main_process)):
        logits = forward_logits(model, batch).float()
        loss = F.cross_entropy(logits, batch["labels"], reduction="none")
        confidence, pred = logits.softmax(-1).max(-1)
        outputs = (pred, batch["labels"], loss, confidence)
        pred, ref, item_loss, confidence = outputs if streamed else accelerator.gather_for_metrics(outputs)
        preds.append(pred.cpu()), refs.append(ref.cpu()), losses.append(item_loss.cpu())
        confidences.append(confidence.cpu())
    preds_t, refs_t, losses_t, conf_t = torch.cat(preds), torch.cat(refs), torch.cat(losses), torch.cat(confidences)
    if streamed:
        preds_t, refs_t, losses_t, conf_t = gather_shards(accelerator, (preds_t, refs_t, losses_t, conf_t))
    metrics = classification_metrics(preds_t.tolist(), refs_t.tolist())
    metrics["loss"] = float(losses_t.mean())
    if labels is not None:
        metrics.update(class_report(preds_t.tolist(), refs_t.tolist(), labels))
        if not streamed:  # positions in the dataset's order (a stream's shards are not)
            metrics["errors"] = confident_errors(preds_t, refs_t, conf_t, labels)
    return metrics


def confident_errors(preds: torch.Tensor, refs: torch.Tensor, confidence: torch.Tensor, labels: Sequence[str],
                     top: int = ERROR_EXAMPLES) -> list[dict]:
    """The ``top`` misclassified examples the model was most sure of: position in the evaluated data, true and
    predicted label, the predicted label's probability."""
    wrong = torch.nonzero(preds != refs).flatten()
    order = wrong[torch.argsort(confidence[wrong], descending=True, stable=True)][:top]
    return [{"index": int(i), "label": labels[int(refs[i])], "predicted": labels[int(preds[i])],
             "confidence": float(confidence[i])} for i in order]
