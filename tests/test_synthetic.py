"""The synthetic long-range tasks: documented layout, statistics, determinism, errors,
and a real (small) training run showing the adding problem is learnable."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.common.figures import matplotlib_installed
from lstm_jax.data import synthetic
from lstm_jax.data.synthetic import (
    ADDING_BASELINE_MSE,
    COPY_BLANK,
    adding_batch_fn,
    adding_problem,
    copy_batch_fn,
    copy_marker,
    copy_recall_slice,
    copy_task,
)
from lstm_jax.models.sequence_regressor import apply_sequence_model, init_sequence_model, make_task
from lstm_jax.models.spec import RecurrentSpec


# --------------------------------------------------------------------------- adding


@pytest.mark.parametrize("T", [2, 3, 10, 101])
def test_adding_layout_and_targets(T):
    x, y = adding_problem(jax.random.key(0), 64, T)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (64, T, 2) and y.shape == (64,)
    assert x.dtype == np.float32 and y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(markers)) <= {0.0, 1.0}
    # exactly two markers, one in each half
    half = T // 2
    assert (markers.sum(axis=1) == 2).all()
    assert (markers[:, :half].sum(axis=1) == 1).all()
    assert (markers[:, half:].sum(axis=1) == 1).all()
    # target = sum of the two marked values
    np.testing.assert_allclose(y, (values * markers).sum(axis=1), rtol=1e-6)


def test_adding_statistics():
    T = 20
    x, y = adding_problem(jax.random.key(1), 20000, T)
    x, y = np.asarray(x), np.asarray(y)
    assert abs(x[..., 0].mean() - 0.5) < 0.01
    assert abs(y.mean() - 1.0) < 0.01
    # predicting 1.0 costs Var(U1+U2) = 1/6
    assert abs(np.mean((y - 1.0) ** 2) - ADDING_BASELINE_MSE) < 0.006
    # marker positions are uniform over each half
    pos = np.argmax(x[..., 1], axis=1)  # first marker
    counts = np.bincount(pos, minlength=T)
    assert counts[T // 2 :].sum() == 0
    assert counts[: T // 2].min() > 0.8 * 20000 / (T // 2)


def test_adding_deterministic_per_key():
    a = adding_problem(jax.random.key(3), 8, 30)
    b = adding_problem(jax.random.key(3), 8, 30)
    c = adding_problem(jax.random.key(4), 8, 30)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    get = adding_batch_fn(jax.random.key(3), 8, 30)
    np.testing.assert_array_equal(get(5)[0], get(5)[0])
    assert not np.array_equal(get(5)[0], get(6)[0])


def test_adding_dtype():
    x, y = adding_problem(jax.random.key(0), 2, 4, dtype=jnp.bfloat16)
    assert x.dtype == jnp.bfloat16 and y.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- copy


@pytest.mark.parametrize("T,length,K", [(0, 1, 2), (5, 3, 4), (50, 10, 8)])
def test_copy_layout(T, length, K):
    x, y = copy_task(jax.random.key(0), 32, T, num_symbols=K, length=length)
    x, y = np.asarray(x), np.asarray(y)
    N = 2 * length + T
    assert x.shape == y.shape == (32, N) and x.dtype == np.int32 and y.dtype == np.int32
    symbols = x[:, :length]
    assert ((symbols >= 1) & (symbols <= K)).all()
    assert (x[:, length : length + T] == COPY_BLANK).all()
    assert (x[:, length + T] == copy_marker(K)).all()
    assert (x[:, length + T + 1 :] == COPY_BLANK).all()
    # targets are the inputs shifted by delay + length, blank elsewhere
    shift = length + T
    np.testing.assert_array_equal(y[:, shift : shift + length], x[:, :length])
    assert (y[:, :shift] == COPY_BLANK).all()
    np.testing.assert_array_equal(y[:, copy_recall_slice(T, length)], symbols)
    assert synthetic.copy_seq_len(T, length) == N


def test_copy_symbols_uniform_and_deterministic():
    x, _ = copy_task(jax.random.key(2), 4000, 3, num_symbols=4, length=5)
    counts = np.bincount(np.asarray(x[:, :5]).ravel(), minlength=5)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / counts[1:].sum() - 0.25) < 0.02)
    a, b = copy_task(jax.random.key(9), 3, 7), copy_task(jax.random.key(9), 3, 7)
    np.testing.assert_array_equal(a[0], b[0])
    get = copy_batch_fn(jax.random.key(9), 3, 7)
    np.testing.assert_array_equal(get(1)[1], get(1)[1])
    assert math.isclose(synthetic.copy_baseline_xent(8), math.log(8))


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="T must be >= 2"):
        adding_problem(key, 4, 1)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        adding_problem(key, 0, 10)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        copy_task(key, 0, 10)
    with pytest.raises(ValueError, match="T must be >= 0"):
        copy_task(key, 4, -1)
    with pytest.raises(ValueError, match="num_symbols must be >= 2"):
        copy_task(key, 4, 5, num_symbols=1)
    with pytest.raises(ValueError, match="length must be >= 1"):
        copy_task(key, 4, 5, length=0)
    with pytest.raises(TypeError, match="T must be an int"):
        adding_problem(key, 4, 10.5)
    with pytest.raises(TypeError, match="key"):
        adding_problem(0, 4, 10)
    with pytest.raises(ValueError, match="T must be >= 2"):
        make_task("adding", 1)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("parity", 10)


# --------------------------------------------------------------------------- learnability


def test_model_shapes():
    task = make_task("copy", 4, num_symbols=3, length=2)
    spec = RecurrentSpec(cell="gru", hidden=8)
    p = init_sequence_model(jax.random.key(0), spec, task.input_size, task.output_size)
    x, y = task.batch_fn(jax.random.key(1), 5)(0)
    out = apply_sequence_model(p, task.prepare(x), spec, readout="all")
    assert out.shape == (5, 8, 5)
    loss, metrics = task.model_loss(spec, p, (x, y))
    assert np.isfinite(loss) and set(metrics) == {"xent", "accuracy"}


@pytest.mark.slow  # end-to-end; `python -m pytest -m slow`
def test_lstm_learns_adding_T10():
    """A real training run: LSTM (H=32) on T=10, 400 Adam steps -> test MSE < 0.05
    (the memoryless baseline is 0.167)."""
    task = make_task("adding", 10)
    spec = RecurrentSpec(cell="lstm", hidden=32)
    params = init_sequence_model(jax.random.key(0), spec, task.input_size, 1)
    get_batch = task.batch_fn(jax.random.key(1), 64)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    state = opt.init(params)

    @jax.jit
    def train_step(params, state, batch):
        (loss, _), grads = jax.value_and_grad(lambda p: task.model_loss(spec, p, batch), has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    for step in range(400):
        params, state, _ = train_step(params, state, get_batch(step))
    test = adding_problem(jax.random.key(123), 1000, 10)
    mse, _ = task.model_loss(spec, params, test)
    assert float(mse) < 0.05, float(mse)


@pytest.mark.slow  # end-to-end; `python -m pytest -m slow`
def test_long_range_script_smoke(tmp_path):
    """experiments/long_range/long_range.py end to end on a tiny sweep: JSON, table and PNG written."""
    import importlib
    import json

    mod = importlib.import_module("experiments.long_range.long_range")
    mod.main(["--lengths", "4", "--cells", "rnn", "lstm", "--hidden", "4", "--batch-size", "8", "--steps", "6",
              "--eval-every", "3", "--warmup-steps", "2", "--test-size", "16", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "results.json").read_text())
    assert [(r["cell"], r["T"], r["steps"]) for r in record["runs"]] == [("rnn", 4, 6), ("lstm", 4, 6)]
    assert all(np.isfinite(r["final_test"]) for r in record["runs"])
    assert len(record["machine"]["load_average_at_start"]) == 3
    assert record["machine"]["matmul_gflops"] > 0 and record["machine"]["matmul_gflops_at_end"] > 0  # measured here
    assert "| lstm |" in (tmp_path / "results.md").read_text()
    if matplotlib_installed():  # without matplotlib the figures are skipped, saying so
        assert (tmp_path / "long_range.png").stat().st_size > 0


_CHRONO_TINY = ["--task", "copy", "--lengths", "4", "--copy-length", "2", "--hidden", "4", "--batch-size", "8",
                "--steps", "2", "--eval-every", "2", "--warmup-steps", "1", "--test-size", "8", "--init", "chrono"]


def test_long_range_chrono_init_refuses_cells_without_a_keep_gate_before_any_run(tmp_path):
    import importlib

    mod = importlib.import_module("experiments.long_range.long_range")
    with pytest.raises(SystemExit, match=r"--init chrono: cells \['rnn'\] have no keep gate"):
        mod.main(_CHRONO_TINY + ["--cells", "rnn", "lstm", "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()  # refused before any run


def test_long_range_chrono_init_runs_and_is_recorded(tmp_path):
    import importlib
    import json

    mod = importlib.import_module("experiments.long_range.long_range")
    tiny = _CHRONO_TINY
    mod.main(tiny + ["--cells", "lstm", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["args"]["init"] == "chrono" and record["runs"][0]["steps"] == 2
    assert "chrono gate-bias init" in (tmp_path / "results.md").read_text()
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(SystemExit, match=r"holds a sweep of another configuration: init 'chrono' \(not 'standard'\)$"):
        mod.main([a for a in tiny if a not in ("--init", "chrono")] + ["--cells", "lstm", "--append", "--out", str(tmp_path)])
    # --append, like --merge, refuses any setting that makes runs incomparable (here the hidden size), before training
    with pytest.raises(SystemExit, match=r"another configuration: hidden 4 \(not 5\)$"):
        mod.main(tiny + ["--cells", "gru", "--hidden", "5", "--append", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").read_text() == before


def test_long_range_model_restores_with_its_spec_alone(tmp_path):
    """Each (cell, T) run keeps its model; the checkpoint's spec and task rebuild it, and its test loss is the
    table's. A rerun of the run (--append) keeps the first model and saves beside it."""
    import importlib
    import json

    from lstm_jax.models.sequence_regressor import regressor_from_config, regressor_task
    from lstm_jax.train import load_checkpoint

    mod = importlib.import_module("experiments.long_range.long_range")
    mod.main(_CHRONO_TINY + ["--cells", "lstm", "--out", str(tmp_path)])
    row = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert row["model_dir"] == "models/lstm-T4"
    params, meta = load_checkpoint(tmp_path / row["model_dir"], "last")
    task, spec = regressor_from_config(meta["model"])
    assert (spec.cell, spec.hidden, task.name, task.T) == ("lstm", 4, "copy", 4)
    test_batch = task.batch_fn(jax.random.key(10_000), 8)(0)  # the script's test set: seed 0, --test-size 8
    again = regressor_task(task, spec).evaluate(params, test_batch)[task.metric]
    assert again == pytest.approx(row["final_test"], rel=1e-5)
    mod.main(_CHRONO_TINY + ["--cells", "lstm", "--append", "--out", str(tmp_path)])
    rerun = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert rerun["model_dir"] == "models/lstm-T4-2" and (tmp_path / "models" / "lstm-T4" / "metadata.json").is_file()


