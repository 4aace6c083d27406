"""Streamed data (`tl_hub.streaming`): recipes fit on parquet streams as on the same data in memory, the limits are
errors that say what to do, each process reads its own part, and two processes give the one-process metrics."""

import json
import logging
import os
import shutil
import sys

import datasets
import pytest
import torch
from support.launch import accelerate_launch, launch_env, run
from support.tiny import COLOURS, colour_dataset

import tl_hub
from tl_hub import ConfigError, DataError, FeatureExtractionRecipe, FineTuneRecipe, TrainingConfig
from tl_hub.streaming import (
    StreamImages,
    StreamLoader,
    TrainStreamLoader,
    check_not_sharded,
    content_key,
    node_stream,
    prepare_stream,
    stream_length,
    train_batches,
    undecoded,
)

SCRIPT = os.path.join(os.path.dirname(__file__), "support", "scripts", "dist_stream.py")
FAST = dict(eval_batch_size=32, seed=0, checkpoint_dir=None)


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s after each pass over interleaved parquet shards (a pyarrow thread-shutdown workaround):
    harmless on data large enough to stream, minutes over these tests' many tiny passes."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def write_shards(folder, split: str, sizes, seed: int, corrupt: int = 0) -> list[str]:
    """Parquet files ``<split>-<k>.parquet`` of ``sizes`` colour images (ClassLabel labels); ``corrupt`` undecodable
    images are added to the first file."""
    data = colour_dataset(sum(sizes), seed=seed)
    os.makedirs(folder, exist_ok=True)
    paths, start = [], 0
    for k, n in enumerate(sizes):
        shard = data.select(range(start, start + n))
        if k == 0 and corrupt:
            bad = datasets.Dataset.from_dict({"image": [{"bytes": b"not an image %d" % i, "path": None}
                                                        for i in range(corrupt)], "label": [0] * corrupt},
                                             features=data.features)
            shard = datasets.concatenate_datasets([shard, bad])
        paths.append(os.path.join(folder, f"{split}-{k}.parquet"))
        shard.to_parquet(paths[-1])
        start += n
    return paths


