"""The character model (lstm_jax.models.char_model) and experiments/char_lm/char_lstm.py."""

from __future__ import annotations

import functools
import importlib
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.data.text import Vocab, eval_windows, load_text, random_windows
from lstm_jax.models import char_model as cm
from lstm_jax.models import classifier, losses
from lstm_jax.models.spec import RecurrentSpec
from lstm_jax.train import TrainConfig, evaluate, fit


@pytest.fixture(scope="module")
def script():
    return importlib.import_module("experiments.char_lm.char_lstm")


@pytest.fixture(scope="module")
def zen():
    return load_text("zen")


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embed_dim", [None, 8])
def test_shapes_spec_record_and_carry_continuation(cell, embed_dim):
    spec = RecurrentSpec(cell=cell, hidden=6, layers=2)
    params = cm.init_char_model(jax.random.PRNGKey(0), 11, spec, embed_dim)
    config = cm.model_config(params, spec)
    assert config == {"spec": spec.to_dict(), "vocab_size": 11, "embed_dim": embed_dim}
    assert cm.spec_from_config(json.loads(json.dumps(config))) == spec  # as a checkpoint's metadata holds it
    ids = jax.random.randint(jax.random.PRNGKey(1), (3, 10), 0, 11)
    logits, carry = cm.char_logits(params, ids, spec)
    assert logits.shape == (3, 10, 11) and len(carry) == 2
    # Truncated BPTT consistency: two halves with the carry passed on == one pass.
    l1, c1 = cm.char_logits(params, ids[:, :4], spec)
    l2, c2 = cm.char_logits(params, ids[:, 4:], spec, c1)
    np.testing.assert_allclose(jnp.concatenate([l1, l2], axis=1), logits, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(c2), jax.tree_util.tree_leaves(carry)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Unbatched input.
    l_single, _ = cm.char_logits(params, ids[0], spec)
    np.testing.assert_allclose(l_single, logits[0], atol=1e-5)


def test_the_spec_is_what_runs_and_a_record_without_one_is_refused():
    spec = RecurrentSpec(cell="gru", hidden=6, layers=2)
    params = cm.init_char_model(jax.random.PRNGKey(0), 11, spec)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 11)
    ref, _ = cm.char_logits(params, ids, spec.replace(impl="scan"))  # the reference
    manual, _ = cm.char_logits(params, ids, spec.replace(impl="manual"))
    np.testing.assert_allclose(manual, ref, atol=1e-5)
    assert cm.sample(params, spec, _TinyVocab(), "ab", 4, temperature=0.0) == cm.sample(
        params, spec.replace(impl="manual"), _TinyVocab(), "ab", 4, temperature=0.0)
    with pytest.raises(ValueError, match="no model spec"):
        cm.spec_from_config({"cell": "gru", "layers": 2, "hidden": 6})  # an old record: nothing is guessed
    with pytest.raises(ValueError, match="unknown keys \\['heads'\\]"):
        RecurrentSpec.from_dict({**spec.to_dict(), "heads": 4})
    with pytest.raises(ValueError, match="unknown|cell"):
        RecurrentSpec(cell="transformer")
    with pytest.raises(ValueError, match="RecurrentSpec.impl"):
        RecurrentSpec(impl="fastest")
    with pytest.raises(TypeError, match="spec must be a RecurrentSpec"):
        cm.init_char_model(jax.random.PRNGKey(0), 11, "gru")


class _TinyVocab:
    """Ids 0..10 as the letters a..k."""

    def encode(self, text):
        return [ord(c) - ord("a") for c in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + int(i)) for i in ids)


