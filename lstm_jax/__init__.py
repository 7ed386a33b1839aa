"""lstm_jax: recurrent networks from scratch as pure JAX functions.

Layout:
    cells   -- rnn_step / lstm_step / gru_step, their init_* functions, the Cell protocol
    layers  -- scan_layer (one cell over a sequence), init_stack / apply_stack
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
from .layers import apply_stack, init_stack, scan_layer, zeros_stack_carry

__version__ = "0.1.0"
