"""`TransferTrainer`: tl-hub's two periods inside a transformers Trainer script."""

import importlib.util
import os

import pytest
import torch
from support.tiny import colour_dataset

import tl_hub
from tl_hub.backbone import load_image_processor
from tl_hub.errors import ConfigError

LABELS = ["red", "green", "blue"]


EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "recipes", "trainer_example.py")


def _example():
    """recipes/trainer_example.py as a module (its dataset class is a Trainer script's dataset)."""
    spec = importlib.util.spec_from_file_location("trainer_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Images = _example().Images


def make(folder, tmp_path, **settings):
    from transformers import AutoModelForImageClassification

    processor = load_image_processor(folder)
    model = AutoModelForImageClassification.from_pretrained(
        folder, num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
        ignore_mismatched_sizes=True)
    args = tl_hub.TransferArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                                    learning_rate=1e-2, report_to="none", save_strategy="no", logging_steps=1,
                                    use_cpu=True, seed=0, **settings)
    return tl_hub.TransferTrainer(model=model, args=args, train_dataset=Images(colour_dataset(24), processor),
                                  eval_dataset=Images(colour_dataset(9, seed=3), processor)), processor


def _names(model):
    return {id(p): n for n, p in model.named_parameters()}


@pytest.mark.parametrize("settings", [{"backbone_lr_ratio": 0.1}, {"layer_decay": 0.7, "unfreeze": "2"}],
                         ids=["ratio", "layer-decay top-2"])
def test_optimizer_groups_are_tl_hubs(settings, tiny_model_dir, tmp_path):
    folder = tiny_model_dir("vit")
    trainer, _ = make(folder, tmp_path, num_train_epochs=3, head_epochs=1, weight_decay=0.05, **settings)
    optimizer = trainer.create_optimizer()
    names = _names(trainer.model)
    got = [(g["name"], g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
           for g in optimizer.param_groups]
    unfreeze = int(settings.get("unfreeze", 0)) or "all"
    ratio = {k: v for k, v in settings.items() if k in ("backbone_lr_ratio", "layer_decay")}
    expected = tl_hub.param_groups(trainer.model, lr=1e-2, weight_decay=0.05, unfreeze=unfreeze, **ratio)
    assert got == [(g["name"], g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
                   for g in expected]
    assert len({g[1] for g in got}) > 1  # the head and the encoder really get different learning rates


@pytest.mark.slow
def test_head_period_leaves_the_encoder_bit_identical_then_fine_tunes(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    folder = tiny_model_dir("resnet")  # BatchNorm with non-default running statistics
    trainer, processor = make(folder, tmp_path, num_train_epochs=2, head_epochs=1)
    head = set(trainer.parts.head)
    encoder_state = {k: v.clone() for k, v in trainer.model.state_dict().items()
                     if not any(k.startswith(h + ".") for h in head)}
    snapshots = []

    class AtEnd(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    trainer.add_callback(AtEnd())
    trainer.train()
    after_head, after_tune = snapshots
    assert all(torch.equal(after_head[k], v) for k, v in encoder_state.items())  # weights and BN buffers
    assert any(not torch.equal(after_head[k], after_tune[k]) for k in encoder_state
               if "running" not in k and "num_batches" not in k)  # the fine-tune period trains the encoder
    bn = [k for k in encoder_state if k.endswith("running_mean")]
    assert bn and all(torch.equal(after_tune[k], encoder_state[k]) for k in bn)  # bn_policy="frozen"
    assert [h["epoch"] for h in trainer.state.log_history if "loss" in h]  # both periods logged
    # save_model writes a folder the pipeline loads
    trainer.save_model(str(tmp_path / "saved"))
    processor.save_pretrained(str(tmp_path / "saved"))
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(tmp_path / "saved"))
    out = classify(colour_dataset(3)["image"][0])
    assert {o["label"] for o in out} <= set(LABELS)


@pytest.mark.parametrize("settings,match", [
    ({"num_train_epochs": 2, "head_epochs": 2}, "head_epochs"),
    ({"num_train_epochs": 2, "unfreeze": "top"}, "unfreeze"),
    ({"num_train_epochs": 2, "bn_policy": "update"}, "bn_policy"),
    ({"num_train_epochs": 2, "max_steps": 10}, "max_steps"),
], ids=["head_epochs", "unfreeze", "bn_policy", "max_steps"])
def test_bad_arguments(settings, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        tl_hub.TransferArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **settings)


def test_resume_is_refused_with_a_clear_message(tiny_model_dir, tmp_path):
    trainer, _ = make(tiny_model_dir("vit"), tmp_path, num_train_epochs=2)
    with pytest.raises(ConfigError, match="cannot resume"):
        trainer.train(resume_from_checkpoint=str(tmp_path))


def test_plain_training_arguments_are_refused(tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageClassification, TrainingArguments

    model = AutoModelForImageClassification.from_pretrained(tiny_model_dir("vit"))
    with pytest.raises(ConfigError, match="TransferArguments"):
        tl_hub.TransferTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    assert os.path.isdir(tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
def test_trainer_example_under_two_processes_matches_one(tmp_path):
    """recipes/trainer_example.py: a Trainer script with TransferTrainer, through the unfreeze, under a real
    2-process `accelerate launch` (gloo): no DDP error, and the 1-process metrics within 1e-4."""
    import json
    import sys

    from support.launch import accelerate_launch, launch_env, run

    def last_json(proc):
        return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])

    one = last_json(run([sys.executable, EXAMPLE, "--output-dir", str(tmp_path / "one")],
                        {**launch_env(), "ACCELERATE_USE_CPU": "false"}))
    two = last_json(run(accelerate_launch(EXAMPLE, "--output-dir", str(tmp_path / "two")), launch_env()))
    assert one["world_size"] == 1 and two["world_size"] == 2, "accelerate did not start two processes"
    assert len(one["train_losses"]) == len(two["train_losses"]) == 4  # head epoch + 3 fine-tune epochs
    for a, b in zip(one["train_losses"], two["train_losses"]):
        assert abs(a - b) < 1e-4
    assert abs(one["eval_loss"] - two["eval_loss"]) < 1e-4 and one["eval_accuracy"] == two["eval_accuracy"]