def test_one_cross_entropy_for_both_models():
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 7))
    targets = jax.random.randint(jax.random.PRNGKey(1), (3, 4), 0, 7)
    assert classifier.cross_entropy is losses.cross_entropy
    per_item = losses.cross_entropy_per_item(logits, targets)
    assert per_item.shape == (3, 4)
    np.testing.assert_allclose(per_item, -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0],
                               rtol=1e-6)
    assert float(losses.cross_entropy(logits, targets)) == pytest.approx(float(per_item.mean()), rel=1e-6)
    # bf16 logits are scored in float32
    assert losses.cross_entropy_per_item(logits.astype(jnp.bfloat16), targets).dtype == jnp.float32
    spec = RecurrentSpec(hidden=5)
    params = cm.init_char_model(jax.random.PRNGKey(0), 7, spec)
    ids = jax.random.randint(jax.random.PRNGKey(2), (2, 6), 0, 7)
    loss, _ = cm.char_loss(params, ids, ids, spec)
    out, _ = cm.char_logits(params, ids, spec)
    assert float(loss) == pytest.approx(float(losses.cross_entropy(out, ids)), rel=1e-6)
    summed = cm.eval_step(params, (ids, ids), spec)
    assert float(summed["nats"]) == pytest.approx(float(loss) * ids.size, rel=1e-5) and float(summed["count"]) == ids.size


def test_loss_at_init_is_near_uniform_and_dropout_needs_key():
    v = 30
    spec = RecurrentSpec(hidden=16, dropout=0.5)
    params = cm.init_char_model(jax.random.PRNGKey(0), v, spec)
    ids = jnp.zeros((2, 5), jnp.int32)
    loss, _ = cm.char_loss(params, ids, ids, spec)
    assert abs(float(loss) - math.log(v)) < 0.3  # nats/char of a near-uniform prediction
    with pytest.raises(ValueError, match="dropout > 0 needs a jax.random key"):
        cm.char_logits(params, ids, spec, train=True)
    a, _ = cm.char_logits(params, ids, spec, key=jax.random.PRNGKey(0), train=True)
    b, _ = cm.char_logits(params, ids, spec, key=jax.random.PRNGKey(1), train=True)
    assert not np.allclose(a, b)
    c, _ = cm.char_logits(params, ids, spec, key=jax.random.PRNGKey(1))  # evaluation: no dropout
    np.testing.assert_array_equal(c, cm.char_logits(params, ids, spec)[0])


def test_bad_model_inputs():
    with pytest.raises(ValueError, match="RecurrentSpec.hidden must be a positive integer"):
        RecurrentSpec(hidden=0)
    with pytest.raises(ValueError, match="vocab_size"):
        cm.init_char_model(jax.random.PRNGKey(0), 0, RecurrentSpec(hidden=4))
    spec = RecurrentSpec(hidden=4)
    params = cm.init_char_model(jax.random.PRNGKey(0), 10, spec)
    with pytest.raises(ValueError, match="empty time axis"):
        cm.char_logits(params, jnp.zeros((2, 0), jnp.int32), spec)
    with pytest.raises(TypeError, match="integer"):
        cm.char_logits(params, jnp.zeros((2, 3), jnp.float32), spec)


# --------------------------------------------------------------------------- training on the embedded corpus


SPEC64 = RecurrentSpec(cell="lstm", hidden=64)


@pytest.fixture(scope="module")
def trained(zen, script):
    """A few hundred steps of a small LSTM on the Zen of Python (the shared fixture of the tests below)."""
    params = cm.init_char_model(jax.random.PRNGKey(0), zen.vocab.size, SPEC64)
    loss_fn = cm.make_loss_fn(SPEC64, stateful=False)
    cfg = TrainConfig(steps=300, learning_rate=1e-2, warmup_steps=20, log_every=25, eval_every=1000, progress=False)

    def get_batch(step):
        return random_windows(zen.train, 16, 32, seed=0, step=step)

    initial_val = cm.eval_split(params, zen.validation, SPEC64, 8, 32)
    res = fit(loss_fn, params, get_batch, cfg, items_per_batch=16 * 32, item_name="chars")
    return res, initial_val


def test_short_training_lowers_loss_clearly(trained, zen):
    res, _ = trained
    losses = [r["loss"] for r in res.history if r["kind"] == "train"]
    assert losses[0] > 3.0  # ~ln(43) at the start
    assert losses[-1] < 1.2, losses  # memorising a 740-char corpus
    assert losses[-1] < 0.4 * losses[0]
    assert res.history[-1]["chars_per_s"] > 0


