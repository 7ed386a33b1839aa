"""Runnable experiments on top of :mod:`lstm_jax`, in three kinds.

* :mod:`experiments.training`: training scripts (char LM, sequence classification,
  long-range tasks, gradient flow, gate activity), each configured by a file under
  ``configs/`` and flags.
* :mod:`experiments.benchmarks`: side-by-side timings that save JSON and figures.
* :mod:`experiments.tools`: record tools (the results table, the seed runner, the
  gradient check).

Each script runs as ``python -m experiments.<kind>.<name>`` or
``python experiments/<kind>/<name>.py`` (see ``_bootstrap.py`` in each folder). What
they share lives in :mod:`experiments.common`: the command line
(:mod:`~experiments.common.cli`), the record of the machine a result came from
(:mod:`~experiments.common.machine`), figure copies (:mod:`~experiments.common.figures`)
and the benchmark harness (:mod:`~experiments.common.harness`). Scripts never import
each other.
"""
