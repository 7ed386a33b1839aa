"""Data parallelism over all devices with ``jax.sharding`` (``impl="parallel"`` is something else: parallel over time).

The model is small and the batch is the natural axis to split, so the scheme
is plain data parallelism, expressed the SPMD way: put the batch on a 1-D
device :class:`~jax.sharding.Mesh` with its leading (batch) axis split across
devices (``NamedSharding(mesh, P("data"))``), replicate the parameters and
optimizer state (``P()``), and call the *unchanged* jitted training step.
XLA's sharding propagation then runs each device on its slice of the batch
and inserts the all-reduce that sums the gradient contributions, so a loss
that is a mean over the batch gives the same loss and gradients as on one
device (up to float summation order), and the updated parameters come out
replicated. No ``pmap``, no code change in the step function.

Typical use (this is what :func:`lstm_jax.train.fit` does when
``jax.device_count() > 1``)::

    from lstm_jax.distributed import sharding
    mesh = sharding.make_data_mesh()                  # all devices, axis "data"
    params, opt_state = sharding.replicate((params, opt_state), mesh)
    batch = sharding.shard_batch(get_batch(step), mesh)  # every leaf split on axis 0
    params, opt_state, loss = train_step(params, opt_state, batch)   # jitted as usual

or, in one call, :func:`parallelize`.

Multi-host (several machines / processes, e.g. a TPU pod or several GPU nodes):
call :func:`initialize_distributed` (``jax.distributed.initialize``; or
:func:`lstm_jax.distributed.multiprocess.initialize_from_env`, which ``python -m lstm_jax.distributed.launch``
feeds) at the very start of *every* process, before any other JAX call; then
``jax.devices()`` lists the devices of all processes and
:func:`make_data_mesh` spans them. Each process loads only its own share of
the batch (``global_batch / jax.process_count()`` examples, e.g. by using
``jax.process_index()`` to pick its shard of the data); :func:`shard_batch`
assembles the global array from the per-process pieces with
``jax.make_array_from_process_local_data``. On Cloud TPU and under SLURM /
Open MPI the arguments are auto-detected; otherwise pass the coordinator's
``host:port``, the number of processes and this process's id.

CPU testing: ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set
before JAX is imported) makes one CPU look like four devices.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "initialize_distributed",
    "make_data_mesh",
    "batch_sharding",
    "replicated_sharding",
    "shard_batch",
    "replicate",
    "parallelize",
    "should_parallelize",
    "is_main_process",
    "shard_global",
]

#: Name of the mesh axis the batch is split over.
DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs,
) -> None:
    """Join a multi-process JAX job (``jax.distributed.initialize``); call first, in every process.

    Args:
        coordinator_address: ``"host:port"`` of process 0 (reachable from all).
        num_processes: total number of processes.
        process_id: this process's rank in ``[0, num_processes)``.
        **kwargs: passed on (e.g. ``local_device_ids``).

    All three may be ``None`` on Cloud TPU, SLURM or Open MPI, where JAX reads
    them from the environment. A no-op for a single process: on one machine
    you do not need this at all.
    """
    if num_processes == 1:
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )


def should_parallelize() -> bool:
    """True when more than one device is visible (the training loop then shards the batch)."""
    return jax.device_count() > 1


def is_main_process() -> bool:
    """True in process 0, the one that writes logs, metrics and figures in a multi-process job."""
    return jax.process_index() == 0


def make_data_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes) named ``axis_name``."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_data_mesh: no devices")
    return Mesh(np.array(devices), (axis_name,))


def batch_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Leading axis split over ``axis_name``, all other axes whole."""
    return NamedSharding(mesh, P(axis_name))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def _axis_size(mesh: Mesh, axis_name: str) -> int:
    return mesh.shape[axis_name]