def test_eval_on_held_out_split(trained, zen, script):
    res, initial_val = trained
    batches = eval_windows(zen.validation, 8, 32)
    n_chars = sum(t.size for _, t in batches)
    assert n_chars == len(zen.validation) - 1
    nats = evaluate(functools.partial(cm.eval_step, spec=SPEC64), res.params, batches)["nats"]
    # Same number from the script helper, and bits = nats / ln 2.
    r = cm.eval_split(res.params, zen.validation, SPEC64, 8, 32)
    assert r["nats_per_char"] == pytest.approx(nats)
    assert r["bits_per_char"] == pytest.approx(nats / math.log(2))
    # Held-out aphorisms are new text: the model does better than at init, not perfectly.
    assert math.isfinite(nats) and nats < initial_val["nats_per_char"]
    # Training text is (nearly) memorised: far lower loss than held-out text.
    train_nats = cm.eval_split(res.params, zen.train, SPEC64, 8, 32)["nats_per_char"]
    assert train_nats < nats


def test_stream_eval_is_one_pass_over_the_whole_split(trained, zen, script):
    """context="stream" equals scoring the whole split in one call from one zero state."""
    res, _ = trained
    ids = np.asarray(zen.validation)
    logits, _ = cm.char_logits(res.params, ids[None, :-1], SPEC64)
    whole = float(jnp.mean(losses.cross_entropy_per_item(logits, ids[None, 1:])))
    for seq_len in (7, 32, len(ids) - 1):  # 7 and 32 leave a short tail window
        r = cm.eval_split(res.params, zen.validation, SPEC64, 8, seq_len, context="stream")
        assert r["nats_per_char"] == pytest.approx(whole, rel=1e-5)
    # Zero-state windows lose the context at every window start: a worse loss on short windows.
    windowed = cm.eval_split(res.params, zen.validation, SPEC64, 8, 7)["nats_per_char"]
    assert windowed > whole + 0.05
    with pytest.raises(ValueError, match="context must be one of"):
        cm.eval_split(res.params, zen.validation, SPEC64, 8, 7, context="carried")


def test_sampling_reproducible_and_reproduces_corpus(trained, zen):
    res, _ = trained
    vocab = zen.vocab
    a = cm.sample(res.params, SPEC64, vocab, "Beautiful is", 120, temperature=0.5, seed=3)
    b = cm.sample(res.params, SPEC64, vocab, "Beautiful is", 120, temperature=0.5, seed=3)
    c = cm.sample(res.params, SPEC64, vocab, "Beautiful is", 120, temperature=1.5, seed=4)
    assert a == b and a != c
    assert a.startswith("Beautiful is") and len(a) == len("Beautiful is") + 120
    # Greedy decoding (temperature 0) == top_k=1, and follows the corpus.
    g = cm.sample(res.params, SPEC64, vocab, "Beautiful is", 40, temperature=0.0)
    assert g == cm.sample(res.params, SPEC64, vocab, "Beautiful is", 40, temperature=1.0, top_k=1, seed=9)
    assert g.startswith("Beautiful is better than")
    assert cm.sample(res.params, SPEC64, vocab, "Now", 0) == "Now"


