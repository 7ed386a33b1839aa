"""Character-level language model: train on a corpus, evaluate, sample.

Train (default: the embedded Zen of Python, about a minute on a laptop CPU)::

    python experiments/training/char_lstm.py
    python experiments/training/char_lstm.py --dataset tiny_shakespeare --layers 2 --hidden 384 \\
        --seq-len 100 --batch-size 32 --steps 6000 --out runs/shakespeare --max-minutes 30
    python experiments/training/char_lstm.py --out runs/shakespeare --resume ...   # same flags, continues exactly

Across processes (each loads only its rows of every batch; the run equals the
one-process run)::

    python -m lstm_jax.launch --processes 2 --local-devices 2 -- experiments/training/char_lstm.py --out runs/mp

Sample from a run directory::

    python experiments/training/char_lstm.py sample --checkpoint runs/shakespeare --prompt "ROMEO:" \\
        --temperature 0.8 --top-k 20 --seed 0 --length 300

Losses are reported in nats/char (natural log) and bits/char (nats / ln 2).
Evaluation covers every character of the split once, in windows of
``--seq-len`` characters that each start from a zero recurrent state; the
final figures also give the full-context loss (``stream_nats_per_char``: the
split read as one sequence with the state carried across windows)::

    python experiments/training/char_lstm.py eval --checkpoint runs/shakespeare --which last --save eval.json
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    import _bootstrap  # noqa: F401

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import cli
from experiments.common.harness import run_matmul_gflops
from experiments.common.machine import finish_machine_info, machine_info
from lstm_jax.checkpoint import load_checkpoint
from lstm_jax.data.text import DATASETS, StatefulWindows, Vocab, eval_windows, load_text, random_windows
from lstm_jax import multiprocess, parallel
from lstm_jax.layers import count_params
from lstm_jax.models import char_model as cm
from lstm_jax.train import evaluate, fit

LN2 = math.log(2.0)
EVAL_CONTEXTS = ("window", "stream")  # see eval_split


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True, script=__file__)
    p.add_argument("mode", nargs="?", default="train", choices=("train", "sample", "eval"),
                   help="train a model, sample from a checkpoint, or evaluate one on val/test")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="zen", help=f"one of {', '.join(DATASETS)} ('file' is implied by --text-file)")
    cli.add_flag(d, "text_file", help="train on this UTF-8 text file (split 90/5/5)")
    cli.add_flag(d, "data_dir", help="TFDS data dir for tiny_shakespeare (default: TFDS default)")
    m = cli.add_model_flags(p, ("cell", "layers", "hidden", "match_params"))
    m.add_argument("--embed-dim", type=int, default=None, help="learned embedding size (default: one-hot input)")
    cli.add_flag(m, "dropout", help="dropout between layers and before the readout")
    cli.add_flag(m, "impl")
    cli.add_flag(m, "precision")
    cli.add_flag(m, "unroll")
    t = cli.add_training_flags(
        p,
        dict(steps=600, learning_rate=1e-2, warmup_steps=50, end_lr_ratio=0.1, weight_decay=1e-4, clip_norm=1.0,
             eval_every=200, log_every=50, checkpoint_every=500, keep_checkpoints=3, max_minutes=None, seed=0,
             progress=True),
        helps={"learning_rate": "peak learning rate (1e-2 suits the tiny default corpus; use 3e-3..5e-3 for "
               "larger ones)"},
    )
    t.add_argument("--seq-len", type=int, default=64, help="BPTT window length T")
    cli.add_flag(t, "batch_size")
    t.add_argument("--stateful", action="store_true", help="truncated BPTT: carry the state across consecutive windows")
    t.add_argument("--eval-batch-size", type=int, default=64)
    t.add_argument("--eval-seq-len", type=int, default=None,
                   help="evaluation window length (default: --seq-len); each window starts from a zero state")
    cli.add_output_flags(p, ("out", "resume"), out={"help": "run directory (default: runs/char_lstm/<dataset>-<time>)"})
    s = p.add_argument_group("sampling")
    cli.add_flag(s, "checkpoint", help="run directory to sample from or evaluate (sample/eval modes)")
    cli.add_flag(s, "which")
    s.add_argument("--eval-context", action=cli.ListAction, choices=EVAL_CONTEXTS, default=list(EVAL_CONTEXTS),
                   help="eval mode: 'window' (windows of --eval-seq-len from a zero state, as training reports) "
                        "and/or 'stream' (the split as one sequence, state carried: full context)")
    s.add_argument("--save", default=None, help="eval mode: also write the figures to this JSON file")
    s.add_argument("--prompt", default=None, help="text to condition on (default: the corpus' first line)")
    s.add_argument("--length", type=int, default=300, help="characters to generate")
    s.add_argument("--temperature", type=float, default=0.5)
    s.add_argument("--top-k", type=int, default=None)
    cli.add_malloc_flag(p)
    return p


def check_args(args) -> None:
    if args.eval_seq_len is None:
        args.eval_seq_len = args.seq_len
    for name in ("seq_len", "batch_size", "steps", "hidden", "layers", "eval_batch_size", "eval_seq_len"):
        v = getattr(args, name)
        if v < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {v}")
    if not 0.0 <= args.dropout < 1.0:
        raise SystemExit(f"error: --dropout must lie in [0, 1), got {args.dropout}")
    if args.resume and args.out is None:
        raise SystemExit("error: --resume needs --out (the run directory to continue)")


def make_loss_fn(*, dropout: float, stateful: bool, impl, unroll: int, cell: str | None = None):
    """``loss_fn`` for :func:`lstm_jax.train.fit`: mean nats/char; with ``stateful`` the carry is the model_state."""
    def loss_fn(params, batch, key, model_state):
        if stateful:
            inputs, targets, reset = batch
            carry = jax.tree_util.tree_map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), model_state)
        else:
            inputs, targets = batch
            carry = None
        loss, final = cm.char_loss(
            params, inputs, targets, carry, cell=cell, dropout=dropout, key=key, impl=impl, unroll=unroll
        )
        new_state = jax.lax.stop_gradient(final) if stateful else model_state
        return loss, (new_state, {"bits_per_char": loss / LN2})

    return loss_fn


def eval_split(params, ids, batch_size: int, seq_len: int, impl="scan", cell: str | None = None,
               context: str = "window") -> dict:
    """Nats and bits per character over every character of ``ids``.

    ``context="window"``: windows of ``seq_len`` characters, ``batch_size`` at a
    time, each from a zero state, so a prediction sees at most the ``seq_len - 1``
    characters before it in its window (the first of each window sees none).
    ``context="stream"``: the split read once as one sequence, in windows of
    ``seq_len`` with the state carried from each window into the next, so every
    prediction conditions on all earlier characters of the split (char-rnn's
    evaluation). One sequence, so ``batch_size`` is unused and it runs serially.
    """
    if context == "window":
        step = functools.partial(cm.eval_step, impl=impl, cell=cell)
        nats = evaluate(step, params, eval_windows(ids, batch_size, seq_len))["nats"]
    elif context == "stream":
        carry = cm.zeros_carry(params, 1, cell=cell)
        total, count = 0.0, 0.0
        for batch in eval_windows(ids, 1, seq_len):  # (1, seq_len) windows in reading order, then the tail
            carry, sums = cm.eval_stream_step(params, carry, batch, impl=impl, cell=cell)
            sums = jax.device_get(sums)
            total, count = total + float(sums["nats"]), count + float(sums["count"])
        nats = total / count
    else:
        raise ValueError(f"context must be one of {EVAL_CONTEXTS}, got {context!r}")
    return {"nats_per_char": nats, "bits_per_char": nats / LN2}


def context_prefix(context: str) -> str:
    """Key prefix of a context's figures in results: none for ``window``, ``"stream_"`` for ``stream``."""
    return "" if context == "window" else f"{context}_"


