"""Top-k fine-tuning on a cached frozen prefix.

When fine-tuning unfreezes only the top ``k`` blocks, everything below the lowest unfrozen block (the embeddings and
the frozen blocks) never changes, and while the training images are not re-augmented every epoch (``augment=False``,
or ``feature_views`` views cached) its output for an image is fixed.  So it is computed once: the input of the
first module of the lowest trained group (the block's hidden states; for a staged model, the input of that block
or of its stage's downsampling layer) is cached with the head's features (`tl_hub.features`, one pass over the data
for both), and each training step then runs only the top blocks and the head.

How the model runs from the cut, for any architecture: a dry run on a few images finds the *cut* (that module) and
the frozen modules whose every call ends before the cut starts (the embeddings, the frozen blocks, a patch merger).
While `PrefixModel` runs, those modules return a placeholder of their recorded output resized to the batch (zeros;
their values never reach the logits), and a forward pre-hook on the cut replaces its input with the cached features.
The model's own forward does the rest (a stage's bookkeeping, the top blocks, norms, pooling, the head).  Before it
is used, the cut path's logits are checked against the full model's on real images; any difference (or a model
that does not fit the scheme: the cut called twice, a trained module below it) turns the prefix cache off for the
run with a logged reason, and training runs the whole encoder as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from .features import first_tensor_argument
from .structure import LayerGroup, ModelParts, logits_of, model_inputs

logger = logging.getLogger(__name__)

REFERENCE_IMAGES = 3  # images of the dry run; the check runs on 2 of them, so that placeholders follow the batch


@dataclass
class PrefixCut:
    """Where the model is cut and what stands in for the frozen modules below the cut.

    Attributes:
        path: the module whose input is cached (the first module of the lowest trained group to run).
        argument: where that input is among its arguments (a position or a keyword).
        stubs: frozen modules that run before the cut -> their output on the reference batch.
        inputs: the model's inputs on the reference batch (one example each), to build placeholder inputs.
    """

    path: str
    argument: Union[int, str]
    stubs: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_batch: int = REFERENCE_IMAGES

    def placeholder_inputs(self, batch: int, device) -> dict[str, torch.Tensor]:
        """Model inputs of the right shapes and types that cost no memory (one zero example, expanded)."""
        return {k: torch.zeros_like(v[:1], device=device).expand(batch, *v.shape[1:]) for k, v in self.inputs.items()}

    @contextlib.contextmanager
    def installed(self, model: nn.Module, features: torch.Tensor) -> Iterator[None]:
        """While the block runs, the stubs stand in for the frozen modules and the cut receives ``features``."""
        batch = features.shape[0]
        saved = {}
        for path, output in self.stubs.items():
            module = model.get_submodule(path)
            saved[path] = module.__dict__.get("forward")
            module.forward = _stub(output, self.reference_batch, batch, features.device)

        def feed(module, args, kwargs):
            if isinstance(self.argument, int):
                args = (*args[:self.argument], features.to(args[self.argument].dtype), *args[self.argument + 1:])
            else:
                kwargs = {**kwargs, self.argument: features.to(kwargs[self.argument].dtype)}
            return args, kwargs

        handle = model.get_submodule(self.path).register_forward_pre_hook(feed, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for path, forward in saved.items():
                module = model.get_submodule(path)
                del module.forward
                if forward is not None:
                    module.forward = forward


def _stub(output: Any, reference: int, batch: int, device):
    def forward(*args, **kwargs):
        return _resized(output, reference, batch, device)

    return forward


def _resized(value: Any, reference: int, batch: int, device) -> Any:
    """``value`` with every tensor whose first dimension is the reference batch replaced by zeros for ``batch``, and
    every tensor on ``device``."""
    if torch.is_tensor(value):
        if value.ndim and value.shape[0] == reference:
            return torch.zeros((batch, *value.shape[1:]), dtype=value.dtype, device=device)
        return value.to(device)  # recorded where the cut was found (the CPU); training may run on a GPU
    if isinstance(value, dict):  # includes transformers' ModelOutput
        items = {k: _resized(v, reference, batch, device) for k, v in value.items()}
        return type(value)(**items) if hasattr(value, "to_tuple") else type(value)(items)
    if isinstance(value, (tuple, list)):
        items = [_resized(v, reference, batch, device) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


class PrefixModel(nn.Module):
    """The model run from its cut: takes the cached input of the cut (``features``) and returns the logits.  Its
    parameters are the model's, so training it trains the model."""

    def __init__(self, model: nn.Module, cut: PrefixCut):
        super().__init__()
        self.model = model
        self.cut = cut

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with self.cut.installed(self.model, features):
            return logits_of(self.model(**self.cut.placeholder_inputs(features.shape[0], features.device)))


def lowest_trained_group(parts: ModelParts, trained: set[str]) -> Optional[LayerGroup]:
    """The first encoder group (from the input up) with a trained parameter; None if no encoder group trains."""
    return next((g for g in parts.groups if any(p in trained for p in g.params)), None)


