"""The workdir: its lock, run files, config, checkpoint choice and the
commit stamp of the code that wrote it.

A training holds WORKDIR/.hpr.lock (an `fcntl.flock` lock) for as long as it
runs, so a second training in the same workdir is refused at once with the
first one's pid, host and start time. The operating system drops the lock
when its process ends, however it ends (a crash, SIGKILL, a lost machine),
so no stale lock is ever left behind; the file stays, naming the last holder.

Run files (config.json, class_names.json, metrics.jsonl) are replaced
atomically: a kill in the middle of a rewrite leaves the old file or the new
one, never half of each.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from absl import logging

from hpr.config import default_config, lists_to_tuples
from hpr.errors import UserError

if TYPE_CHECKING:  # Not at run time: `import hpr` stays light.
  import ml_collections
  from flax import nnx

LOCK_FILE = '.hpr.lock'


def make(path: str, what: str = 'workdir') -> None:
  """Creates the directory `path` (and its parents) and checks that it can
  be written, before any work whose results would go there.

  Raises:
    UserError: the directory cannot be created or written.
  """
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(
      f'cannot create {what} {path} ({e.strerror or e}); choose a '
      'directory you can write'
    ) from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise UserError(
      f'cannot write to {what} {path} (permission denied); choose a '
      'directory you can write'
    )


def _holder() -> dict:
  now = datetime.datetime.now(datetime.UTC)
  return {
    'pid': os.getpid(),
    'host': socket.gethostname(),
    'started': now.strftime('%Y-%m-%d %H:%M:%S UTC'),
    'command': ' '.join(sys.argv)[:500],
  }


def _describe(text: str) -> str:
  try:
    h = json.loads(text)
    return f'pid {h["pid"]} on host {h["host"]}, started {h["started"]}'
  except (ValueError, TypeError, KeyError):
    # The holder has taken the lock but not written its name yet.
    return 'a process that is just starting'


@contextlib.contextmanager
def lock(workdir: str, *, what: str = 'training') -> Iterator[None]:
  """Holds `workdir`'s lock; refuses at once if another process holds it.

  The lock is `fcntl.flock` on WORKDIR/.hpr.lock, released by the operating
  system when this process ends in any way; the file's content names the
  holder. On a filesystem without locks (some network filesystems) a warning
  is logged and nothing is refused.

  Args:
    workdir: an existing directory.
    what: the kind of run, for the messages.

  Raises:
    UserError: another process holds the lock (its pid, host and start
      time are in the message), or the lock file cannot be written.
  """
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise UserError(
        f'cannot write to workdir {workdir} ({e.strerror or e}); choose a '
        'directory you can write'
      ) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      break  # Held elsewhere, or no locks here: see below.
    # Ours, unless the file was removed (hpr.rundirs) between open and
    # flock: then lock the new one.
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)
  try:
    locked = True
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Again: no-op if held.
    except BlockingIOError:
      other = _describe(os.pread(fd, 4096, 0).decode(errors='replace'))
      raise UserError(
        f'{workdir} is in use by another {what}: {other}; wait for it to '
        f'end or use another --workdir (lock: {path})'
      ) from None
    except OSError as e:  # ENOLCK: the filesystem has no locks.
      logging.warning(
        'cannot lock %s (%s): a second %s in this workdir would not be refused',
        path,
        e.strerror or e,
        what,
      )
      locked = False
    if locked:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    try:
      yield
    finally:
      if locked:
        fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def write_atomic(path: str, text: str) -> None:
  """Replaces `path` with `text`: readers see the old or the new file."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(
    dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp'
  )
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def read_json(path: str, what: str):
  """A run file's JSON content.

  Raises:
    UserError: the file is missing or not valid JSON (one line naming it).
  """
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f'{what} {path} does not exist') from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f'{what} {path} is damaged or unreadable ({e})') from None


def read_class_names(workdir: str) -> list[str]:
  """WORKDIR/class_names.json, checked to be a list of strings.

  Raises:
    UserError: missing, damaged or not a list of class names.
  """
  path = os.path.join(workdir, 'class_names.json')
  if not os.path.exists(path):
    raise UserError(f'{workdir} has no class_names.json')
  names = read_json(path, 'the class names file')
  if (
    not isinstance(names, list)
    or not names
    or not all(isinstance(n, str) for n in names)
  ):
    raise UserError(
      f'the class names file {path} is damaged: expected a non-empty JSON '
      'list of class names'
    )
  return names