def test_sampling_bad_inputs(trained, zen):
    res, _ = trained
    with pytest.raises(ValueError, match="not in the vocabulary|unknown|outside"):
        cm.sample(res.params, SPEC64, zen.vocab, "Zen ☃", 10)
    with pytest.raises(ValueError, match="non-empty"):
        cm.sample(res.params, SPEC64, zen.vocab, "", 10)
    with pytest.raises(ValueError, match="temperature"):
        cm.sample(res.params, SPEC64, zen.vocab, "a", 10, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        cm.sample(res.params, SPEC64, zen.vocab, "a", 10, top_k=0)


# --------------------------------------------------------------------------- the script


def test_script_train_then_sample_from_checkpoint(tmp_path, script, capsys):
    out = tmp_path / "run"
    args = ["--dataset", "zen", "--steps", "30", "--hidden", "32", "--seq-len", "16", "--batch-size", "8", "--eval-every", "15",
            "--checkpoint-every", "15", "--stateful", "--dropout", "0.1", "--layers", "2", "--out", str(out),
            "--no-progress", "--length", "40"]
    results = script.main(args)
    assert results["steps_done"] == 30
    for split in ("val", "test"):
        r = results["final"][split]
        assert math.isfinite(r["nats_per_char"]) and r["bits_per_char"] == pytest.approx(r["nats_per_char"] / math.log(2))
    saved = json.loads((out / "results.json").read_text())
    assert saved["sample"]["text"] == results["sample"]["text"]
    assert saved["machine"]["matmul_gflops"] > 0 and saved["machine"]["matmul_gflops_at_end"] > 0
    meta = json.loads((out / "metadata.json").read_text())
    assert Vocab.from_json(meta["vocab"]) == load_text("zen").vocab
    assert meta["model"]["spec"]["cell"] == "lstm" and meta["model"]["spec"]["layers"] == 2
    # The checkpoint restores with its spec and nothing else: no flag, no shape guessing.
    from lstm_jax.train import load_checkpoint

    params, restored = load_checkpoint(out, "last")
    spec = cm.spec_from_config(restored["model"])
    assert (spec.cell, spec.hidden, spec.layers, spec.dropout) == ("lstm", 32, 2, 0.1)
    assert spec.impl == meta["args"]["impl"] and spec.precision == meta["args"]["precision"]
    again = cm.eval_split(params, load_text("zen").test, spec, 1, 16, context="stream")["nats_per_char"]
    assert again == pytest.approx(results["final"]["test"]["stream_nats_per_char"], abs=1e-5)

    ev = script.main(["eval", "--checkpoint", str(out), "--which", "last", "--save", str(tmp_path / "ev.json")])
    assert ev["step"] == 30 and ev["eval_seq_len"] == 16
    assert ev["config"]["which"] == "last" and ev["config"]["mode"] == "eval"  # the record says how it was made
    for key in ("nats_per_char", "stream_nats_per_char"):  # training's final figures, both protocols
        assert ev["test"][key] == pytest.approx(results["final"]["test"][key], abs=1e-5)
    assert json.loads((tmp_path / "ev.json").read_text())["test"] == pytest.approx(ev["test"])
    only = script.main(["eval", "--checkpoint", str(out), "--eval-context", "stream"])
    assert set(only["val"]) == {"stream_nats_per_char", "stream_bits_per_char"}
    # 'heldout' scores validation and test as one text: its per-character loss, read as one stream, is the
    # length-weighted mean of theirs only where the state carried across the join changes nothing, so compare
    # windows (each from a zero state), whose per-window sums add up exactly when both splits fill whole windows.
    zen = load_text("zen")
    held = script.main(["eval", "--checkpoint", str(out), "--which", "last", "--eval-splits", "heldout",
                        "--eval-seq-len", "1", "--eval-context", "window"])
    assert set(held) >= {"heldout"} and "val" not in held and "test" not in held
    n_val, n_test = len(zen.validation) - 1, len(zen.test) - 1  # predictions per split at windows of 1
    one = script.main(["eval", "--checkpoint", str(out), "--which", "last", "--eval-seq-len", "1", "--eval-context", "window"])
    mixed = (one["val"]["nats_per_char"] * n_val + one["test"]["nats_per_char"] * n_test) / (n_val + n_test)
    assert held["heldout"]["nats_per_char"] == pytest.approx(mixed, rel=2e-3)
    with pytest.raises(SystemExit) as refused:  # argparse: "invalid choice: 'train'", exit status 2
        script.main(["eval", "--checkpoint", str(out), "--eval-splits", "train"])
    assert refused.value.code == 2

    sample_args = ["sample", "--checkpoint", str(out), "--prompt", "Simple", "--length", "50", "--seed", "7", "--top-k", "5"]
    s1 = script.main(sample_args)
    s2 = script.main(sample_args)
    assert s1 == s2 and s1.startswith("Simple") and len(s1) == 56
    with pytest.raises(SystemExit, match="not in the vocabulary|unknown|outside"):
        script.main(["sample", "--checkpoint", str(out), "--prompt", "Zen ☃"])
    with pytest.raises(SystemExit, match="no checkpoint"):
        script.main(["sample", "--checkpoint", str(tmp_path / "missing")])
    for mode in ("sample", "eval"):
        with pytest.raises(SystemExit, match=f"{mode} mode needs --checkpoint"):
            script.main([mode])
    # The run directory is refused without --resume (never clobbers a run) ...
    with pytest.raises(SystemExit, match="already holds checkpoints"):
        script.main(args)
    # ... and --resume of a finished run just re-evaluates.
    again = script.main(args + ["--resume"])
    assert again["steps_done"] == 30
    assert again["final"]["val"]["nats_per_char"] == pytest.approx(results["final"]["val"]["nats_per_char"], abs=1e-6)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--seq-len", "0"], "--seq-len must be >= 1"),
        (["--seq-len", "5000"], "too short for windows of --seq-len 5000"),
        (["--stateful", "--batch-size", "64", "--seq-len", "64"], "too short for 64 streams"),
        (["--dropout", "1.0"], "--dropout must lie in"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_script_bad_input(script, argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        script.main(["--dataset", "zen", *argv, "--no-progress"]
                    + ([] if "--resume" in argv else ["--out", str(tmp_path / "r")]))


def test_script_unknown_dataset_is_refused_by_the_parser(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--dataset", "wikipedia"])
    assert "invalid choice: 'wikipedia'" in capsys.readouterr().err


def test_default_run_is_the_quick_start_config(script):
    """No flags = configs/shakespeare_quick.toml: the quick start's values are the script's defaults."""
    from pathlib import Path

    from experiments.common import config

    path = Path(__file__).resolve().parents[1] / "configs" / "shakespeare_quick.toml"
    values = config.load_config(path)
    defaults = vars(script.build_parser().parse_args([]))
    assert {k: defaults[k] for k in values if k != "script"} == {k: v for k, v in values.items() if k != "script"}
    assert defaults["dataset"] == "tiny_shakespeare" and defaults["max_minutes"] == 3.0


def test_script_text_file_errors(script, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SystemExit, match="empty"):
        script.main(["--text-file", str(empty), "--no-progress", "--out", str(tmp_path / "a")])
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 5)
    with pytest.raises(SystemExit, match="too short"):
        script.main(["--text-file", str(short), "--seq-len", "64", "--no-progress", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="not found"):
        script.main(["--text-file", str(tmp_path / "nope.txt"), "--no-progress", "--out", str(tmp_path / "c")])


# --------------------------------------------------------------------------- one task protocol


def test_the_char_lm_the_classifier_and_the_regressor_are_one_task_protocol(zen):
    """fit trains each family through Task.loss and validates through Task.eval_fn; evaluate averages a split."""
    from lstm_jax.models.classifier import ClassifierConfig, classifier_task
    from lstm_jax.models.sequence_regressor import make_task, regressor_task
    from lstm_jax.models.task import Task

    rng = np.random.default_rng(0)
    images = (rng.normal(size=(16, 5, 3)).astype(np.float32), rng.integers(0, 3, 16).astype(np.int32))
    adding = make_task("adding", 6)
    families = {
        "char": (cm.char_task(zen.vocab.size, RecurrentSpec(hidden=8), eval_batch_size=4, eval_seq_len=8),
                 lambda step: random_windows(zen.train, 4, 8, seed=0, step=step), zen.validation),
        "classifier": (classifier_task(ClassifierConfig(input_size=3, num_classes=3, spec=RecurrentSpec(hidden=4)), 8),
                       lambda step: {"x": images[0][:8], "y": images[1][:8]}, images),
        "regressor": (regressor_task(adding, RecurrentSpec(hidden=4)),
                      adding.batch_fn(jax.random.key(1), 8), adding.batch_fn(jax.random.key(2), 16)(0)),
    }
    cfg = TrainConfig(steps=3, learning_rate=1e-2, warmup_steps=1, log_every=3, eval_every=3, progress=False)
    for name, (task, get_batch, held_out) in families.items():
        assert isinstance(task, Task), name
        res = fit(task.loss, task.init(jax.random.PRNGKey(0)), get_batch, cfg, eval_fn=task.eval_fn(held_out),
                  model_state=task.model_state, best_metric=f"val_{task.metric}")
        assert res.step == 3 and math.isfinite(res.best["val_" + task.metric]), name
        figures = task.evaluate(res.params, held_out)
        numbers = {k: v for k, v in figures.items() if isinstance(v, float)}
        assert numbers and all(math.isfinite(v) for v in numbers.values()), (name, figures)
        assert isinstance(task.report(figures), str) and task.report(figures), name
