"""Gradio Space for a classifier trained with tl-hub.

    python spaces/app.py                      # the offline demo's model (made on first run, ~10 s)
    python spaces/app.py your-name/vit-beans  # a model on the Hub (or MODEL_ID=your-name/vit-beans)
    python spaces/app.py runs/demo/model      # a local folder written by `tl-hub train`

The model is loaded only through `tl_hub.load`; the app itself is `tl_hub.build_app`.
"""

import glob
import os
import sys

import tl_hub

DEFAULT_MODEL_ID = None  # `tl-hub push --space` writes the model repo here
HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    source = (argv[0] if argv else None) or os.environ.get("MODEL_ID") or DEFAULT_MODEL_ID or tl_hub.demo_model()
    examples = sorted(glob.glob(os.path.join(HERE, "examples", "*.png")))
    demo = tl_hub.build_app(source, examples=examples, title=os.environ.get("SPACE_TITLE"))
    port = int(os.environ.get("PORT", os.environ.get("GRADIO_SERVER_PORT", "7860")))
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    tl_hub.launch_app(demo, host=host, port=port)


if __name__ == "__main__":
    main()