def stream(files, split: str = "train"):
    return datasets.load_dataset("parquet", data_files={split: files}, streaming=True)[split]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 training images in two files, 21 validation images in two uneven files (13 + 8)."""
    root = tmp_path_factory.mktemp("streams")
    return {"train": write_shards(root, "train", [24, 24], seed=1),
            "validation": write_shards(root, "validation", [13, 8], seed=2), "root": root}


def streams(shards):
    return datasets.load_dataset("parquet", data_files={s: shards[s] for s in ("train", "validation")},
                                 streaming=True)


def test_feature_extraction_on_a_stream_matches_the_same_data_in_memory(tiny_model_dir, shards):
    """One full batch per epoch: the same examples in every step whatever the order, so a stream that lost, repeated
    or mislabelled examples, or preprocessed them otherwise, would give other numbers."""
    settings = dict(epochs=4, lr=5e-2, batch_size=48, augment=False, head_solver="adamw", feature_cache="off", **FAST)
    in_memory = FeatureExtractionRecipe(tiny_model_dir("vit"), **settings).fit(
        colour_dataset(48, seed=1), colour_dataset(21, seed=2), progress=False)
    streamed = FeatureExtractionRecipe(tiny_model_dir("vit"), **settings).fit(streams(shards), progress=False)
    # two worker processes decode the images, each reading one of the two training files
    workers = FeatureExtractionRecipe(tiny_model_dir("vit"), num_workers=2, **settings).fit(streams(shards),
                                                                                           progress=False)
    assert [h["period"] for h in streamed.history] == ["head"] * 4
    for h1, h2, h3 in zip(in_memory.history, streamed.history, workers.history, strict=True):
        for key in ("train_loss", "loss", "accuracy", "f1"):
            assert h2[key] == pytest.approx(h1[key], abs=1e-4), (key, h1["epoch"])
            assert h3[key] == pytest.approx(h1[key], abs=1e-4), (key, h1["epoch"])
    assert streamed.history[-1]["train_loss"] < streamed.history[0]["train_loss"] - 0.1  # it learned
    assert "train 48 streamed (parquet metadata)" in streamed.data_summary


def test_fine_tune_on_a_stream_learns_and_skips_a_corrupt_image(tiny_model_dir, tmp_path, caplog):
    files = write_shards(tmp_path / "data", "train", [30, 30], seed=3, corrupt=1)
    val = colour_dataset(21, seed=4)  # an in-memory validation set next to a stream is streamed too
    recipe = FineTuneRecipe(tiny_model_dir("vit"), head_epochs=1, epochs=3, lr=1e-2, batch_size=16, augment=True,
                            **FAST)
    with caplog.at_level(logging.INFO):
        result = recipe.fit(stream(files), val, progress=False)
    assert [h["period"] for h in result.history] == ["head", "fine-tune", "fine-tune"]
    assert result.metrics["accuracy"] >= 0.9, result.history  # chance is 1/3
    assert recipe.result.run.data.skipped == 1 and recipe.info()["skipped_images"] == 1
    assert "train 61 streamed" in result.data_summary and "1 undecodable" in result.data_summary
    assert "could not be decoded" in caplog.text
    assert "feature_cache='disk' becomes 'off'" in caplog.text
    assert recipe.result.config.feature_cache == "off" and recipe.config.feature_cache == "disk"
    recipe.save(str(tmp_path / "out"))
    images = [colour_dataset(3, seed=5)[i]["image"] for i in range(3)]
    assert tl_hub.load(str(tmp_path / "out")).predict(images) == recipe.predict(images)


def test_a_stream_without_validation_split_is_an_error(tiny_model_dir, shards):
    with pytest.raises(DataError, match="needs a validation split.*pass validation="):
        FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST).fit(stream(shards["train"]), progress=False)


def test_a_label_column_that_is_not_a_class_label_is_an_error(tiny_model_dir, shards):
    plain = stream(shards["train"]).cast_column("label", datasets.Value("int64"))
    with pytest.raises(DataError, match=r"not a ClassLabel.*cast_column\('label', datasets.ClassLabel"):
        FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST).fit(
            plain, stream(shards["validation"], "validation"), progress=False)


def test_an_unknown_length_is_an_error_that_train_examples_fixes(tiny_model_dir, shards):
    filtered = stream(shards["train"]).filter(lambda example: example["label"] != 2)  # 32 examples, nowhere recorded
    val = stream(shards["validation"], "validation")
    with pytest.raises(DataError, match=r"length of the streamed training data is unknown.*train_examples=N"):
        FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, **FAST).fit(filtered, val, progress=False)
    data = prepare_stream(filtered, val, TrainingConfig(train_examples=32))
    assert (data.train_examples, data.length_from) == (32, "train_examples")


def test_where_the_length_comes_from(shards):
    plain = stream(shards["train"])
    assert stream_length(plain) == (48, "parquet metadata")
    assert stream_length(plain.reshard()) == (48, "parquet metadata")  # by row group
    assert stream_length(plain.select_columns(["image", "label"]).rename_column("label", "y")) == (48, "parquet "
                                                                                                 "metadata")
    assert stream_length(plain, given=10) == (10, "train_examples")
    with pytest.raises(DataError, match="unknown"):
        stream_length(plain.take(10))  # 10 of them: not what the files hold

    def examples():
        yield from colour_dataset(6, seed=0)

    generated = datasets.IterableDataset.from_generator(examples, features=colour_dataset(1).features,
                                                        split=datasets.NamedSplit("train"))
    with pytest.raises(DataError, match="unknown"):
        stream_length(generated)
    generated.info.splits = datasets.SplitDict()
    generated.info.splits.add(datasets.SplitInfo(name="train", num_examples=6))
    assert stream_length(generated) == (6, "split info")


def test_a_streamed_run_resumes_from_an_epoch_checkpoint(tiny_model_dir, shards, tmp_path):
    """Epoch 2 of a run resumed from its epoch-1 checkpoint equals the uninterrupted epoch 2 (augmentation on: the
    stream's order and crops are a function of seed and epoch); a checkpoint of other streamed data is refused."""
    settings = dict(epochs=2, lr=5e-2, batch_size=16, augment=True, eval_batch_size=32, seed=0)
    whole = FeatureExtractionRecipe(tiny_model_dir("vit"), checkpoint_dir=str(tmp_path / "ck"), **settings).fit(
        streams(shards), progress=False)
    assert sorted(os.listdir(tmp_path / "ck")) == ["checkpoint-3", "checkpoint-6"]  # 48 images, batch 16
    shutil.copytree(tmp_path / "ck" / "checkpoint-3", tmp_path / "ck2" / "checkpoint-3")
    resumed = FeatureExtractionRecipe(tiny_model_dir("vit"), checkpoint_dir=str(tmp_path / "ck2"), **settings).fit(
        streams(shards), progress=False, resume_from_checkpoint="latest")
    for key in ("train_loss", "loss", "accuracy"):
        assert resumed.history[1][key] == pytest.approx(whole.history[1][key], abs=1e-6), key
    other = datasets.IterableDatasetDict({"train": stream(shards["validation"]),
                                          "validation": stream(shards["validation"], "validation")})
    with pytest.raises(ConfigError, match="different run.*data.train"):
        FeatureExtractionRecipe(tiny_model_dir("vit"), checkpoint_dir=str(tmp_path / "ck"), **settings).fit(
            other, progress=False, resume_from_checkpoint=str(tmp_path / "ck" / "checkpoint-3"))


def test_save_steps_with_a_stream_is_an_error(shards):
    with pytest.raises(ConfigError, match="save_steps=0"):
        prepare_stream(streams(shards), None, TrainingConfig(save_steps=10))


def test_weights_sharded_across_processes_are_refused():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    def accelerator(kind, stage=None):
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(
            deepspeed_plugin=SimpleNamespace(zero_stage=stage) if stage else None))

    for refused in (accelerator(DistributedType.FSDP), accelerator(DistributedType.DEEPSPEED, 3)):
        with pytest.raises(ConfigError, match="FSDP, DeepSpeed ZeRO-3.*Use DDP"):
            check_not_sharded(refused)
    for allowed in (accelerator(DistributedType.MULTI_CPU), accelerator(DistributedType.DEEPSPEED, 2),
                    accelerator(DistributedType.NO)):
        check_not_sharded(allowed)


