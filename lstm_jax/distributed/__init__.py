"""Several processes and several devices, one job: the distributed kit.

* :mod:`~lstm_jax.distributed.multiprocess`: joining a multi-process job from the environment
  (``LSTM_JAX_*`` variables, or ``LSTM_JAX_DISTRIBUTED=auto`` for SLURM, Open MPI and TPU pods),
  each process's rows of a batch, decisions taken once and shared.
* :mod:`~lstm_jax.distributed.launch`: ``python -m lstm_jax.distributed.launch``, the local
  launcher (N processes on this machine, signals forwarded, stragglers killed).
* :mod:`~lstm_jax.distributed.sharding`: data parallelism over all devices with ``jax.sharding``.
* :mod:`~lstm_jax.distributed.stopping`: SIGTERM as a preemption request, the time budget
  and the stall watchdog, agreed across processes so every process stops at one step.

Imports: JAX, NumPy and the standard library only; nothing of the recurrent library,
``models`` or ``train`` (which builds on this kit). Import the modules by name,
``from lstm_jax.distributed import sharding``, so ``import lstm_jax`` stays light.
"""
