"""Feature extraction: train a new head on a frozen pretrained encoder (small data, similar task).

The encoder's weights and BatchNorm statistics stay exactly the pretrained ones.  Runs under plain Python
and under ``accelerate launch``:

    python recipes/feature_extraction.py --model facebook/convnext-tiny-224 --dataset beans \\
        --output-dir out/convnext-beans
    accelerate launch --multi_gpu --num_processes 2 recipes/feature_extraction.py --model ... --dataset ... \\
        --output-dir ...
"""

import sys

from tl_hub.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("feature-extraction", __doc__.splitlines()[0]))
