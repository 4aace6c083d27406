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
from typing import Any, Iterator

from .errors import ModelError, OutputError


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
def atomic_output_dir(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename.

    Example:
        >>> with atomic_output_dir("out") as tmp:
        ...     model.save_pretrained(tmp)
    """
    check_output_dir(path, overwrite)
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    except PermissionError:
        raise OutputError(f"Cannot write to '{parent}' (permission denied); choose a writable output folder.") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.rmdir(old)
        os.rename(path, old)
    os.rename(tmp, path)
    _default_permissions(path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


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
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


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
