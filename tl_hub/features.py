"""Encoder features computed once and cached, so a frozen encoder costs one forward pass per image.

Training a new head on a frozen encoder does not need the encoder again each epoch: its output for an image
never changes.  `FeatureStore` runs the encoder once over a split (under ``torch.inference_mode``, sharded
across processes and gathered), captures the exact input of the model's head with a forward pre-hook (the
head itself is skipped), and keeps the result in memory and, by default, on disk.  The head then trains on
these tensors through `HeadModule`, which shares the model's head parameters.

The cache key covers everything the features depend on: the encoder's weights (hashed), the image processor
settings, the data (``datasets`` fingerprint of the split and its image column), the capture point, and the
augmented views; change any of them and the features are recomputed.

With augmentation, ``feature_views=k`` caches ``k`` views per training image (view 0 the plain image, the
others augmented, drawn per ``(seed, epoch, index)``) at ``k`` encoder passes; ``feature_cache="off"`` runs
the encoder on freshly augmented images every epoch instead (one pass per image per epoch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .backbone import Backbone
from .data import EpochDataset
from .outputs import cache_root
from .structure import model_inputs

logger = logging.getLogger(__name__)

FORMAT_VERSION = "2"


def default_cache_dir() -> str:
    """``$TL_HUB_CACHE/features``, default ``~/.cache/tl_hub/features``."""
    root = cache_root()
    return os.path.join(root, "features")


class HeadModule(nn.Module):
    """The model's head as a module of its own, fed with cached features (parameters are shared)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.head(features)
        return out.flatten(1) if out.ndim > 2 else out  # (batch, 1, labels) or (batch, labels, 1, 1) heads


class _Captured(Exception):
    def __init__(self, value: torch.Tensor):
        self.value = value


def single_head(backbone: Backbone) -> Optional[str]:
    """The head module path when the head is one module fed by one tensor (then features can be cached)."""
    return backbone.parts.head[0] if len(backbone.parts.head) == 1 else None


LABEL_KEYS = ("id2label", "label2id", "num_labels", "problem_type", "_name_or_path", "transformers_version")


def encoder_fingerprint(model: nn.Module, head: tuple[str, ...]) -> str:
    """Hash of everything that decides the features: every parameter and buffer outside the ``head`` layers (names,
    dtypes, shapes, values), the config without the labels, and the attention implementation."""
    h = hashlib.blake2b(digest_size=16)
    outside = {k: v for k, v in model.state_dict().items() if not any(k.startswith(p + ".") for p in head)}
    h.update(_state_digest(outside).encode())
    config = getattr(model, "config", None)
    if config is not None:
        settings = {k: v for k, v in config.to_dict().items() if k not in LABEL_KEYS}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
        h.update(str(getattr(config, "_attn_implementation", None)).encode())
    return h.hexdigest()


def _major_versions() -> str:
    """The torch and transformers major versions: a new major release may compute other features."""
    import transformers

    return f"torch {torch.__version__.split('.')[0]}, transformers {transformers.__version__.split('.')[0]}"


def state_fingerprint(module: nn.Module) -> str:
    """Hash of every parameter and buffer of ``module`` (names, dtypes, shapes, values)."""
    return _state_digest(module.state_dict())


