"""Only what training changed is exported; `load` reassembles it into the same classifier."""

import os

import pytest
import torch
from safetensors.torch import load_file
from support.tiny import colour_dataset

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe, ModelError, ScratchRecipe
from tl_hub.filenames import HEAD_FILE
from tl_hub.hub import model_card
from tl_hub.model_folder import export_for_hub, load
from tl_hub.outputs import read_json

FAST = dict(batch_size=16, augment=False, seed=0, feature_cache="memory")


@pytest.mark.parametrize("make,kind,expect_file", [
    (lambda m: FeatureExtractionRecipe(m, epochs=1, **FAST), "head", HEAD_FILE),
    (lambda m: FineTuneRecipe(m, head_epochs=1, epochs=2, unfreeze=1, bn_policy="train", **FAST), "partial",
     HEAD_FILE),
    (lambda m: FineTuneRecipe(m, head_epochs=1, epochs=2, **FAST), "full", "model.safetensors"),
    (lambda m: ScratchRecipe(m, epochs=1, **FAST), "full", "model.safetensors"),
], ids=["feature-extraction", "fine-tune-top1-bn-train", "fine-tune-all", "scratch"])
def test_export_and_load_round_trip(tiny_model_dir, tmp_path, make, kind, expect_file):
    recipe = make(tiny_model_dir("resnet"))
    recipe.fit(colour_dataset(30), progress=False)
    recipe.save(str(tmp_path / "out"))
    export_for_hub(str(tmp_path / "out"), str(tmp_path / "export"))
    assert recipe.result.trained["kind"] == kind
    files = os.listdir(tmp_path / "export")
    assert expect_file in files and "tl_hub.json" in files and "preprocessor_config.json" in files
    if expect_file == HEAD_FILE:
        tensors = load_file(str(tmp_path / "export" / HEAD_FILE))
        assert sorted(tensors) == sorted(recipe.result.trained["state_keys"])
        assert "model.safetensors" not in files
        head = set(recipe.result.run.backbone.parts.head_params(recipe.classifier.model))
        if kind == "head":
            assert set(tensors) == head
        else:  # the unfrozen top stage, its BatchNorm statistics (bn_policy="train") and the head; nothing else
            assert head < set(tensors)
            assert all(k.startswith(("classifier", "resnet.encoder.stages.3")) for k in tensors)
            assert any(k.endswith("running_mean") for k in tensors)
    images = colour_dataset(9, seed=4)["image"]
    loaded = load(str(tmp_path / "export"))
    assert torch.equal(recipe.classifier.predict_proba(images), loaded.predict_proba(images))
    assert loaded.labels == recipe.classifier.labels


