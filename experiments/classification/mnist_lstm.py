"""Sequence classification of MNIST / Fashion-MNIST with a recurrent network.

Each 28x28 image becomes a sequence (``--mode``): ``rows`` (28 steps of 28
pixels), ``pixels`` (784 steps of 1 pixel) or ``permuted`` (784 steps in a
fixed random pixel order, ``--perm-seed``). A stack of LSTM/GRU/RNN layers
reads it (``--init chrono``: keep-gate biases for memories up to the sequence
length); its final hidden state, or its outputs pooled over time
(``--readout``), goes through a linear layer to 10 logits,
trained with softmax cross-entropy on the logits through the shared loop
``lstm_jax.train.fit`` (AdamW, warmup + cosine, clipping, checkpoints,
resume, wall-clock budget).

Outputs in ``--out``: ``metrics.jsonl``, ``loss_curve.png``, checkpoints,
``metadata.json`` (from ``fit``), and ``results.json`` (test accuracy / loss,
wall time, throughput), ``confusion_matrix.png``, ``misclassified.png``.

Examples::

    # Fashion-MNIST, offline here (Debian's dataset-fashion-mnist IDX files)
    python -m experiments.classification.mnist_lstm --dataset fashion_mnist --mode rows --epochs 12 --out runs/fmnist_rows
    # MNIST via TFDS (needs a network for the first download)
    python -m experiments.classification.mnist_lstm --dataset mnist --source tfds --mode rows --epochs 20 --out runs/mnist_rows
    # continue an interrupted run
    python -m experiments.classification.mnist_lstm ... --out runs/fmnist_rows --resume
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


import jax

from experiments.common import cli, epilogue
from experiments.classification.classifier_report import plot_test, test_figures
from experiments.common.harness import run_matmul_gflops
from experiments.common.machine import machine_info
from lstm_jax.distributed import multiprocess, sharding
from lstm_jax.data import images as img
from lstm_jax.data.image_pipeline import prepare_sequences, train_batches
from lstm_jax.models.classifier import READOUTS, ClassifierConfig, classifier_task
from lstm_jax.train import fit


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True, script=__file__)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=img.DATASETS, default="fashion_mnist")
    d.add_argument("--source", choices=("auto", "tfds", "idx"), default="auto",
                   help="auto: a local IDX folder if it has both splits, else TFDS")
    cli.add_flag(d, "data_dir", help="IDX folder (source idx/auto) or TFDS data_dir (source tfds)")
    d.add_argument("--mode", choices=img.MODES, default="rows")
    d.add_argument("--perm-seed", type=int, default=0, help="pixel order of --mode permuted")
    d.add_argument("--val-size", type=int, default=5000, help="validation examples carved from train")
    d.add_argument("--train-subset", type=int, default=None, help="use only the first N training examples (quick runs)")
    d.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test examples only")
    d.add_argument("--augment-shift", type=int, default=0, metavar="PIXELS",
                   help="train on images shifted by up to PIXELS rows and columns, drawn per example and step")
    d.add_argument("--augment-flip", action="store_true",
                   help="train on images mirrored left-right with probability 1/2 (fashion_mnist only)")
    m = cli.add_model_flags(p, ("cell", "hidden", "layers"))
    m.add_argument("--bidirectional", action="store_true")
    m.add_argument("--readout", choices=READOUTS, default="last",
                   help="what the linear head reads: the top layer's final state (last), or its outputs averaged "
                        "(mean) or maxed (max) over the rows/pixels (default: last)")
    for name in ("init", "dropout", "unroll", "impl", "precision"):
        cli.add_flag(m, name)
    t = cli.add_training_flags(
        p,
        dict(steps=2000, learning_rate=2e-3, warmup_steps=200, end_lr_ratio=0.02, weight_decay=1e-4, clip_norm=1.0,
             eval_every=500, log_every=50, seed=0, max_minutes=None, progress=True),
        helps={"warmup_steps": "linear learning-rate warmup steps (at most a tenth of the run)",
               "eval_every": "steps between evaluations (and checkpoints)"},
    )
    cli.add_flag(t, "batch_size", default=128)
    t.add_argument("--epochs", type=float, default=None, help="training length in epochs (overrides --steps)")
    p.config_alternatives = [("steps", "epochs")]  # --steps on the command line replaces a config's epochs
    t.add_argument("--eval-batch-size", type=int, default=1000)
    t.add_argument("--best-metric", choices=("val_loss", "val_error"), default="val_loss",
                   help="validation metric (lower is better) that picks the checkpoint evaluated on test")
    o = cli.add_output_flags(p, ("out", "resume", "tensorboard"), out={"help": "run directory (default: runs/mnist_lstm/<dataset>-<mode>-<time>)"})
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--note", default="", help="free text saved in results.json (e.g. machine load)")
    cli.add_malloc_flag(p)
    return p


def mnist_lstm(args, argv=None) -> dict:
    if args.augment_flip and args.dataset != "fashion_mnist":
        raise SystemExit(f"--augment-flip: a mirrored digit is another glyph; flips apply to fashion_mnist, not {args.dataset}")
    if not 0 <= args.augment_shift < img.IMAGE_SHAPE[0]:
        raise SystemExit(f"--augment-shift must be in [0, {img.IMAGE_SHAPE[0]}), got {args.augment_shift}")
    malloc = cli.apply_malloc(args)  # before JAX starts its backend (lstm_jax.runtime: ~1.8x slower steps after)
    multiprocess.initialize_from_env()  # a no-op unless started by lstm_jax.distributed.launch or a cluster (first JAX call)
    say = print if sharding.is_main_process() else (lambda *a, **k: None)  # one report in a multi-process job
    machine = machine_info(malloc=malloc, note=args.note, matmul_gflops=run_matmul_gflops())  # the rate this run saw
    out = Path(args.out or f"runs/mnist_lstm/{args.dataset}-{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()
    data = prepare_sequences(args.dataset, args.source, args.data_dir, mode=args.mode, perm_seed=args.perm_seed,
                             val_size=args.val_size, seed=args.seed, train_subset=args.train_subset,
                             test_subset=args.test_subset)
    (train_xs, _), (val_xs, _) = data["train"], data["val"]
    steps_t, features = train_xs.shape[1:]
    batches = train_batches(data, args.batch_size, args.seed, augment_shift=args.augment_shift,
                            augment_flip=args.augment_flip)
    steps = args.steps if args.epochs is None else max(1, round(args.epochs * batches.steps_per_epoch))
    cli.layer_from_args(args, T=int(steps_t), B=args.batch_size, I=int(features), H=args.hidden)  # says what runs
    model_cfg = ClassifierConfig(input_size=int(features), num_classes=img.NUM_CLASSES, spec=cli.recurrent_spec(args),
                                 readout=args.readout,
                                 chrono_timescale=float(steps_t) if args.init == "chrono" else None)
    task = classifier_task(model_cfg, args.eval_batch_size)
    train_cfg = cli.train_config(
        args, steps=steps, warmup_steps=min(args.warmup_steps, max(steps // 10, 1)), checkpoint_every=args.eval_every)
    metadata = {
        "task": "image sequence classification",
        "argv": sys.argv if argv is None else ["experiments/classification/mnist_lstm.py", *argv],
        "dataset": args.dataset, "source": data["source"], "data_location": data["location"],
        "mode": args.mode, "perm_seed": args.perm_seed, "sequence_shape": [int(steps_t), int(features)],
        "normalization": {"mean": data["mean"], "std": data["std"]},
        "val_size": args.val_size, "train_examples": int(len(train_xs)), "batch_size": args.batch_size,
        "steps_per_epoch": batches.steps_per_epoch, "data_seed": args.seed,
        "augment": {"max_shift": args.augment_shift, "flip": args.augment_flip},
        "model": model_cfg.to_dict(),
    }
    say(f"{args.dataset} ({data['source']}: {data['location']}) mode={args.mode} seq={steps_t}x{features} "
          f"train={len(train_xs)} val={len(val_xs)} test={len(data['test'][0])} | {args.cell} "
          f"{args.layers}x{args.hidden}{' bi' if args.bidirectional else ''}"
          f"{'' if args.readout == 'last' else f' {args.readout}-pooled'}"
          f"{'' if args.init == 'standard' else f' chrono init (T={steps_t})'} | {steps} steps "
          f"({steps / batches.steps_per_epoch:.2f} epochs of {batches.steps_per_epoch})", flush=True)
    rows = multiprocess.process_rows(args.batch_size)  # this process's rows of every global batch
    with cli.metrics_writer(args, out) as tensorboard:
        result = fit(task.loss, task.init(jax.random.PRNGKey(args.seed)), lambda step: multiprocess.local_rows(
                         batches(step), rows), train_cfg, out_dir=out,
                     eval_fn=task.eval_fn(data["val"]) if len(val_xs) else None, best_metric=args.best_metric,
                     resume=args.resume, metadata=metadata, items_per_batch=args.batch_size, item_name="images",
                     metrics=tensorboard)
    cli.report_stop(result)
    # Test with the best checkpoint by --best-metric (the last one if no validation), and the final params.
    results = epilogue.finish_run(task, result, out, {"test": data["test"]}, args=args, machine=machine,
                                  train_seconds=result.wall_seconds,
                                  extra=test_figures(args, steps, batches.steps_per_epoch, result, t0,
                                                     data["test"][1], img.NUM_CLASSES))
    r = results.pop("_test")
    if not args.no_plots and sharding.is_main_process():
        plot_test(out, args, results, r, data, img.NUM_CLASSES)
    return results


def main(argv=None) -> dict:
    return cli.run(build_parser(), lambda args: mnist_lstm(args, argv), argv)


if __name__ == "__main__":
    main()
