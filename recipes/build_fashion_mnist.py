"""Build the Fashion-MNIST subset that ships with tl-hub (``tl_hub/assets/fashion-mnist/``).

Reads Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``: the original idx
files under ``/usr/share/datasets/fashion-mnist/``) and keeps, for each of the 10 classes, the first
``--train-per-class`` images of the training file and the first ``--test-per-class`` images of the test file, in
file order (so the subset is the same on every machine). The result is one compressed ``.npz`` (uint8 images
28x28, int64 labels) written through a temporary file renamed into place.

    python recipes/build_fashion_mnist.py     # about 1 s; writes tl_hub/assets/fashion-mnist/subset.npz
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tl_hub.fashion import SUBSET_FILE  # noqa: E402

SOURCE = "/usr/share/datasets/fashion-mnist"


def read_idx(path: str) -> np.ndarray:
    """An idx file (the MNIST format: big-endian header of the dimensions, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Row indices of the first ``per_class`` examples of each class, in file order."""
    rows = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    if min(len(r) for r in rows) < per_class:
        raise SystemExit(f"the source has fewer than {per_class} images of some class")
    return np.sort(np.concatenate(rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=SOURCE)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--output", default=SUBSET_FILE)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.source):
        raise SystemExit(f"{args.source} is missing: `apt-get install dataset-fashion-mnist` installs it")
    out = {}
    for split, prefix, n in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = read_idx(os.path.join(args.source, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(args.source, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
        rows = first_per_class(labels, n)
        out[f"{split}_images"], out[f"{split}_labels"] = images[rows], labels[rows]
    tmp = args.output + ".tmp.npz"
    np.savez_compressed(tmp, **out)
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB): "
          + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    main()