def load_trained_step(
  workdir: str, step: int | None = None
) -> tuple['nnx.Module', 'ml_collections.ConfigDict', list[str], int]:
  """`load_trained`, and the step whose checkpoint was restored."""
  # Late: keeps JAX and orbax out of import hpr.workdir (and train_state
  # imports this module, through hpr.metrics).
  from flax import nnx

  from hpr import checkpoint, train_state

  config = load_config(workdir)
  class_names = read_class_names(workdir)
  ckpts, step = choose_checkpoint(workdir, step)
  try:
    model = train_state.build_model(config, len(class_names))
    model.eval()
    graphdef, rng, params = nnx.split(model, nnx.RngState, ...)
    tree, _ = ckpts.restore_untyped(step)
  finally:
    ckpts.close()
  fitted = checkpoint.fit_to(
    tree['model'],
    nnx.to_pure_dict(params),
    f'checkpoint {ckpts.directory}/{step}',
  )
  nnx.replace_by_pure_dict(params, fitted)
  return nnx.merge(graphdef, rng, params), config, class_names, step


def load_trained(
  workdir: str, step: int | None = None
) -> tuple['nnx.Module', 'ml_collections.ConfigDict', list[str]]:
  """A trained workdir's model, config and class names, in one call.

  The model is rebuilt from WORKDIR/config.json (over the current defaults)
  and restored from the best checkpoint by the monitored validation metric
  (the latest when none was recorded), or from `step`. It is returned in
  eval mode (dropout off): call `model.train()` to fine-tune it. Loads
  TensorFlow (through hpr.evaluate) on first use.

  Args:
    workdir: a training workdir (`train_and_evaluate`'s or `hpr-train`'s).
    step: a saved step, or None for the best one.

  Returns:
    (model, config, class_names): the nnx model; the ml_collections config
    it was trained with; the class names, index i for logit i.

  Raises:
    UserError: not a workdir, no checkpoints, no checkpoint for `step`, a
      damaged checkpoint, or one that does not fit the config.
  """
  model, config, class_names, _ = load_trained_step(workdir, step)
  return model, config, class_names


def load_config(workdir: str) -> 'ml_collections.ConfigDict':
  """The config a workdir was trained with (its config.json), over the
  defaults, so keys added to hpr since then take their default values.

  Raises:
    UserError: the directory is not a training workdir.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.isdir(workdir):
    raise UserError(f'no such workdir: {workdir}')
  if not os.path.exists(path):
    raise UserError(f'{workdir} is not a training workdir (no config.json)')
  config = default_config()
  try:
    with open(path) as f:
      config.update(lists_to_tuples(json.load(f)))
  except (json.JSONDecodeError, TypeError, ValueError) as e:
    raise UserError(f'cannot read {path} ({e})') from e
  return config


def choose_checkpoint(workdir: str, step: int | None):
  """Opens WORKDIR/checkpoints read-only and picks a step.

  Args:
    workdir: a training workdir.
    step: a saved step, or None for the best one (by the monitored
      validation metric; the latest when none was recorded).

  Returns:
    (checkpoint.Checkpoints, step).

  Raises:
    UserError: no checkpoints, or no checkpoint for `step`.
  """
  # Late: keeps JAX and orbax out of import hpr.workdir.
  from hpr import checkpoint

  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise UserError(f'no checkpoints in {workdir}: train there first')
  ckpts = checkpoint.Checkpoints(directory, read_only=True)
  steps = ckpts.all_steps()
  if not steps:
    ckpts.close()
    raise UserError(f'no checkpoints in {directory}')
  if step is None:
    step = _best_step(ckpts, steps)
  elif step not in steps:
    ckpts.close()
    raise UserError(
      f'no checkpoint for step {step} in {directory}; '
      f'available: {", ".join(map(str, sorted(steps)))}'
    )
  return ckpts, step


def _best_step(ckpts, steps: list[int]) -> int:
  """The best step recorded by the newest readable checkpoint (a damaged
  newest one is skipped here; restoring it reports the damage)."""
  # Late: keeps JAX and orbax out of import hpr.workdir.
  from hpr import checkpoint

  for step in sorted(steps, reverse=True):
    try:
      meta = ckpts.read_meta(step)
    except checkpoint.DamagedCheckpoint:
      continue
    best = (meta.get('early_stopping') or {}).get('best_step')
    return best if best in steps else step
  return max(steps)


def source_commit() -> str:
  """The git commit of hpr's source ('-dirty' if changed), or 'unknown'."""
  here = os.path.dirname(os.path.abspath(__file__))

  def git(*args: str) -> str:
    # --no-optional-locks: `git status` would otherwise refresh and rewrite
    # the checkout's index (taking .git/index.lock) in every run.
    return subprocess.run(
      ['git', '--no-optional-locks', *args],
      cwd=here,
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    ).stdout.strip()

  try:
    head = git('rev-parse', 'HEAD')
    changed = git('status', '--porcelain', '--untracked-files=no')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return head + ('-dirty' if changed else '') if head else 'unknown'
