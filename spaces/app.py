"""Gradio Space for a classifier trained with tl-hub.

    python spaces/app.py                      # the offline demo's model (made on first run, ~10 s)
    python spaces/app.py your-name/vit-beans  # a model on the Hub (or MODEL_ID=your-name/vit-beans)
    python spaces/app.py runs/demo/model      # a local folder written by `tl-hub train`

The model is loaded only through `tl_hub.load`; see tl_hub/space.py for the app itself.
"""

import glob
import os
import sys

from tl_hub.space import build_app, launch

DEFAULT_MODEL_ID = None  # `tl-hub push --space` writes the model repo here
HERE = os.path.dirname(os.path.abspath(__file__))


def default_model() -> str:
    """The offline demo's model: runs/demo/model if `tl-hub demo` ran, else made once in the tl-hub cache."""
    if os.path.exists(os.path.join("runs", "demo", "model", "tl_hub.json")):
        return os.path.join("runs", "demo", "model")
    from tl_hub.demo import run_demo

    cache = os.path.join(os.environ.get("TL_HUB_CACHE") or os.path.expanduser("~/.cache/tl_hub"), "space-demo")
    model = os.path.join(cache, "model")
    if not os.path.exists(os.path.join(model, "tl_hub.json")):
        run_demo(cache, quick=True, print_fn=lambda *a: None)
    return model


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    source = (argv[0] if argv else None) or os.environ.get("MODEL_ID") or DEFAULT_MODEL_ID or default_model()
    examples = sorted(glob.glob(os.path.join(HERE, "examples", "*.png")))
    demo = build_app(source, examples=examples, title=os.environ.get("SPACE_TITLE"))
    port = int(os.environ.get("PORT", os.environ.get("GRADIO_SERVER_PORT", "7860")))
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    launch(demo, host=host, port=port)


if __name__ == "__main__":
    main()
