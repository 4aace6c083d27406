"""Recipes end to end on tiny models: what is frozen stays bit-identical, LRs are what they claim, training
learns, save -> load gives the same predictions."""

import json
import os

import pytest
import torch
from support.tiny import COLOURS, colour_dataset

from tl_hub import (
    ConfigError,
    FeatureExtractionRecipe,
    FineTuneRecipe,
    OutputError,
    ScratchRecipe,
    TlHubError,
    get_recipe,
    load,
)
from tl_hub.backbone import BATCHNORM_TYPES

FAST = dict(batch_size=16, eval_batch_size=32, augment=False, seed=0)


def pretrained_state(model_dir):
    """The pretrained model's tensors, parameters and buffers (BatchNorm running stats included), as loaded
    by transformers (which may rename checkpoint keys on load)."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir)
    return {k: v.clone() for k, v in model.state_dict().items()}


def encoder_state(model, prefix):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix + ".")}


def assert_identical(state, reference):
    assert state, "nothing to compare"
    for k, v in state.items():
        assert k in reference, k
        assert torch.equal(v, reference[k]), f"{k} changed"


def batchnorm_buffers(model):
    return {f"{n}.{b}": getattr(m, b).clone() for n, m in model.named_modules() if isinstance(m, BATCHNORM_TYPES)
            for b in ("running_mean", "running_var", "num_batches_tracked")}


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_feature_extraction_keeps_encoder_and_batchnorm_bit_identical(tiny_model_dir, arch):
    model_dir = tiny_model_dir(arch)
    recipe = FeatureExtractionRecipe(model_dir, epochs=2, lr=5e-2, **FAST)
    result = recipe.fit(colour_dataset(60), progress=False)
    model = recipe.classifier.model
    reference = pretrained_state(model_dir)
    encoder = recipe.result.run.backbone.parts.encoder
    state = encoder_state(model, encoder)
    assert_identical(state, reference)
    if arch == "resnet":
        bn = batchnorm_buffers(model)
        assert bn and all(torch.equal(v, reference[k]) for k, v in bn.items())
        assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in bn.items() if k.endswith("running_mean"))
    head = dict(model.named_parameters())["classifier.weight" if arch == "vit" else "classifier.1.weight"]
    assert head.shape[0] == len(COLOURS)
    assert len(result.history) == 1 and {h["period"] for h in result.history} == {"head"}  # one converged solve
    assert result.extra["periods"][0]["solver"] == "lbfgs"
    assert result.history[-1]["trainable_params"] == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))


def test_head_changes_while_encoder_stays(tiny_model_dir):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, lr=5e-2, **FAST)
    captured = {}
    recipe.fit(colour_dataset(45), progress=False,
               on_period_end=lambda period, model, opt: captured.update(head=model.classifier.weight.clone()))
    assert not torch.equal(captured["head"], recipe.result.run.backbone.model.classifier.weight * 0)
    # the head after training differs from the freshly initialised one: rebuild the init with the same seed
    from accelerate.utils import set_seed

    from tl_hub.backbone import load_backbone
    set_seed(0)
    fresh = load_backbone(tiny_model_dir("vit"), COLOURS).model
    assert not torch.equal(fresh.classifier.weight, recipe.classifier.model.classifier.weight)


def test_fine_tune_period1_is_feature_extraction_and_period2_uses_smaller_lrs(tiny_model_dir):
    model_dir = tiny_model_dir("resnet")
    reference = pretrained_state(model_dir)
    snapshots = {}

    def on_period_end(period, model, optimizer):
        snapshots[period.name] = {
            "encoder": encoder_state(model, "resnet"),
            "bn": batchnorm_buffers(model),
            "lrs": {g["name"]: g["initial_lr"] for g in optimizer.param_groups},
            "head": model.classifier[1].weight.detach().clone(),
        }

    recipe = FineTuneRecipe(model_dir, head_epochs=1, epochs=3, lr=1e-2, backbone_lr_ratio=0.1, **FAST)
    result = recipe.fit(colour_dataset(60), progress=False, on_period_end=on_period_end)
    assert [h["period"] for h in result.history] == ["head", "fine-tune", "fine-tune"]

    p1 = snapshots["head"]
    assert_identical(p1["encoder"], reference)
    assert all(torch.equal(v, reference[k]) for k, v in p1["bn"].items())
    assert set(p1["lrs"]) <= {"head/decay", "head/no_decay"} and all(
        lr == pytest.approx(1e-2) for lr in p1["lrs"].values())

    p2 = snapshots["fine-tune"]
    lrs = p2["lrs"]
    assert lrs["head/decay"] == pytest.approx(1e-2)
    pretrained = {k: v for k, v in lrs.items() if not k.startswith("head")}
    assert {k.split("/")[0] for k in pretrained} == {"embeddings", "block.0", "block.1", "block.2", "block.3"}
    assert all(v == pytest.approx(1e-3) for v in pretrained.values())
    # period 2 really trained the encoder, but the default BatchNorm policy kept running statistics
    assert any(not torch.equal(v, reference[k]) for k, v in p2["encoder"].items() if "running" not in k
               and "num_batches" not in k)
    assert all(torch.equal(v, reference[k]) for k, v in p2["bn"].items())
    assert not torch.equal(p1["head"], p2["head"])


def test_batchnorm_policy_train_updates_running_stats(tiny_model_dir):
    model_dir = tiny_model_dir("resnet")
    reference = pretrained_state(model_dir)
    # the last epoch is kept: the best one could be the head period's, before the statistics moved
    # and WiSE-FT is off: it could choose the start's weights, whose statistics are the pretrained ones
    recipe = FineTuneRecipe(model_dir, head_epochs=1, epochs=2, lr=1e-2, bn_policy="train", keep_epoch="last",
                            wise_ft="off", **FAST)
    recipe.fit(colour_dataset(45), progress=False)
    bn = batchnorm_buffers(recipe.classifier.model)
    assert any(not torch.equal(v, reference[k]) for k, v in bn.items() if k.endswith("running_mean"))


def test_layer_decay_and_top_k_unfreeze(tiny_model_dir):
    model_dir = tiny_model_dir("vit")
    reference = pretrained_state(model_dir)
    seen = {}
    recipe = FineTuneRecipe(model_dir, head_epochs=1, epochs=2, lr=1e-2, layer_decay=0.5, unfreeze=1, **FAST)
    recipe.fit(colour_dataset(45), progress=False,
               on_period_end=lambda p, m, o: seen.update({p.name: {g["name"]: g["initial_lr"]
                                                                    for g in o.param_groups}}))
    lrs = seen["fine-tune"]
    assert {k.split("/")[0] for k in lrs} == {"head", "block.1", "norm"}
    assert lrs["block.1/decay"] == pytest.approx(1e-2 * 0.5)
    assert lrs["norm/no_decay"] == pytest.approx(1e-2 * 0.5)
    model = recipe.classifier.model
    frozen = {k: v for k, v in encoder_state(model, "vit").items()
              if k.startswith(("vit.embeddings", "vit.layers.0."))}
    assert_identical(frozen, reference)
    top = {k: v for k, v in encoder_state(model, "vit").items() if k.startswith("vit.layers.1.")}
    assert any(not torch.equal(v, reference[k]) for k, v in top.items())


def test_fit_learns_clearly_better_than_chance(tiny_model_dir):
    recipe = FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=4, lr=1e-2, **FAST)
    result = recipe.fit(colour_dataset(150, seed=1), progress=False)
    assert result.metrics["accuracy"] >= 0.8, result.history  # chance is 1/3
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    test = recipe.evaluate(colour_dataset(60, seed=7))
    assert test["accuracy"] >= 0.8


def test_scratch_starts_from_random_weights(tiny_model_dir):
    model_dir = tiny_model_dir("vit")
    reference = pretrained_state(model_dir)
    recipe = ScratchRecipe(model_dir, epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    state = encoder_state(recipe.classifier.model, "vit")
    assert all(not torch.equal(v, reference[k]) for k, v in state.items() if v.ndim > 1)
    assert recipe.result.history[0]["frozen_params"] == 0


def test_save_load_identical_predictions(tiny_model_dir, tmp_path):
    recipe = FineTuneRecipe(tiny_model_dir("convnext"), head_epochs=1, epochs=2, lr=1e-2, **FAST)
    recipe.fit(colour_dataset(45), progress=False)
    out = tmp_path / "out"
    recipe.save(str(out))
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "tl_hub.json", "metrics.json",
            "history.json", "learning_curve.png"} <= files
    assert not any(f.endswith(".bin") for f in files)
    config = json.load(open(out / "config.json"))
    assert [config["id2label"][str(i)] for i in range(3)] == COLOURS
    info = json.load(open(out / "tl_hub.json"))
    assert info["recipe"] == "fine-tune" and info["labels"] == COLOURS
    assert info["settings"]["head_epochs"] == 1
    assert len(json.load(open(out / "history.json"))) == 2
    assert open(out / "learning_curve.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    images = colour_dataset(12, seed=3)["image"]
    before = recipe.predict(images, top_k=3)
    loaded = load(str(out))
    after = loaded.predict(images, top_k=3)
    assert [[p["label"] for p in r] for r in before] == [[p["label"] for p in r] for r in after]
    for r1, r2 in zip(before, after):
        assert [p["score"] for p in r1] == pytest.approx([p["score"] for p in r2], abs=1e-6)
    assert torch.equal(recipe.classifier.predict_proba(images), loaded.predict_proba(images))
    single = loaded.predict(images[0])
    assert isinstance(single, list) and set(single[0]) == {"label", "score"}


def test_save_refuses_existing_output_and_keeps_it(tiny_model_dir, tmp_path):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="--overwrite"):
        recipe.save(str(out))
    assert os.listdir(out) == ["precious.txt"]
    recipe.save(str(out), overwrite=True)
    assert "precious.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temp folders left behind


def test_failed_save_leaves_nothing_half_written(tiny_model_dir, tmp_path, monkeypatch):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    import tl_hub.model_folder as recipes_mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(recipes_mod, "plot_learning_curves", boom)
    with pytest.raises(RuntimeError):
        recipe.save(str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="`lr` should be positive, got 0"):
        FeatureExtractionRecipe("x", lr=0)
    with pytest.raises(ConfigError, match="head_epochs"):
        FineTuneRecipe("x", head_epochs=3, epochs=3)
    with pytest.raises(ConfigError, match="valid settings"):
        FeatureExtractionRecipe("x", head_epochs=1)
    with pytest.raises(ConfigError, match="unfreeze"):
        FineTuneRecipe("x", unfreeze="top")
    with pytest.raises(ConfigError, match="bn_policy"):
        FineTuneRecipe("x", bn_policy="sometimes")
    with pytest.raises(ConfigError, match="Unknown recipe"):
        get_recipe("linear-probe")


def test_predict_before_fit_is_a_clear_error():
    with pytest.raises(TlHubError, match="fit"):
        FeatureExtractionRecipe("x").predict([])


def test_unfreeze_more_blocks_than_model_has(tiny_model_dir):
    recipe = FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=2, unfreeze=5, **FAST)
    with pytest.raises(ConfigError, match="only 2 encoder blocks"):
        recipe.fit(colour_dataset(30), progress=False)


@pytest.mark.parametrize("recipe_cls,kwargs,expect_graph", [
    (FeatureExtractionRecipe, dict(epochs=1, head_solver="adamw", feature_cache="off"), False),
    (ScratchRecipe, dict(epochs=1), True),
], ids=["feature-extraction", "scratch"])
def test_frozen_encoder_builds_no_autograd_graph(tiny_model_dir, recipe_cls, kwargs, expect_graph):
    """With the encoder frozen, the head's input carries no autograd history: the encoder forward records
    nothing for backward (no saved activations)."""
    seen = []
    recipe = recipe_cls(tiny_model_dir("vit"), **kwargs, **FAST)
    original = recipe.load_backbone

    def load_and_hook(labels):
        backbone = original(labels)
        backbone.model.classifier.register_forward_pre_hook(
            lambda module, args: seen.append((module.training, args[0].requires_grad, args[0].grad_fn is not None)))
        return backbone

    recipe.load_backbone = load_and_hook
    recipe.fit(colour_dataset(30), progress=False)
    training_calls = [s for s in seen if s[0]]
    assert training_calls
    assert all(requires_grad == expect_graph and has_graph == expect_graph
               for _, requires_grad, has_graph in training_calls)


def test_gradient_accumulation_steps_the_optimizer_less_often(tiny_model_dir):
    steps = {}
    for accum in (1, 3):
        recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, gradient_accumulation_steps=accum,
                                         warmup_ratio=0.0, scheduler="linear", head_solver="adamw", **FAST)
        recipe.fit(colour_dataset(96), progress=False,  # 78 training images -> 5 batches of 16
                   on_period_end=lambda p, m, o: steps.__setitem__(accum, o.state[o.param_groups[0]["params"][0]]
                                                                    ["step"].item()))
    assert steps == {1: 5, 3: 2}


def test_top_k_unfreeze_stops_autograd_at_the_lowest_unfrozen_block(tiny_model_dir):
    """In period 2 with unfreeze=1, block 0 runs without building a graph; block 1 builds one."""
    seen = {"block.0": [], "block.1": []}
    recipe = FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=2, unfreeze=1, feature_cache="memory",
                            **FAST)
    original = recipe.load_backbone

    def load_and_hook(labels):
        backbone = original(labels)
        for i in (0, 1):
            block = backbone.model.get_submodule(backbone.parts.group(f"block.{i}").modules[0])
            block.register_forward_hook(
                lambda m, args, out, i=i: seen[f"block.{i}"].append(
                    (torch.is_grad_enabled(), (out[0] if isinstance(out, tuple) else out).requires_grad)))
        return backbone

    recipe.load_backbone = load_and_hook
    recipe.fit(colour_dataset(30), progress=False)
    training = {k: [rg for grad_on, rg in v if grad_on] for k, v in seen.items()}
    assert training["block.0"] and not any(training["block.0"])
    assert training["block.1"] and all(training["block.1"])


def test_num_workers_default_to_none_on_cpu_and_a_share_of_the_cores_with_a_gpu(monkeypatch, tiny_model_dir):
    import os

    from support.tiny import colour_dataset

    from tl_hub import FeatureExtractionRecipe
    from tl_hub.runtime import default_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_num_workers("cpu") == 0  # workers would take the cores the model computes on
    assert default_num_workers("cuda", 1) == 8  # 15 free cores, at most 8
    assert default_num_workers("cuda", 4) == 3  # 4 processes on 16 cores: 4 each, one for the process itself
    assert default_num_workers("cuda", 16) == 0
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, feature_cache="memory")
    assert recipe.config.num_workers is None
    recipe.fit(colour_dataset(30), progress=False)
    assert recipe.result.config.num_workers == 0  # resolved for this CPU run
    assert recipe.config.num_workers is None  # the recipe keeps its settings as given


def test_a_small_validation_split_is_flagged_in_the_log_the_record_and_the_card(tiny_model_dir, tmp_path, caplog):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), **FAST)
    with caplog.at_level("WARNING", logger="tl_hub"):
        result = recipe.fit(colour_dataset(24, seed=1), colour_dataset(9, seed=2), progress=False)
    warning = result.extra["validation_warning"]
    assert "only 9 images" in warning and "at least 30" in warning and result.extra["validation_images"] == 9
    assert any(r.getMessage() == warning for r in caplog.records)
    recipe.save(str(tmp_path / "out"))
    assert json.load(open(tmp_path / "out" / "tl_hub.json"))["validation_warning"] == warning
    assert "Small validation split" in open(tmp_path / "out" / "README.md").read()

    enough = FeatureExtractionRecipe(tiny_model_dir("vit"), **FAST)
    result = enough.fit(colour_dataset(24, seed=1), colour_dataset(30, seed=2), progress=False)
    assert result.extra["validation_warning"] is None and result.extra["validation_images"] == 30
    enough.save(str(tmp_path / "enough"))
    assert "Small validation split" not in open(tmp_path / "enough" / "README.md").read()


def test_a_long_period_shows_its_eta_on_each_epoch_line(tiny_model_dir, monkeypatch, caplog):
    from tl_hub import loop

    assert loop.period_eta([50.0, 70.0], 2) == "  ETA 2m00s for this period"
    assert loop.period_eta([10.0], 4) == ""  # 50 s expected: short periods say nothing
    assert loop.period_eta([90.0], 0) == ""  # the period's last epoch
    monkeypatch.setattr(loop, "ETA_AFTER_S", 0.0)
    recipe = FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=3, lr=1e-2, head_solver="adamw", **FAST)
    with caplog.at_level("INFO", logger="tl_hub.progress"):
        recipe.fit(colour_dataset(32, seed=1), colour_dataset(12, seed=2), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fine-tune: epoch ")]
    assert len(lines) == 3
    assert "ETA" not in lines[0]  # the head period's only epoch
    assert "ETA" in lines[1] and "for this period" in lines[1] and "ETA" not in lines[2]
