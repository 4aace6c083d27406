"""The package's rules, checked: no import cycles (module-level or inside functions), short functions, no
private names used across modules, nothing written on a recipe but its result, evaluation in its own module, one
definition of each fine-tune setting, the CLI and the Space on the public API only, and an architecture page that
lists every module."""

import ast
import os
import re
from pathlib import Path

import pytest

import tl_hub

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tl_hub"
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return out


def imports_of(name: str, tree: ast.Module, is_package: bool):
    """``(module imported, names imported)`` for every import anywhere in the module, relative ones resolved."""
    base = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{parent}.{node.module}" if node.module else parent
            else:
                target = node.module
            yield target, [a.name for a in node.names]


def graph() -> dict[str, set[str]]:
    trees = modules()
    edges = {}
    for name, tree in trees.items():
        is_package = (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists() or name == "tl_hub"
        edges[name] = set()
        for target, names in imports_of(name, tree, is_package):
            if target in trees:
                edges[name].add(target)
            # `from . import x` where x is a submodule
            edges[name].update(f"{target}.{n}" for n in names if f"{target}.{n}" in trees)
        edges[name].discard(name)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_the_import_graph_has_no_cycles():
    edges = graph()
    assert len(edges) > 20 and "tl_hub.fit" in edges["tl_hub.recipe"]  # the graph is really built
    assert "tl_hub.recipes" in edges["tl_hub"] and "tl_hub.model_folder" in edges["tl_hub.space"]
    cycles = find_cycles(edges)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_cycle_would_be_found():
    edges = graph()
    edges["tl_hub.hub"].add("tl_hub.space")  # what hub.py once did (SPACE_DIR), while space.py imports hub
    assert any({"tl_hub.hub", "tl_hub.space"} <= set(c) for c in find_cycles(edges))
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_functions_are_short():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long
    assert len((PACKAGE / "recipes.py").read_text().splitlines()) <= 250


def test_no_private_names_are_imported_across_modules():
    private = [f"{name} imports {target}.{n}" for name, tree in modules().items()
               for target, names in imports_of(name, tree, name == "tl_hub")
               if target.startswith("tl_hub") for n in names if n.startswith("_") and n != "__version__"]
    assert not private, private


def recipe_writes(tree: ast.Module) -> list[str]:
    """Attributes written on a recipe: ``recipe.x = ...`` / ``setattr(recipe, ...)`` anywhere, and ``self.x = ...``
    in the methods of `Recipe` classes other than ``__init__``, except ``result``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name.endswith("Recipe"):
            for method in (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"):
                found += [f"{node.name}.{method.name} sets self.{t.attr}" for t in assigned(method)
                          if isinstance(t.value, ast.Name) and t.value.id == "self" and t.attr != "result"]
        if isinstance(node, ast.FunctionDef):
            found += [f"{node.name} sets recipe.{t.attr}" for t in assigned(node)
                      if isinstance(t.value, ast.Name) and t.value.id == "recipe" and t.attr != "result"]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                and isinstance(node.args[0], ast.Name) and node.args[0].id in ("recipe", "self")):
            found.append(f"setattr({node.args[0].id}, ...)")
    return found


def assigned(function: ast.FunctionDef) -> list[ast.Attribute]:
    targets = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            targets += node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets.append(node.target)
    flat = []
    while targets:
        t = targets.pop()
        if isinstance(t, ast.Tuple):
            targets += t.elts
        elif isinstance(t, ast.Attribute):
            flat.append(t)
    return flat


def test_nothing_but_its_result_is_written_on_a_recipe():
    found = [f"{name}: {w}" for name, tree in modules().items() for w in recipe_writes(tree)]
    assert not found, found
    scratchpad = ast.parse("def prepare(recipe, x):\n    recipe.config, recipe.result = x, x\n    recipe.passes += 1\n"
                           "class MyRecipe:\n    def fit(self):\n        self.backbone = 1\n")
    assert sorted(recipe_writes(scratchpad)) == ["MyRecipe.fit sets self.backbone", "prepare sets recipe.config",
                                                "prepare sets recipe.passes"]


def test_evaluation_has_its_own_module():
    trees = modules()
    defined = {name for name, tree in trees.items() for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef) and node.name in ("evaluate_loader", "confident_errors")}
    assert defined == {"tl_hub.evaluation"}
    edges = graph()
    assert "tl_hub.evaluation" in edges["tl_hub.loop"] and "tl_hub.evaluation" in edges["tl_hub.inference"]
    assert "tl_hub.loop" not in edges["tl_hub.inference"] and "tl_hub.metrics" not in edges["tl_hub.loop"]
    assert "gather_for_metrics" not in (PACKAGE / "loop.py").read_text()


def test_each_fine_tune_setting_and_advise_are_defined_once():
    trees = modules()
    policies = [name for name, tree in trees.items() for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name) and t.id == "BN_POLICIES"]
    assert policies == ["tl_hub.config"]
    texts = "".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert texts.count("should be 'all' or a positive number of blocks") == 1  # the one unfreeze parser
    advise = [name for name, tree in trees.items() for node in ast.walk(tree)
              if isinstance(node, ast.FunctionDef) and node.name == "advise"]
    assert advise == ["tl_hub.ranking"] and tl_hub.advise.__module__ == "tl_hub.ranking"


@pytest.mark.parametrize("path", ["tl_hub/cli.py", "spaces/app.py"])
def test_the_cli_and_the_space_use_only_the_public_api(path):
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    public = set(tl_hub.__all__)
    used = []
    for target, names in imports_of("tl_hub.cli", tree, False):
        if target == "tl_hub":
            used += [n for n in names if n not in public]
        elif target.startswith("tl_hub."):
            used.append(target)
    for node in ast.walk(tree):  # tl_hub.<name> attribute access
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tl_hub"
                and node.attr not in public):
            used.append(f"tl_hub.{node.attr}")
    assert not used, f"{path} uses non-public names: {used}"


def test_the_architecture_page_lists_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## What each module owns", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^- `([a-z_]+(?:\.py|/))`", section, flags=re.MULTILINE))
    present = {p.name for p in PACKAGE.glob("*.py")}
    present |= {f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")
                and (p / "__init__.py").exists()}
    assert listed == present, {"not in docs/architecture.md": sorted(present - listed),
                               "not in tl_hub/": sorted(listed - present)}
    assert all(os.path.exists(ROOT / d) for d in ("recipes", "spaces", "benchmarks", "tests"))
