"""Runnable experiments on top of :mod:`lstm_jax`, in three kinds.

* :mod:`experiments.training`: training scripts (char LM, sequence classification,
  long-range tasks, gradient flow, gate activity), each configured by a file under
  ``configs/`` and flags.
* :mod:`experiments.benchmarks`: side-by-side timings that save JSON and figures.
* :mod:`experiments.tools`: record tools (the results table, the seed runner, the
  gradient check).

Each script runs as ``python -m experiments.<kind>.<name>`` or
``python experiments/<kind>/<name>.py``. Run as a file, a script has its own folder as
``sys.path[0]``, so it starts with one guarded import of the ``_bootstrap.py`` beside it,
which puts the repository root first on ``sys.path`` (under ``-m`` the guard is false)::

    if __name__ == "__main__" and not __package__:  # run as a file
        import _bootstrap  # noqa: F401
 What
they share lives in :mod:`experiments.common`: the command line
(:mod:`~experiments.common.cli`), the record of the machine a result came from
(:mod:`~experiments.common.machine`), figure copies (:mod:`~experiments.common.figures`)
and the benchmark harness (:mod:`~experiments.common.harness`). Scripts never import
each other.
"""