def prefix_groups(parts: ModelParts, trained: set[str]) -> Optional[tuple[LayerGroup, list[LayerGroup]]]:
    """``(lowest trained group, the frozen groups below it)`` when at least one block is frozen below the lowest
    trained group (so caching saves a block's work per step), else None."""
    lowest = lowest_trained_group(parts, trained)
    if lowest is None:
        return None
    below = list(parts.groups[:parts.groups.index(lowest)])
    if not any(g.kind == "block" for g in below):
        return None
    if any(p in trained for g in below for p in g.params):
        return None
    return lowest, below


def find_cut(model: nn.Module, group: LayerGroup, trained: set[str], batch: dict) -> tuple[Optional[PrefixCut], str]:
    """The cut below ``group`` found and checked on ``batch`` (a few preprocessed images): ``(cut, "")``, or
    ``(None, why not)``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _find_cut(model, group, trained, batch)
    except Exception as e:  # any model this scheme does not fit runs the whole encoder instead
        return None, f"{type(e).__name__}: {e}"
    finally:
        model.train(was_training)


def _find_cut(model, group, trained, batch) -> tuple[Optional[PrefixCut], str]:
    inputs = model_inputs(model, batch)
    extra = sorted(k for k in inputs if k != "pixel_values")
    if extra:  # e.g. SigLIP 2's attention mask and spatial shapes: per-image inputs that blocks above the cut read
        return None, f"the model takes per-image inputs besides pixel_values ({', '.join(extra)})"
    spans, calls = _call_spans(model, inputs)
    started = [(spans[m][0], m) for m in group.modules if m in spans]
    if not started:
        return None, f"no module of {group.name} runs in the forward pass"
    cut_start, path = min(started)
    if calls[path] != 1:
        return None, f"{path} runs {calls[path]} times per forward pass"
    names = _maximal_before(model, spans, cut_start, path)
    owned = {n for m in names for n, _ in model.get_submodule(m).named_parameters(prefix=m)}
    if owned & trained:
        return None, f"a trained parameter runs before {path}"
    outputs, captured, logits = _record(model, inputs, names, path)
    cut = PrefixCut(path, captured[0], outputs, {k: v for k, v in inputs.items() if torch.is_tensor(v)},
                    reference_batch=next(iter(inputs.values())).shape[0])
    again = PrefixModel(model, cut)(captured[1][:2])
    if not torch.allclose(again.float(), logits[:2].float(), rtol=1e-4, atol=1e-5):
        return None, f"running from {path} does not reproduce the logits (max difference " \
                     f"{(again.float() - logits[:2].float()).abs().max():.2e})"
    return cut, ""


def _call_spans(model: nn.Module, inputs: dict) -> tuple[dict[str, list[int]], dict[str, int]]:
    """For each module that runs: ``[first call start, last call end]`` in event order, and its number of calls."""
    counter, spans, calls, handles = [0], {}, {}, []

    def tick() -> int:
        counter[0] += 1
        return counter[0]

    for name, module in model.named_modules():
        if not name:
            continue

        def pre(m, args, name=name):
            spans.setdefault(name, [tick(), None])
            calls[name] = calls.get(name, 0) + 1

        def post(m, args, out, name=name):
            spans[name][1] = tick()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return spans, calls


def _maximal_before(model: nn.Module, spans: dict, cut_start: int, cut: str) -> list[str]:
    """The largest modules whose every call ends before the cut starts (none of them holds the cut)."""
    done = {m for m, (_, end) in spans.items() if end is not None and end < cut_start
            and not cut.startswith(m + ".")}
    return sorted(m for m in done if not any(m.startswith(p + ".") for p in done))


def _record(model, inputs, names: Sequence[str], cut: str):
    """The outputs of ``names``, the cut's input (where, value) and the logits, on ``inputs``."""
    outputs, captured, handles = {}, [], []
    for name in names:
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: outputs.setdefault(name, out)))
    handles.append(model.get_submodule(cut).register_forward_pre_hook(
        lambda m, a, k: captured.extend(first_tensor_argument(a, k)) if not captured else None, with_kwargs=True))
    try:
        logits = logits_of(model(**inputs))
    finally:
        for h in handles:
            h.remove()
    return outputs, captured, logits


def reference_batch(dataset, collate, size: int = REFERENCE_IMAGES) -> dict:
    """The first ``size`` examples of ``dataset`` as one batch."""
    items = [dataset[i] for i in range(min(size, len(dataset)))]
    return collate(items)


def frozen_in_eval_mode(model: nn.Module, cut: PrefixCut, eval_modules: Sequence[str]) -> str:
    """Why the stubs' outputs would differ between the cached pass (eval mode) and training, or "" if they do not:
    no module inside a stub behaves differently in training, unless the period keeps it in eval mode (dropout or
    drop-path with a non-zero rate, BatchNorm updating its statistics)."""
    def in_eval(path: str) -> bool:
        return any(path == m or path.startswith(m + ".") for m in eval_modules)

    for path in cut.stubs:
        for name, module in model.get_submodule(path).named_modules(prefix=path):
            if not in_eval(name) and _depends_on_mode(module):
                return f"{name} runs before the cut and behaves differently in training"
    return ""


def _depends_on_mode(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats
    kind = type(module).__name__.lower()
    if "drop" in kind or "stochastic" in kind:
        rate = next((getattr(module, a) for a in ("p", "drop_prob", "rate") if hasattr(module, a)), None)
        return not isinstance(rate, (int, float)) or rate > 0
    return False
