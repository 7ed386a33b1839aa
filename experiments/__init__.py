"""Runnable experiments on top of :mod:`lstm_jax`.

Each script runs as ``python -m experiments.<name>`` or ``python experiments/<name>.py``
(see :mod:`experiments._bootstrap`). What they share lives in :mod:`experiments.common`:
the command line (:mod:`~experiments.common.cli`), the record of the machine a result
came from (:mod:`~experiments.common.machine`), figure copies
(:mod:`~experiments.common.figures`) and the benchmark harness
(:mod:`~experiments.common.harness`). Scripts never import each other.
"""
