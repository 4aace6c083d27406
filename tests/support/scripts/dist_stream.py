"""Fine-tune on parquet streams in float64 and write what each process saw; run under python or accelerate launch.

    dist_stream.py MODEL_DIR DATA_DIR RESULT_PATH

DATA_DIR holds ``train-*.parquet`` and ``validation-*.parquet``.  The global batch is the whole training set, so
every optimizer step sees the same examples whatever the number of processes and the stream order: one process
and two then differ only by float64 rounding, and a difference in the metrics can only come from the streamed
data path under DDP (a part read twice or never, uneven steps, an evaluation that loses or repeats examples).
"""

import glob
import json
import sys

import datasets

from tl_hub import FineTuneRecipe
from tl_hub.streaming import content_key, node_stream, undecoded

# datasets sleeps 5 s after each pass over interleaved parquet shards (a pyarrow thread-shutdown workaround)
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0


class Float64FineTune(FineTuneRecipe):
    def load_backbone(self, labels):
        backbone = super().load_backbone(labels)
        backbone.model.double()
        return backbone


def main(model_dir, data_dir, result_path):
    files = {split: sorted(glob.glob(f"{data_dir}/{split}-*.parquet")) for split in ("train", "validation")}
    data = datasets.load_dataset("parquet", data_files=files, streaming=True)
    recipe = Float64FineTune(model_dir, head_epochs=1, epochs=3, lr=1e-2, batch_size=24, eval_batch_size=8,
                             head_solver="adamw", augment=True, seed=0, checkpoint_dir=None)
    result = recipe.fit(data, progress=False)
    acc = recipe.result.run.accelerator
    parts = {split: [content_key(row["image"]) for row in node_stream(
        undecoded(data[split], "image", "label"), acc.process_index, acc.num_processes,
        seed=0 if split == "train" else None)] for split in files}
    record = {"world_size": acc.num_processes, "rank": acc.process_index, "history": result.history,
              "parts": parts, "summary": result.data_summary}
    with open(f"{result_path}.rank{acc.process_index}", "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
