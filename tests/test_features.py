"""Cached encoder features: computed once per example, reused across epochs and runs, invalidated when the
model, the preprocessing or the data change, and equivalent to running the encoder every epoch."""

import os

import pytest
import torch
from support.tiny import ARCHITECTURES, COLOURS, colour_dataset, save_tiny_model

from tl_hub import ConfigError, FeatureExtractionRecipe, FineTuneRecipe
from tl_hub.backbone import load_backbone
from tl_hub.features import HeadModule
from tl_hub.post_training import FOLD_CHECK_IMAGES

FAST = dict(batch_size=16, eval_batch_size=32, augment=False, seed=0)


class EncoderCounter:
    """Counts images that go through the encoder, per period name."""

    def __init__(self, recipe):
        self.counts = {}
        self.period = "head"
        original = recipe.load_backbone

        def load(labels):
            backbone = original(labels)
            encoder = backbone.model.get_submodule(backbone.parts.encoder)
            encoder.register_forward_hook(lambda m, args, kwargs, out: self._count(kwargs, args), with_kwargs=True)
            return backbone

        recipe.load_backbone = load

    def _count(self, kwargs, args):
        x = kwargs.get("pixel_values", args[0] if args else None)
        self.counts[self.period] = self.counts.get(self.period, 0) + x.shape[0]

    def on_period_end(self, period, model, optimizer):
        self.period = "fine-tune"


def feature_files(folder) -> list[str]:
    """The cache entries in ``folder`` (one features file each, next to its labels file)."""
    return [f for f in os.listdir(folder) if f.endswith(".features.npy")]


def fit_counting(recipe, data, validation=None):
    counter = EncoderCounter(recipe)
    result = recipe.fit(data, validation, progress=False, on_period_end=counter.on_period_end)
    return result, counter.counts


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_captured_head_input_reproduces_the_logits(tiny_model_dir, arch):
    backbone = load_backbone(tiny_model_dir(arch), COLOURS)
    model = backbone.model.eval()
    head_path = backbone.parts.head[0]
    x = torch.randn(4, 3, 32, 32)
    captured = {}
    handle = model.get_submodule(head_path).register_forward_pre_hook(
        lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        handle.remove()
        again = HeadModule(model.get_submodule(head_path))(captured["x"])
    assert torch.allclose(logits, again, atol=1e-6)


def test_feature_extraction_runs_the_encoder_once_per_example(tiny_model_dir, tmp_path):
    for solver, epochs in (("adamw", 5), ("lbfgs", 1)):  # gradient epochs, or one converged solve
        recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=5, feature_cache="memory", head_solver=solver,
                                         **FAST)
        result, counts = fit_counting(recipe, colour_dataset(60), colour_dataset(21, seed=5))
        assert counts == {"head": 60 + 21}  # not 5 x (60 + 21)
        assert len(result.history) == epochs
        assert recipe.result.run.feature_store.computed_examples == 81


def test_fine_tune_period1_is_cached_and_period2_runs_the_encoder(tiny_model_dir):
    recipe = FineTuneRecipe(tiny_model_dir("vit"), head_epochs=2, epochs=4, feature_cache="memory", **FAST)
    _, counts = fit_counting(recipe, colour_dataset(48), colour_dataset(15, seed=5))
    assert counts["head"] == 48 + 15
    # 2 epochs over the training and validation images, then one validation pass to calibrate and a few images to
    # check the folded temperature (WiSE-FT is off by default; "auto" would add one validation pass per alpha)
    assert counts["fine-tune"] == 2 * (48 + 15) + 15 + FOLD_CHECK_IMAGES


