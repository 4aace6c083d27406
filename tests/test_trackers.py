"""Experiment trackers through Accelerate: `report_to` / `--report-to`."""

import glob

import pytest
from support.tiny import colour_dataset

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


def test_mlflow_local_file_store(tiny_model_dir, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    store = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database unless told so
    mlflow.set_tracking_uri(store)
    recipe = tl_hub.FineTuneRecipe(tiny_model_dir("vit"), epochs=2, head_epochs=1, report_to="mlflow",
                                   logging_dir=str(tmp_path / "artifacts"), **FAST)
    result = recipe.fit(colour_dataset(30), progress=False)
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tl_hub-fine-tune")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [m.step for m in history] == [h["epoch"] for h in result.history]
    assert [m.value for m in history] == pytest.approx([h["accuracy"] for h in result.history])
    assert run.data.params["recipe"] == "fine-tune" and float(run.data.params["lr"]) == recipe.config.lr
    assert any(k.startswith("lr/head") for k in run.data.metrics)


def logged_in_wandb_file(path: str, key: str) -> list[float]:
    """The values logged under ``key`` in an offline wandb run file (``run-*.wandb``, a log of protobuf records
    where a history item is field 2 = the key, then field 16 = the value as JSON), read without wandb's
    internals, which change between releases."""
    import re

    data = open(path, "rb").read()
    name = key.encode()
    pattern = re.escape(b"\x12" + bytes([len(name)]) + name + b"\x82\x01") + rb"(.)"
    values = []
    for match in re.finditer(pattern, data, flags=re.DOTALL):
        size = match.group(1)[0]
        values.append(float(data[match.end():match.end() + size]))
    return values


def test_wandb_offline_run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = tl_hub.FineTuneRecipe(tiny_model_dir("vit"), epochs=2, head_epochs=1, report_to="wandb", **FAST)
    result = recipe.fit(colour_dataset(30), progress=False)
    # the run is finished, but wandb's service process writes the run file on its own schedule (a suite run once
    # read it before the history reached it): wandb.teardown waits for the service to end, so the file is complete
    import wandb

    wandb.teardown()
    (run_file,) = glob.glob(f"{tmp_path}/wandb/offline-run-*/run-*.wandb")
    # each log is written as a history record and as the run's summary, so every value appears (at least) once
    for key in ("accuracy", "train_loss", "loss"):
        logged = logged_in_wandb_file(run_file, key)
        assert all(any(v == pytest.approx(h[key]) for v in logged) for h in result.history), (key, logged)
    assert logged_in_wandb_file(run_file, "lr/head/decay")  # the fine-tune epoch's learning rates
    assert b"fine-tune" in open(run_file, "rb").read()  # the run's settings (its config)
