"""The training scripts' tables and figures: a long-range sweep's table and plots (long_range.py) and a
classifier's confusion matrix and misclassified examples (mnist_lstm.py). Presentation only: each takes
the numbers a run recorded and writes a file; without matplotlib the figures are skipped, saying so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .figures import pyplot, save_figure

__all__ = ["draw_sweep", "plot_confusion", "plot_misclassified", "plot_sweep", "plot_sweep_curves", "sweep_table"]


def sweep_table(path: Path, task, runs: list[dict], args) -> None:
    lengths = sorted({r["T"] for r in runs})
    cells = [c for c in args.cells if any(r["cell"] == c for r in runs)]
    what = "test MSE" if task.name == "adding" else "test cross-entropy on the recall steps (nats)"
    lines = [
        f"Task: {task.name}; {what}, final (after the budget); trivial baseline {task.baseline:.3f}; "
        f"H={args.hidden}, {args.init} gate-bias init; "
        f"**bold** = at most {args.solved_threshold}. Cell entries: final error (steps run, seconds).",
        "",
        "| cell | " + " | ".join(f"T={T}" for T in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for c in cells:
        row = []
        for T in lengths:
            r = next((r for r in runs if r["cell"] == c and r["T"] == T), None)
            if r is None:
                row.append("—")
                continue
            v = f"{r['final_test']:.4f}"
            if r["final_test"] <= args.solved_threshold:
                v = f"**{v}**"
            row.append(f"{v} ({r['steps']}, {r['seconds']:.0f}s)")
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    lines += ["", f"First evaluation step with test error <= {args.solved_threshold} (— = never within the budget):", "",
              "| cell | " + " | ".join(f"T={T}" for T in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for c in cells:
        row = []
        for T in lengths:
            r = next((r for r in runs if r["cell"] == c and r["T"] == T), None)
            row.append("—" if r is None or r["solved_at_step"] is None else str(r["solved_at_step"]))
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot_sweep(path: Path, task, runs: list[dict], args) -> None:
    plt = pyplot(path)
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    markers = {"rnn": "o", "gru": "s", "lstm": "^", "min_gru": "D", "min_lstm": "v"}
    for c in args.cells:
        pts = sorted((r["T"], r["final_test"]) for r in runs if r["cell"] == c)
        if pts:
            ax.plot(*zip(*pts), marker=markers.get(c, "o"), label=c)
    ax.axhline(task.baseline, color="k", ls="--", lw=1,
               label=f"trivial baseline ({task.baseline:.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lengths = sorted({r["T"] for r in runs})
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(t) for t in lengths])
    ax.minorticks_off()
    ax.set_xlabel("T (sequence length)" if task.name == "adding" else "T (delay)")
    ax.set_ylabel("final test MSE" if task.name == "adding" else "final test xent (nats)")
    ax.set_title(f"{task.name}: H={args.hidden}, batch {args.batch_size}, <= {args.steps} steps\n"
                 "+ wall-clock cap per run (steps run: results.md)", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    save_figure(plt, fig, path)


def plot_sweep_curves(path: Path, task, runs: list[dict], args) -> None:
    """Test error vs training step, one panel per T, one line per cell."""
    plt = pyplot(path)
    if plt is None:
        return
    lengths = sorted({r["T"] for r in runs})
    fig, axes = plt.subplots(1, len(lengths), figsize=(2.6 * len(lengths) + 0.6, 2.8), dpi=100,
                             sharey=True, squeeze=False)
    for ax, T in zip(axes[0], lengths):
        for c in args.cells:
            r = next((r for r in runs if r["cell"] == c and r["T"] == T), None)
            if r and r["curve"]:
                ax.plot(*zip(*r["curve"]), label=c)
        ax.axhline(task.baseline, color="k", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"T={T}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test MSE" if task.name == "adding" else "test xent", fontsize=8)
    axes[0][0].legend(fontsize=7)
    save_figure(plt, fig, path)


def draw_sweep(out: Path, task, runs: list[dict], args) -> None:
    """A sweep's ``results.md`` (:func:`sweep_table`), ``long_range.png`` and ``curves.png`` in ``out``."""
    sweep_table(out / "results.md", task, runs, args)
    plot_sweep(out / "long_range.png", task, runs, args)
    plot_sweep_curves(out / "curves.png", task, runs, args)


def plot_confusion(cm: np.ndarray, class_names, path: Path, title: str) -> None:
    plt = pyplot(path)
    if plt is None:
        return
    n = len(cm)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    save_figure(plt, fig, path, dpi=110)


def plot_misclassified(images, labels, preds, probs, class_names, path: Path, max_items: int = 36) -> None:
    plt = pyplot(path)
    if plt is None:
        return
    wrong = np.flatnonzero(preds != labels)
    # the most confidently wrong first: they say most about the model
    wrong = wrong[np.argsort(-probs[wrong, preds[wrong]])][:max_items]
    cols = 6
    rows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 1.9))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[preds[i]]} ({probs[i, preds[i]]:.2f})", fontsize=6.5)
    fig.suptitle(f"{len(np.flatnonzero(preds != labels))} misclassified test images (most confident shown)", fontsize=9)
    save_figure(plt, fig, path, dpi=110)
