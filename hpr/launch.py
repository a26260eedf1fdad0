"""What `hpr.main` does before it trains: the multi-process flags, absl
flag parsing with one-line errors, quiet library logs, and the process and
device set-up (docs/launching.md).
"""

import logging as std_logging
import os
import re

from absl import flags, logging

from hpr import cli, malloc_tuning
from hpr import config as config_lib
from hpr.cli import fail
from hpr.errors import ConfigError

FLAGS = flags.FLAGS

# Multi-process runs (docs/launching.md); hpr.parallel.initialize.
flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0 in a multi-process run '
  '(default: $JAX_COORDINATOR_ADDRESS, or what SLURM / a TPU VM says).',
)
flags.DEFINE_integer(
  'num_processes',
  None,
  'Processes in a multi-process run (default: $JAX_NUM_PROCESSES, or what '
  'SLURM / a TPU VM says; 1 forces a single-process run).',
)
flags.DEFINE_integer(
  'process_id',
  None,
  'This process, 0..num_processes-1 (default: $JAX_PROCESS_ID, or what '
  'SLURM / a TPU VM says).',
)
flags.DEFINE_integer(
  'initialization_timeout',
  300,
  'Seconds the processes of a multi-process run wait for each other to '
  'connect; then each ends with one error line.',
)
flags.DEFINE_bool(
  'jax_distributed',
  False,
  'Let jax.distributed.initialize() detect the launcher (Open MPI, '
  'Kubernetes) where hpr does not see one (it sees SLURM and TPU VMs).',
)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with bad flags and config overrides as one line."""
  _check_config_file(argv)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(ConfigError(str(e).strip().splitlines()[0]))
  except (KeyError, AttributeError, TypeError, ValueError, OSError) as e:
    # ml_collections raises these for an unknown --config.key or bad value.
    fail(ConfigError(_override_error(argv, e)))


def _check_config_file(argv: list[str]) -> None:
  # config_flags loads the file lazily and then fails with a traceback.
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
    else:
      continue
    # 'file.py:argument' passes an argument.
    path, _, argument = path.partition(':')
    if not os.path.isfile(path):
      fail(ConfigError(f'config file not found: {path}'))
    # Loaded once here too: a syntax error or an exception in get_config()
    # becomes one line naming the file and line, not a traceback.
    try:
      config_lib.load_config_file(path, argument or None)
    except ConfigError as e:
      fail(e)


def _override_error(argv: list[str], error: Exception) -> str:
  """One line for a --config.key=value that ml_collections rejected."""
  text = error.args[0] if error.args else str(error)
  text = str(text).strip()
  keys = [
    a.split('=', 1)[0].removeprefix('--config.')
    for a in argv
    if a.startswith('--config.')
  ]
  if isinstance(error, KeyError | AttributeError):
    words = re.findall(r'\w+', text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    for key in keys:
      parts = key.split('.')
      missing = [w for w in words[:3] if w in parts]
      if missing:
        at = parts.index(missing[0])
        message = f"unknown config key '{key}'"
        if hint:
          near = '.'.join(parts[:at] + [hint.group(1)])
          message += f"; did you mean '{near}'?"
        return message + ' (see hpr/schema.py for every key)'
  first = text.splitlines()[0] if text else type(error).__name__
  return f'bad --config override: {first}'


class QuietLibraries:
  """Drops the libraries' per-operation INFO chatter from the console.

  orbax logs every save and restore in detail, TFDS every dataset it opens;
  their warnings and errors still get through, and hpr's own INFO lines
  (progress, metrics) are kept.
  """

  _NOISY = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/', '/tensorflow/')

  def filter(self, record) -> bool:
    noisy = any(part in record.pathname for part in self._NOISY)
    if noisy and 'deprecat' in record.getMessage():
      return False
    return not (noisy and record.levelno < std_logging.WARNING)


def setup(config) -> None:
  # Late: keeps TensorFlow and JAX out of `hpr.main --help`.
  import tensorflow as tf

  from hpr import parallel

  # Hide GPUs from TF, otherwise it reserves their memory, which JAX needs;
  # TF only reads and preprocesses data here.
  tf.config.set_visible_devices([], 'GPU')
  num_processes = parallel.initialize(
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
    timeout_s=FLAGS.initialization_timeout,
    detect=FLAGS.jax_distributed,
  )
  parallel.configure_cpu_devices(
    config.cpu_devices,
    (config.training.batch_size, config.eval.batch_size),
    num_processes,
  )
  cli.enable_compilation_cache(config.jax_cache_dir)
  logging.info('glibc malloc settings: %s', malloc_tuning.describe())
