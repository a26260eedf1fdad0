"""Checkpoints on disk with orbax: the only module that imports orbax.

A checkpoint holds two items: `state`, a pytree of arrays (model, optimizer,
running metrics), and `meta`, JSON (step, epoch, early-stopping state, what
model it belongs to). The manager keeps the latest `keep` checkpoints plus the
best one by the monitored validation metric.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from hpr.errors import UserError


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
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        # With a best_fn orbax also writes each checkpoint's metrics to disk
        # and reads them back when a run resumes; without it the best
        # checkpoint of the interrupted run would lose its rank (and be
        # deleted) once the resumed run moved past it.
        best_fn=key,
        best_mode='min' if reverse else 'max',
        read_only=read_only,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
      ),
      item_names=('state', 'meta'),
    )

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

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )['meta']

  def restore_untyped(self, step: int) -> tuple[Any, dict]:
    """Restores `step` as saved, without a target, onto this process's
    first device, whatever devices saved it (a run trained on 8 GPUs is
    evaluated or used for prediction on a laptop)."""
    path = os.path.join(self.directory, str(step), 'state')
    try:
      saved = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f'cannot read checkpoint {path} ({e})') from e
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved
    )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return restored['state'], restored['meta']

  def restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """Restores `step` into arrays shaped and sharded like `target`.

    Raises:
      UserError: the checkpoint's arrays do not fit `target` (another model).
    """
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      target,
    )
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
      )
    except (ValueError, KeyError, TypeError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e)
      raise UserError(
        f'checkpoint {self.directory}/{step} does not fit this model ({first})'
      ) from e
    return restored['state'], restored['meta']

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
