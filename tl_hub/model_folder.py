"""The model folder: what a trained model is on disk and on the Hub, with ONE class to save, load and push it.

`TrainedModel` follows huggingface_hub's ``ModelHubMixin``: ``save`` writes a folder, ``load`` reads one (local or
from the Hub), ``push`` saves the shareable form to a temporary folder and uploads it in one commit.  A folder
holds (names in `tl_hub.filenames`):

- the weights, written by the exporter of the training kind (see `tl_hub.exporters`) and ``config.json``;
- ``preprocessor_config.json``: the base model's image processor;
- ``tl_hub.json``: the training record (recipe, base model and commit, settings, labels, what was trained);
- ``metrics.json``, ``history.json`` and ``learning_curve.png``.

Example:
    >>> trained = TrainedModel.load("runs/beans")           # or a Hub repo id
    >>> trained.classifier.predict("leaf.jpg", top_k=2)
    >>> trained.push("your-name/vit-beans")
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Optional, Union

from .backbone import load_backbone, load_image_processor
from .config import ModelSource
from .errors import ConfigError, ModelError, installed
from .exporters import exporter_for, exporter_in
from .filenames import (
    CARD_FILE,
    CONFIG_FILE,
    CONFUSION_FILE,
    CURVE_FILE,
    ERRORS_FILE,
    HISTORY_FILE,
    INFO_FILE,
    METRICS_FILE,
    ONNX_FOLDER,
    PER_LABEL_FILE,
    PREPROCESSOR_FILE,
    RELIABILITY_FILE,
)
from .hub import base_of, download, model_card, upload_model
from .inference import Classifier
from .onnx_export import PARITY_TOLERANCE, ExportResult, check_export, write_export
from .onnx_runtime import OnnxModel, is_onnx_folder, onnx_model
from .outputs import atomic_output_dir, read_json, write_json
from .plots import plot_confusion_matrix, plot_learning_curves, plot_per_label, plot_reliability
from .tasks import set_problem_type

logger = logging.getLogger(__name__)


class TrainedModel:
    """A trained classifier with its training record, metrics and history.

    Args:
        classifier (`Classifier`): the model, its image processor and labels; ``classifier.info`` is the record.
        metrics (`dict`, *optional*): ``{"validation": {...}, "test": {...}}``.
        history (`list[dict]`, *optional*): one record per epoch.
        source (`str`, *optional*): where it was loaded from (for messages).
        figures (`dict`, *optional*): file name -> PNG bytes of figures made at training time (``errors.png``).
    """

    def __init__(self, classifier: Classifier, *, metrics: Optional[dict] = None,
                 history: Optional[list[dict]] = None, source: Optional[str] = None,
                 figures: Optional[dict[str, bytes]] = None):
        self.classifier = classifier
        self.metrics = metrics or {}
        self.history = history or []
        self.source = source
        self.figures = figures or {}  # PNG files written as they are (e.g. the grid of mistakes, errors.png)

    @property
    def record(self) -> dict:
        """What ``tl_hub.json`` holds (``classifier.info`` without the metrics)."""
        return {k: v for k, v in self.classifier.info.items() if k != "metrics"}

    @property
    def kind(self) -> str:
        """The exporter kind of what training changed (``"head"``, ``"full"``, ``"lora"``, ...)."""
        return (self.record.get("trained") or {}).get("kind", "full")

    def save(self, path: str, *, overwrite: bool = False, shareable: bool = False) -> dict:
        """Write the model folder to ``path`` (through a temporary folder renamed into place); return its record.

        ``shareable``: the form pushed to the Hub, with only what training changed when that is not everything.
        """
        if isinstance(self.classifier.model, OnnxModel):
            raise ModelError(f"'{self.source}' is an ONNX export, run by ONNX Runtime; copy its folder as it is, or "
                             "export the trained model folder again with `tl-hub export`.")
        exporter = exporter_for(self.kind, shareable=shareable)
        with atomic_output_dir(path, overwrite=overwrite) as tmp:
            record = {**self.record,
                      "export": exporter.save(self.classifier.model, tmp, self.record.get("trained") or {})}
            self.classifier.processor.save_pretrained(tmp)
            write_json(os.path.join(tmp, INFO_FILE), record)
            if self.metrics:
                write_json(os.path.join(tmp, METRICS_FILE), self.metrics)
            if self.history:
                write_json(os.path.join(tmp, HISTORY_FILE), self.history)
                name = record.get("recipe", "model")
                plot_learning_curves({name: self.history}, os.path.join(tmp, CURVE_FILE),
                                     title=f"{name} on {base_of(record)[1]}")
            validation = (self.metrics or {}).get("validation") or {}
            if validation.get("confusion_matrix"):
                plot_confusion_matrix(validation["confusion_matrix"], list(validation["per_class"]),
                                      os.path.join(tmp, CONFUSION_FILE), title="Validation confusion matrix")
            if validation.get("per_label"):
                plot_per_label(validation["per_label"], os.path.join(tmp, PER_LABEL_FILE))
            for name, png in self.figures.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(png)
            figures = sorted(self.figures) + ([RELIABILITY_FILE] if self._plot_reliability(tmp) else [])
            # the model card the Hub shows, so that the folder can be uploaded with any tool
            model_card({**record, "metrics": self.metrics, "figures": figures},
                       os.path.basename(os.path.normpath(path))).save(
                os.path.join(tmp, CARD_FILE))
        return record

    def _plot_reliability(self, folder: str) -> bool:
        """Write the reliability diagram of the test split (else validation) to ``folder``; whether it was."""
        metrics = self.metrics or {}
        split, which = next(((metrics[k], k) for k in ("test", "validation") if (metrics.get(k) or {}).get(
            "reliability")), (None, None))
        if split is None:
            return False
        plot_reliability(split["reliability"], os.path.join(folder, RELIABILITY_FILE),
                         before=(split.get("calibration") or {}).get("reliability_before"),
                         title=f"Reliability diagram ({which})")
        return True

    @classmethod
    def load(cls, source: Union[str, ModelSource], *, token=None, require_record: bool = False,
             base_model: Optional[str] = None, runtime: str = "pytorch", **options: Any) -> TrainedModel:
        """Load a model folder or Hub repo written by tl-hub (or any image-classification model folder).

        Args:
            source: a folder, a Hub repo id, or a `ModelSource` (revision, cache_dir, trust_remote_code, ...);
                the options also apply to the base model that head-only and adapter folders load.
            token (*optional*): Hub token (default: ``HF_TOKEN`` or the stored login).
            require_record: refuse folders without ``tl_hub.json`` (those not written by tl-hub).
            base_model (*optional*): the base model of a head-only or adapter folder, instead of the one its record
                names (required when a downloaded repository names a local folder as its base).
            runtime: for a model that also holds an ONNX export (``onnx/``, pushed with ``onnx=True``):
                ``"pytorch"`` (the default), ``"onnx"`` (ONNX Runtime; an error without an export) or ``"auto"``
                (ONNX Runtime when there is an export and onnxruntime is installed).  A folder written by
                `tl_hub.export` always runs on ONNX Runtime.
        """
        source = ModelSource.of(source, **options)
        folder = runtime_folder(download(source, token), runtime, source.id)
        record = _read_record(folder, require_record)
        if not os.path.exists(os.path.join(folder, CONFIG_FILE)):
            raise ModelError(f"'{folder}' has no {CONFIG_FILE}; pass the output folder of `tl-hub train`.")
        labels = record.get("labels")
        if is_onnx_folder(folder):  # written by tl_hub.export: run by ONNX Runtime
            from transformers import AutoConfig

            model = onnx_model(folder, AutoConfig.from_pretrained(folder))
        else:
            exporter = exporter_in(folder, record)
            _refuse_pickles(folder, exporter, source)
            model = exporter.load(folder, record, lambda: _base_model(record, source, folder, base_model))
        config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
        set_problem_type(config, bool(record.get("multi_label")))  # an adapter's base config does not say it
        if labels is not None and [config.id2label[i] for i in range(len(config.id2label))] != list(labels):
            raise ModelError(f"The labels of '{source.id}' do not match its head.")
        processor = (load_image_processor(folder) if os.path.exists(os.path.join(folder, PREPROCESSOR_FILE))
                     else load_image_processor(ModelSource.of(source, id=record["base_model"])))
        metrics = _read_optional(folder, METRICS_FILE, {})
        history = _read_optional(folder, HISTORY_FILE, [])
        figures = {}
        if os.path.exists(os.path.join(folder, ERRORS_FILE)):
            with open(os.path.join(folder, ERRORS_FILE), "rb") as f:
                figures[ERRORS_FILE] = f.read()
        classifier = Classifier(model, processor, labels, info={**record, "metrics": metrics})
        return cls(classifier, metrics=metrics, history=history, source=source.id, figures=figures)

    def push(self, repo_id: str, *, private: Optional[bool] = None, token=None, commit_message: Optional[str] = None,
             overwrite_card: bool = False, dataset_name: Optional[str] = None, onnx: bool = False) -> str:
        """Upload the shareable form to ``repo_id`` in one commit, with a model card; return the commit URL.

        An existing README.md in the repository is kept unless ``overwrite_card=True``.  ``onnx=True`` also
        uploads the model exported to ONNX (`tl_hub.export`, fp32, parity-checked) under ``onnx/``: the whole model
        (16.7 MB for EfficientNet-Lite0), which the Space then serves through ONNX Runtime.
        """
        with tempfile.TemporaryDirectory(prefix="tl_hub_push_") as tmp:
            folder = os.path.join(tmp, "export")
            record = self.save(folder, shareable=True)  # checks the model before contacting the Hub
            if onnx:
                check_export("onnx", None, None, PARITY_TOLERANCE, os.path.join(folder, ONNX_FOLDER), False)
                exported = write_export(self, os.path.join(folder, ONNX_FOLDER))
                logger.info("Including the ONNX export (%.1f MB, largest logit difference to PyTorch %.1e)",
                            exported.size_bytes / 1e6, exported.parity["fp32"]["max_abs_diff"])
                record = {**record, "onnx": {"folder": ONNX_FOLDER, "bytes": exported.size_bytes,
                                             **exported.parity}}
            return upload_model(folder, repo_id, {**record, "metrics": self.metrics}, what=self.source or "the model",
                                private=private, token=token, commit_message=commit_message,
                                overwrite_card=overwrite_card, dataset_name=dataset_name)


RUNTIMES = ("pytorch", "onnx", "auto")


def runtime_folder(folder: str, runtime: str, name: str) -> str:
    """The folder to load for ``runtime`` (see `TrainedModel.load`): ``folder``, or its ONNX export."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"Unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}.")
    exported = os.path.join(folder, ONNX_FOLDER)
    if is_onnx_folder(folder) or runtime == "pytorch":
        return folder
    if is_onnx_folder(exported) and (runtime == "onnx" or installed("onnxruntime")):
        return exported
    if runtime == "onnx":
        raise ModelError(f"'{name}' has no ONNX export; write one with `tl-hub export` (or push with --onnx), or "
                         "load it with runtime='pytorch'.")
    return folder