@pytest.mark.slow  # an end-to-end script or process run of 5-20 s; CI's slow tier runs it
def test_long_range_merge_joins_side_by_side_sweeps_and_refuses_mismatches(tmp_path):
    """--merge: two sweeps of one configuration become one table; another configuration or a pair
    present twice is refused with one line, and the target is left as it was."""
    import importlib
    import json

    mod = importlib.import_module("experiments.long_range.long_range")
    tiny = ["--task", "copy", "--copy-length", "2", "--batch-size", "8", "--steps", "2", "--eval-every", "2",
            "--warmup-steps", "1", "--test-size", "8", "--cells", "lstm", "--impl", "scan", "--precision", "fp32"]
    mod.main(tiny + ["--lengths", "4", "--hidden", "4", "--out", str(tmp_path / "a")])
    mod.main(tiny + ["--lengths", "6", "--hidden", "4", "--out", str(tmp_path / "b")])
    # a sweep recorded with another hidden size (b's record, one argument changed: no third training run)
    other = json.loads((tmp_path / "b" / "results.json").read_text())
    other["args"]["hidden"] = 5
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text(json.dumps(other))

    a_before = (tmp_path / "a" / "results.json").read_text()
    with pytest.raises(SystemExit, match=r"--merge: .*c is a different configuration from .*a: hidden 5 \(not 4\)"):
        mod.main(["--out", str(tmp_path / "a"), "--merge", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match=r"--merge: lstm at T=4 is in both"):
        mod.main(["--out", str(tmp_path / "a"), "--merge", str(tmp_path / "a")])
    assert (tmp_path / "a" / "results.json").read_text() == a_before  # nothing written on a refusal

    mod.main(["--out", str(tmp_path / "a"), "--merge", str(tmp_path / "b")])
    record = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [(r["cell"], r["T"]) for r in record["runs"]] == [("lstm", 4), ("lstm", 6)]
    assert record["runs"][1] == b["runs"][0]  # the run itself, unchanged
    assert record["earlier_invocations"][-1]["args"]["lengths"] == [6]
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| cell | T=4 | T=6 |" in table and "H=4" in table
    # Records are frozen: one in an older format (here without "init") is read by no code, refused in one line.
    old = json.loads((tmp_path / "b" / "results.json").read_text())
    del old["args"]["init"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))
    for flag in (["--replot"], ["--merge", str(tmp_path / "b")]):
        with pytest.raises(SystemExit, match=r"results.json is not in the current record format \(no init\)"):
            mod.main(["--out", str(tmp_path / "old"), *flag])
