"""``tl-hub`` command line: a thin layer over the public Python API (``tl_hub.__all__``, nothing else).

    tl-hub train --recipe feature-extraction|fine-tune|train-all|lora|scratch --model M --dataset D --output-dir OUT
                 [--resume-from-checkpoint latest|auto|PATH] [training settings ...]
    tl-hub evaluate OUT --dataset D [--split test] [--tta N]
    tl-hub predict OUT img.jpg [img2.png ...] [--top-k 3] [--tta N]
    tl-hub advise --model M --dataset D [--json]
    tl-hub rank --model A --model B ... --dataset D [--max-examples N] [--max-per-class K]
    tl-hub compare --model M --dataset D [--recipes ...] [--epochs N]
    tl-hub audit --model M --dataset D [--output-dir runs/audit] [--overwrite]
    tl-hub push OUT REPO_ID  |  tl-hub push --space SPACE_ID --model REPO
    tl-hub serve OUT|REPO_ID [--port 7860]
    tl-hub demo [--quick]

Every flag is generated from a dataclass field (`add_dataclass_arguments`): its type from the resolved annotation,
its help from ``metadata["help"]``, its name from the field (``--head-epochs`` is ``head_epochs``).  The training
settings are the fields of the recipe config classes (unset flags stay absent, so each recipe's own defaults
apply), model loading is `ModelSource` (``--model``, ``--revision``, ...), the advisor's thresholds are
`Thresholds`, and each command's own arguments are the ``*Arguments`` dataclasses below.  User errors print one
line (``error: ...``) and exit with status 2; nothing is left half-written.  Under ``accelerate launch`` use
``accelerate launch -m tl_hub.cli train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from . import (
    PROGRESS_LOGGER,
    RECIPES,
    ConfigError,
    DataError,
    ModelSource,
    Thresholds,
    TlHubError,
    TrainingConfig,
    advise,
    audit,
    build_app,
    check_output_dir,
    check_threads,
    compare,
    example_images,
    export,
    get_recipe,
    headline,
    is_main_process,
    launch_app,
    load,
    missing_dependency,
    push_space,
    push_to_hub,
    rank,
    run_demo,
    threads_for,
)

logger = logging.getLogger("tl_hub")

# namespace prefixes of the argument groups that are not a command's own (training settings, model, thresholds)
SETTING, SOURCE, THRESHOLD = "cfg_", "source_", "threshold_"
SETTINGS_TITLE = "training settings (defaults per recipe where they differ)"
COMMON_SETTINGS_TITLE = "common training settings (every setting: --help-all)"
# what `tl-hub train --help` lists; --help-all lists every flag
COMMON_TRAIN_FLAGS = {"recipe", "id", "dataset", "output_dir", "validation_dataset", "overwrite",
                      "resume_from_checkpoint", "epochs", "lr", "batch_size", "seed", "unfreeze", "augment",
                      "mixed_precision", "threads", "checkpoint_dir", "report_to", "multi_label"}
RANK_SOURCE_OPTIONS = ("revision", "trust_remote_code", "allow_pickle", "cache_dir")
DATASET_HELP = "Image folder, save_to_disk folder or Hub dataset id."
MODEL_DIR_HELP = "A folder written by `tl-hub train`."
TTA_HELP = ("Test-time augmentation: average the probabilities over N views of each image drawn from the model's "
            "training augmentation (the plain image, its mirror with hflip, centre and corner crops); 1: none.")


# ---------------------------------------------------------------------------------------------------------------------
# Flags from dataclass fields.  Field metadata: "help"; "aliases" (the flag's spellings instead of --the-name);
# "positional" (with "nargs" such as "?" or "+"); "metavar"; "choices" (a list, or a function returning one).


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _optional_float(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "null", "off") else float(text)


def _parse_type(hint: Any) -> tuple[Callable[[str], Any], Optional[str]]:
    """The argparse ``type`` and ``nargs`` of a field's resolved type hint (a bool is handled by its caller)."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple, Sequence):
        return _parse_type(params[0])[0], "+"
    if origin in (Union, types.UnionType):
        options = [p for p in params if p is not type(None)]
        if len(options) > 1:  # e.g. Union[str, int]: passed on as text, the dataclass converts it
            return str, None
        return (_optional_float if options[0] is float else _parse_type(options[0])[0]), None
    if hint in (int, float, str):
        return hint, None
    raise TypeError(f"No command-line type for a field of type {hint!r}.")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _default_text(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def _add_field(parser, f: dataclasses.Field, hint: Any, prefix: str, suppress: bool, shown: bool = True,
               default_text: Optional[str] = None) -> None:
    meta, default = f.metadata, _default(f)
    unshown = (dataclasses.MISSING, None, False, [], "")
    if default_text is None and default not in unshown and not meta.get("positional"):
        default_text = _default_text(default)
    help_text = (meta.get("help") or "") + (f" (default: {default_text})" if default_text else "")
    kwargs: dict[str, Any] = {"help": help_text if shown else argparse.SUPPRESS}
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if suppress or default is True else "store_true"
    else:
        kwargs["type"], kwargs["nargs"] = _parse_type(hint)
    choices = meta.get("choices")
    if choices is not None:
        kwargs["choices"] = choices() if callable(choices) else choices
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    if meta.get("action") == "append":  # --flag A --flag B
        kwargs["action"], kwargs["nargs"] = "append", None
    if meta.get("positional"):
        kwargs["nargs"] = meta.get("nargs", kwargs.get("nargs"))
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
        parser.add_argument(prefix + f.name, **kwargs)
        return
    flags = list(meta.get("aliases") or [_flag(f.name)])
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = argparse.SUPPRESS if suppress else default
    if "action" not in kwargs and "choices" not in kwargs and "metavar" not in kwargs:
        kwargs["metavar"] = max(flags, key=len).lstrip("-").replace("-", "_").upper()
    parser.add_argument(*flags, dest=prefix + f.name, **kwargs)


def class_defaults(name: str, classes: dict[str, type]) -> Optional[str]:
    """The default of field ``name`` across ``classes`` (``{label: dataclass}``): one value, or the common one
    with the exceptions (``"0.001; scratch: 0.003"``)."""
    values = {label: _default(f) for label, cls in classes.items() for f in dataclasses.fields(cls) if f.name == name}
    shown = {label: "automatic" if v is None else _default_text(v) for label, v in values.items()
             if v is not dataclasses.MISSING}
    if not shown:
        return None
    counts = {v: list(shown.values()).count(v) for v in shown.values()}
    common = max(counts, key=counts.get)
    if 2 * counts[common] <= len(shown) and len(counts) > 1:  # no majority: each recipe's own
        return "; ".join(f"{label}: {v}" for label, v in shown.items())
    rest = [f"{label}: {v}" for label, v in shown.items() if v != common]
    if common == "automatic" and not rest:
        return None  # the help text says what unset means
    return "; ".join([common, *rest])


def add_dataclass_arguments(parser, *classes: type, prefix: str = "", suppress: bool = False,
                            only: Optional[Collection[str]] = None, shown: Optional[Collection[str]] = None,
                            defaults_from: Optional[dict[str, type]] = None) -> None:
    """Add one argument per field of ``classes`` to ``parser`` (a field of several classes: the first one's).

    ``prefix`` starts each destination in the namespace (read back with `dataclass_values`).  With ``suppress``,
    a flag left unset is absent from the namespace, so the dataclass' own default applies; bools are then
    ``--x/--no-x``.  ``only`` selects fields by name; ``shown``: the fields the help lists (default all; the others
    parse but are listed by ``--help-all``).  The help gives each default, from ``defaults_from``
    (``{label: class}``, e.g. per recipe) where given.
    """
    chosen: dict[str, tuple[dataclasses.Field, Any]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in chosen and (only is None or f.name in only):
                chosen[f.name] = (f, hints[f.name])
    for f, hint in chosen.values():
        text = class_defaults(f.name, defaults_from) if defaults_from else None
        _add_field(parser, f, hint, prefix, suppress, shown is None or f.name in shown, text)


def dataclass_values(args: argparse.Namespace, cls: Optional[type] = None, prefix: str = "") -> dict[str, Any]:
    """The parsed values under ``prefix`` (only the fields of ``cls`` if given), without the prefix."""
    values = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    if cls is None:
        return values
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _from_args(args: argparse.Namespace, cls: type, prefix: str = "") -> Any:
    return cls(**dataclass_values(args, cls, prefix))


# ---------------------------------------------------------------------------------------------------------------------
# The commands' own arguments


@dataclass
class LoggingArguments:
    quiet: bool = field(default=False, metadata={"help": "Only print errors and results.",
                                                  "aliases": ["-q", "--quiet"]})
    verbose: bool = field(default=False, metadata={
        "help": "Also print the details: data, caches, loading, the libraries' own messages and progress bars.",
        "aliases": ["-v", "--verbose"]})


@dataclass
class ThreadsArguments:
    threads: str = field(default="auto", metadata={
        "help": "CPU threads PyTorch computes with: 'auto' (OMP_NUM_THREADS if set, else the cores this process may "
                "use less those other processes keep busy; see tl_hub.threads) or a number.",
        "metavar": "auto|N"})


@dataclass
class RecipeArguments:
    recipe: str = field(metadata={
        "help": "What to train: feature-extraction (frozen encoder, a new head), fine-tune (the head, then the "
                "encoder at smaller learning rates), train-all (everything from the pretrained weights), lora "
                "(low-rank adapters), scratch (the same architecture from random weights: the baseline).",
        "choices": lambda: sorted(RECIPES)})


@dataclass
class TrainArguments:
    dataset: str = field(metadata={"help": "Image folder (<class>/<image>), save_to_disk folder or Hub dataset id."})
    output_dir: str = field(metadata={"help": "Where to save the trained model."})
    validation_dataset: Optional[str] = field(default=None,
                                              metadata={"help": "Separate validation data (optional)."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace an existing non-empty output folder and delete an earlier run's checkpoints."})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={
        "metavar": "latest|auto|PATH",
        "help": "Continue an interrupted run from its newest checkpoint in --checkpoint-dir ('latest') or from a "
                "checkpoint folder, with the same model, data and settings; 'auto': resume if there is a "
                "checkpoint, else start (for requeued cluster jobs)."})
    no_progress: bool = field(default=False, metadata={"help": "Hide progress bars."})


@dataclass
class EvaluateArguments:
    model_dir: str = field(metadata={"help": MODEL_DIR_HELP, "positional": True})
    dataset: str = field(metadata={"help": DATASET_HELP})
    split: Optional[str] = field(
        default=None, metadata={"help": "Split to evaluate (default: test, else validation, else train)."})
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (detected if not given)."})
    label_column: Optional[str] = field(default=None, metadata={"help": "Label column (detected if not given)."})
    batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "Also write metrics.json, confusion_matrix.png and errors.png (the most confident mistakes) there."})
    tta: Optional[int] = field(default=None, metadata={"help": TTA_HELP, "metavar": "N"})


