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

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .backbone import Backbone
from .data import EpochDataset
from .outputs import atomic_path, cache_root
from .structure import model_inputs

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"


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


LABEL_KEYS = ("id2label", "label2id", "num_labels", "_name_or_path", "transformers_version")


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
    """``features`` of shape ``(views, N, ...)`` and ``labels`` of shape ``(N,)``."""

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
        row = index % self.cached.labels.shape[0]
        return self.cached.features[self._view(index), row], self.cached.labels[row]

    def __getitems__(self, indices):
        """A whole batch by tensor indexing (the DataLoader calls this instead of one ``__getitem__`` per item)."""
        idx = torch.as_tensor(indices, dtype=torch.long) % self.cached.labels.shape[0]
        views = torch.as_tensor([self._view(i) for i in indices], dtype=torch.long)
        return {"features": self.cached.features[views, idx], "labels": self.cached.labels[idx]}


def collate_features(batch):
    if isinstance(batch, dict):  # already batched by CachedFeatureDataset.__getitems__
        return batch
    feats, labels = zip(*batch)
    return {"features": torch.stack(feats), "labels": torch.stack(labels)}


class FeatureStore:
    """Compute-once encoder features for the splits of one run.

    Args:
        backbone: the loaded model (its encoder is frozen while features are used).
        accelerator: shards the extraction across processes and gathers the result.
        cache: ``"disk"`` (memory plus a safetensors file under ``cache_dir``), ``"memory"``.
        cache_dir: where disk caches live (default `default_cache_dir`).
        batch_size: global extraction batch size.
        num_workers: DataLoader workers for decoding and preprocessing.
    """

    def __init__(self, backbone: Backbone, accelerator, *, cache: str = "disk", cache_dir: Optional[str] = None,
                 batch_size: int = 64, num_workers: int = 0):
        self.backbone = backbone
        self.accelerator = accelerator
        self.cache = cache
        self.cache_dir = cache_dir or default_cache_dir()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.head_path = single_head(backbone)
        self._encoder_fp: Optional[str] = None
        self.computed_examples = 0  # encoder forward passes actually run (per view), for reporting and tests

    @property
    def available(self) -> bool:
        return self.head_path is not None

    def key(self, ds, image_column: str, views: int, augment: dict) -> str:
        if self._encoder_fp is None:
            self._encoder_fp = encoder_fingerprint(self.backbone.model, self.backbone.parts.head)
        parts = [FORMAT_VERSION, self._encoder_fp, processor_fingerprint(self.backbone.processor),
                 str(self.accelerator.mixed_precision), _major_versions(),
                 data_fingerprint(ds, image_column), self.head_path, str(views),
                 json.dumps(augment if views > 1 else {}, sort_keys=True)]
        return hashlib.blake2b("|".join(parts).encode(), digest_size=20).hexdigest()

    def get(self, ds, image_column: str, label_column: str, *, views: int = 1, augment: Optional[dict] = None,
            what: str = "training") -> CachedFeatures:
        """Features of ``ds``: from the disk cache when the key matches, else computed (and stored)."""
        from safetensors.torch import load_file, save_file

        augment = augment or {}
        if self.cache != "disk":
            return self._compute(ds, image_column, label_column, views, augment, what)
        path = os.path.join(self.cache_dir, f"{self.key(ds, image_column, views, augment)}.safetensors")
        if os.path.exists(path):
            try:
                tensors = load_file(path)
                logger.info("Loaded cached %s features (%s) from %s", what, tuple(tensors["features"].shape), path)
                return CachedFeatures(tensors["features"], tensors["labels"])
            except Exception as e:  # a damaged cache file is recomputed, not fatal
                logger.warning("Ignoring unreadable feature cache %s (%s); recomputing.", path, e)
        cached = self._compute(ds, image_column, label_column, views, augment, what)
        if self.accelerator.is_main_process:
            try:
                os.makedirs(self.cache_dir, exist_ok=True)
                with atomic_path(path) as tmp:
                    save_file({"features": cached.features.contiguous(), "labels": cached.labels}, tmp,
                              metadata={"format": FORMAT_VERSION, "what": what})
            except OSError as e:
                logger.warning("Could not write the feature cache to %s (%s); continuing in memory.", path, e)
        self.accelerator.wait_for_everyone()
        return cached

    def _compute(self, ds, image_column, label_column, views, augment, what) -> CachedFeatures:
        """Run the encoder over the data; leaves the global RNG as it was, so that training does not depend on
        whether the features came from the cache."""
        # moved outside inference mode: a move there (e.g. "cpu" -> "cpu:0" under a multi-process launch) would
        # turn the parameters into inference tensors that can no longer be trained
        self.backbone.model.to(self.accelerator.device)
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            return self._compute_views(ds, image_column, label_column, views, augment, what)

    def _compute_views(self, ds, image_column, label_column, views, augment, what) -> CachedFeatures:
        from .data import ImageClassificationDataset, ImageCollator, make_loader

        accelerator = self.accelerator
        model = self.backbone.model
        model.eval()
        head = model.get_submodule(self.head_path)

        def capture(module, args):
            raise _Captured(args[0])

        handle = head.register_forward_pre_hook(capture)
        all_views = []
        labels = None
        try:
            for view in range(views):
                dataset = ImageClassificationDataset(ds, image_column, label_column, augment=view > 0, **augment)
                dataset.set_epoch(view)  # view v > 0 uses the augmentation stream of "epoch" v
                loader = make_loader(dataset, self.batch_size, collate_fn=ImageCollator(self.backbone.processor),
                                     num_workers=self.num_workers)
                loader = accelerator.prepare_data_loader(loader)
                feats, labs = [], []
                for batch in loader:
                    try:
                        with accelerator.autocast():
                            model(**model_inputs(model, batch))
                        raise RuntimeError(f"The head {self.head_path!r} was not called by the model's forward.")
                    except _Captured as c:
                        f = c.value.float()
                    f, y = accelerator.gather_for_metrics((f.contiguous(), batch["labels"]))
                    feats.append(f.cpu())
                    labs.append(y.cpu())
                    self.computed_examples += batch["labels"].shape[0]
                all_views.append(torch.cat(feats))
                labels = torch.cat(labs)
        finally:
            handle.remove()
        features = torch.stack(all_views)
        if accelerator.is_main_process:
            logger.info("Computed %s features for %d images x %d view(s): %s", what, features.shape[1], views,
                        tuple(features.shape[2:]))
        return CachedFeatures(features, labels)
