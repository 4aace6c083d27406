"""Export a trained classifier to ONNX (optionally quantized to int8), with its parity against PyTorch checked at
every export and written beside it.

`tl_hub.export` writes a folder that `tl_hub.load` reads back as a `Classifier` predicting through ONNX Runtime
(`tl_hub.onnx_runtime`):

- ``model.onnx``: the whole classifier (the base with its trained head, a LoRA model merged, the calibrated
  temperature already folded into the head), pixel values in, logits out, with a dynamic batch axis; exported by
  PyTorch's maintained exporter (``torch.onnx.export(..., dynamo=True)``);
- ``config.json`` (labels, problem type) and ``preprocessor_config.json``: what the runtime needs to preprocess as
  in training; ``tl_hub.json``: the training record, with an ``onnx`` entry saying how it was exported;
- ``parity.json``: the largest absolute difference of the logits against PyTorch on a sample batch (fp32: at most
  `PARITY_TOLERANCE`, else the export is refused and nothing is written); for int8, the top-1 agreement with the
  fp32 model and the accuracy change on the evaluation split of the data given.

int8 is static quantization of the convolutions and matrix products (`QUANTIZED_OPS`, less `float_operators`; ONNX
Runtime's QDQ format, int8 weights per channel, uint8 activations): its activation ranges are calibrated on
`CALIBRATION_IMAGES` training images of ``dataset``, which int8 therefore needs.

Example:
    >>> tl_hub.export("runs/beans", output_dir="runs/beans-onnx")
    >>> tl_hub.load("runs/beans-onnx").predict("leaf.jpg")
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, ModelError, require
from .filenames import INFO_FILE, METRICS_FILE, ONNX_FILE, PARITY_FILE
from .outputs import atomic_output_dir, check_output_dir, write_json
from .structure import first_parameter, logits_of

logger = logging.getLogger(__name__)

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
OPSET = 18
PARITY_TOLERANCE = 1e-4  # the largest absolute logit difference an fp32 export may have against PyTorch
SAMPLE_IMAGES = 4  # the sample batch of the parity check (exported with 2: the batch axis is checked dynamic)
CALIBRATION_IMAGES = 64  # training images that calibrate int8's activation ranges
# the operators int8 computes in integers: the convolutions and matrix products, where the time is; the element-wise
# rest (activations, gates, sums) stays float: quantizing it too took EfficientNet-Lite0's top-1 agreement with fp32
# from 83% to 7% on 30 validation images.  Some of them stay float too (`float_operators`).
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# the share of those operators, counted from the input, that stays float: quantizing the first ones did most of the
# damage (one early Lite0 projection alone cost 4 points on handwritten digits), for little speed (measured: none)
FLOAT_FRONT = 0.25
TORCH_CHECKS = "TRANSFORMERS_DISABLE_TORCH_CHECK"  # transformers skips its `torch_compilable_check`s when "1"
EVALUATION_IMAGES = 1000  # at most this many images measure int8's agreement and accuracy change


class ExportError(ModelError):
    """The model cannot be exported, or its export does not compute what the PyTorch model does."""


@dataclass
class ExportResult:
    """What `export` wrote: the folder, its files with their sizes in bytes, and the parity check."""

    output_dir: str
    files: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        """The size of the model file(s) on disk."""
        return sum(size for name, size in self.files.items() if name.endswith((".onnx", ".onnx.data")))


class LogitsOnly(nn.Module):
    """A classifier as the exported graph has it: the processor's outputs in (``input_names``, in order: e.g.
    ``pixel_values``, or ImageGPT's ``input_ids``, or SigLIP 2's three), the logits tensor out."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...] = ("pixel_values",)):
        super().__init__()
        self.model, self.input_names = model, tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(**dict(zip(self.input_names, inputs))))


