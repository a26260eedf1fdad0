"""Devices, mesh and shardings: the only module that knows about devices.

hpr is data parallel over a one-axis `('data',)` mesh of every device (of
every process). Model and optimizer state are replicated; batches are sharded
along their leading axis, so `jax.jit` runs one step on all devices the way
`pmap` did, and inserts the gradient all-reduce itself.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis `('data',)` mesh over `devices` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def num_devices(mesh: Mesh) -> int:
  return mesh.devices.size


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def process_batch_size(global_batch_size: int) -> int:
  """The part of a global batch that this process loads."""
  return global_batch_size // jax.process_count()


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Host batch (this process's part) -> global arrays sharded on 'data'."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, v)
    for k, v in batch.items()
  }


def gather(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process) sharded array as one host NumPy array."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def is_main_process() -> bool:
  return jax.process_index() == 0


def describe_devices() -> str:
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (
    f'{len(devices)} device(s) ({", ".join(kinds)}) on '
    f'{jax.process_count()} process(es), platform '
    f'{devices[0].platform}'
  )
