"""Kill training with SIGKILL at different points, resume with ``--resume-from-checkpoint latest``, and end with
exactly the uninterrupted run's metrics and a loadable model.

The run: fine-tune (2 head epochs on cached features, 2 fine-tune epochs), a ViT with dropout (so the RNG state
matters), augmentation on, 48 training images in batches of 8 with 2-step gradient accumulation: 3 optimizer
steps per epoch, 12 in all.  Checkpoints every 2 steps and at epoch ends, 2 kept: steps 2, 3 | 4, 6 | 8, 9 | 10, 12
(``|`` = epoch end; the head -> fine-tune change is after step 6).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.launch import aborts_in, accelerate_launch, launch_env
from support.tiny import write_image_folder

pytestmark = pytest.mark.slow  # see pyproject.toml: the inner loop is -m "not slow"

SCRIPT = os.path.join(os.path.dirname(__file__), "support", "scripts", "kill_train.py")
KEYS = ("train_loss", "loss", "accuracy", "f1")


def train_args(model, data, out, head_solver="adamw"):
    return ["--recipe", "fine-tune", "--model", model, "--dataset", data, "--output-dir", out,
            "--epochs", "4", "--head-epochs", "2", "--lr", "3e-3", "--batch-size", "8", "--eval-batch-size", "12",
            "--gradient-accumulation-steps", "2", "--save-steps", "2", "--save-total-limit", "2", "--seed", "3",
            "--no-progress", "--head-solver", head_solver]


def run(point, model, data, out, extra=(), expect=0, head_solver="adamw"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, SCRIPT, point, "--", *train_args(model, data, out, head_solver), *extra],
                          env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, (point, proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("resume")
    model = str(root / "vit-dropout")
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, image_size=32, patch_size=8, hidden_dropout_prob=0.2,
                                        num_labels=5)).save_pretrained(model)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model)
    data = write_image_folder(root / "images", n=60)
    reference = str(root / "reference")
    run("none", model, data, reference)
    return model, data, root, reference


def outputs(out):
    history = json.load(open(os.path.join(out, "history.json")))
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    return history, metrics


def probabilities(out, data):
    import tl_hub

    classifier = tl_hub.load(out)
    images = sorted(os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs)[:12]
    return np.array(classifier.predict_proba(images))


def assert_same_run(out, reference, data):
    history, metrics = outputs(out)
    ref_history, ref_metrics = outputs(reference)
    assert [(h["epoch"], h["period"]) for h in history] == [(h["epoch"], h["period"]) for h in ref_history]
    for h, r in zip(history, ref_history):
        for key in KEYS:
            assert h[key] == pytest.approx(r[key], abs=1e-6), (key, h["epoch"])
    for key in ("accuracy", "f1", "loss"):
        assert metrics["validation"][key] == pytest.approx(ref_metrics["validation"][key], abs=1e-6)
    np.testing.assert_allclose(probabilities(out, data), probabilities(reference, data), atol=1e-6)


def names(folder):
    return sorted(os.listdir(folder))


# point -> what the checkpoint folder holds after the kill
KILLS = {
    "step:5": ["checkpoint-3", "checkpoint-4"],  # mid-epoch 2 (head period, cached features), after a step save
    "step:11": ["checkpoint-10", "checkpoint-9"],  # mid-epoch 4 (fine-tune), one step after a step checkpoint
    "write:6": [".checkpoint-9.tmp", "checkpoint-6", "checkpoint-8"],  # writing the epoch-3 checkpoint
    "period-change": ["checkpoint-4", "checkpoint-6"],  # head period done and saved, fine-tune not started
    "rotate:1": [".checkpoint-2.deleting", "checkpoint-3", "checkpoint-4"],  # deleting the oldest checkpoint
    "final-save": ["checkpoint-10", "checkpoint-12"],  # training done, model folder half-written
}


@pytest.mark.parametrize("point", list(KILLS))
def test_sigkill_then_resume_ends_like_the_uninterrupted_run(setup, point):
    model, data, root, reference = setup
    out = str(root / f"out-{point.replace(':', '-')}")
    checkpoints = out + "-checkpoints"
    run(point, model, data, out, expect=-signal.SIGKILL)
    assert names(checkpoints) == sorted(KILLS[point])
    if point == "write:6":  # the interrupted write left only a hidden temporary folder, without optimizer state
        assert "optimizer.bin" not in os.listdir(os.path.join(checkpoints, ".checkpoint-9.tmp"))
    assert not os.path.exists(out)  # nothing half-written under the output name

    run("none", model, data, out, extra=["--resume-from-checkpoint", "latest"])
    assert_same_run(out, reference, data)
    assert names(checkpoints) == ["checkpoint-10", "checkpoint-12"]  # stale temporaries removed, 2 kept
    assert names(checkpoints) == names(reference + "-checkpoints")


@pytest.mark.parametrize("point", ["period-change", "step:2"])
def test_sigkill_with_the_default_solved_head_then_resume(setup, point):
    """The default head is one L-BFGS solve (checkpoint-0, no optimizer step): killed after it, or in fine-tuning,
    the resumed run ends like the uninterrupted one."""
    model, data, root, _ = setup
    reference = str(root / "reference-solved")
    if not os.path.exists(reference):
        run("none", model, data, reference, head_solver="lbfgs")
        assert [h["period"] for h in outputs(reference)[0]] == ["head", "fine-tune", "fine-tune"]
    out = str(root / f"out-solved-{point.replace(':', '-')}")
    run(point, model, data, out, expect=-signal.SIGKILL, head_solver="lbfgs")
    assert "checkpoint-0" in names(out + "-checkpoints")  # the solve's checkpoint
    run("none", model, data, out, extra=["--resume-from-checkpoint", "latest"], head_solver="lbfgs")
    assert_same_run(out, reference, data)


def test_resume_from_an_explicit_checkpoint_path(setup):
    model, data, root, reference = setup
    out = str(root / "out-path")
    run("step:9", model, data, out, expect=-signal.SIGKILL)
    # the checkpoint at the end of the head period, named by path (not the newest one)
    run("none", model, data, out, extra=["--resume-from-checkpoint", out + "-checkpoints/checkpoint-6"])
    assert_same_run(out, reference, data)


def test_bf16_run_killed_and_resumed(setup):
    """Under bf16 autocast: killed mid fine-tune, resumed, equal to an uninterrupted bf16 run."""
    model, data, root, _ = setup
    bf16 = ["--mixed-precision", "bf16"]
    out, reference = str(root / "out-bf16"), str(root / "reference-bf16")
    run("none", model, data, reference, extra=bf16)
    run("step:11", model, data, out, extra=bf16, expect=-signal.SIGKILL)
    run("none", model, data, out, extra=[*bf16, "--resume-from-checkpoint", "latest"])
    assert json.load(open(os.path.join(out, "tl_hub.json")))["settings"]["mixed_precision"] == "bf16"
    assert_same_run(out, reference, data)


@pytest.mark.distributed
def test_two_processes_killed_and_resumed(setup):
    """Under ``accelerate launch`` with 2 processes: both die at step 8; the resumed 2-process run ends with the
    metrics of an uninterrupted 2-process run (each process draws its own dropout masks, so that is the reference;
    every process's RNG state is in the checkpoint)."""
    model, data, root, _ = setup
    out, reference = str(root / "out-ddp"), str(root / "reference-ddp")

    def launch(point, out, extra=()):
        return subprocess.run(accelerate_launch(SCRIPT, point, "--", *train_args(model, data, out), *extra),
                              env=launch_env(), capture_output=True, text=True, timeout=600)

    uninterrupted = launch("none", reference)
    assert uninterrupted.returncode == 0 and not aborts_in(uninterrupted.stderr), uninterrupted.stderr[-4000:]
    killed = launch("step:8", out)
    assert killed.returncode != 0
    assert names(out + "-checkpoints") == ["checkpoint-4", "checkpoint-6"]
    state = json.load(open(os.path.join(out + "-checkpoints", "checkpoint-6", "tl_hub_state.json")))
    assert state["run"]["processes"] == 2  # it really ran with two processes
    for rank in (0, 1):
        assert os.path.exists(os.path.join(out + "-checkpoints", "checkpoint-6", f"random_states_{rank}.pkl"))

    # one process cannot take over two processes' RNG streams: refused, naming the difference
    refused = run("none", model, data, out, extra=["--resume-from-checkpoint", "latest"], expect=2)
    assert "was written by a different run (processes: 2 -> 1)" in refused.stderr
    resumed = launch("none", out, ["--resume-from-checkpoint", "latest"])
    assert resumed.returncode == 0 and not aborts_in(resumed.stderr), resumed.stderr[-4000:]
    assert_same_run(out, reference, data)


def test_auto_starts_fresh_then_resumes(tiny_model_dir, tmp_path):
    """``auto`` (for requeued cluster jobs): no checkpoint -> a fresh run; then the same call resumes the finished
    run from its last checkpoint and trains nothing more."""
    import datasets
    from support.tiny import colour_dataset

    from tl_hub import FeatureExtractionRecipe

    data = datasets.DatasetDict({"train": colour_dataset(32, seed=1), "validation": colour_dataset(12, seed=2)})
    settings = dict(epochs=2, batch_size=16, augment=False, seed=0, feature_cache="memory",
                    checkpoint_dir=str(tmp_path / "ck"), head_solver="adamw")
    first = FeatureExtractionRecipe(tiny_model_dir("vit"), **settings)
    first.fit(data, progress=False, resume_from_checkpoint="auto")
    assert names(tmp_path / "ck") == ["checkpoint-2", "checkpoint-4"]
    again = FeatureExtractionRecipe(tiny_model_dir("vit"), **settings)
    again.fit(data, progress=False, resume_from_checkpoint="auto")
    assert again.result.history == first.result.history  # restored, not retrained
    assert names(tmp_path / "ck") == ["checkpoint-2", "checkpoint-4"]
    for a, b in zip(first.result.run.backbone.model.parameters(), again.result.run.backbone.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("recipe,arch,settings", [
    ("lora", "vit", {"epochs": 2}),
    ("scratch", "convnext", {"epochs": 2}),
    ("fine-tune", "resnet", {"epochs": 3, "head_epochs": 1, "bn_policy": "train", "unfreeze": 1,
                             "layer_decay": 0.5, "feature_cache": "off", "augment": True}),
    ("fine-tune", "vit", {"epochs": 3, "head_epochs": 1, "head_solver": "adamw", "multilabel": True,
                          "class_weighting": "balanced", "sampler": "balanced"}),
], ids=["lora", "scratch-convnext", "fine-tune-resnet-bn-train", "fine-tune-multi-label-balanced"])
def test_every_recipe_resumes_mid_epoch_exactly(tiny_model_dir, tmp_path, recipe, arch, settings):
    """In one process: resume from a mid-epoch checkpoint of the last period; the rest of the run, the final
    weights and the BatchNorm statistics are those of the uninterrupted run."""
    import datasets
    from support.tiny import colour_dataset, multilabel_dataset

    from tl_hub import get_recipe

    settings = dict(settings)
    make = multilabel_dataset if settings.pop("multilabel", False) else colour_dataset
    data = datasets.DatasetDict({"train": make(40, seed=1), "validation": make(12, seed=2)})
    base = dict(batch_size=8, save_steps=3, save_total_limit=100, seed=0, lr=3e-3, **{"augment": False, **settings})
    cls = get_recipe(recipe)
    full = cls(tiny_model_dir(arch), checkpoint_dir=str(tmp_path / "ck"), **base)
    full.fit(data, progress=False)
    mid = [p for p in sorted((tmp_path / "ck").iterdir(), key=lambda p: int(p.name.split("-")[1]))
           if json.load(open(p / "tl_hub_state.json"))["state"]["batches"]][-1]  # the last mid-epoch checkpoint
    resumed = cls(tiny_model_dir(arch), checkpoint_dir=str(tmp_path / "ck2"), **base)
    resumed.fit(data, progress=False, resume_from_checkpoint=str(mid))
    for a, b in zip(full.result.history, resumed.result.history):
        for key in KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-6), (key, a["epoch"])
    reference = full.result.run.backbone.model.state_dict()
    for key, value in resumed.result.run.backbone.model.state_dict().items():
        assert torch.allclose(value.float(), reference[key].float(), atol=1e-6), key


def test_cli_checkpoints_next_to_the_output_unless_turned_off(tiny_model_dir, tmp_path):
    from tl_hub.cli import main

    data = write_image_folder(tmp_path / "images", n=24)
    common = ["train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset", data,
              "--epochs", "2", "--batch-size", "16", "--no-progress", "--feature-cache", "memory",
              "--head-solver", "adamw"]
    assert main([*common, "--output-dir", str(tmp_path / "a")]) == 0
    assert names(tmp_path / "a-checkpoints") == ["checkpoint-2", "checkpoint-4"]  # 19 training images: 2 steps an epoch
    assert main([*common, "--output-dir", str(tmp_path / "b"), "--checkpoint-dir", "none"]) == 0
    assert not os.path.exists(tmp_path / "b-checkpoints")
    assert sorted(p for p in os.listdir(tmp_path) if "checkpoint" in p) == ["a-checkpoints"]
