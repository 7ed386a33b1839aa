"""Character-level language model on Tiny Shakespeare (shipped with the package): train, evaluate, sample.

The quick start (no flags = configs/shakespeare_quick.toml: 1xLSTM-384, a 3-minute budget, run in runs/char_lstm/)::

    python -m experiments.char_lm.char_lstm
    python -m experiments.char_lm.char_lstm --config configs/shakespeare_30min.toml --out runs/shakespeare
    python -m experiments.char_lm.char_lstm --config configs/shakespeare_30min.toml --out runs/shakespeare --resume
    python -m experiments.char_lm.char_lstm --dataset zen --steps 100      # a 10-second smoke run

Sample from, or evaluate, a run directory (``--which best|last|STEP``)::

    python -m experiments.char_lm.char_lstm sample --checkpoint runs/shakespeare --prompt "ROMEO:" --top-k 20
    python -m experiments.char_lm.char_lstm eval --checkpoint runs/shakespeare --which last --save eval.json

Losses are in nats/char (bits = nats / ln 2), over every character of a split: in windows of ``--eval-seq-len``
from a zero state, and (``stream_*``) the split read as one sequence with the state carried (full context).
Across processes: ``python -m lstm_jax.distributed.launch --processes 2 -- -m experiments.char_lm.char_lstm --out runs/mp``.
"""

from __future__ import annotations

import time
from pathlib import Path


import jax

from experiments.common import cli, epilogue
from experiments.char_lm import char_runs
from experiments.common.harness import run_matmul_gflops
from experiments.common.machine import machine_info
from lstm_jax.distributed import multiprocess, sharding
from lstm_jax.data.text import DATASETS, load_text
from lstm_jax.layers import count_params
from lstm_jax.models import char_model as cm
from lstm_jax.models.spec import RecurrentSpec
from lstm_jax.train import fit


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True, script=__file__)
    p.add_argument("mode", nargs="?", default="train", choices=("train", "sample", "eval"))
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=DATASETS[0], choices=DATASETS, help="corpus ('file' is implied by --text-file)")
    cli.add_flag(d, "text_file", help="train on this UTF-8 text file (split 90/5/5)")
    cli.add_flag(d, "data_dir", help="a TFDS data dir: tiny_shakespeare from the TFDS builder (the same splits)")
    m = cli.add_model_flags(p, ("cell", "layers", "hidden", "match_params", "dropout", "impl", "precision", "unroll"),
                            hidden=384, dropout=0.1)
    m.add_argument("--embed-dim", type=int, default=None, help="learned embedding size (default: one-hot input)")
    t = cli.add_training_flags(p, dict(
        steps=5000, learning_rate=1.5e-2, warmup_steps=100, end_lr_ratio=0.1, weight_decay=1e-4, clip_norm=1.0,
        eval_every=250, log_every=50, checkpoint_every=500, keep_checkpoints=3, max_minutes=3.0, seed=0, progress=True))
    t.add_argument("--seq-len", type=int, default=64, help="BPTT window length T")
    cli.add_flag(t, "batch_size")
    t.add_argument("--stateful", action="store_true", help="truncated BPTT: carry the state across consecutive windows")
    t.add_argument("--eval-batch-size", type=int, default=64)
    t.add_argument("--eval-seq-len", type=int, default=None, help="evaluation window length (default: --seq-len)")
    cli.add_output_flags(p, ("out", "resume", "tensorboard"), out={"help": "run directory (default: runs/char_lstm/<dataset>-<time>)"})
    s = p.add_argument_group("sampling and evaluation")
    cli.add_flag(s, "checkpoint", help="run directory to sample from or evaluate (sample/eval modes)")
    cli.add_flag(s, "which")
    s.add_argument("--eval-context", action=cli.ListAction, choices=cm.EVAL_CONTEXTS, default=list(cm.EVAL_CONTEXTS),
                   help="eval mode: 'window' (zero state per window) and/or 'stream' (state carried: full context)")
    s.add_argument("--eval-splits", action=cli.ListAction, choices=cm.EVAL_SPLITS, default=["val", "test"],
                   help="splits scored at the end of training and in eval mode; 'heldout' is val and test as one "
                        "text (Tiny Shakespeare: the last 10%%, nanoGPT's validation split)")
    s.add_argument("--save", default=None, help="eval mode: also write the figures to this JSON file")
    s.add_argument("--prompt", default=None, help="text to condition on (default: the corpus' first line)")
    s.add_argument("--length", type=int, default=300, help="characters to generate")
    s.add_argument("--temperature", type=float, default=0.5)
    s.add_argument("--top-k", type=int, default=None)
    cli.add_malloc_flag(p)
    return p