@dataclass
class PredictArguments:
    model_dir: str = field(metadata={"help": MODEL_DIR_HELP, "positional": True})
    images: list[str] = field(metadata={"help": "Image files.", "positional": True})
    top_k: Optional[int] = field(default=None, metadata={
        "help": "Labels per image (default: the best one; a multi-label model: every label over its threshold)."})
    json: bool = field(default=False, metadata={"help": "Print one JSON object per image."})
    tta: Optional[int] = field(default=None, metadata={"help": TTA_HELP, "metavar": "N"})


@dataclass
class AdviseArguments:
    dataset: str = field(metadata={"help": DATASET_HELP})
    json: bool = field(default=False, metadata={"help": "Print the result as JSON."})


@dataclass
class RankArguments:
    models: list[str] = field(metadata={"help": "A candidate model (Hub id or folder); repeat the flag for each.",
                                        "aliases": ["--model"], "action": "append"})
    dataset: str = field(metadata={"help": DATASET_HELP})
    validation_dataset: Optional[str] = field(default=None, metadata={
        "help": "Held-out images for the probe (default: the dataset's validation split, else 20%% of the sample)."})
    max_examples: Optional[int] = field(default=2000, metadata={
        "help": "Images sampled (stratified) from the training split; 0 for all."})
    max_per_class: Optional[int] = field(default=None, metadata={"help": "At most this many images per class."})
    score: str = field(default="knn", metadata={
        "help": "The score that orders the candidates: ensemble, logme, hscore, knn, probe, leep or nce."})
    on_error: str = field(default="report", metadata={
        "help": "A candidate that fails to load: 'report' it in the table and rank the others, or 'raise'.",
        "choices": ["report", "raise"]})
    output_dir: str = field(default="runs/rank", metadata={"help": "Where ranking.json and ranking.png go."})
    json: bool = field(default=False, metadata={"help": "Print the ranking as JSON instead of a table."})


