"""Streamed data: train and evaluate on a ``datasets.IterableDataset`` larger than the machine.

`Recipe.fit` takes a streamed ``IterableDataset`` or ``IterableDatasetDict`` for ``train`` and ``validation``
(``load_dataset("parquet", data_files=..., streaming=True)``, local WebDataset shards, a Hub dataset with
``streaming=True``; an in-memory ``Dataset`` next to a stream is streamed too).  No example is read before training.

- **Sharding.** Each process reads only its own part of the stream (`datasets.distributed.split_dataset_by_node`:
  whole shards when their number divides by the number of processes, else every N-th example).  The loaders
  are not ``DataLoader`` objects, so ``accelerator.prepare`` returns them as they are instead of dispatching
  batches from the main process or re-sharding them; they move each batch to the device themselves.
- **Epochs.** An epoch is ``ceil(examples x passes / batch_size)`` batches (rounded up to whole optimizer steps
  under gradient accumulation) on *every* process, each of ``batch_size / processes`` examples: a process whose
  part ends early starts its next (reshuffled) pass, one with more stops there.  So every process makes the same
  optimizer steps (uneven parts would hang DDP).  The stream is shuffled with ``ds.shuffle(seed, buffer_size=
  shuffle_buffer_size)`` and reshuffled per epoch and pass with ``set_epoch``: the same order for the same seed.
  (``datasets`` pauses 5 s after each pass over interleaved parquet shards, a pyarrow workaround: noticeable only
  on streams small enough to keep in memory, which are better passed as a ``Dataset``.)
- **Images** go through what map-style data gets (`tl_hub.data`): RGB conversion, the training augmentation and
  the model's image processor, batch-wise.  The augmentation is drawn per ``(seed, epoch, pass, example)``,
  where an example is known by a digest of its encoded bytes (a stream has no stable index), so it is the same
  whatever the number of processes, workers or the shuffle order.  Images that do not decode, and examples
  without a label, are skipped and counted (one warning; ``skipped_images`` in ``tl_hub.json`` counts those the
  main process met).
- **Evaluation.** Each process evaluates its part of the validation stream to its end; predictions, labels and
  losses are gathered once at the end, so no example is lost or counted twice however uneven the parts.
- **Feature cache.** Not used: the frozen encoder runs on every batch (``feature_cache`` is set to ``"off"``,
  logged once), so head-only periods train by AdamW, never by the L-BFGS solve.

Limits, each an error that says what to do:

- a validation split is required (the ``validation`` argument, or a ``validation`` split of the dict): a
  stratified hold-out cannot be drawn from a stream;
- the label column must be a ``ClassLabel`` (the label names cannot be collected without reading the whole
  stream): ``ds = ds.cast_column("label", datasets.ClassLabel(names=[...]))``;
- the training length must be known: it is read from parquet metadata (plain parquet files, no filter or
  ``take``) or the dataset's split info; otherwise pass ``train_examples=N`` (which also makes shorter epochs of
  a longer stream);
- checkpoints are written at epoch ends only (``save_steps=0``): a stream cannot skip to a batch;
- no weights sharded across processes (FSDP, DeepSpeed ZeRO-3): each process evaluates its part alone;
- a stream's ``test`` split is not evaluated by ``fit``.

Example:
    >>> data = load_dataset("parquet", data_files={"train": "train-*.parquet",
    ...                                             "validation": "val-*.parquet"}, streaming=True)
    >>> FineTuneRecipe("google/vit-base-patch16-224-in21k", epochs=3).fit(data)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from .data import (
    VALIDATION_SPLIT_NAMES,
    ImageCollator,
    PreparedData,
    augment_image,
    find_image_column,
    find_label_column,
    load_source,
    make_loader,
    to_rgb,
)
from .errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# steps of a datasets stream that keep every example, one for one: the length of the files below them holds
COUNT_KEEPING = ("SelectColumnsIterable", "FormattedExamplesIterable", "RebatchedArrowExamplesIterable",
                 "BufferShuffledExamplesIterable", "InterleavedShardsExamplesIterable")


def is_stream(data: Any) -> bool:
    """Whether ``data`` is a streamed ``datasets.IterableDataset`` or ``IterableDatasetDict``."""
    import datasets

    return isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict))


# ---------------------------------------------------------------------------------------------------------------------
# Splits, labels and length


@dataclass
class StreamData(PreparedData):
    """`tl_hub.data.PreparedData` over streams: ``train`` and ``validation`` are ``IterableDataset`` objects (image
    column not decoded), with the training length and where it came from."""

    train_examples: int = 0
    length_from: str = ""
    validation_examples: Optional[int] = None
    label_map: Optional[list[int]] = None  # validation label id -> training label id, when their names differ
    bad_keys: set = field(default_factory=set)

    def train_size(self) -> int:
        return self.train_examples

    def validation_size(self) -> Optional[int]:
        return self.validation_examples

    def summary(self) -> str:
        val = f" {self.validation_examples}" if self.validation_examples is not None else ""
        skipped = f"; {self.skipped} undecodable or unlabelled images skipped" if self.skipped else ""
        return (f"{len(self.labels)} classes; train {self.train_examples} streamed ({self.length_from}), "
                f"validation{val} streamed{skipped}")

    def note_skipped(self, key: int) -> None:
        """Count an example that was skipped (its image does not decode, or it has no label); warn the first time."""
        if not self.bad_keys:
            logger.warning("A streamed image could not be decoded (corrupt or not an image) or has no label: it is "
                           "skipped, as are the others, and counted (skipped_images in tl_hub.json).")
        self.bad_keys.add(key)
        self.skipped = len(self.bad_keys)

    def fingerprints(self) -> dict:
        """What identifies the streams of this run (recorded in checkpoints; see `stream_fingerprint`)."""
        return {"train": stream_fingerprint(self.train, self.train_examples),
                "validation": stream_fingerprint(self.validation, self.validation_examples)}


def prepare_stream(train: Any, validation: Any, config) -> StreamData:
    """Streamed training and validation data with their label names and the training length.

    Args:
        train: an ``IterableDataset`` or ``IterableDatasetDict`` (its ``validation`` split is used), or anything
            `tl_hub.data.load_source` takes (then streamed from memory).
        validation: the same kinds; required unless ``train`` has a validation split.
        config: a `tl_hub.config.TrainingConfig` (columns, ``train_examples``, ``save_steps``).

    Raises:
        DataError: no validation split, a label column that is not a ``ClassLabel``, an unknown length, unknown
            columns.
        ConfigError: ``save_steps`` (mid-epoch checkpoints) with a stream.
    """
    if config.save_steps:
        raise ConfigError(f"save_steps={config.save_steps} checkpoints within epochs, which a stream cannot resume "
                          "(it cannot skip to a batch); streamed runs checkpoint at epoch ends: pass save_steps=0.")
    (train_ds, known), val_split = stream_splits(train, "training")
    if validation is not None:
        val_split, _ = stream_splits(validation, "validation")
    if val_split is None:
        raise DataError("Streamed training data needs a validation split (a stratified hold-out cannot be drawn "
                        "from a stream): pass validation=... (a stream or a dataset), or an IterableDatasetDict "
                        "with a 'validation' split.")
    img = find_image_column(train_ds, config.image_column)
    lbl = find_label_column(train_ds, config.label_column, img)
    labels = class_names(train_ds, lbl, "training")
    label_map = validation_label_map(val_split[0], img, lbl, labels)
    examples, length_from = stream_length(train_ds, config.train_examples, known)
    return StreamData(undecoded(train_ds, img, lbl), undecoded(val_split[0], img, lbl), None, labels, img, lbl,
                      train_examples=examples, length_from=length_from, validation_examples=val_split[1],
                      label_map=label_map)


def stream_splits(source: Any, what: str):
    """``((main split, known length), (validation split, known length) or None)`` of ``source``, as streams."""
    import datasets

    if not is_stream(source):
        source = load_source(source)
    if not isinstance(source, (datasets.IterableDatasetDict, datasets.DatasetDict)):
        return as_stream(source, what), None
    if not source:
        raise DataError(f"The {what} dataset has no splits.")
    main = "train" if "train" in source else next(iter(source))
    val = next((n for n in VALIDATION_SPLIT_NAMES if n in source and n != main), None)
    if "test" in source and main != "test":
        logger.info("The streamed dataset's test split is not evaluated by fit; evaluate the saved model on it.")
    return as_stream(source[main], what), as_stream(source[val], "validation") if val else None


def as_stream(ds, what: str):
    """``(stream, known length or None)``: an in-memory ``Dataset`` is streamed from memory (its length known)."""
    import datasets

    if isinstance(ds, datasets.Dataset):
        if len(ds) == 0:
            raise DataError(f"The {what} split is empty.")
        return ds.to_iterable_dataset(), len(ds)
    if ds.features is None:
        raise DataError(f"The columns of the streamed {what} data are unknown (e.g. after .map()); pass "
                        "features=... to map, or cast the columns, so that the image and label columns are known.")
    if getattr(ds, "_distributed", None) is not None:  # set by split_dataset_by_node
        raise DataError(f"The streamed {what} data is already split by node; pass the whole stream, tl-hub gives "
                        "each process its part.")
    return ds, None


def class_names(ds, column: str, what: str) -> list[str]:
    """The label names of a stream's ``ClassLabel`` column (a stream cannot be scanned for its labels)."""
    from datasets import ClassLabel

    feature = ds.features[column]
    if isinstance(getattr(feature, "feature", None), ClassLabel):  # Sequence(ClassLabel): a set of labels per image
        raise DataError(
            f"The label column '{column}' of the streamed {what} data holds a set of labels per image (multi-label); "
            "streamed data is single-label only, because a multi-label model's decision thresholds are chosen on the "
            "whole validation split. Load the data as a datasets.Dataset (not streaming) to train multi-label.")
    if not isinstance(feature, ClassLabel):
        raise DataError(
            f"The label column '{column}' of the streamed {what} data is {feature!r}, not a ClassLabel: the label "
            "names cannot be collected from a stream without reading all of it. Cast it first: "
            f"ds = ds.cast_column('{column}', datasets.ClassLabel(names=[...])) (integer labels are ids into the "
            "names, string labels become their ids)."
        )
    if len(feature.names) < 2:
        raise DataError(f"The label column '{column}' has {len(feature.names)} class(es); a classifier needs two.")
    return [str(n) for n in feature.names]


