"""A recipe and an exporter defined OUTSIDE the package, through the public API only: LP-FT with a 2-layer MLP head.

Period 1 trains the MLP head on the frozen encoder (cached features), period 2 fine-tunes the top encoder block
with it.  The model's structure changes (the head is an MLP, not the checkpoint's linear layer), so the recipe names
an exporter kind, and the exporter stores the trained tensors with the MLP's sizes and rebuilds it when loading.
Importing this module registers both.
"""

import os

from safetensors.torch import load_file, save_file
from torch import nn

import tl_hub

HEAD_FILE = "mlp_head.safetensors"


class MLPHead(nn.Sequential):
    """Linear -> GELU -> Linear."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_features))


def put_mlp_head(model: nn.Module, path: str, hidden: int) -> None:
    """Replace the linear head at ``path`` with an MLP of the same input and output sizes."""
    linear = model.get_submodule(path)
    model.set_submodule(path, MLPHead(linear.in_features, hidden, linear.out_features))


@tl_hub.register_exporter
class MLPHeadExporter(tl_hub.Exporter):
    """The tensors training changed, plus where the MLP head is and its hidden size."""

    kind, format, files = "mlp-head", "mlp-head", (HEAD_FILE,)

    def save(self, model, folder, trained):
        path, head = next((n, m) for n, m in model.named_modules() if isinstance(m, MLPHead))
        state = model.state_dict()
        save_file({k: state[k].contiguous() for k in trained["state_keys"]}, os.path.join(folder, HEAD_FILE))
        model.config.save_pretrained(folder)
        return {"format": self.format, "head_path": path, "hidden": head[0].out_features}

    def load(self, folder, record, base):
        model = base()
        put_mlp_head(model, record["export"]["head_path"], record["export"]["hidden"])
        missing, unexpected = model.load_state_dict(load_file(os.path.join(folder, HEAD_FILE)), strict=False)
        assert not unexpected, unexpected
        return model


@tl_hub.register_recipe("lp-ft-mlp")
class LPFTMLPRecipe(tl_hub.FineTuneRecipe):
    """LP-FT (linear-probe-then-fine-tune) with a 2-layer MLP head of ``HIDDEN`` units."""

    card_text = "a 2-layer MLP head was trained on the frozen encoder, then the top encoder block was fine-tuned."
    export_kind = "mlp-head"
    hidden = 16

    def periods(self, backbone, config):
        put_mlp_head(backbone.model, backbone.parts.head[0], self.hidden)
        return super().periods(backbone, config)