@dataclass
class AuditArguments:
    dataset: str = field(metadata={"help": DATASET_HELP})
    validation_dataset: Optional[str] = field(default=None, metadata={
        "help": "Separate validation data (checked for leakage; default: the dataset's validation split)."})
    output_dir: str = field(default="runs/audit", metadata={"help": "Where audit.json and the PNG grids go."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing non-empty output folder."})
    folds: int = field(default=5, metadata={"help": "Cross-validation folds of the out-of-fold probabilities."})
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (detected if not given)."})
    label_column: Optional[str] = field(default=None, metadata={"help": "Label column (detected if not given)."})
    json: bool = field(default=False, metadata={"help": "Print the findings as JSON instead of the summary."})


@dataclass
class ExportArguments:
    model_dir: str = field(metadata={"help": MODEL_DIR_HELP, "positional": True})
    output_dir: str = field(metadata={"help": "Where the exported model folder goes (model.onnx, its config, image "
                                              "processor, record and parity.json)."})
    format: str = field(default="onnx", metadata={"help": "The export format.", "choices": ["onnx"]})
    quantize: Optional[str] = field(default=None, metadata={
        "help": "Quantize the exported model (int8: static, calibrated on --dataset's training images).",
        "choices": ["int8"]})
    dataset: Optional[str] = field(default=None, metadata={
        "help": "The data the model was trained on (int8 needs it: calibration and its accuracy change)."})
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (detected if not given)."})
    label_column: Optional[str] = field(default=None, metadata={"help": "Label column (detected if not given)."})
    tolerance: float = field(default=1e-4, metadata={
        "help": "The largest absolute logit difference against PyTorch that the fp32 export may have."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing non-empty output folder."})


@dataclass
class CompareArguments:
    dataset: str = field(metadata={"help": DATASET_HELP})
    validation_dataset: Optional[str] = field(default=None,
                                              metadata={"help": "Separate validation data (optional)."})
    recipes: list[str] = field(
        default_factory=lambda: ["feature-extraction", "fine-tune", "scratch"],
        metadata={"help": "The recipes to compare.", "choices": lambda: sorted(RECIPES)})
    output_dir: str = field(default="runs/compare", metadata={"help": "Where results.json and the PNG go."})


@dataclass
class PushArguments:
    model_dir: Optional[str] = field(default=None, metadata={"help": MODEL_DIR_HELP, "positional": True,
                                                             "nargs": "?"})
    repo_id: Optional[str] = field(default=None, metadata={
        "help": "Target repository, e.g. your-name/vit-beans.", "positional": True, "nargs": "?"})
    space: Optional[str] = field(
        default=None, metadata={"help": "Create or update this Gradio Space (e.g. your-name/beans-demo)."})
    model: Optional[str] = field(default=None, metadata={"help": "With --space: the model repo the Space serves."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    overwrite_card: bool = field(default=False, metadata={"help": "Replace an existing README.md in the repo."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Dataset name for the model card."})
    onnx: bool = field(default=False, metadata={
        "help": "Also upload the model exported to ONNX (fp32, parity-checked) under onnx/: the whole model, "
                "which the Space then serves through ONNX Runtime."})


@dataclass
class ServeArguments:
    model: str = field(metadata={"help": "A folder written by `tl-hub train`, or a Hub repo id.", "positional": True})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    port: int = field(default=7860, metadata={"help": "Port to listen on."})


@dataclass
class DemoArguments:
    output_dir: str = field(default="runs/demo", metadata={"help": "Where the demo writes its models and results."})
    quick: bool = field(default=False, metadata={"help": "Seconds instead of minutes: a toy base (rendered letters) "
                                                         "-> 8x8 digits, a few epochs."})


# name: (its arguments, help, description)
SUBCOMMANDS: dict[str, tuple[type, str, Optional[str]]] = {
    "train": (RecipeArguments, "Train a recipe and save the model folder.",
              "Train a recipe on a dataset and save the model folder (weights, config with labels, image "
              "processor, metrics, history, learning curve)."),
    "evaluate": (EvaluateArguments, "Evaluate a trained model folder on a dataset.", None),
    "advise": (AdviseArguments, "Measure a dataset against a model and recommend a recipe.",
               "Measure examples per class and how well the pretrained features separate the classes (vs random "
               "features), then pick one of four cases."),
    "rank": (RankArguments, "Rank candidate pretrained models on a dataset before training, and recommend one.",
             "Run each candidate's frozen encoder once over a sample of the data (through the feature cache), "
             "score how well its features suit the labels (LogME, H-score, k-NN, linear probe; LEEP and NCE "
             "with its own head), rank the candidates and recommend a recipe for the best."),
    "compare": (CompareArguments, "Train transfer recipes and scratch with the same budget; compare curves.", None),
    "audit": (AuditArguments, "Find likely mislabelled images, near-duplicates (and leakage) and outliers.",
              "Run the model's frozen encoder once over the data (through the feature cache): confident learning on "
              "cross-validated probe probabilities, near-duplicates inside the training split and against the "
              "validation/test splits, outliers far from every class; writes audit.json and one PNG per finding."),
    "export": (ExportArguments, "Export a trained model folder to ONNX (optionally int8), with a parity check.",
               "Export the whole classifier (base and trained head, with its temperature) to ONNX with a dynamic "
               "batch axis, check its logits against PyTorch (written to parity.json) and write a folder that "
               "tl_hub.load / tl-hub predict run through ONNX Runtime."),
    "serve": (ServeArguments, "Serve a trained model (folder or Hub repo) with the Gradio app.", None),
    "demo": (DemoArguments, "Offline demo: ImageNet EfficientNet-Lite0 -> Fashion-MNIST at 224 px, advise + compare "
             "+ save.", None),
    "push": (PushArguments, "Push a trained model folder to the Hugging Face Hub (only what training changed, in "
                            "one commit, with a model card), or a Space for a model.",
             "tl-hub push OUTPUT_DIR REPO_ID  |  tl-hub push --space SPACE_ID --model REPO"),
    "predict": (PredictArguments, "Predict labels of image files with a trained model folder.", None),
}


def add_train_arguments(parser, recipes: dict[str, type], full_help: bool = False) -> None:
    """Flags of a training run: the model (`ModelSource`), data, output and the settings of the ``recipes``'
    configs (``{name: recipe class}``); the help lists the common ones unless ``full_help``."""
    shown = None if full_help else COMMON_TRAIN_FLAGS
    add_dataclass_arguments(parser, ModelSource, prefix=SOURCE, shown=shown)
    add_dataclass_arguments(parser, TrainArguments, shown=shown)
    group = parser.add_argument_group(SETTINGS_TITLE if full_help else COMMON_SETTINGS_TITLE)
    configs = {name: cls.config_class for name, cls in recipes.items()}
    add_dataclass_arguments(group, *configs.values(), prefix=SETTING, suppress=True, shown=shown,
                            defaults_from=configs if len(configs) > 1 else None)
    parser.add_argument("--help-all", action="store_true", help="Show every setting, not only the common ones.")


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line: the error, a close match ("did you mean ...?") for a
    mistyped choice or flag, and where the help is (not the usage block)."""

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        import difflib

        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = [o.strip(" '") for o in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.5)
            message = (message[:choice.start()] + f"invalid choice '{choice.group(1)}'"
                       + (f"; did you mean {close[0]}?" if close else "") + f" (choose from {', '.join(options)})")
        command = self.command()
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown:
            flags = [f for action in command._actions for f in action.option_strings]
            given = unknown.group(1).split("=")[0]
            # a known flag with words added (--lr-rate: --lr) first, then the closest spelling
            close = (sorted((f for f in flags if given.startswith(f + "-")), key=len)[-1:]
                     or difflib.get_close_matches(given, flags, n=1, cutoff=0.6))
            message += f"; did you mean {close[0]}?" if close else ""
        self.exit(2, f"error: {message} (see `{command.prog} --help`)\n")

    def command(self) -> argparse.ArgumentParser:
        """The subcommand's parser named in the arguments being parsed (this parser when there is none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for arg in getattr(self, "_argv", []):
                    if arg in action.choices:
                        return action.choices[arg]
        return self


def build_parser(full_help: bool = False) -> argparse.ArgumentParser:
    parser = Parser(
        prog="tl-hub",
        description="Transfer learning for image classification: reuse any pretrained image classifier "
                    "(ViT, DeiT, ConvNeXt, ResNet, Swin, DINOv2, ...) on your own labels.",
    )
    add_dataclass_arguments(parser, LoggingArguments)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (arguments, help_text, description) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=description)
        if name in ("advise", "compare", "audit"):  # the model and its loading options
            add_dataclass_arguments(command, ModelSource, prefix=SOURCE)
        elif name == "rank":  # the loading options, for every candidate
            add_dataclass_arguments(command, ModelSource, prefix=SOURCE, only=RANK_SOURCE_OPTIONS)
        add_dataclass_arguments(command, arguments)
        for f in dataclasses.fields(LoggingArguments):  # -q/-v after the command too (`tl-hub train ... -q`)
            command.add_argument(*f.metadata["aliases"], dest=f.name, action="store_true", default=argparse.SUPPRESS,
                                 help=f.metadata["help"])
        if name != "train":  # train has it among the training settings
            add_dataclass_arguments(command, ThreadsArguments)
        if name == "train":
            add_train_arguments(command, dict(RECIPES), full_help)
        elif name == "advise":
            add_dataclass_arguments(command, Thresholds, prefix=THRESHOLD, suppress=True)
        elif name == "compare":
            add_dataclass_arguments(command, TrainingConfig, prefix=SETTING, suppress=True,
                                    only={"epochs", "batch_size"})
    return parser


# ---------------------------------------------------------------------------------------------------------------------
# Commands


def recipe_from_args(args: argparse.Namespace):
    """Build the recipe named by ``--recipe`` from parsed flags, rejecting flags it does not use."""
    name, output_dir = _from_args(args, RecipeArguments).recipe, _from_args(args, TrainArguments).output_dir
    cls = get_recipe(name)
    settings = dataclass_values(args, prefix=SETTING)
    checkpoints = settings.get("checkpoint_dir", output_dir.rstrip("/\\") + "-checkpoints")
    settings["checkpoint_dir"] = None if checkpoints.lower() in ("none", "off", "") else checkpoints
    unused = sorted(set(settings) - cls.config_class.field_names())
    if unused:
        raise ConfigError(
            f"{', '.join(_flag(u) for u in unused)} is not a setting of the {name} recipe; remove it "
            f"(see `tl-hub train --recipe {name} --help`)."
        )
    return cls(_from_args(args, ModelSource, SOURCE), **settings)


def cmd_train(args: argparse.Namespace) -> int:
    train = _from_args(args, TrainArguments)
    recipe = recipe_from_args(args)
    check_output_dir(train.output_dir, overwrite=train.overwrite)
    result = recipe.fit(train.dataset, train.validation_dataset, progress=not (train.no_progress or args.quiet),
                        resume_from_checkpoint=train.resume_from_checkpoint, overwrite_checkpoints=train.overwrite)
    recipe.save(train.output_dir, overwrite=train.overwrite)
    if is_main_process():
        m = result.metrics
        few = (f"  (only {result.extra['validation_images']} validation images: too few to trust)"
               if result.extra.get("validation_warning") else "")
        print(f"validation {headline(m)}  loss {m['loss']:.4f}{few}")
        if result.test_metrics:
            print(f"test {headline(result.test_metrics)}")
        print(f"saved to {os.path.abspath(train.output_dir)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    a = _from_args(args, EvaluateArguments)
    metrics = load(a.model_dir).evaluate(a.dataset, split=a.split, image_column=a.image_column,
                                         label_column=a.label_column, batch_size=a.batch_size,
                                         output_dir=a.output_dir, progress=not args.quiet, tta=a.tta)
    print(label_table(metrics) if "per_label" in metrics else class_table(metrics))
    print(calibration_line(metrics))
    if a.output_dir:
        figures = "per_label.png" if "per_label" in metrics else "confusion_matrix.png, errors.png"
        figures += ", reliability.png"
        print(f"written: {os.path.join(os.path.abspath(a.output_dir), 'metrics.json')}, {figures}")
    print(json.dumps(metrics))
    return 0


def class_table(metrics: dict) -> str:
    """Per-class precision, recall, F1 and support, then the totals."""
    per_class = metrics.get("per_class", {})
    width = max([len(str(c)) for c in per_class] + [5])
    lines = [f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for name, m in per_class.items():
        lines.append(f"{name:<{width}} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>7.3f} {m['support']:>8}")
    lines.append(f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['f1']:.4f}"
                 + (f", balanced accuracy {metrics['balanced_accuracy']:.4f}" if "balanced_accuracy" in metrics else "")
                 + f", loss {metrics['loss']:.4f}")
    return "\n".join(lines)


def calibration_line(metrics: dict) -> str:
    """ECE and NLL of the model as saved, and, for a calibrated model, without its temperature."""
    cal = metrics.get("calibration")
    if not cal:
        why = ("over averaged views, the figures without the temperature are not computed" if metrics.get("tta", 1) > 1
               else "the model has no temperature")
        return f"calibration: ECE {metrics['ece']:.4f}, NLL {metrics['loss']:.4f} ({why})"
    t = cal["temperature"]
    t_text = f"{t:.3f}" if not isinstance(t, list) else f"{min(t):.2f}-{max(t):.2f} per label"
    return (f"calibration (temperature {t_text}): ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, "
            f"NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f} (without -> with the temperature)")


def label_table(metrics: dict) -> str:
    """A multi-label evaluation: per label precision, recall and F1 at its threshold, average precision, the
    threshold and the positives, then the totals."""
    per_label = metrics["per_label"]
    width = max([len(str(c)) for c in per_label] + [5])
    lines = [f"{'label':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'AP':>7} {'threshold':>9} {'positives':>9}"]
    for name, m in per_label.items():
        ap = "-" if m["average_precision"] is None else f"{m['average_precision']:.3f}"
        lines.append(f"{name:<{width}} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>7.3f} {ap:>7} "
                     f"{m['threshold']:>9.3f} {m['support']:>9}")
    lines.append(f"mAP {metrics['mAP']:.4f}, macro-F1 {metrics['f1']:.4f}, micro-F1 {metrics['f1_micro']:.4f}, "
                 f"exact-set accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    a = _from_args(args, PredictArguments)
    for path in a.images:
        if not os.path.isfile(path):
            raise DataError(f"Image file '{path}' does not exist.")
    results = load(a.model_dir).predict(list(a.images), top_k=a.top_k, tta=a.tta)
    for path, preds in zip(a.images, results):
        if a.json:
            print(json.dumps({"image": path, "predictions": preds}))
        else:
            print(f"{path}: " + (", ".join(f"{p['label']} ({p['score']:.3f})" for p in preds)
                                 or "no label reaches its threshold"))
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    a = _from_args(args, AdviseArguments)
    advice = advise(_from_args(args, ModelSource, SOURCE), a.dataset,
                    thresholds=_from_args(args, Thresholds, THRESHOLD))
    print(json.dumps(advice.to_dict(), indent=2) if a.json else advice.report())
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    a = _from_args(args, RankArguments)
    options = dataclass_values(args, prefix=SOURCE)
    ranking = rank(a.models, a.dataset, validation_dataset=a.validation_dataset,
                   max_examples=a.max_examples or None, max_per_class=a.max_per_class, score=a.score,
                   on_error=a.on_error, output_dir=a.output_dir, **options)
    if a.json:
        print(json.dumps(ranking.to_dict(), indent=2, default=str))
    else:
        print(ranking.table())
        print(f"results: {os.path.join(os.path.abspath(a.output_dir), 'ranking.json')}")
        print(f"chart:   {os.path.join(os.path.abspath(a.output_dir), 'ranking.png')}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    a = _from_args(args, AuditArguments)
    result = audit(a.dataset, _from_args(args, ModelSource, SOURCE), output_dir=a.output_dir, overwrite=a.overwrite,
                   validation=a.validation_dataset, folds=a.folds, image_column=a.image_column,
                   label_column=a.label_column, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if a.json else result.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    a = _from_args(args, ExportArguments)
    result = export(a.model_dir, a.format, output_dir=a.output_dir, quantize=a.quantize, dataset=a.dataset,
                    image_column=a.image_column, label_column=a.label_column, overwrite=a.overwrite,
                    tolerance=a.tolerance)
    print(export_summary(result))
    return 0


def export_summary(result) -> str:
    """What `tl_hub.export` wrote and measured, in a few lines."""
    report = result.parity
    fp32 = report["fp32"]
    lines = [f"exported to {result.output_dir} ({report['format']}, {report.get('quantize') or 'fp32'}, "
             f"{result.size_bytes / 1e6:.1f} MB)",
             f"parity (fp32): largest logit difference to PyTorch {fp32['max_abs_diff']:.1e} on {fp32['images']} "
             f"images (tolerance {fp32['tolerance']:.0e})"]
    if "int8" in report:
        q = report["int8"]
        lines.append(f"int8 on {q['split']} ({q['images']} images): top-1 agreement {q['top1_agreement']:.1%}, "
                     f"accuracy {q['accuracy_fp32']:.3f} -> {q['accuracy_int8']:.3f} "
                     f"({q['accuracy_change_points']:+.1f} points); fp32 was {report['fp32_bytes'] / 1e6:.1f} MB")
    lines.append(f"load it with tl_hub.load({result.output_dir!r}) or `tl-hub predict {result.output_dir} IMAGE`")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    a = _from_args(args, CompareArguments)
    source = _from_args(args, ModelSource, SOURCE)
    common = dataclass_values(args, prefix=SETTING)  # --epochs and --batch-size, where given
    epochs = common.pop("epochs", None)
    if epochs is not None and epochs < 2:
        raise ConfigError(f"`--epochs` should be at least 2 to measure a slope, got {epochs}.")
    result = compare(source, a.dataset, a.validation_dataset, recipes=a.recipes, epochs=epochs,
                     output_dir=a.output_dir, common=common)
    print(result.table())
    print(f"results: {os.path.join(os.path.abspath(a.output_dir), 'results.json')}")
    print(f"curves:  {os.path.join(os.path.abspath(a.output_dir), 'learning_curves.png')}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    a = _from_args(args, PushArguments)
    if a.space:
        if not a.model or a.model_dir or a.repo_id:
            raise ConfigError("Use `tl-hub push --space SPACE_ID --model MODEL_REPO` (no positional arguments).")
        url = push_space(a.space, a.model, private=a.private or None)
        print(f"pushed the Space {a.space} serving {a.model}: {url}")
        return 0
    if not (a.model_dir and a.repo_id):
        raise ConfigError("Use `tl-hub push OUTPUT_DIR REPO_ID`, or `tl-hub push --space SPACE_ID --model REPO`.")
    url = push_to_hub(a.model_dir, a.repo_id, private=a.private or None, overwrite_card=a.overwrite_card,
                      dataset_name=a.dataset_name, onnx=a.onnx)
    print(f"pushed {a.model_dir} to {a.repo_id}: {url}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    a = _from_args(args, ServeArguments)
    launch_app(build_app(a.model, examples=example_images()), host=a.host, port=a.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    a = _from_args(args, DemoArguments)
    logging.getLogger("tl_hub").setLevel(logging.WARNING)  # the demo prints its own summary
    run_demo(a.output_dir, quick=a.quick)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "advise": cmd_advise,
            "rank": cmd_rank, "audit": cmd_audit, "export": cmd_export,
            "compare": cmd_compare, "demo": cmd_demo, "push": cmd_push, "serve": cmd_serve}


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """What the command prints: by default one line per period, epoch and checkpoint, progress bars for long passes,
    and warnings; ``verbose``: everything (tl-hub's details, Accelerate's and transformers' own messages and
    progress bars); ``quiet``: errors only (results are printed, not logged)."""
    import datasets
    import transformers

    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", force=True)
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.ERROR if quiet else logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not verbose:  # the libraries' own progress bars (loading weights, generating splits) and notices
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()


def flag_names() -> set[str]:
    """Every name a flag of the CLI is made from (settings, model options, thresholds, the commands' arguments)."""
    classes = [ModelSource, Thresholds, ThreadsArguments, *(a for a, _, _ in SUBCOMMANDS.values()),
               TrainArguments, *(cls.config_class for cls in RECIPES.values())]
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def as_flags(message: str) -> str:
    """A message about settings, for the command line: each `` `setting` `` becomes the flag the user typed
    (`` `--setting` ``).

    Example:
        >>> as_flags("`batch_size` (33) must be divisible by 2")
        '`--batch-size` (33) must be divisible by 2'
    """
    names = flag_names()
    return re.sub(r"`([a-z_]+)`", lambda m: f"`{_flag(m.group(1))}`" if m.group(1) in names else m.group(0), message)


def command_threads(setting: str):
    """The CPU threads of a command (`tl_hub.threads`); a number is also exported as ``OMP_NUM_THREADS``, so that
    the runs the command starts (their ``threads="auto"``) and its worker processes keep it."""
    count = check_threads(setting, "--threads")
    if count != "auto":
        os.environ["OMP_NUM_THREADS"] = str(count)
    return threads_for(count, announce=False)  # a run the command starts says its own


def _run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command``: a user error is one ``error: ...`` line and status 2; Ctrl-C is status 130."""
    setup_logging(args.quiet, getattr(args, "verbose", False))
    try:
        with command_threads(getattr(args, "threads", "auto")):
            return command(args)
    except TlHubError as e:
        print(f"error: {as_flags(str(e))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional package a command reached for: name its extra
        error = missing_dependency(e.name)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def script_main(recipe: str, description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the runnable scripts in ``recipes/``: ``tl-hub train --recipe <recipe>`` with the
    flags of that recipe only.  Works under ``python`` and ``accelerate launch``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    full_help = "--help-all" in argv
    parser = Parser(description=description)
    add_dataclass_arguments(parser, LoggingArguments)
    add_train_arguments(parser, {recipe: get_recipe(recipe)}, full_help)
    args = parser.parse_args(["--help" if a == "--help-all" else a for a in argv])
    args.recipe = recipe
    return _run(cmd_train, args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    full_help = "--help-all" in argv
    args = build_parser(full_help).parse_args(["--help" if a == "--help-all" else a for a in argv])
    return _run(COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
