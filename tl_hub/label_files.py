"""Labels that come as files or as lists: a CSV of image paths and labels, and multi-label columns.

- `load_label_csv`: ``labels.csv`` with an image-path column (``file_name``, ``path``, ``image``, ``filepath`` or
  ``file``) and label columns, as a ``datasets.Dataset`` whose image column is a ``datasets.Image()`` feature.
- `is_list_column` / `label_lists` / `multi_hot`: a multi-label column (a ``Sequence``/``List`` feature,
  Python lists, or declared strings such as ``"cat;dog"``) read as lists of label names, then stored as a multi-hot
  vector of ``float32`` per image, in the order of the label names (`tl_hub.data.encode_multi_hot` writes it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .errors import DataError, first_line

IMAGE_PATH_COLUMNS = ("file_name", "path", "image", "filepath", "file")
SEPARATORS = (";", "|", ",")  # of a declared multi-label string column, the first that occurs anywhere in it
_INTEGER = re.compile(r"^[+-]?\d+$")


# ---------------------------------------------------------------------------------------------------------------------
# A CSV of image paths and labels


def _typed(values: list[str]) -> tuple[list[Any], str]:
    """A CSV column's cells: empty ones as None, and integers as ``int`` when every filled cell is one."""
    cells = [v.strip() for v in values]
    filled = [v for v in cells if v]
    if filled and all(_INTEGER.match(v) for v in filled):
        return [int(v) if v else None for v in cells], "int64"
    return [v if v else None for v in cells], "string"


def _image_paths(csv_path: str, column: str, values: list[str]) -> list[str]:
    base = os.path.dirname(os.path.abspath(csv_path))
    paths = [os.path.join(base, os.path.expanduser(v.strip())) if v.strip() else "" for v in values]
    missing = [v for v, p in zip(values, paths) if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(values)} images listed in column '{column}' of '{csv_path}' do not exist "
            f"(relative paths are read from the CSV's folder '{base}'), e.g. {missing[:3]}; fix the paths or remove "
            "those rows."
        )
    return paths


def load_label_csv(path: str):
    """A CSV of image paths and labels as a ``datasets.Dataset``.

    The image-path column is the first of ``file_name``, ``path``, ``image``, ``filepath``, ``file`` (any case);
    relative paths are read from the CSV's folder, and the column becomes a ``datasets.Image()`` feature. The other
    columns are kept: empty cells are None, and a column of whole numbers holds integers. A label cell may hold
    one label (single-label) or several (``"cat;dog"``, read as a multi-label task, see `label_lists`).

    Raises:
        DataError: the CSV cannot be read, has no image-path or no other column, or lists images that do not exist.
    """
    import datasets
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as e:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError
        raise DataError(f"Could not read the CSV file '{path}' ({first_line(e)}); give a CSV of image paths and "
                        "labels with a header row.") from None
    columns = [str(c).strip() for c in frame.columns]
    by_lower = {c.lower(): c for c in reversed(columns)}
    image_col = next((by_lower[n] for n in IMAGE_PATH_COLUMNS if n in by_lower), None)
    if image_col is None:
        raise DataError(
            f"'{path}' is a file; pass a folder of images, a saved dataset folder, a Hub dataset id, or a CSV of "
            f"image paths and labels: this CSV has no image-path column ({', '.join(IMAGE_PATH_COLUMNS)}); its "
            f"columns are {columns}."
        )
    if len(columns) < 2:
        raise DataError(f"The CSV file '{path}' has only the image-path column '{image_col}'; add a column of labels "
                        "(e.g. 'label', or 'labels' with several labels per image as \"cat;dog\").")
    raw = {c: frame.iloc[:, i].tolist() for i, c in enumerate(columns)}
    data, features = {image_col: _image_paths(path, image_col, raw[image_col])}, {image_col: datasets.Image()}
    for c in columns:
        if c != image_col:
            data[c], dtype = _typed(raw[c])
            features[c] = datasets.Value(dtype)
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label columns


