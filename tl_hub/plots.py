"""Learning-curve figures (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def plot_learning_curves(histories: Mapping[str, Sequence[dict]], path: str, title: str = "Learning curves") -> str:
    """Plot validation accuracy and losses per epoch for one or more runs into a PNG at ``path``.

    Args:
        histories: run name -> per-epoch records (``epoch``, ``accuracy``, ``loss``, ``train_loss``, ``period``).
        path: where to write the PNG.
        title: figure title.

    Period changes (e.g. head -> fine-tune) are marked with a dotted vertical line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, history) in enumerate(histories.items()):
        if not history:
            continue
        color = f"C{i}"
        epochs = [h["epoch"] for h in history]
        ax_acc.plot(epochs, [h["accuracy"] for h in history], marker="o", color=color, label=name)
        ax_loss.plot(epochs, [h["loss"] for h in history], marker="o", color=color, label=f"{name} (validation)")
        ax_loss.plot(epochs, [h["train_loss"] for h in history], linestyle="--", color=color,
                     label=f"{name} (train)")
        for prev, cur in zip(history, history[1:]):
            if prev["period"] != cur["period"]:
                for ax in (ax_acc, ax_loss):
                    ax.axvline(prev["epoch"] + 0.5, color=color, linestyle=":", alpha=0.6)
                ax_acc.annotate(cur["period"], (prev["epoch"] + 0.55, ax_acc.get_ylim()[0]), color=color,
                                fontsize=8, rotation=90, va="bottom")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
