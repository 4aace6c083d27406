"""Fit a FineTuneRecipe and write what each process saw; run under python or accelerate launch."""

import json
import sys

import datasets

from tl_hub import FineTuneRecipe


def main(model_dir, data_dir, out_dir, result_path):
    data = datasets.load_from_disk(data_dir)
    recipe = FineTuneRecipe(model_dir, head_epochs=1, epochs=3, lr=1e-2, backbone_lr_ratio=0.1, batch_size=16,
                            eval_batch_size=32, augment=True, seed=0)
    result = recipe.fit(data["train"], data["validation"], progress=False)
    recipe.save(out_dir)
    acc = recipe.result.run.accelerator
    record = {"world_size": acc.num_processes, "rank": acc.process_index, "history": result.history}
    with open(f"{result_path}.rank{acc.process_index}", "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
