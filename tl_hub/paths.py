"""Local paths the user typed: telling a folder path from a Hub id, and saying which folder is missing.

A dataset or model given as text is either a local folder or a Hub id (``name`` or ``owner/name``).  A typo in a
folder path must not become a Hub request (seconds of retries, then a message about the network): `looks_local`
decides from the text and the folders here, and `not_found` names the missing folder and the closest existing one.
"""

from __future__ import annotations

import difflib
import os
import re


def looks_local(path: str) -> bool:
    """Whether a dataset or model given as text means a local folder rather than a Hub id (``name`` or
    ``owner/name``): it starts with ``.``, ``~`` or a separator, holds a backslash, a drive or more than one ``/``,
    or its first part is a folder here (``data/sqaures`` when there is a ``data/``)."""
    if path.startswith((".", "~", "/", os.sep)) or "\\" in path or re.match(r"^[A-Za-z]:", path) or path.count("/") > 1:
        return True
    return "/" in path and os.path.isdir(path.split("/")[0])


def not_found(path: str, what: str = "folder") -> str:
    """'<what> not found: <path>', with the closest name in the nearest existing parent folder."""
    full = os.path.abspath(path)
    parent = os.path.dirname(full.rstrip(os.sep))
    while parent and not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    hint = ""
    if os.path.isdir(parent):
        wanted = os.path.relpath(full, parent).split(os.sep)[0]
        close = difflib.get_close_matches(wanted, [d for d in os.listdir(parent)
                                                   if os.path.isdir(os.path.join(parent, d))], n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean '{os.path.relpath(os.path.join(parent, close[0]))}'?"
    return f"{what} not found: '{path}' ({full}){hint}"