def eval_contexts(params, ids, batch_size: int, seq_len: int, impl="scan", cell: str | None = None,
                  contexts=EVAL_CONTEXTS) -> dict:
    """:func:`eval_split` under each of ``contexts``, in one dict: ``window`` keys plain, the others prefixed.

    E.g. ``{"nats_per_char", "bits_per_char", "stream_nats_per_char", "stream_bits_per_char"}``.
    """
    out = {}
    for context in contexts:
        prefix = context_prefix(context)
        r = eval_split(params, ids, batch_size, seq_len, impl, cell, context=context)
        out.update({prefix + k: v for k, v in r.items()})
    return out


def default_prompt(text_ids, vocab: Vocab) -> str:
    first_line = vocab.decode(text_ids[:200]).split("\n")[0]
    return first_line or vocab.decode(text_ids[:1])


def train(args, malloc: dict | None = None) -> dict:
    check_args(args)
    main_process = parallel.is_main_process()
    print_ = print if main_process else (lambda *a, **k: None)  # one copy of the report in a multi-process job
    dataset = "file" if args.text_file else args.dataset
    splits = load_text(dataset, text_file=args.text_file, data_dir=args.data_dir)
    vocab = splits.vocab
    n_train = len(splits.train)
    need = (args.batch_size * args.seq_len + 1) if args.stateful else (args.seq_len + 1)
    if n_train < need:
        raise SystemExit(
            f"error: the training split has {n_train} chars, too short for "
            + (f"{args.batch_size} streams of --seq-len {args.seq_len}" if args.stateful else f"windows of --seq-len {args.seq_len}")
            + f" (needs at least {need}); lower --seq-len"
            + (" or --batch-size" if args.stateful else "")
        )
    out = Path(args.out) if args.out else Path("runs/char_lstm") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    print_(
        f"data: {splits.name}: train {len(splits.train):,} / val {len(splits.validation):,} / "
        f"test {len(splits.test):,} chars, vocab {vocab.size}"
    )

    cli.match_params(args, lambda cell, hidden: cm.init_char_model(
        jax.random.PRNGKey(args.seed), vocab.size, hidden, args.layers, cell, args.embed_dim))
    params = cm.init_char_model(
        jax.random.PRNGKey(args.seed), vocab.size, args.hidden, args.layers, args.cell, args.embed_dim
    )
    n_params = count_params(params)
    print_(f"model: {args.layers}x{args.cell.upper()} H={args.hidden}, {n_params:,} params; out: {out}")

    rows = multiprocess.process_rows(args.batch_size)  # this process's rows of every global batch
    if args.stateful:
        windows = StatefulWindows(splits.train, args.batch_size, args.seq_len)

        def get_batch(step):
            x, y = windows(step, rows)
            return x, y, np.bool_(windows.is_stream_start(step))

        model_state = cm.zeros_carry(params, args.batch_size)  # global: fit keeps each process's rows
    else:

        def get_batch(step):
            return random_windows(splits.train, args.batch_size, args.seq_len, seed=args.seed, step=step, rows=rows)

        model_state = None

    # the impl with the --precision policy bound; "auto" measured on one layer of this run's shape
    layer = cli.layer_from_args(args, T=args.seq_len, B=args.batch_size, I=args.embed_dim or vocab.size, H=args.hidden)

    def eval_fn(p):
        r = eval_split(p, splits.validation, args.eval_batch_size, args.eval_seq_len, layer, args.cell)
        return {"val_loss": r["nats_per_char"], "val_bpc": r["bits_per_char"]}

    config = cli.train_config(args)
    metadata = {
        "vocab": vocab.to_json(),
        "dataset": splits.name,
        "model": cm.model_config(params, args.cell),
        "args": {k: v for k, v in vars(args).items()},
    }
    loss_fn = make_loss_fn(dropout=args.dropout, stateful=args.stateful, impl=layer, unroll=args.unroll,
                           cell=args.cell)
    t0 = time.perf_counter()
    machine = machine_info(malloc=malloc, matmul_gflops=run_matmul_gflops())  # the rate this run saw
    result = fit(
        loss_fn,
        params,
        get_batch,
        config,
        out_dir=out,
        eval_fn=eval_fn,
        model_state=model_state,
        resume=args.resume,
        metadata=metadata,
        items_per_batch=args.batch_size * args.seq_len,
        item_name="chars",
    )
    train_seconds = time.perf_counter() - t0
    cli.report_stop(result)

    # Final params, and the best-by-validation checkpoint (model selection), on val and test.
    final = {
        "step": result.step,
        "val": eval_contexts(result.params, splits.validation, args.eval_batch_size, args.eval_seq_len, layer, args.cell),
        "test": eval_contexts(result.params, splits.test, args.eval_batch_size, args.eval_seq_len, layer, args.cell),
    }
    best_params, best_meta = load_checkpoint(out, "best", like=result.params)
    if best_meta["step"] == result.step:
        best = final
    else:
        best = {
            "step": best_meta["step"],
            "val": eval_contexts(best_params, splits.validation, args.eval_batch_size, args.eval_seq_len, layer, args.cell),
            "test": eval_contexts(best_params, splits.test, args.eval_batch_size, args.eval_seq_len, layer, args.cell),
        }
    prompt = args.prompt or default_prompt(splits.train, vocab)
    text = cm.sample(result.params, vocab, prompt, args.length, temperature=args.temperature, top_k=args.top_k,
                     seed=args.seed, cell=args.cell)
    results = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "dataset": splits.name,
        "steps_done": result.step,
        "stop_reason": result.stop_reason,
        "final": final,
        "best_by_val": best,
        "train_seconds_this_invocation": round(train_seconds, 1),
        "machine": finish_machine_info(machine, matmul_gflops=run_matmul_gflops()),
        "sample": {"from": "final params", "prompt": prompt, "temperature": args.temperature, "top_k": args.top_k, "seed": args.seed, "text": text},
        "params": n_params,
        "hidden": args.hidden,
        "matched_params_of": getattr(args, "matched", None),
        "layer": args.layer_choice,
    }
    if not main_process:
        return results
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\ntrained to step {result.step} in {train_seconds:.1f} s this invocation ({result.stop_reason})")
    for label, r in (("final", final), ("best val", best)):
        if label == "best val" and r is final:
            continue
        print(
            f"{label} (step {r['step']}): val {r['val']['nats_per_char']:.4f} nats/char "
            f"({r['val']['bits_per_char']:.4f} bits), test {r['test']['nats_per_char']:.4f} nats/char "
            f"({r['test']['bits_per_char']:.4f} bits); full context (one stream): val "
            f"{r['val']['stream_nats_per_char']:.4f}, test {r['test']['stream_nats_per_char']:.4f} nats/char"
        )
    print(f"\nsample (temperature {args.temperature}, seed {args.seed}):\n{text}\n")
    print(f"run directory: {out} (metrics.jsonl, loss_curve.png, checkpoints/, results.json)")
    return results


