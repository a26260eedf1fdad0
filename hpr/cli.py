"""What hpr's command-line tools share: one-line errors, no tracebacks.

`hpr.main` parses absl flags; the smaller tools (`hpr.predict`, `hpr.plots`)
use argparse through this module.
"""

import argparse
import functools
import os
import sys
from collections.abc import Callable

from hpr.errors import ConfigError, UserError


def fail(error: UserError) -> None:
  """Prints one line for a user error and exits with its code."""
  print(f'hpr: {getattr(error, "label", "error")}: {error}', file=sys.stderr)
  sys.exit(error.exit_code)


class ArgumentParser(argparse.ArgumentParser):
  """argparse, with bad arguments reported as `hpr: error: ...` (exit 2)."""

  def error(self, message: str) -> None:
    fail(ConfigError(f'{message} (see {self.prog} --help)'))


@functools.cache
def tensorflow_on_cpu():
  """Imports TensorFlow with the GPUs hidden from it (otherwise it reserves
  their memory, which JAX needs; the tools use TF only for image ops)."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices: too late.
    pass
  return tf


def enable_compilation_cache(path: str) -> None:
  """Turns on JAX's persistent compilation cache in `path` ('' leaves it
  off), so a second run of the same config skips XLA compilation."""
  if not path:
    return
  import jax

  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))
  # Cache every compilation that takes noticeable time (default: > 1 s).
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  # The LRCN's native first block (hpr.models.native_block) is a
  # custom_partitioning op, whose IR holds a pointer that differs in every
  # process, so its programs would never hit the cache
  # (jax-ml/jax#21159). The pointer only finds the op's partitioning
  # callbacks, which depend on nothing but what the IR also holds (the
  # pool and padding of the custom call inside it), so leaving it out of
  # the key is safe here.
  jax.config.update('jax_remove_custom_partitioning_ptr_from_cache_key', True)


def configure_cpu_devices(count: int, batch_sizes: tuple[int, ...] = ()) -> int:
  """Splits a CPU-only host into `count` XLA devices (jax_num_cpu_devices).

  The batch is then sharded over them as over GPUs: XLA:CPU runs each
  device's step on its own thread, so the many small memory-bound ops of
  these models use more than one core (+8-27% per training step on 2
  cores, benchmarks/README.md). Call it before JAX runs anything; it changes
  nothing on a GPU or TPU host, after JAX has started (then the devices
  stay as they are), or when XLA_FLAGS already asks for fake CPU devices.

  Args:
    count: devices wanted (config.cpu_devices); 1 leaves the host whole.
    batch_sizes: batch sizes that must split evenly: count is lowered to
      the largest number that divides them all.

  Returns:
    The count asked of JAX (after lowering), or 0 where nothing was set.
  """
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return 0
  while count > 1 and any(size % count for size in batch_sizes):
    count -= 1
  import jax

  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # JAX has started: its devices are fixed.
    return 0
  return count


def run(main: Callable[[], None]) -> None:
  """Runs a tool's main(); a `UserError` ends it with one line.

  The libraries' warnings (orbax on read-only checkpoints, TFDS
  deprecations) are hidden: the tools print their results on stdout and
  only real errors on stderr.
  """
  from absl import logging

  logging.set_verbosity(logging.ERROR)
  try:
    main()
  except UserError as e:
    fail(e)