def check_export_settings(format: str, quantize: Optional[str], dataset: Any, tolerance: float) -> None:
    """One clear error for an unknown format or quantization, int8 without data to calibrate on, or a negative
    tolerance."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ConfigError(f"`tolerance` should be a number of at least 0 (the largest logit difference allowed), "
                          f"got {tolerance!r}.")
    if format not in FORMATS:
        raise ConfigError(f"Unknown export format {format!r}; tl-hub exports {', '.join(FORMATS)} "
                          "(format='onnx', --format onnx).")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"Unknown quantization {quantize!r}; tl-hub quantizes to {', '.join(QUANTIZATIONS)} "
                          "(quantize='int8', --quantize int8), or leave it out for fp32.")
    if quantize == "int8" and dataset is None:
        raise ConfigError("int8 quantization calibrates its activation ranges on training images and measures its "
                          "accuracy change on the evaluation split: pass the data the model was trained on "
                          "(dataset=..., --dataset D).")


def exportable(model: nn.Module, input_names: tuple[str, ...] = ("pixel_values",)) -> LogitsOnly:
    """The plain float32 module to export, taking ``input_names``: a copy, with a PEFT model's adapters merged into
    its weights and the eager attention (the same computation; the exporter cannot decompose some models' fused
    attention, e.g. Swin's and Data2Vec's)."""
    model = copy.deepcopy(model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if _attention(model) != "eager":
        with contextlib.suppress(ValueError, AttributeError, NotImplementedError):  # a model without the choice
            model.set_attn_implementation("eager")
    if _attention(model) != "eager":  # chosen when the model was built (e.g. Data2Vec): build it again, eager
        model = _rebuilt_eager(model)
    return LogitsOnly(model.float().eval(), input_names).eval()


def _attention(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"


def _rebuilt_eager(model: nn.Module) -> nn.Module:
    """``model`` built again from its config with the eager attention, its weights loaded (the model itself if it
    cannot be: the exporter then reports what fails)."""
    config = copy.deepcopy(model.config)
    try:
        config._attn_implementation = "eager"
        rebuilt = type(model)(config)
        rebuilt.load_state_dict(model.state_dict())
    except Exception as error:  # constructors and setters differ across models; keep the model as it is
        logger.info("export: could not rebuild %s with the eager attention (%s)", type(model).__name__, error)
        return model
    return rebuilt


def sample_batch(processor, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` images of random pixels through the model's image processor (everything it returns, floating values in
    float32): the inputs of the export and of the parity check."""
    from PIL import Image

    from .data import preprocess

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(n)]
    return {name: value.float() if value.is_floating_point() else value
            for name, value in preprocess(processor, images).items()}


def operator_of(error: BaseException) -> Optional[str]:
    """The operator or module an exporter's error names (``aten.foo``, ``torch.ops...``, a class name), if any."""
    text = f"{error!r} {error}"
    patterns = (r"(aten[.:]{1,2}[A-Za-z_0-9.]+)", r"(torch\.ops\.[A-Za-z_0-9.]+)", r"[Oo]perator '?([A-Za-z_:.0-9]+)",
                r"module '?([A-Za-z_][A-Za-z_0-9.]*)'?")
    for pattern in patterns:
        found = re.search(pattern, text)
        if found:
            return found.group(1).rstrip(".")
    return None


def to_onnx(module: LogitsOnly, sample: dict[str, torch.Tensor], path: str, model_type: str) -> None:
    """Export ``module`` to ``path`` with a dynamic batch axis (traced on 2 images of ``sample``); one `ExportError`
    naming the operator when the exporter cannot."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    names = module.input_names
    try:
        with warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, tuple(sample[n][:2] for n in names), dynamo=True,
                                        opset_version=OPSET, input_names=list(names), output_names=["logits"],
                                        dynamic_shapes=(tuple({0: batch} for _ in names),),  # one for *inputs
                                        report=False, verbose=False)
            program.save(path, external_data=False)
    except Exception as error:  # the exporter's errors are of many types; the message names what failed
        what = operator_of(error)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        raise ExportError(f"This {model_type} model cannot be exported to ONNX"
                          + (f": the exporter fails on {what}" if what else "") + f" ({first[:300]}).") from error


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress lines (it logs through ``torch.onnx`` and prints), and turn transformers'
    input checks off while tracing (`TORCH_CHECKS`): an assertion on the input's values (SigLIP 2's "positional
    embeddings must have a positive size") becomes an operator ONNX does not have, and a graph cannot raise."""
    import io

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    checks = os.environ.get(TORCH_CHECKS)
    os.environ[TORCH_CHECKS] = "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if checks is None:
            os.environ.pop(TORCH_CHECKS, None)
        else:
            os.environ[TORCH_CHECKS] = checks


def parity(module: LogitsOnly, path: str, sample: dict[str, torch.Tensor]) -> dict:
    """The fp32 parity check: the largest absolute difference of the logits of ``sample`` (a batch size other than
    the exported one) between ``module`` and the ONNX file, with the largest logit for scale."""
    from .onnx_runtime import as_feed, session

    with torch.inference_mode():
        expected = module(*(sample[n] for n in module.input_names)).float().numpy()
    got = session(path).run(None, as_feed({n: sample[n] for n in module.input_names}))[0]
    if got.shape != expected.shape:
        raise ExportError(f"The exported model gives logits of shape {got.shape} where PyTorch gives "
                          f"{expected.shape}.")
    return {"images": len(expected), "max_abs_diff": float(np.abs(got - expected).max()),
            "max_abs_logit": float(np.abs(expected).max()), "tolerance": PARITY_TOLERANCE,
            "top1_agreement": float((got.argmax(-1) == expected.argmax(-1)).mean())}


