"""A trained classifier: a model, its image processor and its labels, with ``predict``."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import nn

from .data import as_images, is_single_image, preprocess
from .structure import first_parameter, logits_of, model_inputs
from .tasks import DEFAULT_THRESHOLD, decide, is_multi_label, probabilities
from .tta import ViewAveraged, ViewProcessor, check_tta, images_per_batch, mean_over_views


class Classifier:
    """Predicts labels for images with a trained model.

    Args:
        model (`nn.Module`): an image-classification model returning logits.
        processor: the image processor the model was trained with.
        labels (`Sequence[str]`, *optional*): class names in id order (default: ``model.config.id2label``).
        info (`dict`, *optional*): what tl-hub recorded about training (recipe, base model, metrics).

    Example:
        >>> clf = tl_hub.load("out/")
        >>> clf.predict("cat.jpg", top_k=2)
        [{'label': 'cat', 'score': 0.93}, {'label': 'dog', 'score': 0.05}]
    """

    def __init__(self, model: nn.Module, processor, labels: Optional[Sequence[str]] = None,
                 info: Optional[dict] = None):
        self.model = model.eval()
        self.processor = processor
        if labels is None:
            id2label = model.config.id2label
            labels = [id2label[i] for i in range(len(id2label))]
        self.labels = list(labels)
        self.info = info or {}

    @property
    def multi_label(self) -> bool:
        """Whether the model gives a set of labels per image (its config's ``problem_type``, `tl_hub.tasks`)."""
        return is_multi_label(self.model)

    @property
    def thresholds(self) -> Optional[list[float]]:
        """A multi-label model's decision threshold per label, in label order (chosen on validation when it was
        trained and saved in ``tl_hub.json``; 0.5 for a label without one); None for a single-label model."""
        if not self.multi_label:
            return None
        saved = self.info.get("thresholds") or {}
        return [float(saved.get(label, DEFAULT_THRESHOLD)) for label in self.labels]

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the CPU for a model without parameters, such as an ONNX Runtime session,
        `tl_hub.onnx_runtime`)."""
        first = first_parameter(self.model)
        return first.device if first is not None else torch.device("cpu")

    @torch.inference_mode()
    def predict_proba(self, images: Union[Any, Sequence[Any]], batch_size: int = 32,
                      tta: Optional[int] = None) -> torch.Tensor:
        """Class probabilities, shape ``(n_images, n_labels)``: a softmax over the classes, or for a multi-label
        model one sigmoid per label.

        ``tta=N`` (test-time augmentation): the mean of the probabilities over N deterministic views of each image
        that the model's training augmentation allows (`tl_hub.tta`; 1: the plain image only; default
        ``tl_hub.tta.DEFAULT_TTA``, 1, capped at the views the model allows). The views of a batch go through the
        model together; ``batch_size`` counts views, so memory stays as without TTA.

        While the model runs on one batch, a background thread reads and preprocesses the next (PIL and numpy
        release the GIL), so preprocessing overlaps the forward pass instead of adding to it."""
        views = self._views(tta)
        processor = self.processor if len(views) == 1 else ViewProcessor(self.processor, views)
        step = images_per_batch(batch_size, len(views))
        if not is_single_image(images):
            images = list(images)  # any iterable of images, as before (a generator has no slices)
        chunks = [images] if is_single_image(images) else [images[i:i + step] for i in range(0, len(images), step)]
        out, multi_label = [], self.multi_label
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._inputs, chunks[0], processor) if chunks else None
            for i in range(len(chunks)):
                inputs = pending.result()
                pending = pool.submit(self._inputs, chunks[i + 1], processor) if i + 1 < len(chunks) else None
                logits = logits_of(self.model(**model_inputs(self.model, inputs)))
                out.append(mean_over_views(probabilities(logits, multi_label), len(views)).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def _inputs(self, images, processor) -> dict:
        """The model inputs of a batch of images (any accepted form), on the model's device."""
        return {k: v.to(self.device) for k, v in preprocess(processor, as_images(images)).items()}

    def _views(self, tta: Optional[int]) -> list:
        """The test-time views ``tta`` asks for, checked against the model's training augmentation."""
        return check_tta(tta, self.info.get("settings"))

    def evaluate(self, data: Any, *, split: Optional[str] = None, image_column: Optional[str] = None,
                 label_column: Optional[str] = None, batch_size: int = 64, accelerator=None,
                 output_dir: Optional[str] = None, progress: bool = False, tta: Optional[int] = None) -> dict:
        """Metrics on ``data`` (a dataset, folder or Hub id, or a streamed ``IterableDataset``; its ``test`` split by
        default).

        Single-label: accuracy, macro-F1, balanced accuracy and loss, with per-class precision, recall, F1 and
        support (``"per_class"``, by label name) and the confusion matrix (``"confusion_matrix"``: rows true labels,
        columns predicted, label order).  Multi-label: mAP, macro and micro F1 and subset accuracy at the model's
        `thresholds`, with per-label precision, recall, F1, average precision and threshold (``"per_label"``).
        Both: the expected calibration error over 15 bins (``"ece"``) and the reliability diagram's bins
        (``"reliability"``); for a model calibrated when it was trained, ``"calibration"``: the ECE and NLL of the
        same outputs without and with its temperature (`tl_hub.calibration`; not with ``tta`` above 1).

        Labels are matched to the model's by name; columns default to those used in training, else detected.
        With ``output_dir``, the metrics are also written there as ``metrics.json`` and the confusion matrix as
        ``confusion_matrix.png`` (multi-label: ``per_label.png``), with ``reliability.png``; ``progress`` shows a
        progress bar.

        ``tta=N`` evaluates the mean probabilities over N views of each image (see `predict_proba`); the loss and
        metrics are those of the averaged probabilities, and ``"tta"`` records N.
        """
        from .calibration import before_and_after
        from .evaluation import outputs_metrics

        logits, refs, ds, img_col = self.outputs(data, split=split, image_column=image_column,
                                                 label_column=label_column, batch_size=batch_size,
                                                 accelerator=accelerator, progress=progress, tta=tta)
        metrics = outputs_metrics(logits, refs, labels=self.labels, thresholds=self.thresholds,
                                  with_errors=ds is not None)
        views = len(self._views(tta))
        # the same outputs without the model's temperature; not for averaged views, whose mean probability
        # without the temperature is not their logits times it
        comparison = before_and_after(logits, refs, self.info.get("calibration")) if views == 1 else None
        if comparison is not None:
            metrics["calibration"] = comparison
        metrics["tta"] = views
        return _written(metrics, output_dir, ds, img_col)

    def outputs(self, data: Any, *, split: Optional[str] = None, image_column: Optional[str] = None,
                label_column: Optional[str] = None, batch_size: int = 64, accelerator=None,
                progress: bool = False,
                tta: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, Any, Optional[str]]:
        """The logits and labels of every example of ``data`` (as `evaluate` reads it), gathered from every process:
        ``(logits, labels, dataset, image_column)``; the dataset is None for a stream.  With ``tta=N``, the logits
        of each image's mean probabilities over its N views (their log, or for a multi-label model their logit)."""
        from .data import ImageClassificationDataset, ImageCollator, make_loader, prepare_eval_data
        from .evaluation import gather_outputs
        from .runtime import make_accelerator, release_prepared
        from .streaming import evaluation_stream_loader, is_stream

        views = self._views(tta)
        processor = self.processor if len(views) == 1 else ViewProcessor(self.processor, views)
        accelerator = accelerator or make_accelerator()
        batch_size = images_per_batch(batch_size, len(views), accelerator.num_processes)  # counts views
        image_column = image_column or self.info.get("image_column")
        label_column = label_column or self.info.get("label_column")
        ds = img_col = None
        if is_stream(data):  # read once, process by process (see tl_hub.streaming)
            loader = evaluation_stream_loader(accelerator, processor, data, self.labels, split=split,
                                              image_column=image_column, label_column=label_column,
                                              batch_size=batch_size)
        else:
            ds, img_col, lbl_col = prepare_eval_data(data, self.labels, image_column=image_column,
                                                     label_column=label_column, split=split, fallback=True,
                                                     multi_label=self.multi_label)
            loader = make_loader(ImageClassificationDataset(ds, img_col, lbl_col), batch_size,
                                 collate_fn=ImageCollator(processor))
        model = self.model if len(views) == 1 else ViewAveraged(self.model, len(views), self.multi_label)
        if first_parameter(model) is None:  # a runtime session: nothing to place or wrap
            loader = accelerator.prepare(loader)
        else:
            model, loader = accelerator.prepare(model, loader)
        logits, refs = gather_outputs(accelerator, model, loader, progress=progress)
        release_prepared(accelerator)
        return logits, refs, ds, img_col

    def predict(self, images: Union[Any, Sequence[Any]], top_k: Optional[int] = None, batch_size: int = 32,
                tta: Optional[int] = None):
        """The predicted labels with their scores.

        Args:
            images: one image or a list (PIL images, numpy arrays, file paths or bytes).
            top_k (`int`, *optional*): single-label: how many labels per image (default 1, the best); multi-label:
                at most this many of the labels over their threshold (default: all of them).
            tta (`int`, *optional*): test-time augmentation: the scores are the mean probabilities over this many
                views of each image drawn from the model's training augmentation (see `predict_proba`).

        Returns:
            For one image, a list of ``{"label", "score"}`` dicts (best first); for a list, one such list per image.
            A multi-label model gives every label whose probability reaches its threshold (`thresholds`), which may
            be none.
        """
        single = is_single_image(images)
        probs = self.predict_proba(images, batch_size=batch_size, tta=tta)
        if self.multi_label:
            chosen = [row[:top_k] if top_k else row for row in decide(probs, self.thresholds)]
        else:
            k = max(1, min(int(top_k or 1), len(self.labels)))
            chosen = probs.topk(k, dim=-1).indices.tolist()
        results = [[{"label": self.labels[j], "score": float(row[j])} for j in picked]
                   for row, picked in zip(probs, chosen)]
        return results[0] if single else results


