"""How the weights of a trained model are stored: one exporter per kind of training, chosen from a registry.

`tl_hub.model_folder.TrainedModel` writes every model folder; only the weights depend on what training changed
(``record["trained"]["kind"]``, see `tl_hub.fit.trained_state`):

| kind      | trained                          | exporter          | files                       | loads the base |
|-----------|----------------------------------|-------------------|-----------------------------|----------------|
| `full`    | every parameter                  | `FullExporter`    | ``model.safetensors``       | no             |
| `head`    | the new head                     | `HeadExporter`    | ``tl_hub_head.safetensors`` | pinned commit  |
| `partial` | the head and unfrozen groups     | `PartialExporter` | ``tl_hub_head.safetensors`` | pinned commit  |
| `lora`    | LoRA updates and the head (PEFT) | `PeftExporter`    | ``adapter_*`` (PEFT)        | yes            |

A local model folder keeps everything needed to load it offline (exporters with ``local=False`` fall back to the
full model there); what is pushed to the Hub holds only what training changed.  A new kind is one new class::

    @register_exporter
    class MyExporter(Exporter):
        kind, format, files = "my-kind", "my-format", ("my_weights.safetensors",)
        def save(self, model, folder, trained): ...
        def load(self, folder, record, base): ...
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ClassVar

from torch import nn

from .errors import ModelError, first_line
from .filenames import ADAPTER_FILES, HEAD_FILE, MODEL_FILE

EXPORTERS: dict[str, type[Exporter]] = {}
"""The registered exporters by kind (`register_exporter`)."""


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: the exporter for models whose training ``kind`` is ``cls.kind``."""
    EXPORTERS[cls.kind] = cls
    return cls


class Exporter:
    """Writes and reads the weights of one kind of trained model.

    Attributes:
        kind: the training kind it stores (``record["trained"]["kind"]``).
        format: recorded as ``record["export"]["format"]``; how a folder says which exporter reads it.
        files: the weight files it writes (used to recognise folders that carry no format record).
        local: also used for local model folders (else they hold the full model, which loads offline).
    """

    kind: ClassVar[str]
    format: ClassVar[str]
    files: ClassVar[tuple[str, ...]]
    local: ClassVar[bool] = True

    def save(self, model: nn.Module, folder: str, trained: dict) -> dict:
        """Write the weights of ``model`` into ``folder``; return what to record in ``record["export"]``."""
        raise NotImplementedError

    def load(self, folder: str, record: dict, base: Callable[[], nn.Module]) -> nn.Module:
        """The model stored in ``folder``; ``base()`` loads the base model with a new head for the labels."""
        raise NotImplementedError


def exporter_for(kind: str, *, shareable: bool) -> Exporter:
    """The exporter that writes a model of this training ``kind`` (``shareable``: the form pushed to the Hub)."""
    cls = EXPORTERS.get(kind)
    if cls is None:
        raise ModelError(f"No exporter is registered for models of kind {kind!r} (known: {', '.join(EXPORTERS)}).")
    return cls() if shareable or cls.local else FullExporter()


def exporter_in(folder: str, record: dict) -> Exporter:
    """The exporter that reads ``folder``: the format its record names, else the weight files it has."""
    fmt = (record.get("export") or {}).get("format")
    for cls in EXPORTERS.values():
        if fmt == cls.format if fmt else all(os.path.exists(os.path.join(folder, f)) for f in cls.files):
            return cls()
    if fmt:
        raise ModelError(f"'{folder}' is stored in format {fmt!r}, which this version of tl-hub cannot read; "
                         "upgrade tl-hub.")
    return FullExporter()


@register_exporter
class HeadExporter(Exporter):
    """Only the tensors training changed (``trained["state_keys"]``) and the config with the labels; loading puts
    them into the base model fetched at its pinned commit, checking names and shapes."""

    kind, format, files, local = "head", "tl-hub-head", (HEAD_FILE,), False

    def save(self, model: nn.Module, folder: str, trained: dict) -> dict:
        from safetensors.torch import save_file

        state = model.state_dict()
        tensors = {k: state[k].detach().contiguous() for k in trained["state_keys"]}
        save_file(tensors, os.path.join(folder, HEAD_FILE), metadata={"format": "pt", "tl_hub": self.kind})
        model.config.save_pretrained(folder)
        return {"format": self.format, "tensors": len(tensors),
                "parameters": int(sum(t.numel() for t in tensors.values()))}

    def load(self, folder: str, record: dict, base: Callable[[], nn.Module]) -> nn.Module:
        from safetensors.torch import load_file

        model = base()
        tensors = load_file(os.path.join(folder, HEAD_FILE))
        state = model.state_dict()
        for key, value in tensors.items():
            if key not in state:
                raise ModelError(f"The head in '{folder}' has tensor '{key}', which base model "
                                 f"'{record['base_model']}' does not have; is the base the right one?")
            if tuple(state[key].shape) != tuple(value.shape):
                raise ModelError(f"Tensor '{key}' of the head in '{folder}' has shape {tuple(value.shape)}, the "
                                 f"base model expects {tuple(state[key].shape)}.")
        model.load_state_dict(tensors, strict=False)
        return model


@register_exporter
class PartialExporter(HeadExporter):
    """The head and the encoder groups fine-tuning unfroze (with their BatchNorm statistics), stored like a head."""

    kind = "partial"

    def save(self, model: nn.Module, folder: str, trained: dict) -> dict:
        return {**super().save(model, folder, trained), "groups": trained.get("groups", [])}


@register_exporter
class PeftExporter(Exporter):
    """A standard PEFT adapter (LoRA updates, and the new head as a ``modules_to_save`` module) plus the config
    with the labels; PEFT itself loads it onto the base model."""

    kind, format, files = "lora", "peft", ADAPTER_FILES

    def save(self, model: nn.Module, folder: str, trained: dict) -> dict:
        model.save_pretrained(folder)
        model.get_base_model().config.save_pretrained(folder)
        return {"format": self.format}

    def load(self, folder: str, record: dict, base: Callable[[], nn.Module]) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base(), folder)


@register_exporter
class FullExporter(Exporter):
    """The whole model as transformers saves it: ``pipeline("image-classification", model=...)`` reads it."""

    kind, format, files = "full", "transformers", (MODEL_FILE,)

    def save(self, model: nn.Module, folder: str, trained: dict) -> dict:
        model.save_pretrained(folder, safe_serialization=True)
        return {"format": self.format}

    def load(self, folder: str, record: dict, base: Callable[[], nn.Module]) -> nn.Module:
        from transformers import AutoModelForImageClassification

        try:
            return AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True)
        except Exception as e:  # OSError, ValueError, SafetensorError for a damaged file, ...
            raise ModelError(f"Could not load the model in '{folder}' ({type(e).__name__}: {first_line(e)}); the "
                             "folder may be damaged: save or download it again.") from None


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def trained_kind(model: nn.Module, trained: set[str], all_params: set[str], head: set[str]) -> str:
    """``lora`` (a PEFT model), ``full`` (every parameter trained), ``head`` (only the head) or ``partial``."""
    if is_peft_model(model):
        return "lora"
    if trained == all_params:
        return "full"
    return "head" if trained <= head else "partial"