def load_run_checkpoint(args, mode: str):
    """``(params, metadata, vocab)`` of checkpoint ``--which`` in ``--checkpoint``, for the sample/eval modes."""
    if not args.checkpoint:
        raise SystemExit(f"error: {mode} mode needs --checkpoint RUN_DIR (the --out of a training run)")
    params, meta = load_checkpoint(args.checkpoint, args.which)
    if "vocab" not in meta:
        raise SystemExit(f"error: {args.checkpoint} has no vocabulary in its metadata; was it written by char_lstm.py?")
    # Say which step was loaded and why: "best" is selected by validation loss
    # and is often not the last step, whose sample training printed.
    why = {"best": "lowest validation loss", "last": "latest step"}.get(args.which, "requested with --which")
    print(f"{mode}: checkpoint step {meta['step']} of {args.checkpoint} (--which {args.which}: {why}; "
          "--which best|last|STEP)", file=sys.stderr)
    return params, meta, Vocab.from_json(meta["vocab"])


def sample_mode(args) -> str:
    params, meta, vocab = load_run_checkpoint(args, "sample")
    prompt = args.prompt if args.prompt is not None else "\n"
    text = cm.sample(params, vocab, prompt, args.length, temperature=args.temperature, top_k=args.top_k,
                     seed=args.seed, cell=meta.get("model", {}).get("cell"))
    print(text)
    return text


