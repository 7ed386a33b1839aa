"""Metrics go where users look: ``fit``'s metrics callback, and TensorBoard event files from ``--tensorboard``.

The event files are read back with TensorFlow's own reader (``tf.compat.v1.train.summary_iterator``),
not with the library that wrote them.
"""

from __future__ import annotations

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.train import TensorBoardWriter, TrainConfig, fit


def loss_fn(params, batch, key, model_state):
    loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
    return loss, (model_state, {"w0": params["w"][0]})


def get_batch(step):
    x = jax.random.normal(jax.random.PRNGKey(step), (8, 2))
    return {"x": x, "y": x @ jnp.array([1.0, -2.0])}


def eval_fn(params):
    return {"val_loss": jnp.sum((params["w"] - jnp.array([1.0, -2.0])) ** 2)}


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file under ``folder``: tag -> [(step, value)], in file order."""
    import tensorflow as tf

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_fit_calls_the_metrics_callback_with_every_logged_record(tmp_path):
    calls = []
    config = TrainConfig(steps=12, learning_rate=0.1, warmup_steps=2, weight_decay=0.0, log_every=4, eval_every=6,
                         progress=False)
    fit(loss_fn, {"w": jnp.zeros(2)}, get_batch, config, out_dir=tmp_path, eval_fn=eval_fn,
        metrics=lambda step, scalars: calls.append((step, scalars)))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in calls] == [r["step"] for r in records]
    train = [(s, m) for s, m in calls if "train/loss" in m]
    assert [s for s, _ in train] == [4, 8, 12]
    assert [m["train/loss"] for _, m in train] == [r["loss"] for r in records if r["kind"] == "train"]
    assert {"train/lr", "train/w0", "train/steps_per_s"} <= set(train[0][1])
    evals = [(s, m["eval/val_loss"]) for s, m in calls if "eval/val_loss" in m]
    assert [s for s, _ in evals] == [6, 12] and evals[1][1] < evals[0][1]
    assert all(isinstance(v, float) for _, m in calls for v in m.values())


def test_tensorboard_writer_event_file_holds_the_loss_curve(tmp_path):
    config = TrainConfig(steps=20, learning_rate=0.1, warmup_steps=2, weight_decay=0.0, log_every=5, eval_every=10,
                         progress=False)
    with TensorBoardWriter(tmp_path / "tb") as tb:
        result = fit(loss_fn, {"w": jnp.zeros(2)}, get_batch, config, eval_fn=eval_fn, metrics=tb)
    scalars = read_scalars(tmp_path / "tb")
    losses = [r["loss"] for r in result.history if r["kind"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [5, 10, 15, 20]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], losses, rtol=1e-6)
    assert scalars["train/loss"][-1][1] < scalars["train/loss"][0][1] / 2  # the curve goes down
    assert [s for s, _ in scalars["eval/val_loss"]] == [10, 20]


def test_unused_writer_makes_no_event_file(tmp_path):
    with TensorBoardWriter(tmp_path / "tb"):
        pass
    assert not (tmp_path / "tb").exists()


def test_char_lstm_tensorboard_flag_writes_the_loss_curve_in_the_run_directory(tmp_path):
    run = tmp_path / "run"
    script = importlib.import_module("experiments.char_lm.char_lstm")
    script.main(["--dataset", "zen", "--steps", "6", "--hidden", "8", "--seq-len", "8", "--batch-size", "2",
                 "--log-every", "2", "--eval-every", "3", "--no-progress", "--out", str(run), "--length", "5",
                 "--tensorboard"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(run / "tensorboard")
    train = [r for r in records if r["kind"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in train] == [2, 4, 6]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [r["loss"] for r in train], rtol=1e-6)
    assert [s for s, _ in scalars["eval/val_loss"]] == [3, 6]
