"""The Gradio app for any trained classifier (``tl-hub serve``, and ``spaces/app.py`` on a Space).

The model is loaded only through `tl_hub.load` (a trained folder or a Hub repo).  The page offers an image upload
(webcam and clipboard as Gradio offers), the top-k labels (``gr.Label``), example images, a panel describing the
model, batch prediction of several files, and two API endpoints with stable names for ``gradio_client``:
``/predict`` (one image) and ``/predict_batch`` (several).

Bad input never crashes the server: no image, a file that is not an image, an image over ``max_pixels`` and
decompression bombs are answered with a readable ``gr.Error``.  Uploads are capped by ``max_file_size``, and the
queue runs ``concurrency`` predictions at a time.  The page uses system fonts, so it requests nothing from any
other host.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

from PIL import Image

from .errors import require
from .hub import base_of
from .model_folder import load

MAX_PIXELS = 40_000_000
NO_LABEL = "no label reaches its threshold"  # what a multi-label model shows for an image with none
MAX_FILE_SIZE = "20mb"
CONCURRENCY = 4


def _open_image(path: Any, max_pixels: int, name: Optional[str] = None) -> Image.Image:
    """Open an uploaded file as an image, checking its size from the header before decoding anything."""
    import gradio as gr

    if path is None or (isinstance(path, str) and not path):
        raise gr.Error("No image: upload an image (or pick an example) first.")
    if isinstance(path, Image.Image):
        image = path
    else:
        name = name or os.path.basename(str(path))
        try:
            with Image.open(path) as probe:
                width, height = probe.size
        except Image.DecompressionBombError:
            raise gr.Error(f"'{name}' is refused: its dimensions are absurdly large (a decompression bomb).") from None
        except Exception:
            raise gr.Error(f"'{name}' is not an image this app can read (PNG, JPEG, WebP, BMP, GIF, TIFF ...).") \
                from None
        if width * height > max_pixels:
            raise gr.Error(f"'{name}' is {width}x{height} pixels, over the limit of {max_pixels:,} pixels; "
                           "send a smaller image.")
        try:
            image = Image.open(path)
            image.load()
        except Exception:
            raise gr.Error(f"'{name}' is damaged or truncated and cannot be decoded.") from None
    return image


def _checked_image(max_pixels: int, **kwargs):
    """``gr.Image`` whose preprocessing checks the upload first, so a bad file gets a readable ``gr.Error``
    (Gradio's own preprocessing failure is a generic message) and a huge image is refused before decoding.

    The check wraps the instance's ``preprocess`` (a subclass would be treated as a custom component)."""
    import gradio as gr

    image = gr.Image(**kwargs)
    original = image.preprocess

    def preprocess(payload):
        if payload is not None and getattr(payload, "path", None):
            _open_image(payload.path, max_pixels, name=getattr(payload, "orig_name", None))
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception:
            raise gr.Error("The upload could not be read as an image.") from None

    image.preprocess = preprocess
    return image


class SpaceApp:
    """Prediction functions around a classifier, independent of the UI (and tested directly)."""

    def __init__(self, classifier, *, top_k: int = 5, max_pixels: int = MAX_PIXELS):
        self.classifier = classifier
        self.top_k = len(classifier.labels) if self.multi_label else max(1, min(top_k, len(classifier.labels)))
        self.max_pixels = max_pixels

    def predict(self, image: Any) -> Union[dict, str]:
        """``{label: score}`` for the top-k labels of one image (path or PIL image); for a multi-label model, every
        label over its threshold (`NO_LABEL` when there is none)."""
        img = _open_image(image, self.max_pixels)
        predictions = self.classifier.predict(img, top_k=None if self.multi_label else self.top_k)
        if self.multi_label and not predictions:
            return NO_LABEL
        return {p["label"]: p["score"] for p in predictions}

    @property
    def runtime(self) -> str:
        """What computes the predictions: ONNX Runtime (an export, with its quantization) or PyTorch."""
        onnx = (self.classifier.info or {}).get("onnx")
        if onnx is None:
            return "PyTorch"
        return f"ONNX Runtime ({onnx.get('quantize') or 'fp32'})"

    @property
    def multi_label(self) -> bool:
        """Whether the classifier gives a set of labels per image."""
        return bool(getattr(self.classifier, "multi_label", False))

    def predict_batch(self, files: Optional[Sequence[Any]]) -> list[list]:
        """One row per file: ``[file name, top label, score]``; multi-label: ``[file name, "a; b", "0.93; 0.71"]``
        (every label over its threshold)."""
        import gradio as gr

        if not files:
            raise gr.Error("No images: upload one or more image files.")
        paths = [getattr(f, "name", f) for f in files]
        images = [_open_image(p, self.max_pixels) for p in paths]
        rows = []
        for path, preds in zip(paths, self.classifier.predict(images, top_k=None if self.multi_label else 1)):
            if self.multi_label:
                rows.append([os.path.basename(str(path)), "; ".join(p["label"] for p in preds) or NO_LABEL,
                             "; ".join(f"{p['score']:.4f}" for p in preds)])
            else:
                rows.append([os.path.basename(str(path)), preds[0]["label"], round(preds[0]["score"], 4)])
        return rows

    def describe(self, source: str) -> str:
        info = self.classifier.info or {}
        metrics = (info.get("metrics") or {}).get("validation") or {}
        lines = [f"**Model**: `{source}`", f"**Classes** ({len(self.classifier.labels)}): "
                 + ", ".join(self.classifier.labels[:20]) + (" ..." if len(self.classifier.labels) > 20 else "")]
        if info.get("base_model"):
            kind, name, _ = base_of(info)
            lines.append(f"**Base model**: `{name}`" + (" (a local folder)" if kind == "local" else "")
                         + (f" @ `{info['base_model_revision'][:10]}`" if info.get("base_model_revision") else "")
                         + ("" if info.get("pretrained", True) else " (its architecture, trained from scratch)"))
        if info.get("recipe"):
            lines.append(f"**Recipe**: {info['recipe']}")
        lines.append(f"**Runtime**: {self.runtime}")
        if info.get("data"):
            lines.append(f"**Data**: {info['data']}")
        if metrics:
            lines.append("**Validation**: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                         if isinstance(v, (int, float))))
        return "\n\n".join(lines)


def space_dir() -> Optional[str]:
    """The Space's files (``app.py``, ``requirements.txt``, ``README.md``, ``examples/``): the ``spaces/`` folder of
    the source tree, which an installed package carries as ``tl_hub/space_template`` (None if neither is there)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "space_template"), os.path.join(os.path.dirname(here), "spaces")):
        if os.path.isfile(os.path.join(folder, "app.py")):
            return folder
    return None


def example_images() -> list[str]:
    """The small example images shipped with the Space (digits made from the demo data)."""
    folder = os.path.join(space_dir() or "", "examples")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)) if os.path.isdir(folder) else []



def build_app(source: str, *, examples: Optional[Sequence[str]] = None, top_k: int = 5,
              max_pixels: int = MAX_PIXELS, title: Optional[str] = None):
    """The Gradio ``Blocks`` app for the classifier at ``source`` (folder or Hub repo id), served through ONNX
    Runtime when the model has an ONNX export (`tl_hub.export`, or pushed with ``onnx=True``) and onnxruntime is
    installed, else through PyTorch; "About this model" says which."""
    require("gradio")
    import gradio as gr

    classifier = load(source, runtime="auto")  # the ONNX export when the model has one
    app = SpaceApp(classifier, top_k=top_k, max_pixels=max_pixels)
    with gr.Blocks(title=title or "tl-hub classifier", analytics_enabled=False) as demo:
        returns = ("every label whose score reaches its threshold (multi-label)" if app.multi_label
                   else f"its top {app.top_k} labels")
        gr.Markdown(f"# {title or 'Image classifier'}\nUpload an image; the model returns {returns}. Trained with "
                    "tl-hub by transfer learning.")
        with gr.Row():
            with gr.Column():
                image = _checked_image(max_pixels, type="filepath", label="Image",
                                       sources=["upload", "webcam", "clipboard"], elem_id="input-image")
                submit = gr.Button("Classify", variant="primary", elem_id="submit")
            with gr.Column():
                label = gr.Label(num_top_classes=app.top_k, label="Prediction", elem_id="prediction")
        if examples:
            gr.Examples(examples=[[e] for e in examples], inputs=image, label="Examples")
        with gr.Accordion("Several images at once", open=False):
            files = gr.File(file_count="multiple", file_types=["image"], label="Images")
            batch_button = gr.Button("Classify all", elem_id="submit-batch")
            table = gr.Dataframe(headers=["file", "label", "score"], label="Predictions", interactive=False)
        with gr.Accordion("About this model", open=False):
            gr.Markdown(app.describe(source), elem_id="model-info")
        submit.click(app.predict, inputs=image, outputs=label, api_name="predict")
        batch_button.click(app.predict_batch, inputs=files, outputs=table, api_name="predict_batch")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=256)
    demo.tl_hub_app = app
    return demo


def local_theme():
    """Gradio's default look with system fonts: the page loads no web fonts from other hosts."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def launch(demo, *, host: str = "127.0.0.1", port: Optional[int] = None, block: bool = True, **kwargs):
    """Launch ``demo`` with the limits and offline settings tl-hub uses."""
    require("gradio")
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, show_error=True,
                       theme=local_theme(), prevent_thread_lock=not block, ssr_mode=False, footer_links=[],
                       **kwargs)


def push_space(space_id: str, model_repo: str, *, private: Optional[bool] = None, token=None) -> str:
    """Create or update a Gradio Space that serves ``model_repo`` with tl-hub's app (``spaces/``), in one commit."""
    import re
    import shutil
    import tempfile

    from .errors import TlHubError
    from .hub import upload_space

    template = space_dir()
    if template is None:
        raise TlHubError("The Space files are missing from this tl-hub install (tl_hub/space_template); reinstall "
                         "tl-hub (pip install --force-reinstall tl-hub).")
    with tempfile.TemporaryDirectory(prefix="tl_hub_space_") as tmp:
        shutil.copytree(template, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
        app_path = os.path.join(tmp, "app.py")
        with open(app_path, encoding="utf-8") as f:
            app = f.read()
        app = re.sub(r"^DEFAULT_MODEL_ID = .*$", f"DEFAULT_MODEL_ID = {model_repo!r}", app, count=1, flags=re.MULTILINE)
        with open(app_path, "w", encoding="utf-8") as f:
            f.write(app)
        return upload_space(tmp, space_id, private=private, token=token,
                            commit_message=f"tl-hub Space for {model_repo}")
