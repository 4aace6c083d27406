"""Top-k fine-tuning on the cached frozen prefix (tl_hub.prefix): the same training as running the whole encoder,
the frozen blocks never run in the fine-tuning period, exact resume, cache invalidation, and the fallbacks."""

import contextlib
import os

import pytest
import torch
from support.tiny import colour_dataset

from tl_hub import FineTuneRecipe
from tl_hub.post_training import FOLD_CHECK_IMAGES

FAST = dict(batch_size=8, eval_batch_size=16, augment=False, seed=0, lr=1e-2)


@pytest.fixture(scope="module")
def deep_vit(tmp_path_factory):
    """A 6-block ViT with dropout in its blocks (so that train/eval modes and the RNG matter)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = str(tmp_path_factory.mktemp("models") / "vit6")
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                                        intermediate_size=64, image_size=32, patch_size=8, hidden_dropout_prob=0.1,
                                        num_labels=5)).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def fit(model, prefix_cache=True, data=None, **settings):
    recipe = FineTuneRecipe(model, **{**dict(head_epochs=0, epochs=3, unfreeze=2, feature_cache="memory",
                                              prefix_cache=prefix_cache), **FAST, **settings})
    result = recipe.fit(*(data or (colour_dataset(40), colour_dataset(15, seed=5))), progress=False)
    return recipe, result


def cut_of(result):
    return result.extra["periods"][-1].get("prefix_cache")


def assert_same_training(a, b, tol=1e-5):
    assert len(a.history) == len(b.history)
    for x, y in zip(a.history, b.history):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=tol)
        assert x["loss"] == pytest.approx(y["loss"], abs=tol)
        assert x["accuracy"] == y["accuracy"]


@pytest.mark.parametrize("arch", ["vit6", "convnext", "resnet", "swin", "dinov2", "deit"])
def test_cached_prefix_trains_exactly_like_the_whole_encoder(tiny_model_dir, deep_vit, arch):
    model = deep_vit if arch == "vit6" else tiny_model_dir(arch)
    unfreeze = 1 if arch in ("swin", "dinov2", "deit") else 2  # the conftest models have 2 blocks (swin: 2 stages)
    cached_recipe, cached = fit(model, unfreeze=unfreeze)
    whole_recipe, whole = fit(model, prefix_cache=False, unfreeze=unfreeze)
    assert cut_of(cached) is not None and cut_of(whole) is None
    assert cached.history[0]["loss"] > 0.05  # a loss worth comparing (not a solved task)
    assert_same_training(cached, whole)
    images = colour_dataset(6, seed=9)["image"]  # the same weights: the same predictions on images
    assert torch.allclose(cached_recipe.classifier.predict_proba(images), whole_recipe.classifier.predict_proba(images),
                          atol=1e-5)


def test_frozen_blocks_do_not_run_while_the_top_blocks_train(deep_vit):
    """Count the calls of the patch embedding's convolution and of block 0's attention: once per image for the
    cache, never in the training epochs."""
    calls = {"embed": 0, "block0": 0}

    class Counting(FineTuneRecipe):
        def load_backbone(self, labels):
            backbone = super().load_backbone(labels)
            model = backbone.model
            model.vit.embeddings.patch_embeddings.projection.register_forward_hook(
                lambda m, a, o: calls.__setitem__("embed", calls["embed"] + o.shape[0]))
            model.vit.layers[0].attention.register_forward_hook(
                lambda m, a, o: calls.__setitem__("block0", calls["block0"] + a[0].shape[0]))
            return backbone

    recipe = Counting(deep_vit, head_epochs=0, epochs=3, unfreeze=2, feature_cache="memory", **FAST)
    recipe.fit(colour_dataset(40), colour_dataset(15, seed=5), progress=False)
    reference = 3 + 1  # find_cut's dry run and its check run the model on 3 images (whole model, 2 passes: 6)
    assert calls["embed"] == calls["block0"]
    # one pass to cache, not 3 epochs x (40 + 15); after training, calibration runs the whole model on the
    # validation images once and on a few again to check the folded temperature
    assert calls["embed"] <= 40 + 15 + 2 * reference + 15 + FOLD_CHECK_IMAGES


def test_augmentation_without_views_runs_the_whole_encoder(deep_vit):
    _, result = fit(deep_vit, augment=True)
    assert cut_of(result) is None  # fresh crops every epoch: the prefix output is not fixed
    _, result = fit(deep_vit, augment=True, feature_views=2)
    assert cut_of(result).endswith(".4")  # 2 cached views: the input of block 4 of 6


def test_gradient_checkpointing_and_unfreeze_all_run_the_whole_encoder(deep_vit):
    assert cut_of(fit(deep_vit, gradient_checkpointing=True)[1]) is None
    assert cut_of(fit(deep_vit, unfreeze="all")[1]) is None


def test_a_cut_that_does_not_reproduce_the_logits_is_not_used(deep_vit, monkeypatch, caplog):
    from tl_hub import prefix

    @contextlib.contextmanager
    def not_feeding(self, model, features):
        yield  # a broken scheme: the cut never receives the cached input

    monkeypatch.setattr(prefix.PrefixCut, "installed", not_feeding)
    with caplog.at_level("INFO", logger="tl_hub.inputs"):
        _, result = fit(deep_vit)
    assert cut_of(result) is None
    assert "does not reproduce the logits" in caplog.text


def test_prefix_cache_spills_to_a_mapped_file_when_memory_is_short(deep_vit, monkeypatch, tmp_path):
    from tl_hub import features

    _, in_memory = fit(deep_vit)
    monkeypatch.setattr(features, "available_memory", lambda: 1000)  # 1 kB free: everything spills
    recipe, spilled = fit(deep_vit, feature_cache_dir=str(tmp_path / "spill"))
    assert all(v["where"] == "memory" for v in spilled.extra["feature_caches"].values())
    assert not os.listdir(tmp_path / "spill")  # the spill files are unlinked once mapped
    assert_same_training(in_memory, spilled, tol=0)


def test_disk_prefix_cache_is_reused_and_invalidated(deep_vit, tmp_path):
    from transformers import ViTImageProcessor

    cache = str(tmp_path / "cache")
    kwargs = dict(feature_cache="disk", feature_cache_dir=cache)
    first_recipe, first = fit(deep_vit, **kwargs)
    assert first_recipe.result.run.feature_store.computed_examples == 55
    again_recipe, again = fit(deep_vit, **kwargs)
    assert again_recipe.result.run.feature_store.computed_examples == 0  # read back (memory-mapped)
    assert_same_training(first, again, tol=0)
    deeper, _ = fit(deep_vit, unfreeze=3, **kwargs)
    assert deeper.result.run.feature_store.computed_examples == 55  # another unfrozen depth: another cut
    other = str(tmp_path / "other-weights")
    import shutil

    shutil.copytree(deep_vit, other)
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(other)
    with torch.no_grad():
        next(model.vit.layers[1].parameters()).mul_(1.01)
    model.save_pretrained(other)
    assert fit(other, **kwargs)[0].result.run.feature_store.computed_examples == 55  # a frozen block's weights changed
    shutil.copytree(deep_vit, tmp_path / "other-processor")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.2, 0.4, 0.6]).save_pretrained(
        tmp_path / "other-processor")
    assert fit(str(tmp_path / "other-processor"), **kwargs)[0].result.run.feature_store.computed_examples == 55


def test_resume_from_a_mid_epoch_checkpoint_matches_the_uninterrupted_run(deep_vit, tmp_path):
    data = (colour_dataset(40), colour_dataset(15, seed=5))
    settings = dict(checkpoint_dir=str(tmp_path / "ckpt"), save_steps=2, save_total_limit=20, data=data)
    _, full = fit(deep_vit, **settings)
    checkpoints = sorted(os.listdir(tmp_path / "ckpt"))
    middle = [c for c in checkpoints if c.startswith("checkpoint")][len(checkpoints) // 2]
    import shutil

    shutil.copytree(tmp_path / "ckpt", tmp_path / "ckpt2")
    recipe = FineTuneRecipe(deep_vit, **{**dict(head_epochs=0, epochs=3, unfreeze=2, feature_cache="memory"),
                                         **FAST, "checkpoint_dir": str(tmp_path / "ckpt2"), "save_steps": 2,
                                         "save_total_limit": 20})
    resumed = recipe.fit(*data, progress=False, resume_from_checkpoint=str(tmp_path / "ckpt2" / middle))
    assert cut_of(resumed) is not None
    assert_same_training(full, resumed, tol=1e-6)