def test_validation_labels_are_mapped_onto_the_training_labels(shards):
    reordered = datasets.ClassLabel(names=list(reversed(COLOURS)))
    features = datasets.Features({"image": datasets.Image(), "label": reordered})
    val = stream(shards["validation"], "validation").map(lambda e: {"label": 2 - e["label"]}, features=features)
    data = prepare_stream(stream(shards["train"]), val, TrainingConfig())
    assert data.label_map == [2, 1, 0]
    other = val.cast_column("label", datasets.ClassLabel(names=["cat", "dog", "blue"]))
    with pytest.raises(DataError, match=r"\['cat', 'dog'\] are not among"):
        prepare_stream(stream(shards["train"]), other, TrainingConfig())


def part_keys(ds, rank, world, epoch=0, seed=0):
    images = StreamImages(node_stream(undecoded(ds, "image", "label"), rank, world, seed=seed), "image", "label")
    images.start(epoch)
    return [key for _, _, key in images]


@pytest.mark.parametrize("sizes", [[24, 24], [20, 10, 18]], ids=["by-shard", "by-example"])
def test_each_process_reads_its_own_part_and_together_all(tmp_path, sizes):
    ds = stream(write_shards(tmp_path, "train", sizes, seed=6))
    everything = sorted(part_keys(ds, 0, 1))
    assert len(set(everything)) == sum(sizes)
    for epoch in (0, 1, 2):
        parts = [part_keys(ds, rank, 2, epoch) for rank in (0, 1)]
        assert not set(parts[0]) & set(parts[1]), epoch
        assert sorted(parts[0] + parts[1]) == everything, epoch
    assert part_keys(ds, 0, 1, epoch=1) == part_keys(ds, 0, 1, epoch=1)  # deterministic for a seed and epoch
    assert part_keys(ds, 0, 1, epoch=1) != part_keys(ds, 0, 1, epoch=0)  # reshuffled per epoch
    assert part_keys(ds, 0, 1, epoch=1, seed=1) != part_keys(ds, 0, 1, epoch=1)


def collate_labels(items):
    return {"labels": torch.tensor([label for _, label in items])}


def test_uneven_parts_give_every_process_the_same_number_of_batches(tmp_path):
    """20 + 6 examples over two processes at a global batch of 8: 4 batches of 4 on each, the short part going on
    with its next pass; the evaluation loaders read each part once."""
    ds = undecoded(stream(write_shards(tmp_path, "train", [20, 6], seed=7)), "image", "label")
    batches = train_batches(26, 1, 8)
    assert batches == 4 and train_batches(26, 2, 8, accumulation=3) == 9
    seen = []
    for rank in (0, 1):
        images = StreamImages(node_stream(ds, rank, 2, seed=0), "image", "label")
        loader = TrainStreamLoader(images, collate_labels, 4, batches)
        loader.set_epoch(1)
        sizes = [len(b["labels"]) for b in loader]
        assert sizes == [4] * 4 and len(loader) == 4
        seen.append(sum(len(b["labels"]) for b in StreamLoader(StreamImages(node_stream(ds, rank, 2), "image",
                                                                            "label"), collate_labels, 3)))
    assert sorted(seen) == [6, 20]


