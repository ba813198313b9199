"""One device mesh for 1 GPU, 8 GPUs or many hosts: a `data` axis and an `fsdp` axis.

Parameters are sharded by size (openpi's rule): arrays under 4 MiB, scalars and vectors are
replicated; larger ones are split along their largest axis that the fsdp size divides. The
batch is split over every device (both axes), as FSDP expects.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recap_core.config import DistributedConfig
from recap_core.errors import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_SPEC = PartitionSpec((DATA_AXIS, FSDP_AXIS))
MIN_SHARD_BYTES = 4 * 2**20


def maybe_initialize_distributed(config: DistributedConfig) -> bool:
    """Join a multi-host job when asked; jax reads SLURM/Open MPI/… env vars when fields are None."""
    if not config.requested or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
    )
    return True


def barrier(name: str, timeout_s: int = 900) -> None:
    """Wait, bounded, until every process of a multi-process job reaches `name` (no-op alone).

    Gloo sets up a collective's context with a fixed 30 s deadline, so two processes that drifted
    further apart (one starved of CPU while importing or compiling on a busy host) failed their first
    collective (orbax's directory sync) with DEADLINE_EXCEEDED. This waits on the coordination
    service instead, whose deadline is ours, so the collective that follows starts together."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the coordination-service client jax.distributed set up

    distributed.global_state.client.wait_at_barrier(f"recap:{name}", timeout_in_ms=timeout_s * 1000)


def make_mesh(fsdp_devices: int) -> Mesh:
    n = jax.device_count()
    if fsdp_devices < 1 or n % fsdp_devices:
        raise ConfigError(
            f"fsdp_devices={fsdp_devices} does not divide the {n} visible device(s)",
            fix=f"pass --fsdp-devices with a divisor of {n} (1 = plain data parallel)",
        )
    devices = np.asarray(jax.devices()).reshape(n // fsdp_devices, fsdp_devices)
    return Mesh(devices, (DATA_AXIS, FSDP_AXIS))


def param_spec(shape: tuple[int, ...], itemsize: int, fsdp_size: int) -> PartitionSpec:
    """The size rule for one array."""
    if fsdp_size == 1 or len(shape) < 2 or int(np.prod(shape)) * itemsize < MIN_SHARD_BYTES:
        return PartitionSpec()
    for axis in np.argsort(shape)[::-1]:
        if shape[axis] % fsdp_size == 0:
            spec: list[Any] = [None] * len(shape)
            spec[axis] = FSDP_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def param_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree of arrays or ShapeDtypeStructs."""
    fsdp_size = mesh.shape[FSDP_AXIS]

    def one(x: Any) -> NamedSharding:
        try:
            itemsize = np.dtype(x.dtype).itemsize
        except TypeError:  # PRNG key arrays and other extended dtypes: small, replicate them
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, param_spec(tuple(x.shape), itemsize, fsdp_size))

    return jax.tree.map(one, abstract_tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH_SPEC)


def local_batch_size(global_batch: int, grad_accum: int = 1) -> int:
    """This process's share of the global batch; each micro-batch must split over all devices."""
    n_dev, n_proc = jax.device_count(), jax.process_count()
    micro = global_batch // grad_accum
    if micro % n_dev:
        raise ConfigError(
            f"batch_size {global_batch} / grad_accum {grad_accum} = {micro} is not divisible by "
            f"the {n_dev} device(s)",
            fix=f"use a batch size that is a multiple of {n_dev * grad_accum}",
        )
    return global_batch // n_proc


def to_global(local_batch: Any, mesh: Mesh) -> Any:
    """Stack this process's numpy batch into global arrays sharded over the batch axis."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def process_info() -> dict[str, int]:
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "pid": os.getpid(),
    }
