"""Runnable experiments on top of :mod:`lstm_jax`, one folder per task.

* :mod:`experiments.char_lm`: character-level language modelling (Tiny Shakespeare).
* :mod:`experiments.classification`: image sequences (Fashion-MNIST by rows or pixels).
* :mod:`experiments.long_range`: the adding and copy tasks over sequence lengths.
* :mod:`experiments.analysis`: gradient flow, gate activity, the gradient check.
* :mod:`experiments.benchmarks`: side-by-side timings that save JSON and figures.
* :mod:`experiments.tools`: record tools (the results table, the seed runner).

Each script runs from the clone's root as ``python -m experiments.<task>.<script>``,
configured by a file under ``configs/`` and flags. A task folder imports itself,
:mod:`experiments.common` and :mod:`lstm_jax`, nothing else (``tests/test_experiments_cli.py``);
:mod:`experiments.common` holds what two or more tasks share: the command line
(:mod:`~experiments.common.cli`, with :mod:`~experiments.common.config` and the default
layer rule :mod:`~experiments.common.fastest`), the run epilogue
(:mod:`~experiments.common.epilogue`), the record of the machine
(:mod:`~experiments.common.machine`), figures (:mod:`~experiments.common.figures`,
:mod:`~experiments.common.run_figures`) and the benchmark harness
(:mod:`~experiments.common.harness`).
"""
