"""The documentation, checked.

- Every Python block of README.md and docs/ runs as written, offline: each document's blocks in order in one
  process (a document is read top to bottom), the Hub names replaced by local stand-ins (`doc_substitutions`, the
  one list): the models are served under their Hub ids by the local Hub server, which also takes the pushes.
- Every generated benchmark table (and figure) is what `benchmarks/tables.py` renders from the result files.
- The site builds with ``mkdocs build --strict`` (no broken link or anchor, every public object documented), and
  README.md's relative links point at files that exist.
"""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest
from support.doc_substitutions import stand_ins
from support.hub_server import LocalHub
from test_hub_push import GUARD, TOKEN, client_env

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                          recursive=True))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(doc: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each fenced Python block of ``doc``."""
    text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


def program(doc: str, replacements: dict) -> str:
    """One script running every block of ``doc`` in order, each compiled under its own file:line name."""
    lines = [GUARD, "namespace = {'__name__': '__main__'}"]
    for line, code in python_blocks(doc):
        for old, new in replacements.items():
            code = code.replace(old, new)
        lines.append(f"print('--- block at {doc}:{line}', flush=True)")
        lines.append(f"exec(compile({code!r}, {f'{doc}:{line}'!r}, 'exec'), namespace)")
    return "\n".join(lines)


def test_the_docs_have_python_blocks_and_the_readme_quickstart_is_offline():
    blocks = python_blocks("README.md")
    assert blocks, "README.md has no Python block"
    quickstart = blocks[0][1]
    assert "tl-hub:efficientnet-lite0" in quickstart and "example_folder" in quickstart  # no Hub needed


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks(d)])
def test_every_python_block_runs(doc, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    replacements = stand_ins(str(work))
    with LocalHub(str(tmp_path / "hub-store"), token=TOKEN) as hub:
        env = {**client_env(hub, tmp_path / "home"), "MPLBACKEND": "Agg"}
        upload = (f"import sys; sys.path[:0] = [{TESTS!r}]; from support.doc_substitutions import upload_models; "
                  f"upload_models({str(tmp_path)!r}, {hub.url!r}, {TOKEN!r})")  # a process that may reach the server
        uploaded = subprocess.run([sys.executable, "-c", upload], env=env, capture_output=True, text=True, timeout=300)
        assert uploaded.returncode == 0, uploaded.stderr[-3000:]
        proc = subprocess.run([sys.executable, "-c", program(doc, replacements)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1200)
    ran = [l for l in proc.stdout.splitlines() if l.startswith("--- block at")]
    assert proc.returncode == 0, f"failed after {ran[-1] if ran else 'no block'}:\n{proc.stderr[-4000:]}"
    assert len(ran) == len(python_blocks(doc))


def load_tables():
    """`benchmarks/tables.py` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tables", os.path.join(ROOT, "benchmarks", "tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_tables_match_the_results():
    tables = load_tables()
    stale = tables.check()
    assert not stale, f"stale (run `python benchmarks/tables.py`): {stale}"
    used = {m.group(2) for doc in DOCS for m in tables.MARKED.finditer(open(os.path.join(ROOT, doc)).read())}
    assert {"transfer_real", "rank_real_scores", "run_lite0", "headline"} <= used  # the markers are really read


def test_a_stale_table_is_found_and_rewritten():
    tables = load_tables()
    text = "before\n<!-- table: quadrants -->\n| typed | by hand |\n<!-- /table -->\nafter\n"
    fresh, stale = tables.regenerated(text)
    assert stale == ["quadrants"] and fresh.startswith("before\n<!-- table: quadrants -->\n\n| quadrant |")
    assert fresh.endswith("\n\n<!-- /table -->\nafter\n") and tables.regenerated(fresh) == (fresh, [])
    with pytest.raises(KeyError, match="unknown table"):
        tables.regenerated("<!-- table: nothing_like_it -->\n<!-- /table -->\n")


def test_the_site_builds_strictly(tmp_path):
    # not --quiet: it hides the warnings, and --strict then passes whatever they say
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr[-6000:]
    assert (tmp_path / "site" / "api" / "recipes" / "index.html").exists()


def test_the_readme_links_point_at_files():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local and not [t for t in local if not os.path.exists(os.path.join(ROOT, t))]


@pytest.mark.parametrize("break_it, expected", [
    ("docstring", "tl_hub.recipe.get_recipe has no docstring"),
    ("link", "contains a link 'guides/no-such-page.md'"),
], ids=["missing docstring", "broken link"])
def test_a_missing_docstring_or_a_broken_link_fails_the_build(tmp_path, break_it, expected):
    import shutil

    copy = tmp_path / "repo"
    for name in ("docs", "tl_hub", "benchmarks"):
        shutil.copytree(os.path.join(ROOT, name), copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), copy / name)
    if break_it == "docstring":
        recipe = copy / "tl_hub" / "recipe.py"
        text = recipe.read_text()
        docstring = re.search(r'(def get_recipe\(.*?\n)(\s+"""[^\n]*"""\n)', text)
        recipe.write_text(text.replace(docstring.group(0), docstring.group(1)))
    else:
        page = copy / "docs" / "architecture.md"
        page.write_text(page.read_text() + "\nSee [nowhere](guides/no-such-page.md).\n")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=copy, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode != 0 and expected in build.stderr, build.stderr[-3000:]