def check_args(args, n_train: int) -> None:
    args.eval_seq_len = args.eval_seq_len or args.seq_len
    for name in ("seq_len", "batch_size", "steps", "hidden", "layers", "eval_batch_size", "eval_seq_len"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.dropout < 1.0:
        raise SystemExit(f"error: --dropout must lie in [0, 1), got {args.dropout}")
    need = (args.batch_size * args.seq_len + 1) if args.stateful else (args.seq_len + 1)
    if n_train < need:
        raise SystemExit(f"error: the training split has {n_train} chars, too short for "
                         + (f"{args.batch_size} streams of " if args.stateful else "windows of ")
                         + f"--seq-len {args.seq_len} (needs at least {need}); lower --seq-len"
                         + (" or --batch-size" if args.stateful else ""))


def train(args, malloc: dict | None = None) -> dict:
    if args.resume and args.out is None:
        raise SystemExit("error: --resume needs --out (the run directory to continue)")
    say = print if sharding.is_main_process() else (lambda *a, **k: None)  # one report in a multi-process job
    splits = load_text("file" if args.text_file else args.dataset, text_file=args.text_file, data_dir=args.data_dir)
    check_args(args, len(splits.train))
    out = Path(args.out or f"runs/char_lstm/{splits.name.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}")
    say(f"data: {splits.name}: train {len(splits.train):,} / val {len(splits.validation):,} / test "
        f"{len(splits.test):,} chars, vocab {splits.vocab.size}")
    V = splits.vocab.size
    cli.match_params(args, lambda c, h: cm.init_char_model(jax.random.PRNGKey(0), V,
                                                           RecurrentSpec(cell=c, hidden=h, layers=args.layers),
                                                           args.embed_dim))
    cli.layer_from_args(args, T=args.seq_len, B=args.batch_size, I=args.embed_dim or V, H=args.hidden)
    spec = cli.recurrent_spec(args)  # the model, as the checkpoint records it
    task = cm.char_task(V, spec, embed_dim=args.embed_dim, stateful=args.stateful, batch_size=args.batch_size,
                        eval_batch_size=args.eval_batch_size, eval_seq_len=args.eval_seq_len)
    params = task.init(jax.random.PRNGKey(args.seed))
    say(f"model: {args.layers}x{args.cell.upper()} H={args.hidden}, {count_params(params):,} params; out: {out}")
    metadata = {"vocab": splits.vocab.to_json(), "dataset": splits.name, "model": cm.model_config(params, spec),
                "args": epilogue.resolved_args(args)}
    machine = machine_info(malloc=malloc, matmul_gflops=run_matmul_gflops())  # the rate this run saw
    t0 = time.perf_counter()
    batches = cm.train_batches(splits.train, args.batch_size, args.seq_len, seed=args.seed, stateful=args.stateful,
                               rows=multiprocess.process_rows(args.batch_size))  # this process's rows
    with cli.metrics_writer(args, out) as tensorboard:
        result = fit(task.loss, params, batches, cli.train_config(args), out_dir=out,
                     eval_fn=task.eval_fn(splits.validation), model_state=task.model_state, resume=args.resume,
                     metadata=metadata, items_per_batch=args.batch_size * args.seq_len, item_name="chars",
                     metrics=tensorboard)
    seconds = time.perf_counter() - t0
    cli.report_stop(result)
    prompt = args.prompt or (splits.vocab.decode(splits.train[:200]).split("\n")[0] or splits.vocab.decode(splits.train[:1]))
    text = cm.sample(result.params, spec, splits.vocab, prompt, args.length, temperature=args.temperature,
                     top_k=args.top_k, seed=args.seed)
    extra = {"dataset": splits.name, "params": count_params(params), "hidden": args.hidden,
             "matched_params_of": getattr(args, "matched", None), "layer": args.layer_choice,
             "sample": {"from": "final params", "prompt": prompt, "temperature": args.temperature,
                        "top_k": args.top_k, "seed": args.seed, "text": text}}
    results = epilogue.finish_run(task, result, out, cm.eval_splits(splits, args.eval_splits), args=args,
                                  machine=machine, train_seconds=seconds, extra=extra)
    say(f"\nsample (temperature {args.temperature}, seed {args.seed}):\n{text}\n")
    say(f"run directory: {out} (metrics.jsonl, loss_curve.png, checkpoints/, results.json)")
    return results


def char_lstm(args):
    malloc = cli.apply_malloc(args)  # before JAX starts its backend (see lstm_jax.runtime)
    multiprocess.initialize_from_env()  # a no-op unless started by lstm_jax.distributed.launch or a cluster (first JAX call)
    return {"sample": char_runs.sample_mode, "eval": char_runs.eval_mode}.get(args.mode, lambda a: train(a, malloc))(args)


def main(argv=None):
    return cli.run(build_parser(), char_lstm, argv)


if __name__ == "__main__":
    main()
