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

Layout (the folder tree is the architecture; imports run downward only)::

    cells/      one module per cell (rnn, lstm, gru, min_gru, min_lstm): its equations,
                backward step, init and zero carry, bundled in a Cell; base.py: the Cell
                protocol; minimal.py: what the two minimal cells share
    sequence    the shared front of every layer: validation, lengths, reverse, batch axis
    stack       stacks of layers: params, carries and the one loop over layers
    bptt/       hand-derived backpropagation through time (scans, one layer, stacks)
    impls/      layer implementations and their registry (IMPLS, layer_impl)
    layers      scan_layer, init_stack / apply_stack: the user-facing layer API
    precision   the fp32 and bf16 precision policies
    sharding    data parallelism over all devices with jax.sharding, placement of training state
    multiprocess  joining a multi-process job (env vars), each process's rows; launch: the local
                launcher; stopping: SIGTERM and the time budget across processes
    train       fit: the shared training loop over a TrainState; its pieces: optim (the default
                optimizer), train_step (the jitted update), evaluation (means, best step),
                resume (restore-or-start, saving), divergence (the guard), checkpoint (Orbax I/O),
                reporting (the step logger and loss-curve plots)
    analysis    gradient flow through time, gate traces
    data/       paths (the one data_dir()), text (Tiny Shakespeare, files, the Zen of Python),
                windows (text batching), images (IDX via idx, TFDS; image_pipeline: sequences
                of pixels or rows; image_batches: shuffling, augmentation), synthetic long-range tasks
    models/     char_model, classifier, sequence_regressor (thin compositions of the above), losses

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
from .impls import IMPLS, LayerImpl, layer_impl
from .layers import apply_stack, init_stack, scan_layer, zeros_stack_carry

__version__ = "0.1.0"

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
    "IMPLS", "LayerImpl", "layer_impl",
]
