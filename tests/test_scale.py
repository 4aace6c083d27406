"""Scaling and robustness: gradient accumulation equivalence, gradient checkpointing, NaN loss, two simulated
nodes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from support.launch import aborts_in, free_port, launch_env, run
from support.tiny import capture_backbone, colour_dataset
from test_distributed import SCRIPT

from tl_hub import FineTuneRecipe, TrainingError

BASE = dict(augment=False, seed=0, feature_cache="memory", eval_batch_size=32)


def history(recipe, data, val):
    return recipe.fit(data, val, progress=False).history


def test_gradient_accumulation_matches_the_large_batch(tiny_model_dir):
    data, val = colour_dataset(96, seed=1), colour_dataset(30, seed=2)
    big = history(FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=3, batch_size=32, **BASE), data, val)
    acc = history(FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=3, batch_size=8,
                                 gradient_accumulation_steps=4, **BASE), data, val)
    for a, b in zip(big, acc):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["accuracy"] == a["accuracy"]


def test_gradient_checkpointing_gives_the_same_training(tiny_model_dir):
    data, val = colour_dataset(48, seed=1), colour_dataset(15, seed=2)
    plain = history(FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=2, batch_size=16, **BASE), data, val)
    ckpt = history(FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=2, batch_size=16,
                                  gradient_checkpointing=True, **BASE), data, val)
    assert [h["loss"] for h in ckpt] == pytest.approx([h["loss"] for h in plain], abs=1e-5)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_weights(tiny_model_dir):
    recipe = FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=2, batch_size=16, lr=1e30, head_lr=1e-2,
                            max_grad_norm=None, **BASE)
    loaded = capture_backbone(recipe)
    with pytest.raises(TrainingError, match="Lower the learning rate"):
        recipe.fit(colour_dataset(48, seed=1), colour_dataset(15, seed=2), progress=False)
    import torch
    assert all(torch.isfinite(p).all() for p in loaded[0].model.parameters())


@pytest.mark.slow
@pytest.mark.distributed
def test_two_simulated_nodes_match_one_process(tiny_model_dir, tmp_path):
    """Two `accelerate launch --num_machines 2` processes on 127.0.0.1 (gloo) give the 1-process metrics."""
    import datasets

    data = datasets.DatasetDict({"train": colour_dataset(96, seed=1), "validation": colour_dataset(30, seed=2)})
    data.save_to_disk(str(tmp_path / "data"))
    model = tiny_model_dir("vit")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run([sys.executable, SCRIPT, model, str(tmp_path / "data"), str(tmp_path / "out1"), str(tmp_path / "one")], env)
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    port = free_port()
    procs = []
    for rank in (0, 1):
        cmd = [accelerate, "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2",
               "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, model, str(tmp_path / "data"),
               str(tmp_path / "out2"), str(tmp_path / "two")]
        procs.append(subprocess.Popen(cmd, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and not aborts_in("".join(outputs)), \
        "\n".join(o[-3000:] for o in outputs)
    one = json.load(open(f"{tmp_path / 'one'}.rank0"))
    ranks = [json.load(open(f"{tmp_path / 'two'}.rank{r}")) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for rank in ranks:
        for h1, h2 in zip(one["history"], rank["history"]):
            for key in ("train_loss", "loss", "accuracy", "f1"):
                assert h2[key] == pytest.approx(h1[key], abs=1e-4)
    assert sorted(os.listdir(tmp_path / "out2")) == sorted(os.listdir(tmp_path / "out1"))


def test_accelerate_configs_parse_and_say_when_to_use_them():
    from accelerate.commands.config.config_args import ClusterConfig

    root = os.path.join(os.path.dirname(__file__), "..", "recipes", "configs")
    kinds = {}
    for name in sorted(os.listdir(root)):
        text = open(os.path.join(root, name)).read()
        assert text.startswith("# "), f"{name} should start with a line on when to use it"
        kinds[name] = str(ClusterConfig.from_yaml_file(os.path.join(root, name)).distributed_type.value)
    assert kinds == {"deepspeed_zero2.yaml": "DEEPSPEED", "fsdp.yaml": "FSDP", "multi_gpu.yaml": "MULTI_GPU",
                     "multi_node.yaml": "MULTI_GPU", "one_gpu.yaml": "NO"}
    sbatch = open(os.path.join(root, "..", "slurm", "train.sbatch")).read()
    assert "accelerate launch" in sbatch and "--machine_rank" in sbatch


BF16_SCRIPT = """
import json, sys, torch
from tl_hub import FineTuneRecipe
sys.path.insert(0, {tests!r})
from support.tiny import colour_dataset
recipe = FineTuneRecipe({model!r}, head_epochs=1, epochs=3, batch_size=16, lr=1e-2, mixed_precision="bf16",
                        augment=False, seed=0, feature_cache="memory")
outputs = set()
load = recipe.load_backbone
def hooked(labels):
    backbone = load(labels)
    for m in backbone.model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, args, out: outputs.add((mod.training, str(out.dtype))))
    return backbone
recipe.load_backbone = hooked
result = recipe.fit(colour_dataset(60), colour_dataset(30, seed=3), progress=False)
print(json.dumps({{"outputs": sorted(outputs), "weights": sorted({{str(p.dtype) for p in recipe.result.run.backbone.model.parameters()}}),
                  "accuracy": result.metrics["accuracy"], "precision": recipe.result.run.accelerator.mixed_precision}}))
"""


@pytest.mark.slow
def test_bf16_trains_under_autocast_with_fp32_weights(tiny_model_dir):
    """bf16 on the CPU (its own process: the precision is fixed once per process): the linear layers compute in
    bf16 while training, the weights stay fp32, and the model still learns."""
    code = BF16_SCRIPT.format(tests=os.path.dirname(__file__), model=tiny_model_dir("vit"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["precision"] == "bf16"
    assert [True, "torch.bfloat16"] in result["outputs"]
    assert result["weights"] == ["torch.float32"]
    assert result["accuracy"] >= 0.8



@pytest.mark.parametrize("loss,norm,scaling,expected", [
    (1.0, 2.0, False, False),
    (1.0, float("inf"), False, True),  # fp32/bf16: a non-finite gradient is divergence
    (float("nan"), float("nan"), False, True),
    (1.0, float("inf"), True, False),  # fp16: the gradient scaler skips the step and lowers the scale
    (float("inf"), float("inf"), True, True),  # fp16 with a non-finite loss: divergence
    (1.0, None, False, False),
])
def test_when_training_counts_as_diverged(loss, norm, scaling, expected):
    import torch

    from tl_hub.loop import diverged

    assert diverged(torch.tensor(loss), norm, loss_scaling=scaling) is expected
