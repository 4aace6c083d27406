"""What the Python blocks of README.md and docs/ use from the Hub, and what the tests run them with instead.

This is the one list: `tests/test_docs.py` replaces each Hub name with a local stand-in built here (tiny models
from configs, a small dataset saved to disk, images), and points pushes at the local Hub server.  Every other line
of every block runs as written.
"""

from __future__ import annotations

import os

# Hub model ids in the docs -> tiny models of the same family, uploaded under those ids to the local Hub server
# (so that the blocks download them as written, and a pushed head pins a Hub base)
MODELS = {
    "google/vit-base-patch16-224-in21k": "vit",
    "facebook/convnext-tiny-224": "convnext",
    "microsoft/resnet-50": "resnet",
}
# Hub dataset ids (quoted as in the docs) -> an image folder with train/, validation/ and test/ splits (what both
# tl-hub and `datasets.load_dataset` read)
DATASETS = ['"beans"']
# image folders the docs name as the user's multi-label data -> a folder with metadata.jsonl (a list per image)
MULTI_LABEL_FOLDERS = ['"photos/"']
# data files the docs name as the user's -> written in the folder the blocks run in
SHARDS = {"shards/train-0.parquet": 0, "shards/val-0.parquet": 1}
# files the docs name as the user's -> images written by `stand_ins`
IMAGES = ["bean.jpg", "cat.jpg", "photo.jpg"]
# repositories the docs push to: unchanged, the server is local (HF_ENDPOINT); listed to say that they are known
REPOSITORIES = ["your-name/vit-beans", "your-name/vit-beans-lora"]


def upload_models(root: str, endpoint: str, token: str) -> None:
    """Upload a tiny model under each id of `MODELS` to the Hub server at ``endpoint``."""
    from huggingface_hub import HfApi

    from support.tiny import save_tiny_model

    api = HfApi(endpoint=endpoint, token=token)
    for hub_id, arch in MODELS.items():
        folder = save_tiny_model(arch, os.path.join(root, "stand-ins", arch), num_labels=3)
        api.create_repo(hub_id, exist_ok=True)
        api.upload_folder(repo_id=hub_id, folder_path=folder)


def stand_ins(root: str) -> dict[str, str]:
    """Build the local stand-ins of the data under ``root``; returns ``{text in the docs: replacement}``."""
    from support.tiny import colour_dataset, colour_images, write_multilabel_folder

    replacements = {}
    beans = os.path.join(root, "stand-ins", "beans")
    for split, (n, seed) in {"train": (45, 0), "validation": (30, 1), "test": (30, 2)}.items():
        images, labels = colour_images(n, seed=seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            os.makedirs(os.path.join(beans, split, label), exist_ok=True)
            image.save(os.path.join(beans, split, label, f"{i}.png"))
    for quoted in DATASETS:
        replacements[quoted] = repr(beans).replace("'", '"')
    for quoted in MULTI_LABEL_FOLDERS:
        folder = write_multilabel_folder(os.path.join(root, "stand-ins", "photos"), n=60, metadata="jsonl")
        replacements[quoted] = repr(folder).replace("'", '"')
    for path, seed in SHARDS.items():
        os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
        colour_dataset(30, seed=seed).to_parquet(os.path.join(root, path))
    image = colour_images(1, seed=3)[0][0]
    for name in IMAGES:
        path = os.path.join(root, "stand-ins", name)
        image.save(path, format="PNG")
        replacements[name] = path
    return replacements
