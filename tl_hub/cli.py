"""``tl-hub`` command line: a thin layer over the Python API.

    tl-hub train --recipe feature-extraction|fine-tune|lora|scratch --model M --dataset D --output-dir OUT [...]
                 [--resume-from-checkpoint latest|auto|PATH]
    tl-hub evaluate OUT --dataset D [--split test]
    tl-hub predict OUT img.jpg [img2.png ...] [--top-k 3]

The training flags are generated from the recipe config dataclasses, so they always match the Python
arguments (``--head-epochs`` is ``head_epochs``).  User errors print one line (``error: ...``) and exit
with status 2; nothing is left half-written.  Under ``accelerate launch`` use
``accelerate launch -m tl_hub.cli train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Optional, Sequence

from .config import TrainingConfig
from .errors import ConfigError, TlHubError

logger = logging.getLogger("tl_hub")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _optional_float(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "null", "off") else float(text)


def add_config_arguments(parser: argparse.ArgumentParser, *config_classes: type[TrainingConfig]) -> None:
    """Add one flag per config field (of all given classes); unset flags are absent from the namespace (config
    defaults apply)."""
    group = parser.add_argument_group("training settings (defaults depend on the recipe)")
    fields = {}
    for cls in config_classes:
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, f)
    for f in fields.values():
        kwargs: dict = {"default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        if str(f.type) != "bool":
            kwargs["metavar"] = f.name.upper()
        kind = str(f.type)
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind in ("int", "Optional[int]"):
            kwargs["type"] = int
        elif kind == "float":
            kwargs["type"] = float
        elif kind == "Optional[float]":
            kwargs["type"] = _optional_float
        else:
            kwargs["type"] = str
        group.add_argument(_flag(f.name), dest=f"cfg_{f.name}", **kwargs)


def _settings(args: argparse.Namespace) -> dict:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}


def build_parser() -> argparse.ArgumentParser:
    from .recipes import RECIPES

    parser = argparse.ArgumentParser(
        prog="tl-hub",
        description="Transfer learning for image classification: reuse any pretrained image classifier "
                    "(ViT, DeiT, ConvNeXt, ResNet, Swin, DINOv2, ...) on your own labels.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="Only print warnings and results.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", help="Train a recipe and save the model folder.",
                           description="Train a recipe on a dataset and save the model folder (weights, config "
                                       "with labels, image processor, metrics, history, learning curve).")
    train.add_argument("--recipe", required=True, choices=sorted(RECIPES), help="What to train (see README).")
    add_train_arguments(train, *(cls.config_class for cls in RECIPES.values()))

    ev = sub.add_parser("evaluate", help="Evaluate a trained model folder on a dataset.")
    ev.add_argument("model_dir", help="A folder written by `tl-hub train`.")
    ev.add_argument("--dataset", required=True, help="Image folder, save_to_disk folder or Hub dataset id.")
    ev.add_argument("--split", default=None, help="Split to evaluate (default: test, else validation, else train).")
    ev.add_argument("--image-column", default=None)
    ev.add_argument("--label-column", default=None)
    ev.add_argument("--batch-size", type=int, default=64)

    adv = sub.add_parser("advise", help="Measure a dataset against a model and recommend a recipe.",
                         description="Measure examples per class and how well the pretrained features separate "
                                     "the classes (vs random features), then pick one of four cases.")
    adv.add_argument("--model", required=True, help="Hub model id or local folder of an image classifier.")
    adv.add_argument("--dataset", required=True, help="Image folder, save_to_disk folder or Hub dataset id.")
    adv.add_argument("--large-per-class", type=int, default=None, help="Median examples per class for 'large'.")
    adv.add_argument("--similarity-gap", type=float, default=None,
                     help="Pretrained minus random k-NN accuracy from which the task counts as similar.")
    adv.add_argument("--json", action="store_true", help="Print the result as JSON.")
    add_model_arguments(adv)

    cmp = sub.add_parser("compare", help="Train transfer recipes and scratch with the same budget; compare curves.")
    cmp.add_argument("--model", required=True, help="Hub model id or local folder of an image classifier.")
    cmp.add_argument("--dataset", required=True, help="Image folder, save_to_disk folder or Hub dataset id.")
    cmp.add_argument("--validation-dataset", default=None)
    cmp.add_argument("--epochs", type=int, default=None,
                     help="Epochs of every recipe (default: the recipes' automatic epochs).")
    cmp.add_argument("--recipes", nargs="+", default=["feature-extraction", "fine-tune", "scratch"],
                     choices=sorted(RECIPES))
    cmp.add_argument("--batch-size", type=int, default=32)
    cmp.add_argument("--output-dir", default="runs/compare", help="Where results.json and the PNG go.")

    serve = sub.add_parser("serve", help="Serve a trained model (folder or Hub repo) with the Gradio app.")
    serve.add_argument("model", help="A folder written by `tl-hub train`, or a Hub repo id.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860)

    demo = sub.add_parser("demo", help="Offline demo: letters -> handwritten digits, advise + compare + save.")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="A few epochs only (for tests).")

    push = sub.add_parser("push", help="Push a trained model folder to the Hugging Face Hub (only what training "
                                       "changed, in one commit, with a model card), or a Space for a model.",
                          description="tl-hub push OUTPUT_DIR REPO_ID  |  tl-hub push --space SPACE_ID --model REPO")
    push.add_argument("model_dir", nargs="?", help="A folder written by `tl-hub train`.")
    push.add_argument("repo_id", nargs="?", help="Target repository, e.g. your-name/vit-beans.")
    push.add_argument("--space", default=None, help="Create or update this Gradio Space (e.g. your-name/beans-demo).")
    push.add_argument("--model", default=None, help="With --space: the model repo the Space serves.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    push.add_argument("--overwrite-card", action="store_true", help="Replace an existing README.md in the repo.")
    push.add_argument("--dataset-name", default=None, help="Dataset name for the model card.")

    pr = sub.add_parser("predict", help="Predict labels of image files with a trained model folder.")
    pr.add_argument("model_dir", help="A folder written by `tl-hub train`.")
    pr.add_argument("images", nargs="+", help="Image files.")
    pr.add_argument("--top-k", type=int, default=1, help="Labels per image.")
    pr.add_argument("--json", action="store_true", help="Print one JSON object per image.")
    return parser


def add_train_arguments(parser: argparse.ArgumentParser, *config_classes: type[TrainingConfig]) -> None:
    """Flags of a training run: model, data, output, loading options and the settings of ``config_class``."""
    parser.add_argument("--model", required=True, help="Hub model id or local folder of an image classifier.")
    parser.add_argument("--dataset", required=True,
                        help="Image folder (<class>/<image>), save_to_disk folder or Hub dataset id.")
    parser.add_argument("--validation-dataset", default=None, help="Separate validation data (optional).")
    parser.add_argument("--output-dir", required=True, help="Where to save the trained model.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing non-empty output folder and delete an earlier run's checkpoints.")
    parser.add_argument("--resume-from-checkpoint", default=None, metavar="latest|auto|PATH",
                        help="Continue an interrupted run from its newest checkpoint in --checkpoint-dir ('latest') "
                             "or from a checkpoint folder, with the same model, data and settings; 'auto': resume "
                             "if there is a checkpoint, else start (for requeued cluster jobs).")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    add_model_arguments(parser)
    add_config_arguments(parser, *config_classes)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", default=None, help="Branch, tag or commit of the model on the Hub.")
    parser.add_argument("--trust-remote-code", action="store_true", help="Allow custom code from the model repo.")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="Allow pickle (.bin) checkpoints; only safetensors are loaded otherwise.")


def recipe_from_args(args: argparse.Namespace):
    """Build the recipe named by ``--recipe`` from parsed flags, rejecting flags it does not use."""
    from .recipes import get_recipe

    cls = get_recipe(args.recipe)
    settings = _settings(args)
    checkpoints = settings.get("checkpoint_dir", args.output_dir.rstrip("/\\") + "-checkpoints")
    settings["checkpoint_dir"] = None if checkpoints.lower() in ("none", "off", "") else checkpoints
    unused = sorted(set(settings) - cls.config_class.field_names())
    if unused:
        raise ConfigError(
            f"{', '.join(_flag(u) for u in unused)} is not a setting of the {args.recipe} recipe; remove it "
            f"(see `tl-hub train --recipe {args.recipe} --help`)."
        )
    return cls(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code,
               allow_pickle=args.allow_pickle, **settings)


def cmd_train(args: argparse.Namespace) -> int:
    from .loop import process_state
    from .outputs import check_output_dir

    recipe = recipe_from_args(args)
    check_output_dir(args.output_dir, overwrite=args.overwrite)
    result = recipe.fit(args.dataset, args.validation_dataset, progress=not args.no_progress,
                        resume_from_checkpoint=args.resume_from_checkpoint, overwrite_checkpoints=args.overwrite)
    recipe.save(args.output_dir, overwrite=args.overwrite)
    if process_state().is_main_process:
        m = result.metrics
        print(f"validation accuracy {m['accuracy']:.4f}  macro-F1 {m['f1']:.4f}  loss {m['loss']:.4f}")
        if result.test_metrics:
            t = result.test_metrics
            print(f"test accuracy {t['accuracy']:.4f}  macro-F1 {t['f1']:.4f}")
        print(f"saved to {os.path.abspath(args.output_dir)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .hub import load

    clf = load(args.model_dir)
    metrics = clf.evaluate(args.dataset, split=args.split, image_column=args.image_column,
                           label_column=args.label_column, batch_size=args.batch_size)
    print(json.dumps(metrics))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .errors import DataError
    from .hub import load

    for path in args.images:
        if not os.path.isfile(path):
            raise DataError(f"Image file '{path}' does not exist.")
    clf = load(args.model_dir)
    results = clf.predict(list(args.images), top_k=args.top_k)
    for path, preds in zip(args.images, results):
        if args.json:
            print(json.dumps({"image": path, "predictions": preds}))
        else:
            print(f"{path}: " + ", ".join(f"{p['label']} ({p['score']:.3f})" for p in preds))
    return 0


def script_main(recipe: str, description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the runnable scripts in ``recipes/``: ``tl-hub train --recipe <recipe>`` with the
    flags of that recipe only.  Works under ``python`` and ``accelerate launch``."""
    from .recipes import get_recipe

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-q", "--quiet", action="store_true", help="Only print warnings and results.")
    add_train_arguments(parser, get_recipe(recipe).config_class)
    args = parser.parse_args(argv)
    args.recipe = recipe
    setup_logging(args.quiet)
    try:
        return cmd_train(args)
    except TlHubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_advise(args: argparse.Namespace) -> int:
    from .advisor import Thresholds, advise

    overrides = {k: v for k, v in (("large_per_class", args.large_per_class),
                                    ("similarity_gap", args.similarity_gap)) if v is not None}
    advice = advise(args.model, args.dataset, thresholds=Thresholds(**overrides), revision=args.revision,
                    trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    print(json.dumps(advice.to_dict(), indent=2) if args.json else advice.report())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    if args.epochs is not None and args.epochs < 2:
        raise ConfigError(f"`--epochs` should be at least 2 to measure a slope, got {args.epochs}.")
    result = compare(args.model, args.dataset, args.validation_dataset, recipes=args.recipes, epochs=args.epochs,
                     output_dir=args.output_dir, common={"batch_size": args.batch_size})
    print(result.table())
    print(f"results: {os.path.join(os.path.abspath(args.output_dir), 'results.json')}")
    print(f"curves:  {os.path.join(os.path.abspath(args.output_dir), 'learning_curves.png')}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_space, push_to_hub

    if args.space:
        if not args.model or args.model_dir or args.repo_id:
            raise ConfigError("Use `tl-hub push --space SPACE_ID --model MODEL_REPO` (no positional arguments).")
        url = push_space(args.space, args.model, private=args.private or None)
        print(f"pushed the Space {args.space} serving {args.model}: {url}")
        return 0
    if not (args.model_dir and args.repo_id):
        raise ConfigError("Use `tl-hub push OUTPUT_DIR REPO_ID`, or `tl-hub push --space SPACE_ID --model REPO`.")
    url = push_to_hub(args.model_dir, args.repo_id, private=args.private or None,
                      overwrite_card=args.overwrite_card, dataset_name=args.dataset_name)
    print(f"pushed {args.model_dir} to {args.repo_id}: {url}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .space import build_app, example_images, launch

    launch(build_app(args.model, examples=example_images()), host=args.host, port=args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logging.getLogger("tl_hub").setLevel(logging.WARNING)  # the demo prints its own summary
    run_demo(args.output_dir, quick=args.quick)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "advise": cmd_advise,
            "compare": cmd_compare, "demo": cmd_demo, "push": cmd_push, "serve": cmd_serve}


def setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    try:
        return COMMANDS[args.command](args)
    except TlHubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