def evaluation_split(dataset: Any) -> tuple[Any, str, Any]:
    """``(train, name, split)``: the training split (calibration images) and the split int8 is measured on: the
    validation split, else the test split, else the training split, at most `EVALUATION_IMAGES` images."""
    import datasets

    from .data import VALIDATION_SPLIT_NAMES, load_source, pick_splits

    data = load_source(dataset)
    train = pick_splits(data)[0]
    names = list(data) if isinstance(data, datasets.DatasetDict) else []
    name = next((n for n in (*VALIDATION_SPLIT_NAMES, "test") if n in names), None)
    split = data[name] if name else train
    if len(split) > EVALUATION_IMAGES:
        split = split.shuffle(seed=0).select(range(EVALUATION_IMAGES))
    return train, name or "train", split


def calibration_batches(train, processor, image_column: Optional[str]) -> list[dict]:
    """`CALIBRATION_IMAGES` training images (a seeded draw) as batches of pixel values for int8's calibration."""
    from .data import as_images, find_image_column, preprocess
    from .onnx_runtime import as_feed

    column = find_image_column(train, image_column)
    rows = train.shuffle(seed=0).select(range(min(CALIBRATION_IMAGES, len(train))))
    images = as_images(rows[column])
    batches = (preprocess(processor, images[i:i + 16]) for i in range(0, len(images), 16))
    return [as_feed(batch) for batch in batches]


def float_operators(graph) -> list[str]:
    """The operators of `QUANTIZED_OPS` in the ONNX ``graph`` that int8 leaves in float: the first `FLOAT_FRONT` of
    them (from the input, in the graph's topological order) and every grouped (depthwise) convolution.

    Measured on ImageNet EfficientNet-Lite0 at 224 px, feature extraction, seed 0 (top-1 agreement with fp32 on 300
    test images): with the depthwise convolutions and the very first float, 93% on clothing photos (5 per class) and
    82% on handwritten digits; with the first quarter float too, 98% and 97%.  A depthwise convolution has few
    weights per channel and, after BatchNorm folding, channel ranges far apart; the first layers see the image
    itself."""
    candidates = [node for node in graph.node if node.op_type in QUANTIZED_OPS]
    front = [node.name for node in candidates[:round(FLOAT_FRONT * len(candidates))]]
    grouped = [node.name for node in candidates
               if node.op_type == "Conv" and next((a.i for a in node.attribute if a.name == "group"), 1) > 1]
    return sorted(set(front + grouped))


def quantize_int8(fp32_path: str, int8_path: str, batches: list[dict]) -> None:
    """Static int8 quantization of the ONNX file (QDQ, int8 weights per output channel, uint8 activations with
    min-max ranges over ``batches``), the `float_operators` left in float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="tl_hub_int8_") as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        try:
            quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        except Exception as error:  # the optional pre-pass; quantize the exported graph as it is
            logger.info("int8: the pre-processing pass failed (%s); quantizing the graph as exported", error)
            prepared = fp32_path
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer warns on the root logger about every 1-D weight it skips
        try:
            quantize_static(prepared, int8_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTIZED_OPS),
                            nodes_to_exclude=float_operators(onnx.load(prepared, load_external_data=False).graph))
        finally:
            root.setLevel(level)


def int8_parity(classifier, config, fp32_path: str, int8_path: str, split, split_name: str,
                image_column: Optional[str], label_column: Optional[str]) -> dict:
    """int8 against fp32 on ``split``: the top-1 agreement and the accuracy of each (their change in points);
    ``config``: the exported model's."""
    from .inference import Classifier
    from .onnx_runtime import OnnxModel

    figures = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        runner = Classifier(OnnxModel(path, config), classifier.processor, classifier.labels, info=classifier.info)
        logits, refs, _, _ = runner.outputs(split, image_column=image_column, label_column=label_column)
        figures[name] = (logits, refs)
    (fp32, refs), (int8, _) = figures["fp32"], figures["int8"]
    multi = refs.ndim == 2
    right = (lambda z: ((z > 0) == refs.bool()).all(-1)) if multi else (lambda z: z.argmax(-1) == refs)
    same = ((fp32 > 0) == (int8 > 0)).all(-1) if multi else fp32.argmax(-1) == int8.argmax(-1)
    acc32, acc8 = float(right(fp32).float().mean()), float(right(int8).float().mean())
    return {"split": split_name, "images": len(refs), "top1_agreement": float(same.float().mean()),
            "accuracy_fp32": acc32, "accuracy_int8": acc8, "accuracy_change_points": 100 * (acc8 - acc32),
            "max_abs_diff": float((fp32 - int8).abs().max()),
            "per_class": per_class_change(fp32, int8, refs, classifier.labels)}


