"""Checkpoints on disk with orbax: the only module that imports orbax.

A checkpoint holds two items: `state`, a pytree of arrays (model, optimizer,
running metrics), and `meta`, JSON (step, epoch, early-stopping state, what
model it belongs to). The manager keeps the latest `keep` checkpoints plus the
best one by the monitored validation metric.

A checkpoint that cannot be read back (a truncated array file, a missing
`_METADATA` or `meta` item, a half-copied step directory) raises
`DamagedCheckpoint`, which says what is wrong with it; one that reads but
holds other arrays than the model's raises a "does not fit" `UserError`.
Resuming falls back to the newest intact checkpoint (`restore_latest`).
"""

import json
import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from hpr import parallel
from hpr.errors import UserError

# A damaged checkpoint is set aside under this suffix (never deleted), so
# that the resumed run can save that step again.
DAMAGED_SUFFIX = '.damaged'


class DamagedCheckpoint(UserError):
  """A checkpoint that cannot be read back, with the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'checkpoint {path} is damaged: {reason}')
    self.path, self.reason = path, reason


def _sync(name: str) -> None:
  """Waits for every process of a multi-process run (process 0 renames
  damaged checkpoints; the others must not read the old names after)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__


def _read_error(error: BaseException) -> str:
  """The useful part of an orbax/TensorStore read error: the innermost
  cause (which file, which byte range), without TensorStore's spec dump."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  text = _first_line(error).split(' [tensorstore_spec')[0]
  return text if len(text) <= 240 else text[:237] + '...'


def _quiet_closed_loop_errors() -> None:
  """Silences the reports of the reads a failed restore left behind.

  When one array of a checkpoint cannot be read, orbax stops and closes its
  event loop while TensorStore still completes the other reads; each of
  them then reports an error through sys.unraisablehook (a traceback per
  array on the console, after the one-line error). Only those reports are
  dropped.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'hpr_quiet', False):
    return

  def hook(unraisable):
    text = str(unraisable.exc_value)
    if 'Event loop is closed' in text or text.startswith(
      'Encountered error while reading array index'
    ):
      return
    previous(unraisable)

  hook.hpr_quiet = True
  sys.unraisablehook = hook


