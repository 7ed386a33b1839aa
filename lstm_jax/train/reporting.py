"""What a training run reports: ``metrics.jsonl``, the progress bar, the loss-curve PNG.

Used by :func:`lstm_jax.train.fit`; nothing here touches params or devices.

* :class:`MetricsLog`: the run's records (one JSON object per line of
  ``metrics.jsonl``), rewritten on resume so it holds exactly the steps done.
* :class:`StepLogger`: per-step bookkeeping of the loop -- means of the step
  stats over a window of ``log_every`` steps (written as ``kind="train"``
  records with learning rate and throughput), an exponential moving average of
  the loss, and the tqdm progress bar that shows it.
* :func:`plot_history` / :func:`save_loss_curve`: the loss curve PNG.
* :class:`TensorBoardWriter`: a metrics callback of ``fit`` that writes TensorBoard event files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["MetricsLog", "StepLogger", "TensorBoardWriter", "plot_history", "record_scalars", "save_loss_curve"]

class MetricsLog:
    """Records of a run, kept in memory and appended to ``path`` (JSON lines) if given.

    ``resume_step``: when resuming, the records up to and including that step are
    read back from ``path`` and the file is rewritten without the later ones
    (those steps will be run again); ``None`` starts an empty log.
    ``on_record(step, scalars)``: called with every record written from now on
    (not the ones read back), as :func:`record_scalars` names them.
    """

    def __init__(self, path: Path | None, resume_step: int | None,
                 on_record: Callable[[int, dict[str, float]], None] | None = None):
        self.path = path
        self.on_record = on_record
        self.records: list[dict] = []
        if path is None:
            return
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if rec.get("step", 0) <= resume_step:
                    self.records.append(rec)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        tmp.replace(path)

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.on_record is not None:
            self.on_record(record["step"], record_scalars(record))


def record_scalars(record: dict) -> dict[str, float]:
    """The numbers of a record, named ``<kind>/<key>``: ``{"train/loss": 2.1, "train/lr": 0.01, ...}``,
    ``{"eval/val_loss": 1.9, ...}`` (flags such as ``partial`` and the step itself are left out)."""
    kind = record.get("kind", "train")
    return {f"{kind}/{k}": float(v) for k, v in record.items()
            if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardWriter:
    """A metrics callback for :func:`lstm_jax.train.fit` that writes TensorBoard event files (with ``tensorboardX``).

    ``TensorBoardWriter(log_dir)(step, {"train/loss": 2.1, ...})`` adds one scalar per
    name at ``step`` and flushes, so a running ``tensorboard --logdir`` sees every
    record as it is written. The event file is opened at the first call (so a
    process that never reports makes none). A resumed run adds a new event file
    beside the old ones. Use as a context manager, or call :meth:`close`.

    Example::

        with TensorBoardWriter("runs/x/tensorboard") as tb:
            fit(loss_fn, params, get_batch, config, out_dir="runs/x", metrics=tb)
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer: Any = None  # a tensorboardX SummaryWriter once opened

    def __call__(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:
            from tensorboardX import SummaryWriter  # imported on first use: import lstm_jax stays light

            self._writer = SummaryWriter(logdir=str(self.log_dir))
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StepLogger:
    """Window means, loss moving average and progress bar of the training loop.

    Args:
        log: where the ``kind="train"`` records go.
        total_steps: the run's ``config.steps``.
        log_every: the run's ``config.log_every``; a record is written every
            ``log_every`` steps, at the last step and when the loop stops inside a
            window; ``window_steps`` says how many steps its means cover, and
            ``partial: true`` marks a short window.
        start_step: the step the loop starts from (``> 0`` when resumed).
        schedule: ``schedule(step) -> learning rate``; each record holds the rate
            of its window's last step (``None``: records carry no ``lr``).
        items_per_batch: items per batch, for the throughput in items per second.
        item_name: what an item is (e.g. ``"chars"``): the throughput is logged as
            ``<item_name>_per_s`` and shown in the bar.
        progress: show a tqdm bar.
        t_start: ``time.perf_counter()`` at the start of the loop (for ``elapsed_s``).
    """

    def __init__(
        self,
        log: MetricsLog,
        *,
        total_steps: int,
        log_every: int,
        start_step: int,
        schedule: Callable[[int], float] | None,
        items_per_batch: int | None = None,
        item_name: str = "items",
        progress: bool = True,
        t_start: float | None = None,
    ):
        self.log = log
        self.total_steps = total_steps
        self.log_every = log_every
        self.schedule = schedule
        self.items_per_batch = items_per_batch
        self.item_name = item_name
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")
        self.running_loss: float | None = None  # exponential moving average, for the bar
        self._last_step = start_step
        self._reset_window()

    def _reset_window(self) -> None:
        self._n = 0
        self._sums: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def step_done(self, step: int, stats: dict[str, float]) -> None:
        """Account for the step that has just brought the run to ``step`` (1-based count of steps done)."""
        loss = stats["loss"]
        self.running_loss = loss if self.running_loss is None else 0.98 * self.running_loss + 0.02 * loss
        self._n += 1
        self._last_step = step
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        if step % self.log_every == 0 or step == self.total_steps:
            self._write_window(step)
        if self.bar is not None:
            self.bar.update(1)
            if step % max(1, min(self.log_every, 10)) == 0 or step == self.total_steps:
                post = {"loss": f"{self.running_loss:.4f}"}
                rate = self.bar.format_dict.get("rate")
                if rate:
                    post[f"{self.item_name}/s"] = f"{rate * (self.items_per_batch or 1):,.0f}"
                self.bar.set_postfix(post, refresh=False)

    def _write_window(self, step: int) -> None:
        now = time.perf_counter()
        dt = now - self._t0
        rec = {"kind": "train", "step": step}
        rec.update({k: v / self._n for k, v in self._sums.items()})
        if self.schedule is not None:
            rec["lr"] = float(self.schedule(step - 1))
        rec["steps_per_s"] = self._n / dt
        if self.items_per_batch:
            rec[f"{self.item_name}_per_s"] = self._n * self.items_per_batch / dt
        rec["elapsed_s"] = now - self.t_start
        # How many steps the means cover. A window is short after a resume from a
        # step inside a window, at a time-budget stop and at the run's last step;
        # it is marked so that its mean is not read as one of log_every steps.
        rec["window_steps"] = self._n
        if self._n < self.log_every:
            rec["partial"] = True
        self.log.write(rec)
        self._reset_window()

    def eval_done(self, step: int, metrics: dict[str, float]) -> None:
        """Show an evaluation's metrics above the bar (without a bar they are only in the log)."""
        if self.bar is not None:
            self.bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    def message(self, text: str) -> None:
        """Print a line without breaking the bar."""
        (self.bar.write if self.bar is not None else print)(text)

    def elapsed(self) -> float:
        """Seconds since ``t_start``."""
        return time.perf_counter() - self.t_start

    def close(self) -> None:
        """Write the steps of an unfinished window (a stop inside one), then close the bar."""
        if self._n:
            self._write_window(self._last_step)
        if self.bar is not None:
            self.bar.close()


def plot_history(records: list[dict], path: str | Path, *, title: str | None = None) -> None:
    """Loss curve PNG: training loss per logged step, and every eval metric ending in ``loss``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1.2)
    keys = sorted({k for r in evals for k in r if k.endswith("loss")})
    for k in keys:
        pts = [(r["step"], r[k]) for r in evals if k in r]
        ax.plot(*zip(*pts), marker="o", ms=3, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)  # readers never see a half-written PNG
    finally:
        plt.close(fig)


def save_loss_curve(records: list[dict], path: str | Path) -> None:
    """:func:`plot_history`, but a plotting problem only prints a warning.

    A broken matplotlib must never kill (or hide the result of) a training run.
    """
    try:
        plot_history(records, path)
    except Exception as e:  # noqa: BLE001
        print(f"warning: could not write {path}: {type(e).__name__}: {e}")