def test_disk_cache_is_reused_across_runs(tiny_model_dir, tmp_path):
    kwargs = dict(epochs=2, feature_cache="disk", feature_cache_dir=str(tmp_path / "cache"), **FAST)
    data, val = colour_dataset(45), colour_dataset(15, seed=5)
    first, c1 = fit_counting(FeatureExtractionRecipe(tiny_model_dir("vit"), **kwargs), data, val)
    assert c1 == {"head": 60}
    assert len(feature_files(tmp_path / "cache")) == 2  # training and validation features
    assert len(os.listdir(tmp_path / "cache")) == 4 and not [f for f in os.listdir(tmp_path / "cache") if "tmp" in f]
    second, c2 = fit_counting(FeatureExtractionRecipe(tiny_model_dir("vit"), **kwargs), data, val)
    assert c2 == {}  # every feature came from disk
    assert [h["accuracy"] for h in second.history] == [h["accuracy"] for h in first.history]
    assert [h["loss"] for h in second.history] == pytest.approx([h["loss"] for h in first.history], abs=1e-7)


def test_cache_is_invalidated_when_model_preprocessing_or_data_change(tmp_path):
    from transformers import ViTImageProcessor

    base = save_tiny_model("vit", str(tmp_path / "m1"), seed=0)
    kwargs = dict(epochs=1, feature_cache="disk", feature_cache_dir=str(tmp_path / "cache"), **FAST)
    data, val = colour_dataset(30), colour_dataset(15, seed=5)

    def encoder_images(model_dir, d=data):
        return fit_counting(FeatureExtractionRecipe(model_dir, **kwargs), d, val)[1].get("head", 0)

    assert encoder_images(base) == 45
    assert encoder_images(base) == 0  # cached
    other_weights = save_tiny_model("vit", str(tmp_path / "m2"), seed=1)
    assert encoder_images(other_weights) == 45  # model changed
    # same weights, different preprocessing
    import shutil
    shutil.copytree(base, tmp_path / "m3")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3]).save_pretrained(tmp_path / "m3")
    assert encoder_images(str(tmp_path / "m3")) == 45
    # same model and preprocessing, different training data: only the training split is recomputed
    assert encoder_images(base, colour_dataset(30, seed=9)) == 30
    assert len(feature_files(tmp_path / "cache")) == 2 + 2 + 2 + 1


