"""Figures (matplotlib, headless): learning curves, confusion matrix, per-label scores, the most confident mistakes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Write ``fig`` as a PNG to ``path`` (a file name, possibly a temporary one without .png, or a binary file
    object) and close it; returns ``path``."""
    fig.savefig(path, dpi=110, format="png")
    pyplot().close(fig)
    return path


def plot_learning_curves(histories: Mapping[str, Sequence[dict]], path: str, title: str = "Learning curves") -> str:
    """Plot validation accuracy and losses per epoch for one or more runs into a PNG at ``path``.

    Args:
        histories: run name -> per-epoch records (``epoch``, ``accuracy``, ``loss``, ``train_loss``, ``period``).
        path: where to write the PNG.
        title: figure title.

    Period changes (e.g. head -> fine-tune) are marked with a dotted vertical line.
    """
    plt = pyplot()

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, history) in enumerate(histories.items()):
        if not history:
            continue
        color = f"C{i}"
        epochs = [h["epoch"] for h in history]
        score = "mAP" if "mAP" in history[0] else "accuracy"  # a multi-label run's curve is its mAP
        ax_acc.plot(epochs, [h[score] for h in history], marker="o", color=color, label=name)
        ax_loss.plot(epochs, [h["loss"] for h in history], marker="o", color=color, label=f"{name} (validation)")
        ax_loss.plot(epochs, [h["train_loss"] for h in history], linestyle="--", color=color,
                     label=f"{name} (train)")
        for prev, cur in zip(history, history[1:]):
            if prev["period"] != cur["period"]:
                for ax in (ax_acc, ax_loss):
                    ax.axvline(prev["epoch"] + 0.5, color=color, linestyle=":", alpha=0.6)
                ax_acc.annotate(cur["period"], (prev["epoch"] + 0.55, ax_acc.get_ylim()[0]), color=color,
                                fontsize=8, rotation=90, va="bottom")
    multi = any("mAP" in h for history in histories.values() for h in history[:1])
    ax_acc.set(xlabel="epoch", ylabel="validation mAP" if multi else "validation accuracy",
               title="mAP" if multi else "Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="BCE loss" if multi else "cross-entropy loss", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str,
                          title: str = "Confusion matrix") -> str:
    """The confusion matrix (rows: true labels, columns: predicted) as a PNG at ``path``: cells shaded by the share
    of their row (recall per class on the diagonal), counts written in the cells when there are few classes."""
    import numpy as np

    plt = pyplot()
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(labels)
    size = min(14.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = range(n)
    ax.set_xticks(ticks, labels=list(labels), rotation=90 if n > 8 else 45, ha="right" if n <= 8 else "center",
                  fontsize=8 if n > 20 else 9)
    ax.set_yticks(ticks, labels=list(labels), fontsize=8 if n > 20 else 9)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7 if n > 15 else 9,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"{title} ({int(counts.sum())} images)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_per_label(per_label: Mapping[str, dict], path: str, title: str = "Per label (validation)") -> str:
    """A multi-label model's figures per label as a PNG at ``path``: average precision, F1 at the label's threshold
    and the threshold, one row per label (rarest labels, by support, at the bottom)."""
    plt = pyplot()
    names = sorted(per_label, key=lambda n: -per_label[n].get("support", 0))
    n = len(names)
    fig, ax = plt.subplots(figsize=(8, min(30.0, 1.2 + 0.32 * n)))
    rows = range(n)
    ap = [per_label[k].get("average_precision") or 0.0 for k in names]
    f1 = [per_label[k].get("f1") or 0.0 for k in names]
    ax.barh([r - 0.2 for r in rows], ap, height=0.4, color="C0", label="average precision")
    ax.barh([r + 0.2 for r in rows], f1, height=0.4, color="C1", label="F1 at the threshold")
    thresholds = [per_label[k].get("threshold") for k in names]
    if all(t is not None for t in thresholds):
        ax.scatter(thresholds, rows, marker="|", s=120, color="black", label="threshold", zorder=3)
    ax.set_yticks(rows, labels=[f"{k} ({per_label[k].get('support', 0)})" for k in names],
                  fontsize=8 if n > 20 else 9)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="score", title=f"{title}; label (positives)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(after: Sequence[dict], path: str, before: Optional[Sequence[dict]] = None,
                     title: str = "Reliability diagram") -> str:
    """A reliability diagram as a PNG at ``path``: per confidence bin (`tl_hub.calibration.reliability_bins`), how
    often the predictions were right against how sure they were, with the temperature (``after``) and, when given,
    without it (``before``); the diagonal is perfect calibration and the bars' widths are the bins."""
    plt = pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for bins, colour, label in ((before, "C3", "without the temperature"), (after, "C0", "with the temperature")):
        if not bins:
            continue
        filled = [b for b in bins if b["count"]]
        ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o", color=colour,
                label=label if before else "model")
        hist.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["count"] for b in bins],
                 width=bins[0]["upper"] - bins[0]["lower"], alpha=0.5, color=colour)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction right", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    hist.set(xlabel="confidence", ylabel="predictions")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_errors(examples: Sequence[tuple], path: str, title: str = "Most confident mistakes (validation)") -> str:
    """A grid of misclassified images, the most confident first: ``examples`` are ``(image, entry)`` pairs with
    ``entry`` holding ``label``, ``predicted`` and ``confidence``."""
    cells = [(image, f"true: {entry['label']}\npredicted: {entry['predicted']} ({entry['confidence']:.0%})")
             for image, entry in examples]
    return image_grid(cells, path, title, empty="no misclassified image", width=2.6, fontsize=9)


def image_grid(cells: Sequence[tuple], path, title: str, *, empty: str = "nothing found", width: float = 2.8,
               fontsize: int = 8) -> str:
    """A grid of ``(image, caption)`` cells, four to a row, saved at ``path`` (a file name or a binary stream);
    ``empty`` is written in the figure when there is no cell."""
    import math

    plt = pyplot()
    n = max(1, len(cells))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 2.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption) in zip(axes.flat, cells):
        ax.imshow(image.convert("RGB"))
        ax.set_title(caption, fontsize=fontsize, color="C3")
    if not cells:
        axes.flat[0].text(0.5, 0.5, empty, ha="center", va="center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def render_png(plot, *args, **kwargs) -> bytes:
    """The PNG bytes of ``plot(*args, path, **kwargs)`` (a figure function of this module), kept in memory."""
    import io

    buffer = io.BytesIO()
    plot(*args, buffer, **kwargs)
    return buffer.getvalue()
