"""Processes, devices, mesh and shardings: the only module that knows devices.

hpr is data parallel over a one-axis `('data',)` mesh of every device (of
every process). Model and optimizer state are replicated; batches are sharded
along their leading axis, so `jax.jit` runs one step on all devices the way
`pmap` did, and inserts the gradient all-reduce itself.

A multi-process run (several hosts, or one process per GPU) starts with
`initialize`, which joins JAX's distributed runtime. Each process then loads
only the rows of every global batch that its own devices hold
(`process_rows`), and `shard_batch` assembles the global array from those
parts; no host ever holds a whole global batch.
"""

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hpr.errors import ConfigError, UserError

# jax internals, for what its public API does not offer (both are loaded
# with jax); if one moves in another jax version, only what uses it falls
# back (an AttributeError on None, caught where it is used).
try:
  from jax._src import cloud_tpu_init
except ImportError:
  cloud_tpu_init = None
try:
  from jax._src import distributed as jax_distributed
except ImportError:
  jax_distributed = None

DATA_AXIS = 'data'


class ProcessSetupError(UserError):
  """The processes of a multi-process run could not form one run.

  `exit_now`: the entry point leaves at once (os._exit), without JAX's exit
  handler, which would wait for the missing peers or log their absence.
  """

  exit_now = True


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, '').strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f'{name}={value!r} is not an integer') from None


def _slurm_step_has_several_tasks() -> bool:
  # The variables jax's own SLURM detection reads (jax/_src/clusters).
  needed = (
    'SLURM_JOB_ID',
    'SLURM_STEP_NODELIST',
    'SLURM_NTASKS',
    'SLURM_PROCID',
    'SLURM_LOCALID',
  )
  if not all(name in os.environ for name in needed):
    return False
  return (_env_int('SLURM_NTASKS') or 1) > 1


def _on_cloud_tpu_vm() -> bool:
  # Set when jax is imported, from the PCI devices and libtpu (no network
  # call); jax's own TPU detection starts from it.
  try:
    return cloud_tpu_init.running_in_cloud_tpu_vm is True
  except (ImportError, AttributeError):
    return False


def cluster_detected() -> str | None:
  """The launcher JAX will read the process set-up from, if any: 'SLURM'
  inside an `srun` step of several tasks, 'Cloud TPU' on a TPU VM."""
  if _slurm_step_has_several_tasks():
    return 'SLURM'
  if _on_cloud_tpu_vm():
    return 'Cloud TPU'
  return None


@contextlib.contextmanager
def _connect_errors_raise() -> Iterator[None]:
  """Makes a failed connection to the coordinator an exception.

  jax.distributed.initialize creates its runtime client without an error
  callback, and such a client ends the process (a fatal C++ log and a stack
  trace, SIGABRT) when the processes do not all connect within the
  timeout. With any callback, `connect` raises instead (jaxlib cannot pass
  the callback its status and raises std::bad_cast, a RuntimeError in
  `connect`; when the runtime later reports a dead peer, the same error
  ends the process, as the default does, with a shorter message). jax
  offers no argument for it, so the client factory it calls is wrapped
  while it runs; if jax's internals differ, the default behaviour stays.
  """
  try:
    lib = jax_distributed._jax
    factory = lib.get_distributed_runtime_client
  except (ImportError, AttributeError):
    yield
    return

  def on_error(*args):  # Never called with a value: connect raises.
    del args

  class _Lib:
    def __getattr__(self, name):
      return getattr(lib, name)

    @staticmethod
    def get_distributed_runtime_client(*args, **kwargs):
      kwargs.setdefault('missed_heartbeat_callback', on_error)
      return factory(*args, **kwargs)

  jax_distributed._jax = _Lib()
  try:
    yield
  finally:
    jax_distributed._jax = lib


def _check_process_counts(num_processes: int, timeout_s: int) -> None:
  """Fails when the processes were started with different process counts.

  The coordinator only counts the processes of process 0's count, so a
  process told another count would connect, then wait forever for devices
  that never come.
  """
  client = jax_distributed.global_state.client
  pid = jax_distributed.global_state.process_id
  problem = None
  try:
    client.key_value_set(f'hpr/num_processes/{pid}', str(num_processes))
    for peer in range(num_processes) if pid == 0 else (0,):
      theirs = int(
        client.blocking_key_value_get(
          f'hpr/num_processes/{peer}', timeout_s * 1000
        )
      )
      if theirs != num_processes and problem is None:
        problem = (
          f'process {pid} was started with {num_processes} processes, '
          f'process {peer} with {theirs}: start every process with the same '
          '--num_processes'
        )
    # Process 0 serves the coordinator: it leaves only once every process
    # has read what it needs.
    client.wait_at_barrier('hpr/num_processes', timeout_s * 1000)
  except Exception as e:  # noqa: BLE001 (jaxlib's runtime errors)
    problem = problem or (
      f'the processes could not compare their --num_processes within '
      f'{timeout_s} s ({str(e).strip().splitlines()[0][:200]})'
    )
  if problem:
    raise ProcessSetupError(problem)