def is_list_feature(feature: Any) -> bool:
    """Whether a ``datasets`` feature holds a list per example (``Sequence``, ``List``, ``LargeList``)."""
    import datasets

    kinds = tuple(k for k in (getattr(datasets, "List", None), getattr(datasets, "LargeList", None),
                              getattr(datasets, "Sequence", None)) if isinstance(k, type))
    return isinstance(feature, (*kinds, list))


def is_multi_hot_feature(feature: Any) -> bool:
    """Whether a label feature is the multi-hot vector `encode_multi_hot` writes (a list of ``float32``)."""
    inner = getattr(feature, "feature", None)
    return is_list_feature(feature) and getattr(inner, "dtype", None) == "float32"


def is_list_column(ds, column: str) -> bool:
    """Whether the column holds a list of labels per example: a list feature, or Python lists/tuples as values."""
    import datasets

    feature = ds.features[column]
    if is_list_feature(feature):
        return True
    if isinstance(feature, (datasets.Value, datasets.ClassLabel)):  # an Arrow column of scalars
        return False
    return any(isinstance(v, (list, tuple)) for v in ds[column])


def separator_of(values: Sequence[Any]) -> Optional[str]:
    """The first of ``;``, ``|``, ``,`` that occurs in any string of ``values`` (None when none does)."""
    strings = [v for v in values if isinstance(v, str)]
    return next((s for s in SEPARATORS if any(s in v for v in strings)), None)


def _names_of(value: Any, separator: Optional[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    if isinstance(value, str):
        parts = value.split(separator) if separator else [value]
        return [p.strip() for p in parts if p.strip()]
    return [str(value)]


def label_lists(ds, column: str) -> tuple[list[list[str]], Optional[list[str]]]:
    """The labels of each example of a multi-label column as names, and the column's own label names if it has them
    (a ``Sequence(ClassLabel)`` or ``ClassLabel`` feature), else None.

    A string is split on the first of ``;``, ``|``, ``,`` that occurs anywhere in the column (``"cat;dog"``); a
    string without it is one label; an empty cell or an empty list is an image with no label; integers become their
    names (``3`` -> ``"3"``)."""
    from datasets import ClassLabel

    feature = ds.features[column]
    inner = feature.feature if is_list_feature(feature) and hasattr(feature, "feature") else feature
    values = list(ds[column])
    if isinstance(inner, ClassLabel):
        own = list(inner.names)

        def name(i):
            """The name of class id ``i`` (None for no label)."""
            return own[int(i)] if i is not None and int(i) >= 0 else None

        lists = [[name(i) for i in (v if isinstance(v, (list, tuple)) else [v]) if name(i) is not None]
                 for v in values]
        return lists, own
    separator = separator_of(values)
    return [_names_of(v, separator) for v in values], None


def sorted_names(lists: Sequence[Sequence[str]]) -> list[str]:
    """The union of the labels, sorted (numerically when every label is a whole number)."""
    union = {n for names in lists for n in names}
    if union and all(_INTEGER.match(n) for n in union):
        return sorted(union, key=int)
    return sorted(union)


def multi_hot(lists: Sequence[Sequence[str]], names: Sequence[str]) -> np.ndarray:
    """``(N, K)`` float32 0/1 targets of label lists over ``names``; a label outside ``names`` is an error."""
    index = {n: j for j, n in enumerate(names)}
    unknown = sorted({n for labels in lists for n in labels} - set(index))
    if unknown:
        raise DataError(
            f"Labels {unknown[:5]} in this data are not among the {len(names)} training labels {list(names)[:10]}; "
            "evaluate on data with the same label set."
        )
    targets = np.zeros((len(lists), len(names)), dtype=np.float32)
    for i, labels in enumerate(lists):
        targets[i, [index[n] for n in labels]] = 1.0
    return targets