def shard_batch(batch: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Place every leaf of ``batch`` with its leading (batch) axis split over the mesh.

    Leaves may be numpy or JAX arrays. The leading dimension must be divisible
    by the number of devices on ``axis_name`` (per process, in a multi-process
    job, where each process passes its local share of the global batch).
    Scalars (rank-0 leaves, e.g. a step counter) are replicated.
    """
    sharding = batch_sharding(mesh, axis_name)
    n = _axis_size(mesh, axis_name)
    multi_process = jax.process_count() > 1

    def put(leaf):
        leaf_arr = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
        if leaf_arr.ndim == 0:
            return jax.device_put(leaf_arr, replicated_sharding(mesh))
        if multi_process:
            local = n // jax.process_count()
            if leaf_arr.shape[0] % max(local, 1):
                raise ValueError(
                    f"shard_batch: this process's batch of {leaf_arr.shape[0]} rows is not divisible by its "
                    f"{local} devices (the global batch must be a multiple of all {n} devices)"
                )
            return jax.make_array_from_process_local_data(sharding, np.asarray(leaf_arr))
        if leaf_arr.shape[0] % n:
            raise ValueError(
                f"shard_batch: batch dimension {leaf_arr.shape[0]} (leaf shape {leaf_arr.shape}) "
                f"is not divisible by the {n} devices on mesh axis {axis_name!r}"
            )
        return jax.device_put(leaf_arr, sharding)

    return jax.tree_util.tree_map(put, batch)


def shard_global(tree: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Like :func:`shard_batch`, but every process passes the *whole* array (e.g. an initial carry).

    Each process keeps only its devices' rows. Scalars are replicated.
    """
    n = _axis_size(mesh, axis_name)

    def put(leaf):
        arr = np.asarray(leaf)
        if arr.ndim == 0:
            return jax.device_put(arr, replicated_sharding(mesh))
        if arr.shape[0] % n:
            raise ValueError(f"shard_global: leading dimension {arr.shape[0]} is not divisible by {n} devices")
        return jax.device_put(arr, batch_sharding(mesh, axis_name))

    return jax.tree_util.tree_map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A full copy of every leaf of ``tree`` on every device of ``mesh`` (params, optimizer state)."""
    if jax.process_count() > 1:
        # A committed single-device array (e.g. restored from a checkpoint) cannot be put onto other
        # processes' devices (no cross-host transfers on CPU); every process holds the same values.
        tree = jax.tree_util.tree_map(
            lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_addressable else x, tree
        )
    return jax.device_put(tree, replicated_sharding(mesh))


def parallelize(
    params: Any,
    opt_state: Any,
    get_batch: Callable[[int], Any],
    model_state: Any = None,
    *,
    mesh: Mesh | None = None,
    shard_model_state: bool = True,
):
    """Everything the training loop needs for data parallelism, in one call.

    Returns ``(params, opt_state, get_batch, model_state, mesh)`` with params
    and optimizer state replicated, ``get_batch`` wrapped to return sharded
    batches, and ``model_state`` (e.g. a truncated-BPTT carry with a leading
    batch axis) sharded like the batch if ``shard_model_state`` else
    replicated. The jitted step function needs no change.
    """
    mesh = mesh or make_data_mesh()
    params, opt_state = replicate((params, opt_state), mesh)
    if model_state is not None:
        model_state = shard_batch(model_state, mesh) if shard_model_state else replicate(model_state, mesh)

    def sharded_get_batch(step: int):
        return shard_batch(get_batch(step), mesh)

    return params, opt_state, sharded_get_batch, model_state, mesh


# ---------------------------------------------------------------------------
# Placement of training state on devices (used by lstm_jax.train.fit)


def colocate(tree, params):
    """Replicate leaves of ``tree`` that are not on the devices of ``params``.

    With params replicated over several devices (data parallelism), scalars
    such as the optimizer's step count are created on one device; the jitted
    step needs every argument on the same devices.
    """
    arrays = [x for x in jax.tree_util.tree_leaves(params) if isinstance(x, jax.Array)]
    if not arrays or len(arrays[0].sharding.device_set) <= 1:
        return tree
    sharding = arrays[0].sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
        replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    else:
        devices = np.array(sorted(sharding.device_set, key=lambda d: d.id))
        replicated = jax.sharding.NamedSharding(jax.sharding.Mesh(devices, ("devices",)), jax.sharding.PartitionSpec())

    def place(x):
        if isinstance(x, jax.Array) and x.sharding.device_set == sharding.device_set:
            return x
        return jax.device_put(x, replicated)

    return jax.tree_util.tree_map(place, tree)


def place_like(restored, like):
    """``restored`` leaves as device arrays with the sharding of the matching leaf of ``like``."""
    def place(r, l):
        sharding = getattr(l, "sharding", None)
        return jax.device_put(r, sharding) if sharding is not None else jnp.asarray(r)

    return jax.tree_util.tree_map(place, restored, like)


def replicate_train_state(params, opt_state, model_state):
    """Replicate params/optimizer state over all devices; ``(params, opt_state, model_state, put_batch)``.

    The batch (and a batch-major ``model_state``, e.g. a truncated-BPTT carry)
    is split on its leading axis over a 1-D mesh of all devices
    (:mod:`lstm_jax.distributed.sharding`); XLA inserts the gradient all-reduce.
    """
    mesh = make_data_mesh()
    params, opt_state = replicate((params, opt_state), mesh)
    if model_state is not None:
        try:  # e.g. a truncated-BPTT carry with a leading (global) batch axis
            model_state = shard_global(model_state, mesh)
        except ValueError:  # no batch axis that splits evenly: keep a full copy everywhere
            model_state = replicate(model_state, mesh)
    return params, opt_state, model_state, functools.partial(shard_batch, mesh=mesh)