# What a collective reports when another process of the run went away.
_PEER_LOST = (
  'Gloo',  # CPU collectives between processes.
  'NCCL',  # GPU collectives between processes.
  'Connection closed by peer',
  'Connection reset by peer',
  'Broken pipe',
  'heartbeat',
  'UNAVAILABLE',
)


def _exit_at_once_after_errors() -> None:
  """Ends a multi-process run's process as soon as an error reaches the
  top, without Python's finalization.

  When another process dies, this one's next collective fails (gloo:
  "Connection closed by peer"), but finalizing would then wait forever on
  the runtime's threads that still wait for the dead peer. A failed
  collective is reported in one line; other errors keep their traceback.
  """
  previous = sys.excepthook

  def hook(kind, value, traceback):
    text = str(value)
    if isinstance(value, jax.errors.JaxRuntimeError) and any(
      sign in text for sign in _PEER_LOST
    ):
      first = text.strip().splitlines()[0][:300]
      print(
        f'hpr: error: process {jax.process_index()} could not reach the '
        f'other processes of the run ({first}); if one of them stopped, '
        'start all of them again with the same commands to resume from the '
        'latest checkpoint',
        file=sys.stderr,
      )
    else:
      previous(kind, value, traceback)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)

  sys.excepthook = hook


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  timeout_s: int = 300,
  detect: bool = False,
) -> int:
  """Joins this process to a multi-process run, when there is one.

  Call it before JAX runs anything. Arguments left None are read from
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; whatever is
  still missing JAX takes from the launcher (`cluster_detected`: SLURM's
  `srun`, a Cloud TPU VM; Open MPI, Kubernetes with `detect`). Without any
  of these the run is single-process and nothing happens; an explicit
  `num_processes=1` also keeps it so (e.g. two runs on one TPU VM).

  Args:
    coordinator_address: 'host:port' of process 0, which serves there.
    num_processes: processes in the run.
    process_id: this process's index, 0 <= process_id < num_processes.
    timeout_s: how long the processes wait for each other to connect.
    detect: ask JAX's launcher detection even where `cluster_detected`
      sees none.

  Returns:
    The number of processes (1: single-process run).

  Raises:
    ConfigError: missing or inconsistent settings.
    ProcessSetupError: the processes did not all connect within
      `timeout_s` (a wrong address, a process that never started, or
      processes started with different counts), within about
      timeout_s + 5 seconds.
  """
  if coordinator_address is None:
    coordinator_address = os.environ.get('JAX_COORDINATOR_ADDRESS') or None
  if num_processes is None:
    num_processes = _env_int('JAX_NUM_PROCESSES')
  if process_id is None:
    process_id = _env_int('JAX_PROCESS_ID')
  explicit = (coordinator_address, num_processes, process_id) != (None,) * 3
  launcher = cluster_detected()
  if num_processes == 1 and process_id in (None, 0):
    return 1
  if not (explicit or detect or launcher):
    return 1
  if num_processes is not None and num_processes < 1:
    raise ConfigError(
      f'--num_processes must be at least 1, not {num_processes}'
    )
  if process_id is not None and (
    process_id < 0
    or (num_processes is not None and process_id >= num_processes)
  ):
    raise ConfigError(
      f'--process_id {process_id} is outside 0..{(num_processes or 1) - 1}'
    )
  if (
    coordinator_address is not None
    and not coordinator_address.rpartition(':')[2].isdigit()
  ):
    raise ConfigError(
      f'--coordinator_address {coordinator_address!r} needs a port: host:port'
    )
  if jax.config.jax_cpu_collectives_implementation is None:
    # Cross-process collectives of CPU devices (tests, CPU clusters).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  where = f' at {coordinator_address}' if coordinator_address else ''
  try:
    with _connect_errors_raise():
      jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=timeout_s,
      )
  except ValueError as e:  # Settings still missing after detection.
    missing = [
      flag
      for flag, value in (
        ('--coordinator_address', coordinator_address),
        ('--num_processes', num_processes),
        ('--process_id', process_id),
      )
      if value is None
    ]
    raise ConfigError(
      f'a multi-process run needs {", ".join(missing)} (or the JAX_* '
      f'environment variables) where no launcher provides them ({e})'
    ) from None
  except RuntimeError as e:
    if 'once' in str(e) or 'before' in str(e):
      raise  # A programming error, not the user's.
    raise ProcessSetupError(
      f'the {num_processes or "expected"} processes did not all connect to '
      f'the coordinator{where} within {timeout_s} s: check the address '
      '(process 0 serves it), that every process was started, with the same '
      '--num_processes and its own --process_id'
      + (
        ' (SLURM: start one task per process with srun, or pass '
        '--num_processes=1)'
        if launcher == 'SLURM' and not explicit
        else ''
      )
    ) from None
  count = jax_distributed.global_state.num_processes
  _check_process_counts(count, timeout_s)
  _exit_at_once_after_errors()
  logging.info(
    'process %d of %d (coordinator %s%s)',
    jax_distributed.global_state.process_id,
    count,
    jax_distributed.global_state.coordinator_address,
    f', set up by {launcher}' if launcher and not explicit else '',
  )
  return count