def _rank_key(monitor: str):
  # Ties go to the earlier step, as Keras's EarlyStopping keeps the first best.
  if monitor == 'val_loss':
    return (lambda m: (m[monitor], m['step'])), True
  return (lambda m: (m[monitor], -m['step'])), False


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(
    self,
    directory: str,
    *,
    keep: int = 2,
    monitor: str = 'val_loss',
    read_only: bool = False,
  ):
    self.directory = os.path.abspath(directory)
    self._options = dict(keep=keep, monitor=monitor, read_only=read_only)
    if not read_only:
      self._set_damaged_metrics_aside()
      _sync('hpr_checkpoints_open')  # Before any process's orbax reads them.
    self._manager = self._make_manager(**self._options)

  def _make_manager(self, keep: int, monitor: str, read_only: bool):
    key, reverse = _rank_key(monitor)
    policy = checkpoint_managers.AnyPreservationPolicy(
      [
        checkpoint_managers.LatestN(keep),
        checkpoint_managers.BestN(
          get_metric_fn=key,
          reverse=reverse,
          n=1,
          keep_checkpoints_without_metrics=False,
        ),
      ]
    )
    return ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        # With a best_fn orbax also writes each checkpoint's metrics to disk
        # and reads them back when a run resumes; without it the best
        # checkpoint of the interrupted run would lose its rank (and be
        # deleted) once the resumed run moved past it. A read-only manager
        # deletes nothing, so it does not read them (nor trip on a damaged
        # one).
        best_fn=None if read_only else key,
        best_mode='min' if reverse else 'max',
        read_only=read_only,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
      ),
      item_names=('state', 'meta'),
    )

  def _step_dirs(self) -> dict[int, str]:
    if not os.path.isdir(self.directory):
      return {}
    return {
      int(name): os.path.join(self.directory, name)
      for name in os.listdir(self.directory)
      if name.isdigit() and os.path.isdir(os.path.join(self.directory, name))
    }

  def _set_damaged_metrics_aside(self) -> None:
    # orbax reads every checkpoint's metrics when it opens the directory,
    # and a torn metrics file would stop it with a JSONDecodeError.
    for path in self._step_dirs().values():
      metrics = os.path.join(path, 'metrics', 'metrics')
      if not os.path.exists(metrics):
        continue
      try:
        with open(metrics) as f:
          json.load(f)
      except (OSError, ValueError) as e:
        logging.warning(
          'checkpoint %s is damaged: its metrics file is unreadable (%s)',
          path,
          e,
        )
        self._set_aside(path)

  def _set_aside(self, path: str) -> str:
    """Renames a damaged step directory to STEP.damaged (never deletes)."""
    new, n = path + DAMAGED_SUFFIX, 1
    while os.path.exists(new):
      n += 1
      new = f'{path}{DAMAGED_SUFFIX}{n}'
    if jax.process_index() == 0:
      os.rename(path, new)
    logging.warning('set the damaged %s aside as %s', path, new)
    return new

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(
    self, step: int, state: Any, meta: dict, metrics: dict | None = None
  ) -> None:
    """Saves asynchronously; `metrics` ranks it for the best-checkpoint slot.

    Args:
      step: training step (the checkpoint's name).
      state: pytree of jax arrays.
      meta: JSON-serialisable dict.
      metrics: validation metrics, or None for a mid-epoch checkpoint.
    """
    if metrics is not None:
      metrics = {**metrics, 'step': step}
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
      ),
      metrics=metrics,
      force=True,
    )

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def read_meta(self, step: int) -> dict:
    """The `meta` item of `step`.

    Raises:
      DamagedCheckpoint: it is missing or not valid JSON.
    """
    path = self.step_path(step)
    meta_path = os.path.join(path, 'meta', 'metadata')
    if not os.path.isdir(os.path.join(path, 'meta')):
      raise DamagedCheckpoint(path, "its 'meta' item is missing")
    try:
      with open(meta_path) as f:
        meta = json.load(f)
    except FileNotFoundError:
      raise DamagedCheckpoint(path, f'{meta_path} is missing') from None
    except (OSError, ValueError) as e:
      raise DamagedCheckpoint(
        path, f'{meta_path} is unreadable ({_first_line(e)})'
      ) from None
    if not isinstance(meta, dict):
      raise DamagedCheckpoint(path, f'{meta_path} is not a JSON object')
    return meta

  def saved_tree(self, step: int) -> Any:
    """The saved arrays' metadata (shape, dtype) in the saved structure,
    read without reading the arrays.

    Raises:
      DamagedCheckpoint: an item or the array index (`_METADATA`) is
        missing or unreadable.
    """
    path = self.step_path(step)
    if not os.path.isdir(path):
      raise DamagedCheckpoint(path, 'its directory is missing')
    state = os.path.join(path, 'state')
    if not os.path.isdir(state):
      raise DamagedCheckpoint(path, "its 'state' item is missing")
    if not os.path.exists(os.path.join(state, '_METADATA')):
      raise DamagedCheckpoint(
        path, 'its array index state/_METADATA is missing'
      )
    _quiet_closed_loop_errors()
    try:
      metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(state))
    except Exception as e:  # orbax raises many kinds for a damaged index.
      raise DamagedCheckpoint(
        path, f'its array index is unreadable ({_read_error(e)})'
      ) from None
    tree = getattr(metadata, 'tree', None)
    if not isinstance(tree, dict):
      raise DamagedCheckpoint(path, 'its array index is unreadable')
    return tree

  def _restore(self, step: int, abstract: Any) -> tuple[Any, dict]:
    """Reads `step`'s arrays into `abstract`'s shapes and placement; any
    failure here is damage, since the index has been read and matched."""
    meta = self.read_meta(step)
    _quiet_closed_loop_errors()
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)),
      )
    except Exception as e:  # TensorStore's errors have no common type.
      raise DamagedCheckpoint(
        self.step_path(step), f'its arrays cannot be read ({_read_error(e)})'
      ) from None
    return restored['state'], meta

  def restore_untyped(self, step: int) -> tuple[Any, dict]:
    """Restores `step` as saved, without a target, onto this process's
    first device (in a multi-process run: on every device, replicated),
    whatever devices saved it (a run trained on 8 GPUs is evaluated or
    used for prediction on a laptop).

    Raises:
      DamagedCheckpoint: it cannot be read back.
    """
    saved = self.saved_tree(step)
    device = parallel.restore_sharding()
    try:
      abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        saved,
      )
    except (AttributeError, TypeError) as e:
      raise DamagedCheckpoint(
        self.step_path(step), f'its array index is unreadable ({e})'
      ) from None
    return self._restore(step, abstract)

  def restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """Restores `step` into arrays shaped and sharded like `target`.

    Raises:
      DamagedCheckpoint: it cannot be read back.
      UserError: the checkpoint's arrays do not fit `target` (another model).
    """
    problem = _mismatch(_named_leaves(self.saved_tree(step)), target)
    if problem:
      raise UserError(
        f'checkpoint {self.step_path(step)} does not fit this model ({problem})'
      )
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      target,
    )
    return self._restore(step, abstract)

  def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
    """Restores the newest intact checkpoint into `target`'s shapes.

    A damaged newer one is logged (path and reason) and set aside as
    STEP.damaged (renamed, never deleted), so that the resumed run can save
    that step again.

    Returns:
      (step, tree, meta), or None where there are no checkpoints.

    Raises:
      UserError: every checkpoint is damaged (nothing is moved then), or
        the newest intact one does not fit `target`.
    """
    damaged = []
    found = None
    for step in sorted(self.all_steps(), reverse=True):
      try:
        found = (step, *self.restore(step, target))
        break
      except DamagedCheckpoint as e:
        logging.warning('%s; trying the one before it', e)
        damaged.append(e)
    if found is None and damaged:
      listed = '; '.join(f'{e.path}: {e.reason}' for e in damaged)
      raise UserError(
        f'no intact checkpoint to resume from in {self.directory} '
        f'({listed}); nothing was deleted: move them away to start again'
      )
    for e in damaged:
      self._set_aside(e.path)
    _sync('hpr_checkpoint_set_aside')
    if damaged:
      self._manager.reload()
    return found

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _named_leaves(tree: Any) -> dict[str, Any]:
  # By printed path: orbax restores the integer keys of nnx.List as strings.
  return {
    jax.tree_util.keystr(path, simple=True, separator='/'): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _mismatch(got: dict[str, Any], target: Any) -> str | None:
  """The first difference between saved leaves (by name) and `target`."""
  want = _named_leaves(target)
  for name, leaf in want.items():
    if name not in got:
      return f'it has no parameter {name}'
    if tuple(got[name].shape) != tuple(leaf.shape):
      return (
        f'it holds {name} with shape {tuple(got[name].shape)}, but this '
        f'config builds {tuple(leaf.shape)}'
      )
  extra = sorted(set(got) - set(want))
  if extra:
    return f"it holds {extra[0]}, which this config's model does not have"
  return None


def fit_to(tree: Any, target: Any, what: str) -> Any:
  """Checks that a restored `tree` has `target`'s structure and shapes.

  Returns:
    The restored arrays in `target`'s structure, placed like `target`.

  Raises:
    UserError: naming the first array that differs (a checkpoint of another
      model or class count).
  """
  got, want = _named_leaves(tree), _named_leaves(target)
  for name, leaf in want.items():
    if name not in got:
      raise UserError(
        f'{what} has no parameter {name}: it was written for a different model'
      )
    if tuple(got[name].shape) != tuple(leaf.shape):
      raise UserError(
        f'{what} holds {name} with shape {tuple(got[name].shape)}, but this '
        f'config builds {tuple(leaf.shape)}: it was written for a different '
        'model or number of classes'
      )
  extra = sorted(set(got) - set(want))
  if extra:
    raise UserError(
      f"{what} holds {extra[0]}, which this config's model does "
      'not have: it was written for a different model'
    )
  return jax.tree_util.tree_map_with_path(
    lambda path, b: jax.device_put(
      got[jax.tree_util.keystr(path, simple=True, separator='/')], b.sharding
    ),
    target,
  )
