"""Fine-tune a pretrained image classifier in two periods: the new head first, then the encoder.

Runs the same under plain Python (one process, CPU or one GPU) and under ``accelerate launch`` (several
GPUs or nodes); the global batch size is split across processes, so results do not depend on their number.

    python recipes/fine_tune.py --model google/vit-base-patch16-224-in21k --dataset beans --output-dir out/vit-beans
    accelerate launch --multi_gpu --num_processes 4 recipes/fine_tune.py --model ... --dataset ... --output-dir ...

Period 1 fits the new head on the frozen encoder's cached features (a linear head is solved to convergence); period 2
unfreezes all (``--unfreeze all``) or the top k blocks (``--unfreeze k``) with smaller learning rates for pretrained
layers (``--backbone-lr-ratio``, default 0.1, or BEiT-style ``--layer-decay``).  Every setting has a default that
scales with the data (docs/guides/defaults.md).
"""

import sys

from tl_hub.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("fine-tune", __doc__.splitlines()[0]))