def configure_cpu_devices(
  count: int, batch_sizes: tuple[int, ...] = (), num_processes: int = 1
) -> int:
  """Splits a CPU-only host into `count` XLA devices (jax_num_cpu_devices).

  The batch is then sharded over them as over GPUs: XLA:CPU runs each
  device's step on its own thread, so the many small memory-bound ops of
  these models use more than one core (+8-27% per training step on 2
  cores, benchmarks/README.md). Call it before JAX runs anything; it changes
  nothing on a GPU or TPU host, after JAX has started (then the devices
  stay as they are), or when XLA_FLAGS already asks for fake CPU devices.

  Args:
    count: devices wanted per process (config.cpu_devices); 1 leaves the
      host whole.
    batch_sizes: global batch sizes that must split evenly over all
      devices: count is lowered to the largest number for which
      count * num_processes divides them all.
    num_processes: processes of the run, each with `count` devices.

  Returns:
    The count asked of JAX (after lowering), or 0 where nothing was set.
  """
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return 0
  count = cpu_device_count(count, batch_sizes, num_processes)
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # JAX has started: its devices are fixed.
    return 0
  return count


def cpu_device_count(
  count: int, batch_sizes: tuple[int, ...], num_processes: int = 1
) -> int:
  """The largest count <= `count` (at least 1) of devices per process for
  which `num_processes` x count divides every global batch size."""
  while count > 1 and any(
    size % (count * num_processes) for size in batch_sizes
  ):
    count -= 1
  return max(count, 1)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis `('data',)` mesh over `devices` (default: all devices).

  Devices are ordered by process, so each process's devices hold one
  contiguous block of rows of a batch (`process_rows`).
  """
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(list(devices)), (DATA_AXIS,))


def num_devices(mesh: Mesh) -> int:
  return mesh.devices.size


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` on all devices of `mesh`.

  In a multi-process run every process must pass the same values (as the
  same seed gives): each fills its own devices from its copy.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: _to_global(x, sharding), tree)


def _to_global(x: Any, sharding: NamedSharding) -> jax.Array:
  # device_put cannot move a process's own arrays onto other processes'
  # devices; each process fills its devices from its copy instead.
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _to_global(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])


def restore_sharding() -> jax.sharding.Sharding:
  """Where a checkpoint restored without a target goes: this process's
  first device; in a multi-process run, every device (replicated), so
  that each process holds the arrays and can place them anywhere."""
  if jax.process_count() > 1:
    return replicated(make_mesh())
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def process_rows(
  global_batch_size: int, mesh: Mesh | None = None
) -> tuple[int, int]:
  """The rows [start, stop) of a global batch that this process loads:
  those its devices hold under `batch_sharding(mesh)` (default mesh: all
  devices). A single process loads every row."""
  mesh = make_mesh() if mesh is None else mesh
  if jax.process_count() == 1:
    return 0, global_batch_size
  indices = batch_sharding(mesh).addressable_devices_indices_map(
    (global_batch_size,)
  )
  rows = sorted({s[0].indices(global_batch_size)[:2] for s in indices.values()})
  start, stop = rows[0][0], rows[-1][1]
  if sum(b - a for a, b in rows) != stop - start:
    raise ValueError(
      f'the devices of process {jax.process_index()} hold '
      f'rows {rows}, not one block'
    )
  return start, stop


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Host batch (this process's rows, `process_rows`) -> global arrays
  sharded on 'data'."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, v)
    for k, v in batch.items()
  }


def gather(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process) sharded array as one host NumPy array."""
  if jax.process_count() > 1:
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