def eval_mode(args) -> dict:
    """Evaluate a saved checkpoint on the validation and test splits of its dataset."""
    params, meta, vocab = load_run_checkpoint(args, "eval")
    saved = meta.get("args", {})
    dataset = "file" if saved.get("text_file") else saved.get("dataset", args.dataset)
    splits = load_text(dataset, text_file=saved.get("text_file"), data_dir=args.data_dir or saved.get("data_dir"))
    if splits.vocab != vocab:
        raise SystemExit(f"error: the vocabulary of {splits.name} differs from the checkpoint's")
    seq_len = args.eval_seq_len or saved.get("seq_len", args.seq_len)
    cell = meta.get("model", {}).get("cell")
    out = {"checkpoint": str(args.checkpoint), "which": args.which, "step": meta["step"], "eval_seq_len": seq_len}
    how = {"window": f"windows of {seq_len} chars from a zero state",
           "stream": f"the split as one stream, state carried across windows of {seq_len}"}
    for split, ids in (("val", splits.validation), ("test", splits.test)):
        out[split] = r = eval_contexts(params, ids, args.eval_batch_size, seq_len, cell=cell,
                                       contexts=args.eval_context)
        for context in args.eval_context:
            prefix = context_prefix(context)
            print(f"{split}: {r[prefix + 'nats_per_char']:.4f} nats/char = {r[prefix + 'bits_per_char']:.4f} "
                  f"bits/char (step {meta['step']}, {how[context]})")
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.save}", file=sys.stderr)
    return out


def char_lstm(args):
    multiprocess.initialize_from_env()  # a no-op unless started by lstm_jax.launch or a cluster (first JAX call)
    malloc = cli.apply_malloc(args)
    if args.mode == "sample":
        return sample_mode(args)
    if args.mode == "eval":
        return eval_mode(args)
    return train(args, malloc)


def main(argv=None):
    return cli.run(build_parser(), char_lstm, argv)


if __name__ == "__main__":
    main()
