"""The analysis scripts' figures: gate heatmaps and a cell state over text (gate_activity.py), gradient
profiles through time and recurrent-weight gradient norms (gradient_flow.py). Presentation only: each takes
the numbers a run measured and writes a PNG; without matplotlib the figures are skipped, saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.common.figures import pyplot, save_figure

__all__ = ["CELL_COLORS", "GATE_ROWS", "plot_cell_text", "plot_heatmap", "plot_profiles", "plot_weight_norms", "show_char"]

#: The LSTM gates a heatmap shows per unit, with their short labels.
GATE_ROWS = (("input", "i"), ("forget", "f"), ("output", "o"))
#: One color per classic cell in gradient_flow's two figures.
CELL_COLORS = {"rnn": "C0", "gru": "C1", "lstm": "C2"}


def show_char(ch: str) -> str:
    return {"\n": "⏎", " ": "␣", "\t": "⇥"}.get(ch, ch)


def plot_heatmap(path: Path, text: str, layer: dict, units: list[int], title: str) -> None:
    plt = pyplot(path)
    if plt is None:
        return
    n = len(text)
    rows, labels, kinds = [], [], []
    for u in units:
        for key, short in GATE_ROWS:
            rows.append(np.asarray(layer[key][:, u]))
            labels.append(f"unit {u}: {short}")
            kinds.append("gate")
        rows.append(np.tanh(np.asarray(layer["cell"][:, u])))
        labels.append(f"unit {u}: tanh c")
        kinds.append("cell")
    fig_h = 0.9 + 0.28 * len(rows)
    fig, ax = plt.subplots(figsize=(max(8, 0.13 * n + 1.5), fig_h), dpi=90)
    gate_img = np.ma.masked_array(np.array(rows), mask=np.array([[k != "gate"] * n for k in kinds]))
    cell_img = np.ma.masked_array(np.array(rows), mask=np.array([[k != "cell"] * n for k in kinds]))
    im_g = ax.imshow(gate_img, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    im_c = ax.imshow(cell_img, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    for k in range(4, len(rows), 4):
        ax.axhline(k - 0.5, color="white", lw=1.5)
    ax.set_xticks(range(n))
    ax.set_xticklabels([show_char(c) for c in text], fontsize=7, family="monospace")
    ax.tick_params(axis="x", length=0, labeltop=True)
    ax.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    cax_g = fig.add_axes((0.935, 0.15, 0.008, 0.7))
    cax_c = fig.add_axes((0.965, 0.15, 0.008, 0.7))
    fig.colorbar(im_g, cax=cax_g).set_label("gate i / f / o", fontsize=7)
    fig.colorbar(im_c, cax=cax_c).set_label("tanh(c)", fontsize=7)
    fig.savefig(path)
    plt.close(fig)


def plot_cell_text(path: Path, text: str, values: np.ndarray, title: str, width: int = 80) -> None:
    plt = pyplot(path)
    if plt is None:
        return
    from matplotlib.colors import Normalize

    # lay out by the text's own lines, wrapping long ones
    lines, line, vals, cur = [], "", [], []
    for ch, v in zip(text, values):
        if ch == "\n" or len(line) >= width:
            lines.append(line + ("⏎" if ch == "\n" else ""))
            vals.append(cur + ([v] if ch == "\n" else []))
            line, cur = "", []
            if ch == "\n":
                continue
        line += ch
        cur.append(v)
    if line:
        lines.append(line)
        vals.append(cur)
    cols = max(len(l) for l in lines)
    fig, ax = plt.subplots(figsize=(0.105 * cols + 0.6, 0.22 * len(lines) + 0.7), dpi=90)
    cmap, norm = plt.get_cmap("RdBu_r"), Normalize(-1, 1)
    for r, (l, vs) in enumerate(zip(lines, vals)):
        for c, (ch, v) in enumerate(zip(l, vs)):
            ax.add_patch(plt.Rectangle((c, -r - 1), 1, 1, color=cmap(norm(v)), lw=0))
            ax.text(c + 0.5, -r - 0.5, ch, ha="center", va="center", fontsize=7, family="monospace")
    ax.set_xlim(0, cols)
    ax.set_ylim(-len(lines), 0)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    save_figure(plt, fig, path)


def plot_profiles(path, results, T):
    plt = pyplot(path)
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100, sharey=True)
    for ax, when in zip(axes, ("init", "trained")):
        for cell, r in results.items():
            prof = r[when]
            k = np.arange(len(prof["h"]))
            ax.plot(k, prof["h"], color=CELL_COLORS[cell], label=f"{cell}: dL/dh")
            if "c" in prof:
                ax.plot(k, prof["c"], color=CELL_COLORS[cell], ls="--", label=f"{cell}: dL/dc")
        ax.set_yscale("log")
        ax.set_xlabel("distance from the last step, T - t")
        title = "at initialisation" if when == "init" else "after training"
        ax.set_title(f"{title} (adding, T={T})", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("batch-mean ||dL/d state_t||")
    axes[1].legend(fontsize=8)
    save_figure(plt, fig, path)


def plot_weight_norms(path, results, baseline):
    plt = pyplot(path)
    if plt is None:
        return
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5), dpi=100, sharex=True)
    for cell, r in results.items():
        steps = np.array(r["steps"])
        g = np.array(r["w_h_grad_norm"])
        loss = np.array(r["train_loss"])
        w = 25
        raw_label = None if len(g) > w else cell
        a1.plot(steps, g, color=CELL_COLORS[cell], alpha=0.25, lw=0.6, label=raw_label)
        a2.plot(steps, loss, color=CELL_COLORS[cell], alpha=0.25, lw=0.6, label=raw_label)
        if len(g) > w:
            kern = np.ones(w) / w
            a1.plot(steps[w - 1 :], np.convolve(g, kern, "valid"), color=CELL_COLORS[cell], label=cell)
            a2.plot(steps[w - 1 :], np.convolve(loss, kern, "valid"), color=CELL_COLORS[cell], label=cell)
    a2.axhline(baseline, color="k", ls="--", lw=1, label=f"baseline {baseline:.3f}")
    a1.set_yscale("log")
    a2.set_yscale("log")
    a1.set_ylabel("||dL/dw_h||_F per step")
    a1.set_title("recurrent-weight gradient per training step (faint) and 25-step mean", fontsize=9)
    a2.set_ylabel("train MSE")
    a2.set_xlabel("training step")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.grid(alpha=0.3)
    save_figure(plt, fig, path)
