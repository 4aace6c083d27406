"""Experiment trackers through Accelerate: `report_to` / `--report-to`."""

import glob

import pytest
from conftest import colour_dataset

import tl_hub
from tl_hub.errors import ConfigError

FAST = dict(batch_size=8, eval_batch_size=16, seed=0, checkpoint_dir=None)


def read_scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(f"{folder}/**/events.out.tfevents.*", recursive=True)
    assert files, f"no TensorBoard event file under {folder}"
    scalars = {}
    for path in files:
        events = EventAccumulator(path)
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in events.Scalars(tag)]
    return scalars


def test_tensorboard_gets_every_epoch_metrics_lrs_and_throughput(tiny_model_dir, tmp_path):
    recipe = tl_hub.FineTuneRecipe(tiny_model_dir("vit"), epochs=3, head_epochs=1, report_to="tensorboard",
                                   logging_dir=str(tmp_path / "tb"), **FAST)
    result = recipe.fit(colour_dataset(30), progress=False)
    scalars = read_scalars(tmp_path / "tb")
    epochs = [h["epoch"] for h in result.history]
    for tag in ("accuracy", "loss", "f1", "train_loss", "seconds"):
        assert [step for step, _ in scalars[tag]] == epochs, tag
    assert [v for _, v in scalars["accuracy"]] == pytest.approx([h["accuracy"] for h in result.history])
    # the fine-tune epochs log each group's learning rate: the head's above the encoder's
    lrs = {tag: values for tag, values in scalars.items() if tag.startswith("lr/")}
    assert any(t.startswith("lr/head") for t in lrs) and any(t.startswith("lr/block") for t in lrs)
    head = max(v for t, vals in lrs.items() if t.startswith("lr/head") for _, v in vals)
    encoder = max(v for t, vals in lrs.items() if t.startswith("lr/block") for _, v in vals)
    assert encoder < head
    assert "train_images_per_second" in scalars


def test_no_tracker_by_default_and_clear_errors(tiny_model_dir, monkeypatch):
    assert tl_hub.FineTuneRecipe(tiny_model_dir("vit")).config.report_to == "none"
    with pytest.raises(ConfigError, match="report_to"):
        tl_hub.FineTuneRecipe(tiny_model_dir("vit"), report_to="comet")
    # a tracker that is not installed is an error, not silently dropped as Accelerate would
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    recipe = tl_hub.FeatureExtractionRecipe(tiny_model_dir("vit"), report_to="tensorboard", **FAST)
    with pytest.raises(ConfigError, match="tensorboard is not installed"):
        recipe.fit(colour_dataset(12), progress=False)
