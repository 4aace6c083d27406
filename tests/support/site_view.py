"""Run Python as in another installation: this environment's packages minus some, with tl-hub from a chosen place.

`site_view` links every entry of this environment's site-packages into a folder, leaving out the packages named
(their modules and their ``.dist-info``, so that neither ``import`` nor ``importlib.metadata`` finds them) and
tl-hub's own install.  `python_in` then runs ``python -S`` (no site-packages, no ``.pth`` files) with only that
folder and tl-hub's location (the source tree, or a wheel installed with ``pip --target``) on its path: a base
install without the extras, or a wheel installed outside the source tree, in seconds and without a download.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OWN = ("tl_hub", "tl-hub", "__editable__")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def entries_of(dists: set[str]) -> set[str]:
    """The site-packages entries (top-level modules, scripts' folders, ``.dist-info``) of the distributions named."""
    wanted, entries = {_normalise(d) for d in dists}, set()
    for dist in importlib.metadata.distributions(path=[site_packages()]):
        if _normalise(dist.metadata["Name"] or "") not in wanted:
            continue
        entries.update(f.parts[0] for f in dist.files or [] if f.parts[0] != "..")  # modules and .dist-info
    return entries


def site_view(dest: str, hide: set[str] = frozenset()) -> str:
    """A folder of links to this environment's packages except ``hide`` (distribution names) and tl-hub:
    ``dest/site-packages`` (named so, as libraries such as dill tell installed modules from the user's by it)."""
    dest = os.path.join(dest, "site-packages")
    os.makedirs(dest, exist_ok=True)
    hidden = entries_of(set(hide))
    for name in os.listdir(site_packages()):
        if name in hidden or name.startswith(OWN) or name.endswith(".pth") or name == "__pycache__":
            continue
        os.symlink(os.path.join(site_packages(), name), os.path.join(dest, name))
    return dest


def python_in(view: str, tl_hub_path: str, args: list[str], *, env: dict | None = None, cwd: str | None = None,
              timeout: int = 600, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run ``python -S args`` with only ``tl_hub_path`` and ``view`` on its path (``Popen`` with ``popen`` options,
    else run to the end and return the completed process)."""
    env = {**(env or os.environ), "PYTHONPATH": os.pathsep.join([tl_hub_path, view]), "PYTHONNOUSERSITE": "1"}
    command = [sys.executable, "-S", *args]
    if popen:
        return subprocess.Popen(command, env=env, cwd=cwd, **popen)
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
