"""A griffe extension for the API reference (loaded by mkdocstrings, ``extensions:`` in mkdocs.yml).

- A config field's help text becomes its docstring. tl-hub's settings are dataclass fields declared as
  ``name: type = setting(default, "help")`` or ``field(..., metadata={"help": "..."})``, and the CLI's flags are
  generated from that help: the site shows the same text, so each setting is described once.
- A docstring's ``Example:`` heading is read as the Google-style ``Examples:`` section, so that its ``>>>`` lines
  are shown as code.
"""

from __future__ import annotations

import ast
import re

import griffe

EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class FieldHelp(griffe.Extension):
    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        if not isinstance(node, ast.AnnAssign):
            return
        text = help_text(node.value)
        if text and attr.docstring is None:
            attr.docstring = griffe.Docstring(text, parent=attr)
        if text:  # the signature shows the default (or none: required), not the field() call around it
            attr.value = default_of(node.value)


def help_text(value) -> str | None:
    """The help of ``setting(default, "help")`` or ``field(..., metadata={"help": "..."})``, else None."""
    if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Name):
        return None
    if value.func.id == "setting":
        given = value.args[1:2] + [k.value for k in value.keywords if k.arg == "help"]
        return constant(given[0]) if given else None
    if value.func.id == "field":
        for keyword in value.keywords:
            if keyword.arg == "metadata" and isinstance(keyword.value, ast.Dict):
                for key, item in zip(keyword.value.keys, keyword.value.values):
                    if isinstance(key, ast.Constant) and key.value == "help":
                        return constant(item)
    return None


def default_of(value) -> str | None:
    """The source of the default of ``setting(default, ...)``, ``field(default=...)`` or
    ``field(default_factory=f)`` (as ``f()``); None for a required field."""
    if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Name):
        return None
    if value.func.id == "setting" and value.args:
        return ast.unparse(value.args[0])
    given = {k.arg: k.value for k in value.keywords}
    if "default" in given:
        return ast.unparse(given["default"])
    return f"{ast.unparse(given['default_factory'])}()" if "default_factory" in given else None


def constant(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