def _state_digest(state: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(state.items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def processor_fingerprint(processor) -> str:
    config = processor.to_dict() if hasattr(processor, "to_dict") else vars(processor)
    return hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def data_fingerprint(ds, image_column: str) -> str:
    fp = getattr(ds, "_fingerprint", None)
    if fp is None:  # not a datasets.Dataset: hash the images' bytes
        h = hashlib.blake2b(digest_size=16)
        for row in ds:
            h.update(repr(row[image_column]).encode())
        fp = h.hexdigest()
    return f"{fp}:{image_column}:{len(ds)}"


@dataclass
class CachedFeatures:
    """``features`` of shape ``(views, N, ...)`` and ``labels`` of shape ``(N,)`` (class ids) or ``(N, K)``
    (multi-hot rows of a multi-label task)."""

    features: torch.Tensor
    labels: torch.Tensor

    @property
    def views(self) -> int:
        return self.features.shape[0]


class CachedFeatureDataset(EpochDataset):
    """Batches of cached features; with several views, each example's view is drawn per ``(seed, epoch, index)``
    (the same whatever the number of processes).  With ``passes=k`` an epoch holds every example k times."""

    def __init__(self, cached: CachedFeatures, seed: int = 0, passes: int = 1):
        super().__init__(cached.labels.shape[0], seed=seed, passes=passes)
        self.cached = cached

    def _view(self, index: int) -> int:
        if self.cached.views == 1:
            return 0
        return self.rng(index).randrange(self.cached.views)

    def __getitem__(self, index: int):
        row = self.row(index)
        return self.cached.features[self._view(index), row], self.cached.labels[row]

    def __getitems__(self, indices):
        """A whole batch by tensor indexing (the DataLoader calls this instead of one ``__getitem__`` per item)."""
        idx = torch.as_tensor([self.row(i) for i in indices], dtype=torch.long)
        views = torch.as_tensor([self._view(i) for i in indices], dtype=torch.long)
        return {"features": self.cached.features[views, idx], "labels": self.cached.labels[idx]}


def collate_features(batch):
    if isinstance(batch, dict):  # already batched by CachedFeatureDataset.__getitems__
        return batch
    feats, labels = zip(*batch)
    return {"features": torch.stack(feats), "labels": torch.stack(labels)}


def first_tensor_argument(args: tuple, kwargs: dict) -> tuple[Union[int, str], torch.Tensor]:
    """Where a module's main input is, and its value: the first tensor positional argument, else the first tensor
    keyword argument (``hidden_states=`` in many transformers blocks)."""
    for i, value in enumerate(args):
        if torch.is_tensor(value):
            return i, value
    for name, value in kwargs.items():
        if torch.is_tensor(value):
            return name, value
    raise RuntimeError("The module was called without a tensor argument; its input cannot be cached.")


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# cached features larger than this share of the available memory are kept in a memory-mapped file instead
MEMORY_SHARE = 0.5


class _Buffer:
    """Where one capture point's features go while they are computed: a preallocated tensor in memory, or a
    memory-mapped ``.npy`` file (``path``) written batch by batch, so that the features are never held twice."""

    def __init__(self, views: int, n: int, shape: tuple, path: Optional[str]):
        self.shape, self.path = (views, n, *shape), path
        if path is None:
            self.tensor = torch.empty(self.shape, dtype=torch.float32)
        else:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=self.shape)
            self.array, self.tensor = array, torch.from_numpy(array)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def write(self, view: int, offset: int, values: torch.Tensor) -> None:
        self.tensor[view, offset:offset + values.shape[0]] = values

    def finish(self) -> torch.Tensor:
        if self.path is None:
            return self.tensor
        self.array.flush()
        del self.array, self.tensor
        return open_features(self.path)


def open_features(path: str) -> torch.Tensor:
    """The features of a ``.npy`` cache file, memory-mapped (pages are read when used, never all at once).  The
    mapping is copy-on-write, so nothing done to the tensor reaches the file."""
    return torch.from_numpy(np.load(path, mmap_mode="c"))


class FeatureStore:
    """Compute-once encoder features for the splits of one run.

    Features are the input of a module of the model, by default its head; `get_many` captures several modules'
    inputs in one pass (e.g. the head's and an encoder block's, for `tl_hub.prefix`).

    Args:
        backbone: the loaded model (its encoder is frozen while features are used).
        accelerator: shards the extraction across processes and gathers the result.
        cache: ``"disk"`` (a memory-mapped ``.npy`` file per split and capture point under ``cache_dir``, reused by
            later runs), ``"memory"`` (a tensor; a memory-mapped temporary file when the features would take more
            than `MEMORY_SHARE` of the available memory).
        cache_dir: where disk caches live (default `default_cache_dir`).
        batch_size: global extraction batch size.
        num_workers: DataLoader workers for decoding and preprocessing.
        progress: show a progress bar for each pass over the images.
    """

    def __init__(self, backbone: Backbone, accelerator, *, cache: str = "disk", cache_dir: Optional[str] = None,
                 batch_size: int = 64, num_workers: int = 0, progress: bool = False):
        self.backbone = backbone
        self.accelerator = accelerator
        self.cache = cache
        self.cache_dir = cache_dir or default_cache_dir()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress  # a progress bar per pass (main process)
        self.head_path = single_head(backbone)
        self._encoder_fp: Optional[str] = None
        self.computed_examples = 0  # encoder forward passes actually run (per view), for reporting and tests
        self.sizes: dict[str, dict] = {}  # "<what> <capture point>" -> bytes and where the features are kept

    @property
    def available(self) -> bool:
        return self.head_path is not None

    def key(self, ds, image_column: str, views: int, augment: dict, at: Optional[str] = None) -> str:
        if self._encoder_fp is None:
            self._encoder_fp = encoder_fingerprint(self.backbone.model, self.backbone.parts.head)
        parts = [FORMAT_VERSION, self._encoder_fp, processor_fingerprint(self.backbone.processor),
                 str(self.accelerator.mixed_precision), _major_versions(),
                 data_fingerprint(ds, image_column), at or self.head_path, str(views),
                 json.dumps(augment if views > 1 else {}, sort_keys=True)]
        return hashlib.blake2b("|".join(parts).encode(), digest_size=20).hexdigest()

    def get(self, ds, image_column: str, label_column: str, *, views: int = 1, augment: Optional[dict] = None,
            what: str = "training") -> CachedFeatures:
        """The head's input features of ``ds``: from the disk cache when the key matches, else computed."""
        return self.get_many(ds, image_column, label_column, at=[self.head_path], views=views, augment=augment,
                             what=what)[0]

    def get_many(self, ds, image_column: str, label_column: str, *, at: Sequence[str], views: int = 1,
                 augment: Optional[dict] = None, what: str = "training") -> list[CachedFeatures]:
        """The input features of each module in ``at`` (dotted paths) for ``ds``, computed in one pass over the
        data for those not found in the disk cache."""
        augment = augment or {}
        paths = {p: self._path(ds, image_column, views, augment, p) for p in at}
        found = {p: self._load(path, what) for p, path in paths.items() if path is not None}
        missing = [p for p in at if found.get(p) is None]
        if missing:
            computed = self._compute(ds, image_column, label_column, views, augment, what,
                                     {p: paths[p] for p in missing})
            found.update(zip(missing, computed))
        for p in at:
            where = "disk (memory-mapped)" if paths[p] is not None else "memory"
            self.sizes[f"{what} {p}"] = {"bytes": found[p].features.numel() * 4, "where": where}
        return [found[p] for p in at]

    def _path(self, ds, image_column, views, augment, at) -> Optional[str]:
        if self.cache != "disk" or not self._writable():
            return None
        return os.path.join(self.cache_dir, self.key(ds, image_column, views, augment, at))

    def _writable(self) -> bool:
        with contextlib.suppress(OSError):
            os.makedirs(self.cache_dir, exist_ok=True)
        if os.access(self.cache_dir, os.W_OK):
            return True
        logger.warning("Cannot write the feature cache folder %s; the features are kept in memory for this run.",
                       self.cache_dir)
        self.cache = "memory"
        return False

    def _load(self, path: str, what: str) -> Optional[CachedFeatures]:
        """The cached features at ``path`` (``.features.npy`` + ``.labels.npy``), or None if absent or unreadable."""
        if not os.path.exists(path + ".features.npy"):
            return None
        try:
            cached = CachedFeatures(open_features(path + ".features.npy"),
                                    torch.from_numpy(np.load(path + ".labels.npy")))
            logger.info("Loaded cached %s features (%s) from %s", what, tuple(cached.features.shape), path)
            return cached
        except Exception as e:  # a damaged cache file is recomputed, not fatal
            logger.warning("Ignoring unreadable feature cache %s (%s); recomputing.", path, e)
            return None

    def _compute(self, ds, image_column, label_column, views, augment, what, paths: dict) -> list[CachedFeatures]:
        """Run the encoder over the data; leaves the global RNG as it was, so that training does not depend on
        whether the features came from the cache."""
        # moved outside inference mode: a move there (e.g. "cpu" -> "cpu:0" under a multi-process launch) would
        # turn the parameters into inference tensors that can no longer be trained
        self.backbone.model.to(self.accelerator.device)
        buffers: dict[str, Optional[_Buffer]] = {}
        try:
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                labels = self._compute_views(ds, image_column, label_column, views, augment, what, paths, buffers)
        except BaseException:
            for buffer in buffers.values():
                if buffer is not None and buffer.path is not None and os.path.exists(buffer.path):
                    os.unlink(buffer.path)  # no half-written file is left behind
            raise
        return [self._finish(buffers[p], labels, path) for p, path in paths.items()]

    def _finish(self, buffer: Optional[_Buffer], labels: torch.Tensor, path: Optional[str]) -> CachedFeatures:
        """Close a capture point's buffer: a disk cache is renamed into place by the main process (then read by
        every process); a spilled memory buffer is unlinked once mapped."""
        accelerator = self.accelerator
        if path is None:
            features = buffer.finish()
            if buffer.path is not None:
                os.unlink(buffer.path)  # the mapping stays valid; the space is freed when it is closed
            return CachedFeatures(features, labels)
        if accelerator.is_main_process:
            buffer.finish()
            np.save(path + ".labels.tmp.npy", labels.numpy())
            os.replace(path + ".labels.tmp.npy", path + ".labels.npy")
            os.replace(buffer.path, path + ".features.npy")  # last: the features file marks a complete entry
        accelerator.wait_for_everyone()
        return CachedFeatures(open_features(path + ".features.npy"), labels)

    def _buffer(self, views: int, n: int, shape: tuple, path: Optional[str]) -> Optional[_Buffer]:
        """A buffer for ``views x n`` features of ``shape``: a cache file being written (main process only), a
        tensor, or, when a tensor would not fit in memory, a temporary memory-mapped file."""
        if path is not None:
            if not self.accelerator.is_main_process:
                return None
            return _Buffer(views, n, shape, f"{path}.{os.getpid()}.tmp.npy")
        nbytes = views * n * int(np.prod(shape)) * 4
        free = available_memory()
        if free is not None and nbytes > MEMORY_SHARE * free:
            os.makedirs(self.cache_dir, exist_ok=True)
            fd, spill = tempfile.mkstemp(prefix="spill-", suffix=".tmp.npy", dir=self.cache_dir)  # one per point
            os.close(fd)
            logger.warning("The features (%.1f GB) would not fit in memory (%.1f GB available); they are kept in a "
                           "memory-mapped file, %s.", nbytes / 2**30, free / 2**30, spill)
            return _Buffer(views, n, shape, spill)
        return _Buffer(views, n, shape, None)

    def _compute_views(self, ds, image_column, label_column, views, augment, what, paths, buffers) -> torch.Tensor:
        """Fill ``buffers`` (capture point -> `_Buffer`) with every view's features; return the labels."""
        from .data import ImageClassificationDataset, ImageCollator, make_loader

        accelerator, model = self.accelerator, self.backbone.model
        model.eval()
        capture = _Capture(model, list(paths))
        labels = None  # class ids (N,) or multi-hot rows (N, K), as the collator gives them
        try:
            for view in range(views):
                dataset = ImageClassificationDataset(ds, image_column, label_column, augment=view > 0, **augment)
                dataset.set_epoch(view)  # view v > 0 uses the augmentation stream of "epoch" v
                loader = make_loader(dataset, self.batch_size, collate_fn=ImageCollator(self.backbone.processor),
                                     num_workers=self.num_workers)
                offset = 0
                batches = tqdm(accelerator.prepare_data_loader(loader), desc=f"{what} features", leave=False,
                               disable=not (self.progress and accelerator.is_local_main_process))
                for batch in batches:
                    values = capture.run(accelerator, batch)
                    gathered = accelerator.gather_for_metrics((*values.values(), batch["labels"]))
                    for (p, _), f in zip(values.items(), gathered):
                        if p not in buffers:
                            buffers[p] = self._buffer(views, len(ds), tuple(f.shape[1:]), paths[p])
                        if buffers[p] is not None:
                            buffers[p].write(view, offset, f.cpu())
                    if labels is None:
                        labels = torch.empty((len(ds), *gathered[-1].shape[1:]), dtype=gathered[-1].dtype)
                    labels[offset:offset + gathered[-1].shape[0]] = gathered[-1].cpu()
                    offset += gathered[-1].shape[0]
                    self.computed_examples += batch["labels"].shape[0]
        finally:
            capture.remove()
        if accelerator.is_main_process:
            logger.info("Computed %s features for %d images x %d view(s) at %s", what, len(ds), views, list(paths))
        return labels if labels is not None else torch.empty(0, dtype=torch.long)


class _Capture:
    """Forward pre-hooks that record the input of each module in ``paths`` and stop the forward pass once all are
    recorded (what runs after them is not needed)."""

    def __init__(self, model: nn.Module, paths: list[str]):
        self.model, self.paths, self.seen = model, paths, {}
        self.handles = [model.get_submodule(p).register_forward_pre_hook(self._hook(p), with_kwargs=True)
                        for p in paths]

    def _hook(self, path: str):
        def hook(module, args, kwargs):
            self.seen.setdefault(path, first_tensor_argument(args, kwargs)[1])
            if len(self.seen) == len(self.paths):
                raise _Captured(None)

        return hook

    def run(self, accelerator, batch) -> dict[str, torch.Tensor]:
        self.seen = {}
        try:
            with accelerator.autocast():
                self.model(**model_inputs(self.model, batch))
        except _Captured:
            return {p: self.seen[p].float().contiguous() for p in self.paths}
        missing = [p for p in self.paths if p not in self.seen]
        raise RuntimeError(f"The module(s) {missing} were not called by the model's forward; their input cannot be "
                           "cached.")

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
