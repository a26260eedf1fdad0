"""What hpr's command-line tools share: one-line errors, no tracebacks.

`hpr.main` parses absl flags; the smaller tools (`hpr.tools.predict`, `hpr.tools.plots`)
use argparse through this module.
"""

import argparse
import functools
import os
import sys
from collections.abc import Callable

from absl import logging

from hpr.errors import ConfigError, UserError


def fail(error: UserError) -> None:
  """Prints one line for a user error and exits with its code."""
  print(f'hpr: {getattr(error, "label", "error")}: {error}', file=sys.stderr)
  if getattr(error, 'exit_now', False):
    # Skips the exit handlers: JAX's would wait for (and log about) the
    # peers of a multi-process run that failed to form.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(error.exit_code)
  sys.exit(error.exit_code)


class ArgumentParser(argparse.ArgumentParser):
  """argparse, with bad arguments reported as `hpr: error: ...` (exit 2)."""

  def error(self, message: str) -> None:
    fail(ConfigError(f'{message} (see {self.prog} --help)'))


@functools.cache
def tensorflow_on_cpu():
  """Imports TensorFlow with the GPUs hidden from it (otherwise it reserves
  their memory, which JAX needs; the tools use TF only for image ops)."""
  # Late: keeps TensorFlow out of every tool's start-up.
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
  # Late: keeps JAX out of `hpr.main --help`.
  import jax

  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))
  # Cache every compilation that takes noticeable time (default: > 1 s).
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  # The LRCN's native first block (hpr.kernels.native_block) is a
  # custom_partitioning op, whose IR holds a pointer that differs in every
  # process, so its programs would never hit the cache
  # (jax-ml/jax#21159). The pointer only finds the op's partitioning
  # callbacks, which depend on nothing but what the IR also holds (the
  # pool and padding of the custom call inside it), so leaving it out of
  # the key is safe here.
  jax.config.update('jax_remove_custom_partitioning_ptr_from_cache_key', True)


def run(main: Callable[[], None]) -> None:
  """Runs a tool's main(); a `UserError` ends it with one line.

  The libraries' warnings (orbax on read-only checkpoints, TFDS
  deprecations) are hidden: the tools print their results on stdout and
  only real errors on stderr.
  """
  logging.set_verbosity(logging.ERROR)
  try:
    main()
  except UserError as e:
    fail(e)