def validation_label_map(ds, image_column: str, label_column: str, labels: list[str]) -> Optional[list[int]]:
    """None if the validation stream has the training label names; else its ids mapped to the training ids."""
    for column in (image_column, label_column):
        if column not in ds.column_names:
            raise DataError(f"The streamed validation data has no column '{column}' (its columns: "
                            f"{ds.column_names}).")
    names = class_names(ds, label_column, "validation")
    if names == labels:
        return None
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise DataError(f"Validation labels {unknown[:5]} are not among the {len(labels)} training labels "
                        f"{labels[:10]}; validate on data with the same label set.")
    return [labels.index(n) for n in names]


def undecoded(ds, image_column: str, label_column: str):
    """The two columns, images left encoded (decoded, converted and checked per example by `StreamImages`)."""
    from datasets import Image as ImageFeature

    ds = ds.select_columns([image_column, label_column])
    if isinstance(ds.features[image_column], ImageFeature):
        ds = ds.cast_column(image_column, ImageFeature(decode=False))
    return ds


def unfiltered_source(ds):
    """The innermost examples iterable of a stream if every step above it keeps each example (no filter, take, skip
    or batched map), else None.  Reads the stream's internals; any change there gives None (length unknown)."""
    it = getattr(ds, "_ex_iterable", None)
    while it is not None and hasattr(it, "ex_iterable"):
        name = type(it).__name__
        if name not in COUNT_KEEPING and not (name == "MappedExamplesIterable" and not it.batched):
            return None
        it = it.ex_iterable
    return it


