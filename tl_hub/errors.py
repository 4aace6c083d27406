"""User-facing errors.

Every mistake a user can make (a wrong model id, a folder without images, a bad
argument) is reported as a :class:`TlHubError` whose message says what was wrong
and what to do.  The CLI prints it as one line, without a traceback.
"""

from typing import Optional


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class TlHubError(Exception):
    """An error caused by user input; the message names the problem and the fix."""


class ConfigError(TlHubError, ValueError):
    """An invalid recipe or training setting."""


class DataError(TlHubError, ValueError):
    """A dataset that tl-hub cannot train or evaluate on as given."""


class ModelError(TlHubError, OSError):
    """A model that cannot be loaded or adapted."""


class OutputError(TlHubError, OSError):
    """An output location that cannot be written safely."""


class TrainingError(TlHubError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


class MissingDependency(TlHubError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra that installs it."""


# optional packages, by the top-level module a feature imports: (the tl-hub extra that installs it, what needs it)
OPTIONAL_MODULES = {
    "gradio": ("space", "the Gradio app (`tl-hub serve`, `tl_hub.build_app`)"),
    "gradio_client": ("space", "the Gradio app's client"),
    "tensorboard": ("tracking", "report_to='tensorboard'"),
    "tensorboardX": ("tracking", "report_to='tensorboard'"),
    "mlflow": ("tracking", "report_to='mlflow'"),
    "wandb": ("tracking", "report_to='wandb'"),
    "onnxruntime": ("onnx", "running an ONNX export (`tl_hub.load` on a `tl-hub export` folder) and exporting"),
    "onnx": ("onnx", "the ONNX export (`tl-hub export`, `tl_hub.export`)"),
    "onnxscript": ("onnx", "the ONNX export (`tl-hub export`, `tl_hub.export`)"),
}


def missing_dependency(module: Optional[str]) -> Optional[MissingDependency]:
    """The one-line error for ``module`` (or a module inside it) when it is one of the optional `OPTIONAL_MODULES`
    and is not installed; None for any other module (a missing required package is a broken install)."""
    top = (module or "").split(".")[0]
    if top not in OPTIONAL_MODULES:
        return None
    extra, needed_by = OPTIONAL_MODULES[top]
    return MissingDependency(f"{needed_by} needs {top}, which is not installed: pip install \"tl-hub[{extra}]\"")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def require(module: str) -> None:
    """Raise `missing_dependency` unless ``module`` can be imported (found without importing it)."""
    if not installed(module):
        raise missing_dependency(module) or MissingDependency(f"{module} is not installed: pip install {module}")
