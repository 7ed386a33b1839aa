"""A tiny real training run for tests/test_multiprocess.py, run as every process of a job.

    python -m lstm_jax.distributed.launch --processes 2 --local-devices 2 -- tests/multiprocess_worker.py --out DIR --steps 6

A 1-layer LSTM char model (H=8, dropout 0.1) on the built-in Zen of Python,
stateful truncated BPTT (so the carry, split over processes, is checkpointed
too), global batch 8 of 8-char windows. Each process loads only its rows
(:func:`lstm_jax.distributed.multiprocess.process_rows`). ``--crash-process P --crash-step S``
makes process P kill itself (SIGKILL) when it reaches step S, after the
checkpoints of the earlier steps (a crash, not an error); ``--stall-process P
--stall-step S`` makes it sleep there instead (alive, stuck). ``--sigterm-step S``:
process 0 sends SIGTERM to its parent (the launcher, which passes it on to
every process) when it loads the batch of step S, and every later step takes
0.1 s longer (so the run does not end before the agreed stop). ``--max-minutes``: a time
budget; ``MP_WORKER_CLOCK_SKEW=S`` in the environment puts process 1's clock S
seconds ahead (a skew that makes per-process budget decisions disagree). ``--layer-choice``: print ``--impl auto``'s choice (one line of JSON)
at a shape big enough to be timed, then exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import time

# Fault injection: process 1's clock runs MP_WORKER_CLOCK_SKEW seconds ahead (set before lstm_jax reads it),
# so its own view of a time budget ends that much earlier than process 0's.
if os.environ.get("MP_WORKER_CLOCK_SKEW") and os.environ.get("LSTM_JAX_PROCESS_ID") == "1":
    time.perf_counter = lambda _clock=time.perf_counter, _skew=float(os.environ["MP_WORKER_CLOCK_SKEW"]): _clock() + _skew

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.distributed import multiprocess
from lstm_jax.data.text import StatefulWindows, load_text
from lstm_jax.models import char_model as cm
from lstm_jax.models.spec import RecurrentSpec
from lstm_jax.train import TrainConfig, fit

GLOBAL_BATCH, SEQ_LEN = 8, 8
SPEC = RecurrentSpec(cell="lstm", hidden=8, layers=1, dropout=0.1)


def loss_fn(p, batch, key, state):
    x, y, reset = batch
    carry = jax.tree_util.tree_map(lambda c: jnp.where(reset, 0.0, c), state)
    loss, final = cm.char_loss(p, x, y, SPEC, carry, key=key, train=True)
    return loss, (jax.lax.stop_gradient(final), {})


def run(out, steps, *, resume=False, crash_process=None, crash_step=None, global_batch=GLOBAL_BATCH,
        sigterm_step=None, max_minutes=None, checkpoint_every=1, stall_process=None, stall_step=None):
    """Train and return the :class:`~lstm_jax.train.TrainResult` (the same in every process count)."""
    zen = load_text("zen")
    windows = StatefulWindows(zen.train, global_batch, SEQ_LEN)
    rows = multiprocess.process_rows(global_batch)
    params = cm.init_char_model(jax.random.PRNGKey(1), zen.vocab.size, SPEC)

    def get_batch(step):
        if step == crash_step and jax.process_index() == crash_process:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == stall_step and jax.process_index() == stall_process:
            time.sleep(3600)  # alive but stuck: the others wait in the step's all-reduce
        if step == sigterm_step and jax.process_index() == 0:
            os.kill(os.getppid() if jax.process_count() > 1 else os.getpid(), signal.SIGTERM)
        if sigterm_step is not None and step > sigterm_step:
            time.sleep(0.1)  # slower steps after the signal: the ~1 s sync point comes well before the last step
        x, y = windows(step, rows)
        return x, y, np.bool_(windows.is_stream_start(step))

    config = TrainConfig(steps=steps, learning_rate=1e-2, warmup_steps=2, log_every=1, eval_every=10**6,
                         checkpoint_every=checkpoint_every, keep_checkpoints=100, progress=False,
                         max_minutes=max_minutes)
    return fit(loss_fn, params, get_batch, config, out_dir=out, model_state=cm.zeros_carry(params, SPEC, global_batch),
               resume=resume)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--crash-process", type=int)
    p.add_argument("--crash-step", type=int)
    p.add_argument("--global-batch", type=int, default=GLOBAL_BATCH)
    p.add_argument("--dump", help="process 0 writes the final params here (.npz, leaves in tree order)")
    p.add_argument("--sigterm-step", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--layer-choice", action="store_true")
    p.add_argument("--stall-process", type=int)
    p.add_argument("--stall-step", type=int)
    args = p.parse_args(argv)
    try:
        multiprocess.initialize_from_env()
        if args.layer_choice:
            from experiments.common import fastest

            print("choice", json.dumps(fastest.choose("lstm", 32, 16, 32, 96, impl="auto", precision="auto")))
            return
        result = run(args.out, args.steps, resume=args.resume, crash_process=args.crash_process,
                     crash_step=args.crash_step, global_batch=args.global_batch, sigterm_step=args.sigterm_step,
                     max_minutes=args.max_minutes, checkpoint_every=args.checkpoint_every,
                     stall_process=args.stall_process, stall_step=args.stall_step)
    except ValueError as e:  # what a user script does: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    if args.dump and jax.process_index() == 0:
        np.savez(args.dump, *[np.asarray(x) for x in jax.tree_util.tree_leaves(result.params)])
    print(f"process {jax.process_index()}/{jax.process_count()}: {jax.device_count()} devices, "
          f"step {result.step}, loss {result.history[-1]['loss']:.6f}, {result.stop_reason}, "
          f"bits {float(result.history[-1]['loss']).hex()}")  # what each process's divergence guard read


if __name__ == "__main__":
    main()