def per_class_change(fp32: torch.Tensor, int8: torch.Tensor, refs: torch.Tensor, labels: list[str]) -> dict:
    """Where int8's damage falls: each class's accuracy from the fp32 and the int8 logits, ``{label: {"images",
    "accuracy_fp32", "accuracy_int8"}}``: over the images of that true class for single-label data, over every image
    (that label's yes/no right) for multi-label; a class without images is left out."""
    out = {}
    for index, label in enumerate(labels):
        if refs.ndim == 2:
            truth = refs[:, index].bool()
            right = [((z[:, index] > 0) == truth).float() for z in (fp32, int8)]
        else:
            mask = refs == index
            if not mask.any():
                continue
            right = [(z[mask].argmax(-1) == index).float() for z in (fp32, int8)]
        out[label] = {"images": len(right[0]), "accuracy_fp32": float(right[0].mean()),
                      "accuracy_int8": float(right[1].mean())}
    return out


def check_export(format: str, quantize: Optional[str], dataset: Any, tolerance: float, output_dir: str,
                 overwrite: bool) -> None:
    """Everything `tl_hub.export` can refuse before any work: the settings (`check_export_settings`), the optional
    packages (one line naming the ``onnx`` extra) and the output folder."""
    check_export_settings(format, quantize, dataset, tolerance)
    for needed in ("onnx", "onnxscript", "onnxruntime"):
        require(needed)
    check_output_dir(output_dir, overwrite)


def write_export(trained, output_dir: str, *, format: str = "onnx", quantize: Optional[str] = None,
                 dataset: Any = None, image_column: Optional[str] = None, label_column: Optional[str] = None,
                 overwrite: bool = False, tolerance: float = PARITY_TOLERANCE) -> ExportResult:
    """Export ``trained`` (a `tl_hub.TrainedModel`: its classifier, record and metrics) to ``output_dir`` as the
    module's description says, the settings already checked (`check_export`); see `tl_hub.export`."""
    classifier = trained.classifier
    if first_parameter(classifier.model) is None:
        raise ModelError(f"'{trained.source}' is already an ONNX export; export its trained model folder.")
    sample = sample_batch(classifier.processor, SAMPLE_IMAGES)
    module = exportable(classifier.model, tuple(sample))
    config = module.model.config
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        path = os.path.join(tmp, ONNX_FILE)
        to_onnx(module, sample, path, getattr(config, "model_type", None) or type(module.model).__name__)
        report = {"format": format, "quantize": quantize, "opset": OPSET, "exporter": "torch.onnx (dynamo)",
                  "torch": torch.__version__, "fp32": parity(module, path, sample)}
        report["fp32"]["tolerance"] = tolerance
        if report["fp32"]["max_abs_diff"] > tolerance:
            raise ExportError(f"The exported model's logits differ from PyTorch's by up to "
                              f"{report['fp32']['max_abs_diff']:.2e} on {SAMPLE_IMAGES} images, more than the "
                              f"tolerance {tolerance:.0e}; nothing was written. Pass a larger tolerance "
                              "(--tolerance) if this difference is acceptable.")
        if quantize == "int8":
            _quantized(classifier, config, tmp, report, dataset, image_column, label_column)
        config.save_pretrained(tmp)
        classifier.processor.save_pretrained(tmp)
        write_json(os.path.join(tmp, INFO_FILE), {**trained.record, "onnx": report})
        write_json(os.path.join(tmp, PARITY_FILE), report)
        if trained.metrics:  # the trained model's validation (and test) metrics, for the Space and the card
            write_json(os.path.join(tmp, METRICS_FILE), trained.metrics)
        files = {name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
    return ExportResult(os.path.abspath(output_dir), files, report)


def _quantized(classifier, config, folder: str, report: dict, dataset: Any, image_column, label_column) -> None:
    """Replace the fp32 ``model.onnx`` in ``folder`` by its int8 quantization; add int8's figures to ``report``."""
    image_column = image_column or classifier.info.get("image_column")
    label_column = label_column or classifier.info.get("label_column")
    train, split_name, split = evaluation_split(dataset)
    fp32_path, int8_path = os.path.join(folder, ONNX_FILE), os.path.join(folder, "int8.onnx")
    quantize_int8(fp32_path, int8_path, calibration_batches(train, classifier.processor, image_column))
    report["int8"] = int8_parity(classifier, config, fp32_path, int8_path, split, split_name, image_column,
                                 label_column)
    report["fp32_bytes"] = os.path.getsize(fp32_path)
    os.replace(int8_path, fp32_path)