def parquet_rows(source) -> Optional[int]:
    """The rows of the parquet files (or row groups) under a stream's source, from their metadata; None if the
    source is not plain parquet files (or a filter applies, or the metadata cannot be read)."""
    builder = getattr(getattr(source, "generate_tables_fn", None), "__self__", None)
    files = (getattr(source, "kwargs", None) or {}).get("files")
    if type(builder).__name__ != "Parquet" or getattr(builder.config, "filters", None) is not None or not files:
        return None
    import fsspec
    import pyarrow.parquet as pq

    groups = source.kwargs.get("row_groups_list") or [None] * len(files)
    total = 0
    try:
        for path, row_groups in zip(files, groups):
            with fsspec.open(path, "rb") as f:
                meta = pq.read_metadata(f)
            total += meta.num_rows if row_groups is None else sum(meta.row_group(i).num_rows for i in row_groups)
    except Exception as e:  # remote file systems raise many types
        logger.info("Could not read the parquet metadata of %s: %s", files[:1], e)
        return None
    return total


def stream_length(ds, given: Optional[int] = None, known: Optional[int] = None) -> tuple[int, str]:
    """``(examples, where the number comes from)`` of a training stream: ``given`` (``train_examples``), else its
    known length, parquet metadata or its split info.

    Raises:
        DataError: none of them; the message asks for ``train_examples``.
    """
    if given:
        return given, "train_examples"
    if known:
        return known, "in memory"
    source = unfiltered_source(ds)
    rows = parquet_rows(source) if source is not None else None
    if rows:
        return rows, "parquet metadata"
    splits = ds.info.splits if source is not None else None
    info = splits.get(str(ds.split)) if splits and ds.split is not None else None
    if info is not None and info.num_examples:
        return info.num_examples, "split info"
    raise DataError(
        "The length of the streamed training data is unknown (no split info, not plain parquet files, or filtered), "
        "and every process must know how many batches an epoch has (uneven shards would hang distributed "
        "training). Pass train_examples=N (--train-examples), the number of training examples in one epoch."
    )


