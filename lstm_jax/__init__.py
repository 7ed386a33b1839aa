"""lstm_jax: recurrent networks from scratch as pure JAX functions.

Layout (the folder tree is the architecture):
    cells       rnn_step / lstm_step / gru_step, their init_* functions, the Cell protocol
    layers      scan_layer (the one scan), init_stack / apply_stack, layer_impl registry
    bptt        hand-derived backpropagation through time, and the "manual" custom_vjp layer
    fast        performance variants of the layer ("hoisted", "remat")
    parallel    data parallelism over local devices with jax.sharding
    train       the shared training loop (Optax, checkpoints, guards); checkpoint: Orbax I/O
    analysis    gradient flow through time, gate traces
    data/       text (Tiny Shakespeare via TFDS, files, the Zen of Python), images (IDX, TFDS),
                synthetic long-range tasks
    models/     char_model, classifier, sequence_regressor: thin compositions of the above

Only the core is imported here; import the rest from its module
(``from lstm_jax.train import fit``), so that ``import lstm_jax`` stays light.
"""

from .cells import (
    CELLS,
    GRU,
    GRU_GATES,
    LSTM,
    LSTM_GATES,
    RNN,
    Cell,
    LSTMCarry,
    get_cell,
    gru_step,
    init_gru,
    init_lstm,
    init_rnn,
    lstm_step,
    lstm_zeros_carry,
    rnn_step,
    zeros_carry,
)
from .layers import apply_stack, init_stack, layer_impl, scan_layer, zeros_stack_carry

__version__ = "0.1.0"
