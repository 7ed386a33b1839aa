"""mnist_lstm.py's report of a classifier run: the test figures under the script's result keys (with the
confusion matrix and per-class accuracy) and its two figures, from what the run epilogue evaluated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lstm_jax.models.classifier import confusion_matrix

from experiments.common.run_figures import plot_confusion, plot_misclassified

__all__ = ["test_figures", "plot_test"]


def test_figures(args, steps: int, steps_per_epoch: int, result, t0: float, test_ys, num_classes: int):
    """``extra(final, best)`` for :func:`experiments.common.epilogue.finish_run`: the test figures of the
    best (or last) and the final params under mnist_lstm's result keys; ``"_test"`` keeps the best's arrays."""
    def extra(final, best):
        which = "best" if result.best is not None else "last"
        r, f = best["test"], final["test"]
        cm = confusion_matrix(np.asarray(test_ys), r["predictions"], num_classes)
        rates = [h["images_per_s"] for h in result.history if h.get("kind") == "train" and "images_per_s" in h]
        return {"dataset": args.dataset, "mode": args.mode, "cell": args.cell, "hidden": args.hidden,
                "layers": args.layers, "bidirectional": args.bidirectional, "test_accuracy": r["accuracy"],
                "test_loss": r["loss"], "test_examples": r["count"], "checkpoint": which,
                "checkpoint_step": best["step"], "final_test_accuracy": f["accuracy"], "final_test_loss": f["loss"],
                "steps_planned": int(steps), "epochs_done": result.step / steps_per_epoch,
                "best_val": result.best, "wall_seconds_this_session": time.perf_counter() - t0,
                "train_images_per_s_median": float(np.median(rates)) if rates else None,
                "per_class_accuracy": (np.diag(cm) / np.maximum(cm.sum(1), 1)).round(4).tolist(),
                "confusion_matrix": cm.tolist(), "resumed": args.resume, "layer": args.layer_choice,
                "_test": r}  # for the plots (arrays); "_" keys are not written
    return extra


def plot_test(out: Path, args, results: dict, r: dict, data: dict, num_classes: int) -> None:
    """``confusion_matrix.png`` and ``misclassified.png`` of the test figures ``r`` (with predictions, logits)."""
    names = data["class_names"] or tuple(str(i) for i in range(num_classes))
    title = f"{args.dataset} {args.mode} {args.cell} {args.layers}x{args.hidden}: test acc {r['accuracy']:.2%}"
    plot_confusion(np.asarray(results["confusion_matrix"]), names, out / "confusion_matrix.png", title)
    probs = np.exp(r["logits"] - r["logits"].max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    test_ys = data["test"][1]
    plot_misclassified(data["test_images"][: len(test_ys)], test_ys, r["predictions"], probs, names,
                       out / "misclassified.png")
