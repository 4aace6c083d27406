"""A base install (no extras): every subcommand runs, or says in one line which extra it needs (exit 2); never a
traceback.  Each optional package is hidden in turn from the command that uses it; then all of them from every
subcommand (`support.site_view`: this environment's packages minus some, tl-hub from the source tree)."""

import importlib.metadata
import os

import pytest
from support.site_view import ROOT, python_in, site_view

from tl_hub.cli import SUBCOMMANDS
from tl_hub.errors import OPTIONAL_MODULES

pytestmark = pytest.mark.slow  # see pyproject.toml: the inner loop is -m "not slow"

TINY = ["--epochs", "1", "--batch-size", "16", "--seed", "0"]


def distributions_of(modules) -> set[str]:
    """The installed distributions that provide ``modules``."""
    provided = importlib.metadata.packages_distributions()
    return {dist for m in modules for dist in provided.get(m, [])}


def cli(view, *args, cwd, timeout=600):
    return python_in(view, ROOT, ["-m", "tl_hub.cli", *map(str, args)], cwd=str(cwd), timeout=timeout)


def assert_needs_extra(proc, extra):
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f'pip install "tl-hub[{extra}]"' in errors[0], proc.stderr[-3000:]


def assert_ran(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def base_install(tmp_path_factory):
    """This environment without any optional package."""
    hidden = distributions_of(OPTIONAL_MODULES)
    assert {"gradio", "wandb"} <= {d.lower() for d in hidden}, hidden  # the test hides what it claims to
    return site_view(str(tmp_path_factory.mktemp("base-install")), hidden)


@pytest.fixture(scope="module")
def trained(base_install, tiny_model_dir, tmp_path_factory):
    from support.tiny import write_image_folder

    root = tmp_path_factory.mktemp("extras")
    data = write_image_folder(root / "data", n=30)
    proc = cli(base_install, "train", "--recipe", "feature-extraction", "--model", tiny_model_dir("resnet"),
               "--dataset", data, "--output-dir", root / "model", *TINY, cwd=root)
    assert_ran(proc)
    return root, data, str(root / "model")


@pytest.mark.parametrize("module", sorted({m for m, (extra, _) in OPTIONAL_MODULES.items() if extra == "space"
                                           and m in importlib.metadata.packages_distributions()}))
def test_serve_without_gradio_names_the_space_extra(tmp_path, trained, module):
    view = site_view(str(tmp_path / "view"), distributions_of([module]))
    assert_needs_extra(cli(view, "serve", trained[2], cwd=tmp_path), "space")


@pytest.mark.parametrize("tracker, module", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                             ("mlflow", "mlflow")])
def test_a_tracker_that_is_not_installed_names_the_tracking_extra(tmp_path, tiny_model_dir, trained, tracker, module):
    view = site_view(str(tmp_path / "view"), distributions_of([module]))
    proc = cli(view, "train", "--recipe", "feature-extraction", "--model", tiny_model_dir("resnet"), "--dataset",
               trained[1], "--output-dir", tmp_path / "out", "--report-to", tracker, *TINY, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{tracker} is not installed" in proc.stderr and "tl-hub[tracking]" in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_every_subcommand_in_a_base_install(base_install, trained, tiny_model_dir, tmp_path):
    """Every subcommand once, with every optional package hidden: it runs, or names its extra."""
    from support.hub_server import LocalHub
    from test_hub_push import GUARD, TOKEN, client_env

    root, data, model = trained
    image = os.path.join(data, "red", sorted(os.listdir(os.path.join(data, "red")))[0])
    tiny = tiny_model_dir("resnet")
    runs = {
        "train": lambda: cli(base_install, "train", "--recipe", "fine-tune", "--model", tiny, "--dataset", data,
                             "--output-dir", tmp_path / "ft", "--epochs", "2", "--batch-size", "16", cwd=tmp_path),
        "evaluate": lambda: cli(base_install, "evaluate", model, "--dataset", data, cwd=tmp_path),
        "predict": lambda: cli(base_install, "predict", model, image, cwd=tmp_path),
        "advise": lambda: cli(base_install, "advise", "--model", tiny, "--dataset", data, cwd=tmp_path),
        "rank": lambda: cli(base_install, "rank", "--model", tiny, "--model", tiny_model_dir("vit"), "--dataset",
                            data, "--output-dir", tmp_path / "rank", cwd=tmp_path),
        "compare": lambda: cli(base_install, "compare", "--model", tiny, "--dataset", data, "--epochs", "2",
                               "--recipes", "feature-extraction", "scratch", "--output-dir", tmp_path / "cmp",
                               cwd=tmp_path),
        "demo": lambda: cli(base_install, "demo", "--quick", "--output-dir", tmp_path / "demo", cwd=tmp_path),
        "audit": lambda: cli(base_install, "audit", "--model", tiny, "--dataset", data, "--output-dir",
                             tmp_path / "audit", cwd=tmp_path),
    }
    assert set(runs) | {"serve", "push", "export"} == set(SUBCOMMANDS), "a new subcommand needs a case here"
    for name, run in runs.items():
        proc = run()
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"{name}: {proc.stderr[-3000:]}"
    assert_needs_extra(cli(base_install, "serve", model, cwd=tmp_path), "space")
    assert_needs_extra(cli(base_install, "export", model, "--output-dir", tmp_path / "onnx", cwd=tmp_path), "onnx")
    assert not os.path.exists(tmp_path / "onnx")
    with LocalHub(str(tmp_path / "store"), token=TOKEN) as hub:  # push needs no extra: the Hub client is a dependency
        env = client_env(hub, tmp_path / "home")
        for args in (["push", model, "me/model"], ["push", "--space", "me/space", "--model", "me/model"]):
            code = GUARD + f"import sys; from tl_hub.cli import main; sys.exit(main({args!r}))"
            proc = python_in(base_install, ROOT, ["-c", code], env=env, cwd=str(tmp_path))
            assert_ran(proc)
        assert hub.commits("me/model") and hub.commits("me/space", repo_type="space")