def stream_fingerprint(ds, examples: Optional[int]) -> str:
    """What identifies a stream for a resumed run: its builder, config, split, features, shards, the steps on it,
    its data files (with size and modification time when local) and its length."""
    source = unfiltered_source(ds)
    files = list((getattr(source, "kwargs", None) or {}).get("files") or [])
    stats = [(f, os.path.getsize(f), os.path.getmtime(f)) if os.path.isfile(f) else f for f in files]
    chain, it = [], getattr(ds, "_ex_iterable", None)
    while it is not None:
        chain.append(type(it).__name__)
        it = getattr(it, "ex_iterable", None)
    parts = [ds.info.builder_name, ds.info.config_name, str(ds.split), ds.features.to_dict(), ds.num_shards, chain,
             stats, examples]
    return "stream:" + hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# One process's examples


def node_stream(ds, rank: int, world_size: int, *, seed: Optional[int] = None, buffer_size: int = 1000):
    """This process's part of ``ds`` (`datasets.distributed.split_dataset_by_node`), shuffled first when ``seed``
    is given: every process shuffles the shards alike, so the parts are disjoint and cover the stream each epoch."""
    from datasets.distributed import split_dataset_by_node

    if seed is not None:
        ds = ds.shuffle(seed=seed, buffer_size=buffer_size)
    return split_dataset_by_node(ds, rank=rank, world_size=world_size)


def pass_number(epoch: int, pass_index: int) -> int:
    """One number per ``(epoch, pass)`` (Cantor pairing), the stream's ``set_epoch``: each pass is reshuffled."""
    return (epoch + pass_index) * (epoch + pass_index + 1) // 2 + pass_index


