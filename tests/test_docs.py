"""Every Python block of README.md and docs/ runs as written, offline: each document's blocks in order in one
process (a document is read top to bottom), the Hub names replaced by local stand-ins
(`doc_substitutions`, the one list): the models are served under their Hub ids by the local Hub server, which
also takes the pushes."""

import glob
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
