"""Models for a task, composed from the recurrent library.

* :mod:`~lstm_jax.models.spec`: :class:`RecurrentSpec`, what a recurrent stack is (cell, sizes, directions,
  impl, precision, dropout, unroll); every model takes one and every training script's checkpoint records it.
* :mod:`~lstm_jax.models.char_model`: the character language model;
  :mod:`~lstm_jax.models.classifier`: sequence classification; :mod:`~lstm_jax.models.sequence_regressor`:
  the long-range adding and copy tasks.
* :mod:`~lstm_jax.models.task`: the :class:`Task` bundle that :func:`lstm_jax.train.fit` trains;
  :mod:`~lstm_jax.models.losses` (the one cross-entropy) and :mod:`~lstm_jax.models.evaluation`
  (means over evaluation batches).

Imports: the recurrent library and :mod:`lstm_jax.data`; nothing of ``train`` or ``distributed``.
"""

from .spec import RecurrentSpec

__all__ = ["RecurrentSpec"]
