"""Gradient flow through time: ||dL/dh_t|| (and ||dL/dc_t|| for the LSTM) vs distance T - t.

For each cell (rnn, gru, lstm) on the adding problem:

1. at initialisation, measure the per-step state gradients of the task loss
   on a fixed probe batch (:func:`lstm_jax.analysis.carry_gradients`: zero
   offsets added to the carry after every step, differentiated with
   ``jax.grad``), batch-averaged norms vs distance from the last step;
2. train with the shared loop :func:`lstm_jax.train.fit` (same budget for
   every cell), logging the Frobenius norm of the gradient of the loss with
   respect to the recurrent weights ``w_h`` at every training step;
3. measure the state gradients again on the same probe batch.

Outputs (in ``--out``): ``gradient_flow.json``, ``gradient_flow.png`` (log
scale, one curve per cell and state, at init and after training),
``recurrent_grad_norm.png`` (||dL/dw_h|| and training loss per step).

Example (the README figures)::

    python -m experiments.analysis.gradient_flow --T 100 --steps 3000 --max-minutes 3 \\
        --out runs/gradient_flow --figure-dir docs/figures
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path


import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import cli
from experiments.analysis.analysis_figures import plot_profiles, plot_weight_norms
from experiments.common.figures import copy_figures
from experiments.common.machine import machine_info
from lstm_jax.analysis import recurrent_grad_norms, state_gradient_profile
from lstm_jax.models.sequence_regressor import make_task, regressor_task
from lstm_jax.models.spec import RecurrentSpec
from lstm_jax.train import fit, make_train_step


def head_loss(task, head, targets_batch):
    """``loss(ys)`` from the top layer's outputs: the task loss through the linear head."""

    def loss(ys):
        if task.readout == "last":
            ys = ys[:, -1]
        out = ys @ head["w"] + head["b"]
        return task.loss(out, targets_batch)[0]

    return loss


def profile(task, cell, params, probe) -> dict:
    inputs, _ = probe
    prof = state_gradient_profile(cell, params["stack"], task.prepare(inputs), head_loss(task, params["head"], probe))
    return {k: np.asarray(v).tolist() for k, v in prof.items()}


def recurrent_grad_norm(grads) -> dict:
    """``w_h_grad_norm``: all layers' ``||dL/dw_h||_F`` combined, logged by the shared
    train step at every step (``make_train_step(..., grad_metrics=...)``)."""
    return {"w_h_grad_norm": jnp.sqrt(sum(n**2 for n in recurrent_grad_norms(grads["stack"])))}


def build_parser():
    p = cli.make_parser(__doc__, script=__file__)
    p.add_argument("--T", type=int, default=100, help="sequence length of the adding problem")
    cli.add_model_flags(p, ("cells", "hidden"), cells=["rnn", "gru", "lstm"], hidden=64)
    t = cli.add_training_flags(p, dict(steps=3000, max_minutes=3.0, learning_rate=2e-3, seed=0),
                               helps={"max_minutes": "wall-clock budget of each cell's training run"})
    cli.add_flag(t, "batch_size", default=64)
    t.add_argument("--probe", type=int, default=256, help="probe batch for the state gradients")
    cli.add_output_flags(p, ("out", "figure_dir"), out={"default": "runs/gradient_flow", "help": "run directory"})
    return p


def gradient_flow(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task("adding", args.T)
    probe = task.batch_fn(jax.random.key(20_000 + args.seed), args.probe)(0)
    results = {}
    record = {
        "args": vars(args),
        "machine": machine_info(),
        "results": results,
    }
    for cell in args.cells:
        k_init, k_data = jax.random.split(jax.random.key(args.seed))
        model = regressor_task(task, RecurrentSpec(cell=cell, hidden=args.hidden))
        params = model.init(k_init)
        r = {"init": profile(task, cell, params, probe)}
        # log_every=1: the recurrent-weight gradient norm of every step is the measurement.
        config = cli.train_config(args, weight_decay=0.0, log_every=1, eval_every=args.steps,
                                  checkpoint_every=args.steps, progress=False)
        t0 = time.perf_counter()
        res = fit(model.loss, params, task.batch_fn(k_data, args.batch_size), config,
                  make_step=functools.partial(make_train_step, grad_metrics=recurrent_grad_norm))
        train = [h for h in res.history if h.get("kind") == "train"]
        r["steps"] = [h["step"] for h in train]
        r["w_h_grad_norm"] = [h["w_h_grad_norm"] for h in train]
        r["train_loss"] = [h["loss"] for h in train]
        r["trained"] = profile(task, cell, res.params, probe)
        r["probe_mse_trained"] = model.evaluate(res.params, probe)[task.metric]
        r["train_seconds"] = round(time.perf_counter() - t0, 1)
        r["steps_run"] = res.step
        results[cell] = r
        h_init, h_tr = r["init"]["h"], r["trained"]["h"]
        print(f"{cell}: probe MSE after {res.step} steps {r['probe_mse_trained']:.4f}; "
              f"||dL/dh|| at distance 0 / {args.T - 1}: init {h_init[0]:.2e} / {h_init[-1]:.2e}, "
              f"trained {h_tr[0]:.2e} / {h_tr[-1]:.2e}", flush=True)
        (out / "gradient_flow.json").write_text(json.dumps(record))

    plot_profiles(out / "gradient_flow.png", results, args.T)
    plot_weight_norms(out / "recurrent_grad_norm.png", results, task.baseline)
    copy_figures(out, args.figure_dir, ("gradient_flow.png", "recurrent_grad_norm.png"))


def main(argv=None):
    return cli.run(build_parser(), gradient_flow, argv)


if __name__ == "__main__":
    main()
