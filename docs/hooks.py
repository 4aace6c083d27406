"""MkDocs hook of the documentation site (``hooks:`` in mkdocs.yml): the public API is documented, all of it.

At every build, for each name in ``tl_hub.__all__``, this hook logs a WARNING, so that ``mkdocs build --strict``
fails, when

- the object has no docstring, or a public method or property defined by a public class has none
  (mkdocstrings leaves undocumented members out of the page silently);
- no page under ``docs/api/`` renders it (a ``::: tl_hub.<name>`` line, or its defining path).

The package is read from the source tree with griffe, as mkdocstrings reads it, so nothing is imported.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger("mkdocs.hooks.api")
DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.MULTILINE)


def on_pre_build(config) -> None:
    import griffe

    root = os.path.dirname(config["config_file_path"])
    package = griffe.load("tl_hub", search_paths=[root], resolve_aliases=True, resolve_external=False)
    rendered = rendered_paths(os.path.join(config["docs_dir"], "api"))
    for name in package.exports or []:
        obj = find(package, name)
        if obj is None:
            log.warning("API reference: tl_hub.%s is in __all__ but not found in the source", name)
            continue
        if not is_rendered(name, obj, rendered):
            log.warning("API reference: tl_hub.%s (%s) is on no page under docs/api/; add a `::: tl_hub.%s` line",
                        name, obj.path, name)
        for path in undocumented(obj):
            log.warning("API reference: %s has no docstring", path)


def find(package, name: str):
    """The object ``tl_hub.<name>`` stands for: the package member (the function, not the submodule, where the two
    share a name), or, for a name the package provides lazily (``__getattr__``), the submodule member that defines
    it."""
    obj = package.members.get(name)
    if obj is not None and obj.is_alias:
        obj = obj.final_target
    if obj is not None and obj.is_module and name in obj.members:
        obj = obj.members[name]
    if obj is None:
        found = [m.members[name] for m in package.modules.values() if name in m.members
                 and not m.members[name].is_alias]
        obj = found[0] if found else None
    return obj


def rendered_paths(api_dir: str) -> set[str]:
    """Every identifier after ``:::`` on the pages under ``api_dir``."""
    paths = set()
    for folder, _, files in os.walk(api_dir):
        for file in files:
            if file.endswith(".md"):
                with open(os.path.join(folder, file), encoding="utf-8") as f:
                    paths.update(DIRECTIVE.findall(f.read()))
    return paths


def is_rendered(name: str, obj, rendered: set[str]) -> bool:
    return f"tl_hub.{name}" in rendered or obj.path in rendered or obj.parent.path in rendered


def undocumented(obj) -> list[str]:
    """The paths of ``obj`` and of the public methods and properties its class defines that have no docstring."""
    missing = [] if has_docstring(obj) else [obj.path]
    if obj.is_class:
        for member_name, member in obj.members.items():
            if member_name.startswith("_") or member.is_alias:
                continue
            if (member.is_function or "property" in member.labels) and not has_docstring(member):
                missing.append(member.path)
    return missing


def has_docstring(obj) -> bool:
    return obj.docstring is not None and bool(obj.docstring.value.strip())
