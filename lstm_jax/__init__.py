"""lstm_jax: recurrent networks from scratch as pure JAX functions.

Cells (``CELLS``): ``rnn``, ``lstm``, ``gru``, ``min_gru``, ``min_lstm``.
Implementations (``IMPLS``): ``scan``, ``hoisted``, ``manual``, ``remat``,
``parallel``, ``deer``, ``cudnn``, ``onednn``.
(``tests/test_docs.py`` checks these two lists against the registries.)

The public API: the cells (each ``<name>_step``, ``init_<name>`` and its ``Cell``),
``init_stack`` / ``apply_stack(cell, params, xs, impl=...)`` to run a stack of
layers, ``scan_layer`` for one step function in one direction, ``layer_impl`` to
bind an implementation's options, and ``lstm_jax.train.fit`` to train. Internal
(not for users; may change): ``sequence.run_layer``, ``stack.run_stack``, the
implementation cores in ``impls/`` and ``bptt.forward`` / ``stack_forward``.

Layout: the recurrent library sits at the top of the package (``cells/``, ``bptt/``,
``impls/``, ``sequence``, ``stack``, ``layers``, ``precision``, ``runtime``, ``analysis``;
``flax``: Flax NNX modules over ``apply_stack``, imported on its own);
beside it four wings, each importing only what is below it::

    data/          input pipelines (imports nothing of lstm_jax)
    models/        models for a task, described by a RecurrentSpec (library, data)
    distributed/   several processes and devices (imports nothing of lstm_jax)
    train/         fit and its parts (library, data, models, distributed)

Every module: docs/architecture.md#layout.

Only the core is imported here; import the rest from its module
(``from lstm_jax.train import fit``), so that ``import lstm_jax`` stays light.
"""

from .cells import (
    CELLS,
    GRU,
    GRU_GATES,
    LSTM,
    LSTM_GATES,
    MIN_GRU,
    MIN_GRU_GATES,
    MIN_LSTM,
    MIN_LSTM_GATES,
    RNN,
    Cell,
    LSTMCarry,
    get_cell,
    gru_step,
    init_gru,
    init_lstm,
    init_min_gru,
    init_min_lstm,
    init_rnn,
    lstm_step,
    lstm_zeros_carry,
    min_gru_step,
    min_lstm_step,
    rnn_step,
    zeros_carry,
)
from .impls import IMPLS, LayerImpl, default_impl, layer_impl
from .layers import apply_stack, init_stack, scan_layer, zeros_stack_carry

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it (dynamic version)

__all__ = [
    # cells
    "Cell", "CELLS", "get_cell", "RNN", "LSTM", "GRU", "MIN_GRU", "MIN_LSTM",
    "LSTMCarry", "LSTM_GATES", "GRU_GATES", "MIN_GRU_GATES", "MIN_LSTM_GATES",
    "rnn_step", "lstm_step", "gru_step", "min_gru_step", "min_lstm_step",
    "init_rnn", "init_lstm", "init_gru", "init_min_gru", "init_min_lstm",
    "zeros_carry", "lstm_zeros_carry",
    # layers
    "scan_layer", "init_stack", "zeros_stack_carry", "apply_stack",
    # implementations
    "IMPLS", "LayerImpl", "layer_impl", "default_impl",
]