def test_cached_and_uncached_training_agree(tiny_model_dir):
    data, val = colour_dataset(48), colour_dataset(15, seed=5)
    runs = {}
    for cache in ("memory", "off"):
        recipe = FeatureExtractionRecipe(tiny_model_dir("resnet"), epochs=3, lr=5e-2, feature_cache=cache,
                                         head_solver="adamw", **FAST)
        runs[cache] = recipe.fit(data, val, progress=False).history
    for a, b in zip(runs["memory"], runs["off"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["accuracy"] == b["accuracy"]


def test_augmented_views(tiny_model_dir):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=3, feature_cache="memory", feature_views=3,
                                     **{**FAST, "augment": True})
    _, counts = fit_counting(recipe, colour_dataset(30), colour_dataset(15, seed=5))
    assert counts == {"head": 3 * 30 + 15}
    with pytest.raises(ConfigError, match="feature_views"):
        FeatureExtractionRecipe("x", feature_views=2, augment=False)
    with pytest.raises(ConfigError, match="feature_cache"):
        FeatureExtractionRecipe("x", feature_cache="ram")


def test_unreadable_cache_file_is_recomputed(tiny_model_dir, tmp_path):
    kwargs = dict(epochs=1, feature_cache="disk", feature_cache_dir=str(tmp_path / "cache"), **FAST)
    data, val = colour_dataset(30), colour_dataset(15, seed=5)
    fit_counting(FeatureExtractionRecipe(tiny_model_dir("vit"), **kwargs), data, val)
    for f in os.listdir(tmp_path / "cache"):
        (tmp_path / "cache" / f).write_bytes(b"garbage")
    _, counts = fit_counting(FeatureExtractionRecipe(tiny_model_dir("vit"), **kwargs), data, val)
    assert counts == {"head": 45}


def test_a_warm_cache_gives_the_same_run_as_a_cold_one(tmp_path):
    """Computing features must not move the RNG that training draws from (dropout in fine-tuning here); otherwise a
    run would depend on whether its features came from the cache, and a resumed run could not match."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    model = str(tmp_path / "vit-dropout")
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, image_size=32, patch_size=8,
                                        hidden_dropout_prob=0.3)).save_pretrained(model)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model)
    runs = []
    for _ in range(2):
        # a fixed thread count: "auto" counts the cores other processes keep busy, and float sums over another
        # number of threads differ in the last bits
        recipe = FineTuneRecipe(model, head_epochs=1, epochs=3, feature_cache_dir=str(tmp_path / "cache"), threads=1,
                                **FAST)
        runs.append(recipe.fit(colour_dataset(48, seed=1), colour_dataset(15, seed=2), progress=False).history)
        computed = recipe.result.run.feature_store.computed_examples
    assert computed == 0  # the second run read every feature from the cache
    assert [h["train_loss"] for h in runs[1]] == [h["train_loss"] for h in runs[0]]
    assert [h["loss"] for h in runs[1]] == [h["loss"] for h in runs[0]]


def test_an_empty_head_period_runs_no_encoder_pass(tiny_model_dir):
    recipe = FineTuneRecipe(tiny_model_dir("vit"), head_epochs=0, epochs=2, **FAST)
    result = recipe.fit(colour_dataset(30), progress=False)
    assert [h["period"] for h in result.history] == ["fine-tune", "fine-tune"]
    assert recipe.result.run.feature_store is None  # nothing was cached for a period that does not run


@pytest.mark.slow
def test_features_of_another_precision_are_recomputed(tiny_model_dir, tmp_path):
    """The cache key holds the autocast precision: features made under bf16 are not reused by an fp32 run (each run
    in its own process, as Accelerate fixes the precision per process)."""
    import subprocess
    import sys

    code = f"""
import json, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from support.tiny import colour_dataset
from tl_hub import FeatureExtractionRecipe
recipe = FeatureExtractionRecipe({tiny_model_dir("vit")!r}, epochs=1, batch_size=16, augment=False, seed=0,
                                 feature_cache="disk", feature_cache_dir={str(tmp_path / "cache")!r},
                                 mixed_precision=sys.argv[1])
recipe.fit(colour_dataset(30), progress=False)
print("COMPUTED", recipe.result.run.feature_store.computed_examples)
"""
    computed = []
    for precision in ("bf16", "no", "no", "bf16"):
        proc = subprocess.run([sys.executable, "-c", code, precision], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        computed.append(int(proc.stdout.split("COMPUTED")[-1]))
    assert computed[0] > 0 and computed[1] > 0  # fp32 after bf16: recomputed
    assert computed[2] == 0 and computed[3] == 0  # the same precision again: read from the cache


def test_dropout_before_the_head_is_the_same_with_and_without_the_cache(tmp_path):
    """EfficientNet drops out the pooled features before its classifier. While the encoder is frozen that dropout
    is in eval mode whether the head trains on cached features or runs the encoder every epoch, so both give the
    same training."""
    from support import arch_zoo

    folder = arch_zoo.save_tiny("efficientnet", str(tmp_path / "effnet"))
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(folder).dropout_rate > 0
    histories = []
    for cache in ("memory", "off"):
        recipe = FeatureExtractionRecipe(folder, epochs=3, head_solver="adamw", lr=1e-2, feature_cache=cache, **FAST)
        histories.append(recipe.fit(colour_dataset(30), progress=False).history)
    for cached, uncached in zip(*histories, strict=True):
        assert cached["train_loss"] == pytest.approx(uncached["train_loss"], rel=1e-5, abs=1e-5)  # float32 sums
        assert cached["loss"] == pytest.approx(uncached["loss"], rel=1e-5, abs=1e-5)


def test_the_cache_key_follows_the_config_but_not_the_labels(tiny_model_dir):
    from tl_hub.features import encoder_fingerprint

    backbone = load_backbone(tiny_model_dir("vit"), COLOURS)
    model, head = backbone.model, backbone.parts.head
    before = encoder_fingerprint(model, head)
    model.config.id2label = {0: "x", 1: "y", 2: "z"}
    assert encoder_fingerprint(model, head) == before  # the labels do not change the features
    model.config.layer_norm_eps = 1e-3
    assert encoder_fingerprint(model, head) != before  # a non-weight setting that changes them does
