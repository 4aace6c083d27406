"""Fit a multi-label task (feature extraction, then a fine-tune) and write what each process saw; run under python
or accelerate launch."""

import json
import sys

import datasets

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe


def main(model_dir, data_dir, result_path):
    data = datasets.load_from_disk(data_dir)
    record = {}
    for name, recipe in (("feature-extraction", FeatureExtractionRecipe(model_dir, eval_batch_size=32, seed=0)),
                         ("fine-tune", FineTuneRecipe(model_dir, head_epochs=1, epochs=2, lr=1e-2, batch_size=16,
                                                      eval_batch_size=32, augment=True, seed=0))):
        result = recipe.fit(data["train"], data["validation"], progress=False)
        acc = recipe.result.run.accelerator
        probs = recipe.classifier.predict_proba(data["validation"]["image"][:8])
        record[name] = {"history": result.history, "thresholds": recipe.classifier.info["thresholds"],
                        "metrics": {k: result.metrics[k] for k in ("mAP", "f1", "f1_micro", "loss")},
                        "probabilities": probs.tolist()}
        record.update(world_size=acc.num_processes, rank=acc.process_index)
    with open(f"{result_path}.rank{record['rank']}", "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
