"""Predicting through ONNX Runtime: a folder written by `tl_hub.export` loads as a `Classifier` whose model is an
ONNX Runtime session, with the same ``predict``, ``predict_proba`` and ``evaluate``.

`OnnxModel` is an ``nn.Module`` without parameters whose forward runs the session on the CPU (the pixel values in,
the logits out), so everything the `Classifier` does around the forward works unchanged: preprocessing in a
background thread while the session runs, test-time augmentation, multi-process evaluation (each process runs its
own session on its part of the data).  ``onnxruntime`` is an optional dependency (``pip install "tl-hub[onnx]"``).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch import nn

from .errors import ModelError, require
from .filenames import ONNX_FILE

SPIN = False  # whether ONNX Runtime's idle compute threads spin-wait between runs (see `session`)


def onnxruntime_module():
    """The ``onnxruntime`` module, or one clear error saying how to install it (`tl_hub.errors.require`)."""
    require("onnxruntime")
    import onnxruntime

    return onnxruntime


def is_onnx_folder(folder: str) -> bool:
    """Whether ``folder`` holds a model exported by `tl_hub.export` (an ONNX file where the weights would be)."""
    return os.path.isfile(os.path.join(folder, ONNX_FILE))


def session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session on the model file ``path``, computing with ``threads`` threads (default: as many
    as PyTorch uses, `tl_hub.threads`), every graph optimisation on."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
    # idle threads sleep instead of spinning: the next batch is preprocessed on the same cores meanwhile
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for a damaged or unsupported file
        raise ModelError(f"ONNX Runtime cannot load '{path}': {str(error).splitlines()[0]}; export the model again "
                         "with `tl-hub export`.") from error


class OnnxModel(nn.Module):
    """An exported classifier run by ONNX Runtime, callable like the PyTorch model it came from:
    ``model(pixel_values=x).logits``.  ``config`` is the PyTorch model's config (labels, problem type)."""

    def __init__(self, path: str, config, threads: Optional[int] = None):
        super().__init__()
        self.path, self.config = path, config
        self.session = session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, **inputs: torch.Tensor):
        """The logits of a batch (the processor's outputs by name, e.g. ``pixel_values``, on any device, floating
        values in any float type: run in float32 on the CPU), as the transformers model returns them
        (``ImageClassifierOutput``)."""
        from transformers.modeling_outputs import ImageClassifierOutput

        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise TypeError(f"The exported model takes {', '.join(self.input_names)}; {', '.join(missing)} missing.")
        feed = as_feed({name: inputs[name] for name in self.input_names})
        return ImageClassifierOutput(logits=torch.from_numpy(self.session.run(None, feed)[0]))


def as_feed(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Model inputs as an ONNX Runtime session takes them: contiguous numpy arrays on the CPU, floating values in
    float32, the rest (token ids, masks, shapes) as they are."""
    feed = {}
    for name, value in inputs.items():
        value = value.detach().to("cpu")
        feed[name] = np.ascontiguousarray((value.float() if value.is_floating_point() else value).numpy())
    return feed


def onnx_model(folder: str, config, threads: Optional[int] = None) -> OnnxModel:
    """The `OnnxModel` of an exported folder (``config``: its ``config.json``)."""
    return OnnxModel(os.path.join(folder, ONNX_FILE), config, threads)
