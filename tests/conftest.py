"""Shared fixtures: tiny models built from configs, small learnable image datasets, image folders (`support.tiny`).

Everything is made offline in the test; nothing is downloaded.
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TL_HUB_CACHE"] = tempfile.mkdtemp(prefix="tl_hub_cache_")  # never the user's cache
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
from support.tiny import colour_dataset, save_tiny_model, write_image_folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(arch)`` -> path of a saved tiny model (cached for the session)."""
    root = tmp_path_factory.mktemp("models")
    cache = {}

    def make(arch: str = "vit") -> str:
        if arch not in cache:
            cache[arch] = save_tiny_model(arch, str(root / arch))
        return cache[arch]

    return make


@pytest.fixture
def colour_ds():
    return colour_dataset()


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


def pytest_collection_modifyitems(config, items):
    """Tests that launch several processes or drive a browser are slow too: ``-m "not slow"`` leaves them out."""
    for item in items:
        if item.get_closest_marker("distributed") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)