def _read_record(folder: str, required: bool) -> dict:
    path = os.path.join(folder, INFO_FILE)
    if os.path.exists(path):
        return read_json(path)
    if required:
        raise ModelError(f"'{folder}' has no {INFO_FILE}; pass a folder written by `tl-hub train` / Recipe.save.")
    return {}


def _read_optional(folder: str, name: str, default):
    path = os.path.join(folder, name)
    return read_json(path) if os.path.exists(path) else default


def _refuse_pickles(folder: str, exporter, source: ModelSource) -> None:
    """Pickle weights (``.bin``) can run code when loaded: only with ``allow_pickle``."""
    if source.allow_pickle or all(os.path.exists(os.path.join(folder, f)) for f in exporter.files):
        return
    pickles = sorted(f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")))
    if pickles:
        raise ModelError(f"'{source.id}' holds pickle weights ({pickles[0]}) instead of safetensors; pickle files can "
                         "run code when loaded: pass allow_pickle=True if you trust the source.")


def _base_model(record: dict, source: ModelSource, folder: str, override: Optional[str]):
    """The base model of a head-only or adapter folder, at its pinned commit, with a new head for the labels.  A
    downloaded repository may not point at a folder of this machine unless the caller names it."""
    base_id = override or record["base_model"]
    downloaded = not os.path.isdir(source.id)
    if override is None and downloaded and (os.path.isabs(base_id) or base_id.startswith((".", "~"))
                                            or os.path.exists(base_id)):
        raise ModelError(f"'{source.id}' names the local folder '{base_id}' as its base model; a downloaded model "
                         "may not load files of this machine on its own: pass base_model='...' "
                         "if you trust it.")
    revision = record.get("base_model_revision") if override is None else None
    return load_backbone(ModelSource.of(source, id=base_id, revision=revision), record["labels"]).model


def load(source: Union[str, ModelSource], *, token=None, base_model: Optional[str] = None, runtime: str = "pytorch",
         **options: Any) -> Classifier:
    """A ready `Classifier` from a trained model folder, a folder written by `tl_hub.export` (run by ONNX Runtime)
    or a Hub repo (see `TrainedModel.load`, also for ``runtime``).

    Example:
        >>> clf = tl_hub.load("your-name/vit-beans")
        >>> clf.predict("leaf.jpg", top_k=3)
    """
    return TrainedModel.load(source, token=token, base_model=base_model, runtime=runtime, **options).classifier


def push_to_hub(model_dir: str, repo_id: str, *, private: Optional[bool] = None, token=None,
                commit_message: Optional[str] = None, overwrite_card: bool = False,
                dataset_name: Optional[str] = None, onnx: bool = False) -> str:
    """Push the model folder ``model_dir`` (written by ``Recipe.save`` / ``tl-hub train``) to ``repo_id``; see
    `TrainedModel.push` (``onnx=True``: with the model exported to ONNX under ``onnx/``).

    Raises:
        TlHubError: the folder is not a tl-hub model folder, or the upload failed (the message names the repo and
            what to do; ``model_dir`` is untouched).
    """
    trained = TrainedModel.load(model_dir, require_record=True)
    trained.source = model_dir
    return trained.push(repo_id, private=private, token=token, commit_message=commit_message,
                        overwrite_card=overwrite_card, dataset_name=dataset_name, onnx=onnx)


def export_for_hub(model_dir: str, export_dir: str) -> dict:
    """Write the shareable form of the model folder ``model_dir`` into ``export_dir``; return its record."""
    return TrainedModel.load(model_dir, require_record=True).save(export_dir, shareable=True)


def export(model: Union[str, ModelSource, TrainedModel], format: str = "onnx", *, output_dir: str,
           quantize: Optional[str] = None, dataset: Any = None, image_column: Optional[str] = None,
           label_column: Optional[str] = None, overwrite: bool = False, tolerance: float = PARITY_TOLERANCE,
           token=None) -> ExportResult:
    """Export a trained model to ONNX in ``output_dir``, with the parity check against PyTorch written beside it;
    return what was written (`tl_hub.onnx_export`).  ``tl_hub.load(output_dir)`` predicts through ONNX Runtime.

    Args:
        model: a trained model folder or Hub repo (written by ``tl-hub train`` / ``Recipe.save``), or a
            `TrainedModel`.
        format: ``"onnx"``.
        quantize: ``None`` (fp32) or ``"int8"`` (static; needs ``dataset``).
        dataset: the data the model was trained on: int8 calibrates on its training split and is measured on its
            validation split (else test).
        overwrite: replace an existing non-empty ``output_dir`` (refused otherwise; nothing of it is touched).
        tolerance: the largest absolute logit difference against PyTorch that the fp32 export may have.

    Raises:
        ConfigError: an unknown format or quantization, int8 without ``dataset``, or a negative tolerance.
        MissingDependency: onnx, onnxscript or onnxruntime is not installed (``pip install "tl-hub[onnx]"``).
        ModelError: ``model`` is not a trained model folder; `ExportError`: it cannot be exported, or its export
            differs from PyTorch by more than ``tolerance`` (nothing is written).
        OutputError: ``output_dir`` exists and is not empty, without ``overwrite``.

    Example:
        >>> tl_hub.export("runs/beans", output_dir="runs/beans-onnx")
        >>> tl_hub.load("runs/beans-onnx").predict("leaf.jpg")
    """
    check_export(format, quantize, dataset, tolerance, output_dir, overwrite)
    trained = model if isinstance(model, TrainedModel) else TrainedModel.load(model, token=token,
                                                                                require_record=True)
    return write_export(trained, output_dir, format=format, quantize=quantize, dataset=dataset,
                        image_column=image_column, label_column=label_column, overwrite=overwrite,
                        tolerance=tolerance)