def test_augmentation_depends_on_the_example_not_its_position(tmp_path):
    ds = undecoded(stream(write_shards(tmp_path, "train", [6], seed=8)), "image", "label")
    crops = {}
    for seed in (0, 1):  # two shuffle orders of the same examples
        images = StreamImages(node_stream(ds, 0, 1, seed=seed), "image", "label", augment=True, seed=0)
        images.start(2)
        crops[seed] = {key: image.tobytes() for image, _, key in images}
    assert crops[0] == crops[1]
    images = StreamImages(node_stream(ds, 0, 1, seed=0), "image", "label", augment=True, seed=0)
    images.start(3)
    assert {key: image.tobytes() for image, _, key in images} != crops[0]  # another epoch, other crops
    assert content_key({"bytes": b"x", "path": "a"}) == content_key(b"x") != content_key(b"y")




@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    """Two real processes (gloo on CPU) on parquet streams: each reads its own training part (one file each) and
    its uneven validation part (9 vs 4 images), and the per-epoch metrics equal one process's in float64."""
    data = tmp_path / "data"
    write_shards(data, "train", [12, 12], seed=1)
    write_shards(data, "validation", [9, 4], seed=2)
    model_dir = tiny_model_dir("vit")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run([sys.executable, SCRIPT, model_dir, str(data), str(tmp_path / "single")], env)
    run(accelerate_launch(SCRIPT, model_dir, str(data), str(tmp_path / "double")), launch_env())
    one = json.load(open(tmp_path / "single.rank0"))
    ranks = [json.load(open(tmp_path / f"double.rank{r}")) for r in (0, 1)]
    assert one["world_size"] == 1
    assert [r["world_size"] for r in ranks] == [2, 2], "accelerate did not start two processes"
    for split, sizes in (("train", [12, 12]), ("validation", [4, 9])):
        assert sorted(len(r["parts"][split]) for r in ranks) == sizes
        assert sorted(ranks[0]["parts"][split] + ranks[1]["parts"][split]) == sorted(one["parts"][split])
    assert [h["period"] for h in one["history"]] == ["head", "fine-tune", "fine-tune"]
    worst = 0.0
    for rank in ranks:
        for h1, h2 in zip(one["history"], rank["history"], strict=True):
            for key in ("train_loss", "loss", "accuracy", "f1"):
                assert h2[key] == pytest.approx(h1[key], abs=1e-6), (key, h1["epoch"])
                worst = max(worst, abs(h2[key] - h1[key]))
    assert one["history"][-1]["train_loss"] < one["history"][0]["train_loss"]
    print(f"largest 1- vs 2-process difference in any per-epoch metric: {worst:.2g}")


def test_a_trained_model_evaluates_a_stream_as_the_same_data_in_memory(tiny_model_dir, tmp_path):
    """``Classifier.evaluate`` (and ``Recipe.evaluate``) on a parquet stream, its test split by default: the metrics
    of the same images in memory; label names in another order are mapped by name."""
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), epochs=1, feature_cache="memory", **FAST)
    recipe.fit(colour_dataset(30), progress=False)
    paths = write_shards(tmp_path / "test", "test", [7, 6], seed=4)
    in_memory = recipe.evaluate(datasets.load_dataset("parquet", data_files=paths, split="train"))
    streams = datasets.load_dataset("parquet", data_files={"train": paths, "test": paths}, streaming=True)
    for streamed in (recipe.evaluate(streams), recipe.classifier.evaluate(streams["test"], batch_size=4)):
        assert streamed["accuracy"] == in_memory["accuracy"]
        assert streamed["loss"] == pytest.approx(in_memory["loss"], abs=1e-6)
    names = list(reversed(COLOURS))
    features = streams["test"].features.copy()
    features["label"] = datasets.ClassLabel(names=names)
    renamed = streams["test"].map(lambda row: {"label": names.index(COLOURS[row["label"]])}, features=features)
    assert recipe.evaluate(renamed)["accuracy"] == in_memory["accuracy"]