@pytest.mark.slow
def test_head_export_is_tiny_for_a_vit_base_sized_model(tmp_path):
    """The figure the README and docs/guides/hub-and-space.md quote: a feature-extraction head of a ViT-Base-sized model vs the full model."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    base = tmp_path / "vit-base"
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=16, num_labels=3)).save_pretrained(base)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(base)
    recipe = FeatureExtractionRecipe(str(base), epochs=1, **FAST)
    recipe.fit(colour_dataset(12), progress=False)
    recipe.save(str(tmp_path / "out"))
    export_for_hub(str(tmp_path / "out"), str(tmp_path / "export"))
    full = os.path.getsize(tmp_path / "out" / "model.safetensors")
    pushed = sum(os.path.getsize(tmp_path / "export" / f) for f in os.listdir(tmp_path / "export"))
    print(f"\nViT-Base-sized: full model {full / 1e6:.1f} MB, pushed head export {pushed / 1e3:.1f} kB "
          f"({pushed / full:.3%})")
    assert full > 300e6 and pushed < 0.01 * full


def test_load_checks_shapes_against_the_base(tiny_model_dir, tmp_path):
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    recipe.save(str(tmp_path / "out"))
    export_for_hub(str(tmp_path / "out"), str(tmp_path / "export"))
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from tl_hub.outputs import write_json

    wider = tmp_path / "wider-vit"
    ViTForImageClassification(ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(wider)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(wider)
    info = read_json(str(tmp_path / "export" / "tl_hub.json"))
    for base, message in ((str(wider), "has shape"), (tiny_model_dir("resnet"), "does not have")):
        info["base_model"] = base  # not the base the head was trained on
        write_json(str(tmp_path / "export" / "tl_hub.json"), info)
        with pytest.raises(ModelError, match=message):
            load(str(tmp_path / "export"))


def test_model_card_carries_metrics(tiny_model_dir, tmp_path):
    from huggingface_hub import ModelCard

    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    recipe.save(str(tmp_path / "out"))
    info = export_for_hub(str(tmp_path / "out"), str(tmp_path / "export"))
    info["metrics"] = read_json(str(tmp_path / "out" / "metrics.json"))
    model_card(info, "someone/colours").save(str(tmp_path / "README.md"))
    card = ModelCard.load(str(tmp_path / "README.md"))
    index = card.data.to_dict()["model-index"]
    values = {m["type"]: m["value"] for r in index[0]["results"] for m in r["metrics"]}
    assert values["accuracy"] == pytest.approx(round(recipe.result.metrics["accuracy"], 4))
    assert "tl_hub.load(\"someone/colours\")" in card.text


def test_a_pickled_adapter_loads_only_with_allow_pickle(tiny_model_dir, tmp_path):
    """A LoRA folder whose adapter is a pickle (``adapter_model.bin``) is refused unless the caller opts in."""
    from safetensors.torch import load_file

    from tl_hub import LoRARecipe

    recipe = LoRARecipe(tiny_model_dir("vit"), epochs=1, **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    out = tmp_path / "out"
    recipe.save(str(out))
    torch.save(load_file(str(out / "adapter_model.safetensors")), out / "adapter_model.bin")
    os.remove(out / "adapter_model.safetensors")
    with pytest.raises(ModelError, match="pickle weights"):
        load(str(out))
    images = colour_dataset(6, seed=4)["image"]
    loaded = load(str(out), allow_pickle=True)
    assert torch.allclose(loaded.predict_proba(images), recipe.classifier.predict_proba(images), atol=1e-6)


@pytest.mark.parametrize("make, source, pretrained", [
    (lambda m: FeatureExtractionRecipe(m, epochs=1, **FAST), "local", True),
    (lambda m: ScratchRecipe(m, epochs=1, **FAST), "local", False),
], ids=["local-base", "scratch"])
def test_the_saved_card_is_right_for_a_local_base_and_for_scratch(tiny_model_dir, tmp_path, monkeypatch, make, source,
                                                                  pretrained):
    """A title, no link to huggingface.co for a folder, no path of the training machine, and no 'transfer' claim
    for scratch; the learning curve's title names the base without its path."""
    from huggingface_hub import ModelCard

    import tl_hub.model_folder as model_folder

    titles = []
    plot = model_folder.plot_learning_curves
    monkeypatch.setattr(model_folder, "plot_learning_curves", lambda h, p, title: titles.append(title) or plot(h, p,
                                                                                                              title))
    base = tiny_model_dir("vit")
    recipe = make(base)
    recipe.fit(colour_dataset(30), progress=False)
    recipe.save(str(tmp_path / "colours"))
    record = read_json(str(tmp_path / "colours" / "tl_hub.json"))
    assert record["base_model_source"] == source and record["pretrained"] is pretrained
    card = ModelCard.load(str(tmp_path / "colours" / "README.md"))
    assert card.text.lstrip().startswith("# colours\n")
    assert "huggingface.co//" not in card.text and base not in card.text and "base_model" not in card.data.to_dict()
    assert "a local model folder, `vit`" in card.text
    assert ("by transfer learning" in card.text) is pretrained
    assert ("from random initialisation" in card.text) is not pretrained
    assert titles and base not in titles[0] and titles[0].endswith(" on vit")


def test_the_card_of_a_hub_base_links_and_pins_it():
    from huggingface_hub import ModelCard

    info = {"base_model": "google/vit-base-patch16-224-in21k", "base_model_revision": "abc1234", "pretrained": True,
            "base_model_source": "hub", "labels": ["a", "b"], "recipe": "fine-tune",
            "metrics": {"validation": {"accuracy": 0.9, "f1": 0.9}}}
    card = ModelCard(str(model_card(info, "me/beans")))
    assert card.text.lstrip().startswith("# beans\n")
    assert ("by transfer learning from [google/vit-base-patch16-224-in21k]"
            "(https://huggingface.co/google/vit-base-patch16-224-in21k) at revision `abc1234`") in card.text
    assert card.data.to_dict()["base_model"] == "google/vit-base-patch16-224-in21k"
    scratch = ModelCard(str(model_card({**info, "pretrained": False}, "me/beans")))
    assert "from random initialisation" in scratch.text and "by transfer learning" not in scratch.text
    assert "base_model" not in scratch.data.to_dict()  # not a fine-tune of it
    old_record = {k: v for k, v in info.items() if k != "base_model_source"}  # saved before the field existed
    assert "https://huggingface.co/google/vit-base-patch16-224-in21k" in str(model_card(old_record, "me/beans"))