def content_key(value: Any) -> int:
    """A 64-bit digest of an encoded image (bytes, or its path without them): the example's identity."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (Image.Image, np.ndarray)):
        value = value.tobytes()
    data = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else str(value).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def decode_image(value: Any) -> Image.Image:
    """An encoded image as an RGB PIL image, fully decoded (a damaged file fails here, not in the processor)."""
    if isinstance(value, dict):
        from datasets import Image as ImageFeature

        value = ImageFeature().decode_example(value)
    image = to_rgb(value)
    image.load()
    return image


class StreamImages(torch.utils.data.IterableDataset):
    """One process's part of a stream as ``(image, label, key)``: RGB, augmented as map-style training data (see
    `tl_hub.data.augment_image`) from a generator drawn per ``(seed, epoch, pass, key)``; ``image`` is None for an
    image that does not decode or an example without a label (the loader counts them)."""

    def __init__(self, stream, image_column: str, label_column: str, *, augment: bool = False, hflip: bool = False,
                 crop_scale: float = 0.6, seed: int = 0, label_map: Optional[list[int]] = None):
        super().__init__()
        self.stream, self.image_column, self.label_column = stream, image_column, label_column
        self.augment, self.hflip, self.crop_scale = augment, hflip, crop_scale
        self.seed, self.label_map = seed, label_map
        self.epoch = self.pass_index = 0

    def start(self, epoch: int, pass_index: int = 0) -> None:
        """Set the epoch and pass that the next iteration reads (its order and its augmentation)."""
        self.epoch, self.pass_index = epoch, pass_index
        self.stream.set_epoch(pass_number(epoch, pass_index))

    def __iter__(self):
        for row in self.stream:
            yield self.item(row[self.image_column], row[self.label_column])

    def item(self, value: Any, label: Any) -> tuple[Optional[Image.Image], int, int]:
        key = content_key(value)
        if label is None or int(label) < 0:
            return None, -1, key
        try:
            image = decode_image(value)
            if self.augment:
                rng = random.Random(hash((self.seed, self.epoch, self.pass_index, key)))
                image = augment_image(image, rng, crop_scale=self.crop_scale, hflip=self.hflip)
        except Exception:  # PIL raises many types for damaged files
            return None, -1, key
        return image, self.label_map[int(label)] if self.label_map else int(label), key


def unchanged(item):
    """The collate function of a loader that yields examples one by one."""
    return item


# ---------------------------------------------------------------------------------------------------------------------
# Loaders


class StreamLoader:
    """Batches of ``batch_size`` examples of one process's part of a stream, preprocessed by ``collate`` and moved
    to ``device``; one pass, the last batch partial (evaluation).

    Not a ``DataLoader``: ``accelerator.prepare`` returns it as it is (it would dispatch an iterable loader's
    batches from the main process, or re-shard it).  Decoding and augmentation run in ``num_workers`` worker
    processes (each reads its own shards of the part), preprocessing in this process.
    """

    def __init__(self, images: StreamImages, collate: Callable, batch_size: int, *, device=None, num_workers: int = 0,
                 on_skip: Optional[Callable[[int], None]] = None):
        self.images, self.collate, self.batch_size, self.device = images, collate, batch_size, device
        self.num_workers, self.on_skip, self.epoch = num_workers, on_skip, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def examples(self, pass_index: int = 0):
        """This process's ``(image, label)`` examples of one pass; skipped ones are counted, not yielded."""
        self.images.start(self.epoch, pass_index)
        for image, label, key in make_loader(self.images, None, collate_fn=unchanged, num_workers=self.num_workers):
            if image is not None:
                yield image, label
            elif self.on_skip is not None:
                self.on_skip(key)

    def batch(self, items: list) -> dict[str, torch.Tensor]:
        from accelerate.utils import send_to_device

        batch = self.collate(items)
        return send_to_device(batch, self.device) if self.device is not None else batch

    def __iter__(self):
        items = []
        for item in self.examples():
            items.append(item)
            if len(items) == self.batch_size:
                yield self.batch(items)
                items = []
        if items:
            yield self.batch(items)


class TrainStreamLoader(StreamLoader):
    """Training batches: exactly ``batches`` per epoch, each of ``batch_size`` examples, on every process (the same
    optimizer steps everywhere, as DDP needs).  A part that ends early goes on with its next pass (reshuffled); a
    longer one stops there, and its rest comes in other epochs' orders."""

    def __init__(self, images: StreamImages, collate: Callable, batch_size: int, batches: int, **options: Any):
        super().__init__(images, collate, batch_size, **options)
        self.batches = batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        items, made = [], 0
        for pass_index in itertools.count():
            found = False
            for item in self.examples(pass_index):
                found = True
                items.append(item)
                if len(items) == self.batch_size:
                    yield self.batch(items)
                    items, made = [], made + 1
                    if made == self.batches:
                        return
            if not found:
                raise DataError("This process's part of the streamed training data has no readable, labelled image "
                                "(is the stream empty, or every image corrupt?); check the data, or give the stream "
                                "at least as many shards with data as there are processes.")


def train_batches(examples: int, passes: int, batch_size: int, accumulation: int = 1) -> int:
    """Batches per epoch and process: a pass (or ``passes``) over ``examples`` at the global ``batch_size``, rounded
    up to whole optimizer steps of ``accumulation`` batches."""
    batches = math.ceil(examples * passes / batch_size)
    return accumulation * math.ceil(batches / accumulation)


