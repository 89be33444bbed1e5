"""PNG plots of training curves (matplotlib, the ``[plot]`` extra)."""

from __future__ import annotations

import math

__all__ = ["require_matplotlib", "plot_history", "plot_compare"]


def require_matplotlib():
    """matplotlib.pyplot with the file-only Agg backend; RuntimeError with the install hint
    when matplotlib is missing (checked before training starts, not after)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed: pip install 'deepkern[plot]' "
                           "(or pip install matplotlib)") from None
    return plt


def _plain_log_ticks(ax):
    """Log-scale y ticks written as plain numbers (0.6, 1, 2), minor ones labelled too: the
    losses of label-smoothed runs span less than a decade, where 10^x labels would be few."""
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=8)


def _has(values):
    return any(not math.isnan(v) for v in values)


def plot_history(history, path, title="deepkern train"):
    """Loss (left) and accuracy (right) per epoch, training and validation, to a PNG."""
    plt = require_matplotlib()
    ep = history["epoch"]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_l.plot(ep, history["train_loss"], label="train", color="tab:blue")
    if _has(history["val_loss"]):
        ax_l.plot(ep, history["val_loss"], label="validation", color="tab:orange")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss (cross-entropy)")
    ax_l.set_yscale("log")
    _plain_log_ticks(ax_l)
    ax_l.grid(True, which="both", alpha=0.3)
    ax_l.legend()
    ax_a.plot(ep, [100 * a for a in history["train_acc"]], label="train (running, dropout on)", color="tab:blue")
    if _has(history["val_acc"]):
        ax_a.plot(ep, [100 * a for a in history["val_acc"]], label="validation", color="tab:orange")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("accuracy (%)")
    lo = min([100 * a for a in history["train_acc"][len(ep) // 5:]] or [0])
    ax_a.set_ylim(max(0.0, min(lo, 90.0) - 2), 100.5)
    ax_a.grid(True, alpha=0.3)
    ax_a.legend(loc="lower right")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_compare(histories, path, title="optimizer comparison"):
    """Training loss (left) and validation loss (right) per epoch of several runs, log scale.

    histories: an ordered dict label -> history (as Trainer.history)."""
    plt = require_matplotlib()
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True, sharey=True)
    cmap = plt.get_cmap("tab10")
    styles = ["-", "-", "--", "-", "-.", "-", "-", "--"]
    for i, (label, h) in enumerate(histories.items()):
        kw = dict(color=cmap(i % 10), linestyle=styles[i % len(styles)], linewidth=1.8, label=label)
        ax_t.plot(h["epoch"], h["train_loss"], **kw)
        if _has(h["val_loss"]):
            ax_v.plot(h["epoch"], h["val_loss"], **kw)
    for ax, what in ((ax_t, "training loss (mean over the epoch's batches)"), (ax_v, "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.grid(True, which="both", alpha=0.3)
    ax_v.tick_params(which="both", labelleft=True)
    ax_t.legend(ncol=2, fontsize=9)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