def _written(metrics: dict, output_dir: Optional[str], ds=None, image_column: Optional[str] = None) -> dict:
    """``metrics``, also written to ``output_dir`` (``metrics.json``, ``confusion_matrix.png``, and with the
    evaluated dataset ``errors.png``: its most confidently misclassified images) when given; only the main process
    writes."""
    if output_dir is None:
        return metrics
    from .data import images_at
    from .outputs import atomic_path, write_json
    from .plots import plot_confusion_matrix, plot_errors, plot_per_label, plot_reliability
    from .runtime import is_main_process

    if is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        write_json(os.path.join(output_dir, "metrics.json"), metrics)
        if "confusion_matrix" in metrics:
            with atomic_path(os.path.join(output_dir, "confusion_matrix.png")) as tmp:
                plot_confusion_matrix(metrics["confusion_matrix"], list(metrics["per_class"]), tmp)
        if "per_label" in metrics:
            with atomic_path(os.path.join(output_dir, "per_label.png")) as tmp:
                plot_per_label(metrics["per_label"], tmp)
        if "reliability" in metrics:
            with atomic_path(os.path.join(output_dir, "reliability.png")) as tmp:
                plot_reliability(metrics["reliability"], tmp,
                                 before=(metrics.get("calibration") or {}).get("reliability_before"))
        if ds is not None and "errors" in metrics:
            errors = metrics["errors"]
            examples = list(zip(images_at(ds, image_column, [e["index"] for e in errors]), errors))
            with atomic_path(os.path.join(output_dir, "errors.png")) as tmp:
                plot_errors(examples, tmp, title="Most confident mistakes")
    return metrics
