"""Fine-tune several architectures in one launch and write what each process saw; python or accelerate launch.

    dist_arch.py DATA_DIR RESULT_PATH TYPE=MODEL_DIR [TYPE=MODEL_DIR ...]
"""

import json
import os
import sys

import datasets

from tl_hub import FineTuneRecipe


class Float64FineTune(FineTuneRecipe):
    """Fine-tuning in float64: one process and N processes then differ only by rounding far below any tolerance, so
    a difference in the metrics can only come from DDP (a gradient not synchronised, a wrong data split ...), not
    from float32 noise that a tiny random model amplifies."""

    def load_backbone(self, labels):
        backbone = super().load_backbone(labels)
        backbone.model.double()
        return backbone


def main(data_dir, result_path, *models):
    data = datasets.load_from_disk(data_dir)
    record = {}
    for item in models:
        name, model_dir = item.split("=", 1)
        # 24 images at a global batch of 8: 3 optimizer steps in each period; the head by AdamW steps, so that
        # period 1 runs under DDP too; everything that the forward uses is trained in period 2
        settings = dict(head_epochs=1, epochs=2, lr=1e-3, batch_size=8, eval_batch_size=16, head_solver="adamw",
                        augment=True, seed=0, feature_cache="memory", checkpoint_dir=None)
        if os.environ.get("TL_HUB_TEST_PREFIX") == "1":  # the top 2 blocks train on the cached frozen prefix
            settings.update(augment=False, unfreeze=2, prefix_cache=True)
        recipe = Float64FineTune(model_dir, **settings)
        result = recipe.fit(data["train"], data["validation"], progress=False)
        acc = recipe.result.run.accelerator
        steps = {p: sum(1 for h in result.history if h["period"] == p) for p in ("head", "fine-tune")}
        record[name] = {"world_size": acc.num_processes, "rank": acc.process_index, "history": result.history,
                        "epochs": steps, "unused": len(recipe.result.run.backbone.parts.unused),
                        "prefix_cut": result.extra["periods"][-1].get("prefix_cache")}
    with open(f"{result_path}.rank{acc.process_index}", "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
