"""Writing output folders safely.

A model folder is written into a temporary sibling folder and renamed into place when complete, so an
error or an interruption never leaves a half-written folder, and an existing folder is replaced only
with ``overwrite=True`` (and only once the new one is complete).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, Optional

from .errors import ModelError, OutputError


def cache_root() -> str:
    """tl-hub's cache folder: ``$TL_HUB_CACHE``, default ``~/.cache/tl_hub``."""
    return os.environ.get("TL_HUB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tl_hub")


def check_output_dir(path: str, overwrite: bool = False, what: str = "Output") -> None:
    """Refuse an existing non-empty folder unless ``overwrite``; refuse a path that is a file or not writable.

    Call it before training so a run does not fail only at the end.  ``what`` names the folder in messages.
    """
    path = os.path.abspath(path)
    if os.path.isfile(path):
        raise OutputError(f"{what} path '{path}' is a file; pass a folder path.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise OutputError(
            f"{what} folder '{path}' exists and is not empty; pass overwrite=True (--overwrite) to replace it, "
            "or choose another folder."
        )
    parent = os.path.dirname(path)
    probe = parent
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.access(probe, os.W_OK):
        raise OutputError(f"Cannot write to '{probe}' (permission denied); choose a writable output folder.")


@contextlib.contextmanager
def atomic_path(path: str, *, directory: bool = False, temp: Optional[str] = None, owner: bool = True) -> Iterator[str]:
    """The one write-then-rename of tl-hub: yield a temporary sibling of ``path``; when the block completes it is
    renamed onto ``path`` in one step (an existing file or folder there is replaced only then), and when the block
    fails it is removed, so ``path`` is never half-written.

    Args:
        directory: yield a new empty folder (else a file path to write).
        temp: the temporary path to use (default: a fresh unique sibling); several processes writing into one
            folder pass the same ``temp``.
        owner: this process creates, renames and removes the temporary path; the others only write into it.

    Example:
        >>> with atomic_path("out/metrics.json") as tmp:
        ...     open(tmp, "w").write("{}")
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if temp is None:
        os.makedirs(parent, exist_ok=True)
        temp = (tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent) if directory
                else f"{path}.tmp-{os.getpid()}")
    elif owner and directory:
        os.makedirs(temp)
    try:
        yield temp
    except BaseException:
        if owner:
            shutil.rmtree(temp, ignore_errors=True) if os.path.isdir(temp) else _unlink(temp)
        raise
    if not owner:
        return
    if directory and os.path.exists(path):  # a folder cannot be replaced in one rename: move the old one aside
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.rmdir(old)
        os.rename(path, old)
        os.rename(temp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_output_dir(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder that replaces ``path`` when complete (see `atomic_path`); an existing non-empty
    folder is refused unless ``overwrite``.

    Example:
        >>> with atomic_output_dir("out") as tmp:
        ...     model.save_pretrained(tmp)
    """
    check_output_dir(path, overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    with contextlib.suppress(PermissionError):
        os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot write to '{parent}' (permission denied); choose a writable output folder.")
    with atomic_path(path, directory=True) as tmp:
        yield tmp
        _default_permissions(tmp)


def _default_permissions(root: str) -> None:
    """Give the finished folder the permissions a plain ``mkdir``/``open`` would (temp files are private)."""
    umask = os.umask(0)
    os.umask(umask)
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o666 & ~umask)


def write_json(path: str, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_json(path: str) -> Any:
    """Read a JSON file of a model folder; a damaged one is a `ModelError` that names it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"'{path}' is not valid JSON ({e}); the folder is damaged: save or download it again.") \
            from None