def make_stream_loaders(accelerator, config, processor, data: StreamData, passes: int = 1):
    """``(train, validation)`` loaders over this process's parts of the streams (see `StreamLoader`)."""
    check_not_sharded(accelerator)
    rank, world = accelerator.process_index, accelerator.num_processes
    train = StreamImages(node_stream(data.train, rank, world, seed=config.seed, buffer_size=config.shuffle_buffer_size),
                         data.image_column, data.label_column, augment=config.augment, hflip=config.hflip,
                         crop_scale=config.crop_scale, seed=config.seed)
    val = StreamImages(node_stream(data.validation, rank, world), data.image_column, data.label_column,
                       label_map=data.label_map)
    batches = train_batches(data.train_examples, passes, config.batch_size, config.gradient_accumulation_steps)
    collate = ImageCollator(processor)
    options = {"device": accelerator.device, "num_workers": config.num_workers, "on_skip": data.note_skipped}
    return (TrainStreamLoader(train, collate, config.batch_size // world, batches, **options),
            StreamLoader(val, collate, config.eval_batch_size // world, **options))


def evaluation_stream_loader(accelerator, processor, source: Any, labels: list[str], *, split: Optional[str] = None,
                             image_column: Optional[str] = None, label_column: Optional[str] = None,
                             batch_size: int = 64) -> StreamLoader:
    """A loader over this process's part of a streamed evaluation split (its ``test`` split by default), its labels
    mapped onto ``labels`` by name (`tl_hub.inference.Classifier.evaluate` on a stream)."""
    import datasets

    from .data import find_image_column, find_label_column

    check_not_sharded(accelerator)
    if isinstance(source, datasets.IterableDatasetDict):
        order = ("test", *VALIDATION_SPLIT_NAMES, "train")
        split = split or next((s for s in order if s in source), next(iter(source)))
        if split not in source:
            raise DataError(f"The dataset has no split '{split}'; its splits are {list(source)}.")
        source = source[split]
    ds, _ = as_stream(source, "evaluation")
    image_column = image_column if image_column in ds.column_names else find_image_column(ds)
    label_column = label_column if label_column in ds.column_names else find_label_column(ds, None, image_column)
    label_map = validation_label_map(ds, image_column, label_column, labels)
    images = StreamImages(node_stream(undecoded(ds, image_column, label_column), accelerator.process_index,
                                      accelerator.num_processes), image_column, label_column, label_map=label_map)
    return StreamLoader(images, ImageCollator(processor), max(1, batch_size // accelerator.num_processes),
                        device=accelerator.device)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation across processes


def check_not_sharded(accelerator) -> None:
    """Refuse weights sharded across processes (FSDP, DeepSpeed ZeRO-3): their forward needs every process, while
    each process evaluates its own part of a stream, of its own length."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if kind == DistributedType.FSDP or (kind == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3):
        raise ConfigError("Streamed data cannot be evaluated with weights sharded across processes (FSDP, DeepSpeed "
                          "ZeRO-3): each process evaluates its own part of the stream. Use DDP "
                          "(recipes/configs/multi_gpu.yaml) or DeepSpeed ZeRO-2, or data in memory.")


def is_streamed(loader: Any) -> bool:
    """Whether ``loader`` reads a stream: each process evaluates its own part, of its own length."""
    return isinstance(loader, StreamLoader)


def evaluation_model(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The model that evaluates a process's part of a stream: unwrapped from DDP, whose forward could wait for
    processes that have fewer batches, with process 0's buffers (what DDP's next forward would broadcast)."""
    if accelerator.num_processes == 1:
        return model
    from accelerate.utils import broadcast

    model = accelerator.unwrap_model(model)  # keeps the mixed-precision forward
    for buffer in model.buffers():
        buffer.data.copy_(broadcast(buffer.data.clone(), from_process=0))
    return model


def gather_shards(accelerator, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Every process's ``tensors`` (of its own length, maybe none) concatenated in process order, on every process.

    Raises:
        DataError: no process has any example.
    """
    world = accelerator.num_processes
    local = len(tensors[0])
    counts = [local] if world == 1 else accelerator.gather(torch.tensor([local], device=accelerator.device)).tolist()
    if not sum(counts):
        raise DataError("The streamed validation data has no readable, labelled image; check it.")
    if world == 1:
        return tensors
    width, out = max(counts), []
    for t in tensors:
        padded = torch.cat([t, t.new_zeros((width - len(t), *t.shape[1:]))]).to(accelerator.device)
        chunks = accelerator.gather(padded).cpu().split(width)
        out.append(torch.cat([chunk[:n] for chunk, n in zip(chunks, counts)]))
    return tuple(out)
