"""train_and_evaluate: the training loop, validation, early stopping, test.

Running it again on the same workdir resumes from the latest checkpoint and
ends with exactly the numbers an uninterrupted run gives.
"""

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview, periodic_actions
from flax import nnx
from jax.experimental import multihost_utils

from hpr import (
  checkpoint,
  evaluate,
  input_pipeline,
  metrics,
  parallel,
  rundirs,
)
from hpr import workdir as workdir_lib
from hpr.config import parse_init_from, validate
from hpr.errors import Interrupted, UserError
from hpr.evaluate import evaluate_split
from hpr.train_state import create_train_state, jit_eval_step, jit_train_step

# Config keys that change the model's arrays: a workdir cannot mix them.
_SHAPE_KEYS = (
  'model',
  'dataset.name',
  'input.num_frames',
  'input.image_size',
  'input.modality',
)
# What a key missing from an older workdir's config.json meant then.
_OLD_DEFAULTS = {'input.modality': 'rgb'}


def _check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir that holds a run of another model/data."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  saved = workdir_lib.read_json(path, "the workdir's config")
  if not isinstance(saved, dict):
    raise UserError(f"the workdir's config {path} is damaged: not an object")
  old = ml_collections.ConfigDict(saved)
  new = ml_collections.ConfigDict(json.loads(config.to_json()))
  for key in _SHAPE_KEYS:
    a, b = old, new
    for part in key.split('.'):
      a, b = a.get(part), b.get(part)
    a = _OLD_DEFAULTS.get(key) if a is None else a
    if a != b:
      raise UserError(
        f'{workdir} holds a run with a different {key} '
        f'({_short(a)} vs {_short(b)}); use a new --workdir'
      )


def _short(value) -> str:
  text = value.to_json() if hasattr(value, 'to_json') else json.dumps(value)
  return text if len(text) < 60 else text[:57] + '...'


def _write_config(config, workdir, info) -> None:
  if not parallel.is_main_process():
    return
  # Replaced whole: the other processes of a multi-process run may be
  # reading the previous config.json (_check_workdir) meanwhile.
  workdir_lib.write_atomic(
    os.path.join(workdir, 'config.json'), config.to_json(indent=2)
  )
  workdir_lib.write_atomic(
    os.path.join(workdir, 'class_names.json'),
    json.dumps(list(info.class_names)),
  )


class _EarlyStopping:
  """The notebook's EarlyStopping: stop after `patience` epochs without
  improvement of `monitor`; remember the best step.

  With `smoothing` w > 1 the value compared is the mean of the last w
  epochs' values (fewer in the first epochs), so that one lucky epoch on a
  small validation split neither wins the best checkpoint nor starts the
  patience count; the best step is the last epoch of the best window.
  """

  def __init__(
    self,
    monitor: str,
    patience: int,
    saved: dict | None = None,
    smoothing: int = 1,
  ):
    self.monitor, self.patience, self.smoothing = monitor, patience, smoothing
    self.sign = 1.0 if monitor == 'val_loss' else -1.0
    saved = saved or {}
    self.best = saved.get('best', math.inf)
    self.best_step = saved.get('best_step')
    self.wait = saved.get('wait', 0)
    self.history = list(saved.get('history', []))

  def smoothed(self, value: float) -> float:
    """The monitored value with this epoch's `value`, as compared."""
    window = [*self.history, value][-self.smoothing :]
    return sum(window) / len(window)

  def update(self, value: float, step: int) -> bool:
    """Records an epoch's value; returns True when training should stop."""
    current = self.smoothed(value)
    self.history = [*self.history, value][-self.smoothing :]
    if self.sign * current < self.best:
      self.best, self.best_step, self.wait = self.sign * current, step, 0
    else:
      self.wait += 1
    return self.patience > 0 and self.wait >= self.patience

  def state(self) -> dict:
    return {
      'best': self.best,
      'best_step': self.best_step,
      'wait': self.wait,
      'history': list(self.history),
    }


# A run that fails before writing anything leaves no empty workdir behind.
@rundirs.remove_on_failure('workdir')
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, validates every epoch, stops early, tests the best checkpoint.

  Args:
    config: a validated-or-not experiment config (validated here).
    workdir: where config, checkpoints, metrics and events go; an existing
      run there is resumed (from its newest intact checkpoint), else the
      model starts from `config.init_from` if set.

  Returns:
    The test split's metrics (see `metrics.classification_metrics`).

  Raises:
    UserError: a user mistake, another training holding the workdir, or no
      intact checkpoint to resume from.
    Interrupted: SIGTERM or SIGINT arrived; a checkpoint was saved at the
      next step boundary and running again resumes from it.
  """
  mesh = parallel.make_mesh()
  validate(config, num_devices=parallel.num_devices(mesh))
  logging.info('hpr on %s', parallel.describe_devices())
  workdir_lib.make(workdir)
  # Only process 0 locks: in a multi-process run on one host the processes
  # share the workdir.
  lock = (
    workdir_lib.lock(workdir)
    if parallel.is_main_process()
    else contextlib.nullcontext()
  )
  with lock, _StopSignals() as stop:
    return _train_and_evaluate(config, workdir, mesh, stop)


@dataclasses.dataclass
class _Run:
  """What the steps of one training share."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  stop: '_StopSignals'
  builder: Any
  info: Any
  steps_per_epoch: int
  clips: input_pipeline.ClipSpec  # How training clips are made.
  ts: Any
  ckpts: checkpoint.Checkpoints
  logger: metrics.MetricLogger
  stopper: _EarlyStopping
  meta: dict
  train_fn: Any
  eval_fn: Any


def _train_and_evaluate(config, workdir, mesh, stop: '_StopSignals') -> dict:
  run = _start(config, workdir, mesh, stop)
  t = config.training
  report = periodic_actions.ReportProgress(
    num_train_steps=run.steps_per_epoch * t.num_epochs,
    writer=run.logger.writer,
    every_secs=30,
  )
  step = run.ts.step
  epoch, start_batch = run.meta['epoch'], run.meta['batch']
  while not run.meta['stopped'] and epoch < t.num_epochs:
    epoch_start = time.time()
    step = _train_epoch(run, epoch, start_batch, step, report)
    _end_epoch(run, epoch, step, time.time() - epoch_start)
    epoch, start_batch = epoch + 1, 0
    if stop.requested():
      _stop(stop, step, run.ckpts, run.logger)
  if stop.requested():  # Before the test, which a rerun does again.
    _stop(stop, step, run.ckpts, run.logger)
  run.ckpts.wait()
  return _test_best(run, step)


def _start(config, workdir, mesh, stop: '_StopSignals') -> _Run:
  """Checks the workdir, opens the data, builds the state, resumes."""
  _check_workdir(config, workdir)
  builder = input_pipeline.get_builder(config.dataset)
  info = input_pipeline.get_dataset_info(config, builder)
  _write_config(config, workdir, info)
  steps_per_epoch = input_pipeline.steps_per_epoch(
    builder, config.dataset.train_split, config.training.batch_size
  )
  if steps_per_epoch == 0:
    raise UserError(
      f'training.batch_size {config.training.batch_size} is larger than the '
      f'{info.num_examples[config.dataset.train_split]} training examples'
    )
  logging.info(
    '%s: %s classes, splits %s; %d steps per epoch',
    info.name,
    info.num_classes,
    info.num_examples,
    steps_per_epoch,
  )
  # Also refuses a flip_label_map naming a class the dataset lacks.
  logging.info(
    'training: %s',
    input_pipeline.describe_flips(config, info.class_names, builder),
  )
  check_validation_size(config, builder)
  flips = input_pipeline.flip_labels(config, info.class_names, builder)
  clips = input_pipeline.clip_spec(config, training=True, flip_labels=flips)
  ts = create_train_state(config, info.num_classes, mesh, steps_per_epoch)
  parameter_overview.log_parameter_overview(
    nnx.to_pure_dict(ts.state['model']), msg=f'{config.model.name} parameters'
  )
  t = config.training
  ckpts = checkpoint.Checkpoints(
    os.path.join(workdir, 'checkpoints'),
    keep=t.checkpoints_to_keep,
    monitor=t.monitor,
  )
  logger = metrics.MetricLogger(workdir, is_main=parallel.is_main_process())
  # 'stopped': early stopping ended the run (a larger num_epochs does not
  # restart it; a run that just ran out of epochs continues if raised).
  meta = {'epoch': 0, 'batch': 0, 'stopped': False, 'early_stopping': None}
  resumed = ckpts.restore_latest(ts.checkpoint_tree())
  if resumed is not None:
    latest, tree, meta = resumed
    ts.load_checkpoint_tree(tree)
    logging.info('Resumed from step %d (epoch %d)', latest, meta['epoch'])
    if config.init_from:
      logging.info('init_from is ignored: the run resumes its own checkpoint')
  elif config.init_from:
    init_from(ts, config.init_from, workdir)
  # Records past the checkpoint (or all, starting afresh) are written again.
  logger.truncate_after(resumed[0] if resumed else 0)
  return _Run(
    config=config,
    workdir=workdir,
    mesh=mesh,
    stop=stop,
    builder=builder,
    info=info,
    steps_per_epoch=steps_per_epoch,
    clips=clips,
    ts=ts,
    ckpts=ckpts,
    logger=logger,
    stopper=_EarlyStopping(
      t.monitor, t.patience, meta['early_stopping'], t.monitor_smoothing
    ),
    meta=meta,
    train_fn=jit_train_step(
      ts, mesh, seed=config.seed, label_smoothing=t.label_smoothing
    ),
    eval_fn=jit_eval_step(ts, mesh),
  )


def _train_epoch(run: _Run, epoch: int, start_batch: int, step: int, report):
  """One pass over the training split from `start_batch`; returns the step.

  Saves mid-epoch checkpoints (every training.checkpoint_every_steps, and
  at the step boundary after a stop signal)."""
  t, ts = run.config.training, run.ts
  batches = input_pipeline.train_batches(
    run.builder,
    run.config.dataset.train_split,
    run.clips,
    batch_size=t.batch_size,
    seed=run.config.seed,
    epoch=epoch,
    shuffle_buffer=run.config.input.shuffle_buffer,
    start_batch=start_batch,
  )
  for batch_index, batch in enumerate(batches, start=start_batch):
    ts.state, loss = run.train_fn(
      ts.state, parallel.shard_batch(batch, run.mesh), step
    )
    step += 1
    report(step)
    if step % t.log_every_steps == 0:
      _check_finite(float(loss), step, run.ckpts)
      run.logger.write(
        step, {f'train_{k}': v for k, v in ts.metrics().compute().items()}
      )
    # At the epoch's last step the epoch-end checkpoint (after
    # validation) is the one that counts, also when stopping.
    mid_epoch = batch_index + 1 < run.steps_per_epoch
    stopping = mid_epoch and run.stop.requested()
    if mid_epoch and (
      stopping
      or (t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0)
    ):
      run.meta = {
        'epoch': epoch,
        'batch': batch_index + 1,
        'stopped': False,
        'early_stopping': run.stopper.state(),
      }
      _check_finite(float(loss), step, run.ckpts)
      run.ckpts.save(step, ts.checkpoint_tree(), run.meta)
      logging.info('saved checkpoint at step %d', step)
    if stopping:
      _stop(run.stop, step, run.ckpts, run.logger)
  return step


def _end_epoch(run: _Run, epoch: int, step: int, seconds: float) -> None:
  """Validates, logs, updates early stopping and saves the epoch's
  checkpoint (with run.meta['stopped'] set when early stopping ends it)."""
  t, ts = run.config.training, run.ts
  train_scores = ts.metrics().compute()
  _check_finite(float(train_scores['loss']), step, run.ckpts)
  ts.reset_metrics()
  val = evaluate_split(
    run.eval_fn,
    ts.state,
    run.config,
    run.builder,
    run.config.dataset.eval_split,
    run.mesh,
    run.info.num_classes,
  )
  scores = {
    'epoch': epoch + 1,
    'train_loss': train_scores['loss'],
    'train_accuracy': train_scores['accuracy'],
    'val_loss': val['loss'],
    'val_accuracy': val['accuracy'],
    'epoch_seconds': seconds,
  }
  run.logger.write(step, scores)
  # The checkpoints' best slot ranks by what early stopping compares.
  ranked = {k: scores[k] for k in ('val_loss', 'val_accuracy')}
  ranked[t.monitor] = run.stopper.smoothed(scores[t.monitor])
  early = run.stopper.update(scores[t.monitor], step)
  run.meta = {
    'epoch': epoch + 1,
    'batch': 0,
    'early_stopping': run.stopper.state(),
    'stopped': early,
  }
  run.ckpts.save(
    step,
    ts.checkpoint_tree(),
    run.meta,
    metrics=ranked,
  )
  logging.info('saved checkpoint at step %d', step)
  logging.info(
    'epoch %d/%d: loss %.4f accuracy %.4f | val_loss %.4f val_accuracy '
    '%.4f (%.1fs)%s',
    epoch + 1,
    t.num_epochs,
    scores['train_loss'],
    scores['train_accuracy'],
    val['loss'],
    val['accuracy'],
    seconds,
    ' | early stop' if early else '',
  )


def _test_best(run: _Run, step: int) -> dict:
  """Tests the best checkpoint (by the monitored metric) with the
  configured views; writes WORKDIR/eval."""
  stopper, ts = run.stopper, run.ts
  best = stopper.best_step if stopper.best_step is not None else step
  if best != step:
    tree, _ = run.ckpts.restore(best, ts.checkpoint_tree())
    ts.load_checkpoint_tree(tree)
  test = evaluate.test_and_report(
    run.eval_fn,
    ts.state,
    run.config,
    run.builder,
    run.mesh,
    run.info,
    run.workdir,
    best,
  )
  run.logger.write(
    step,
    {
      'test_loss': test['loss'],
      'test_accuracy': test['accuracy'],
      'test_best_step': best,
    },
  )
  run.logger.close()
  run.ckpts.close()
  logging.info(
    'test (checkpoint %d, %d videos): accuracy %.4f loss %.4f',
    best,
    test['count'],
    test['accuracy'],
    test['loss'],
  )
  return test


def check_validation_size(config: ml_collections.ConfigDict, builder) -> dict:
  """Logs the validation split's size; warns, in one line that says what
  to do, when it has fewer than training.min_val_clips clips.

  Returns:
    `input_pipeline.split_size` of the validation split.
  """
  t = config.training
  size = input_pipeline.split_size(config, builder, config.dataset.eval_split)
  groups = size['groups']
  where = f'{size["clips"]} clips' + (
    f' from {len(groups)} groups' if groups is not None else ''
  )
  logging.info(
    'validation (%s): %s; early stopping on %s%s',
    size['split'],
    where,
    t.monitor,
    f' averaged over {t.monitor_smoothing} epochs'
    if t.monitor_smoothing > 1
    else '',
  )
  if size['clips'] < t.min_val_clips:
    more = (
      'raise dataset.video_folder.val_groups, '
      if config.dataset.name == 'video_folder'
      else ''
    )
    logging.warning(
      'validation has only %s (< training.min_val_clips %d): early stopping '
      'and the best checkpoint follow noise; %sset '
      'training.monitor_smoothing (e.g. 5) or training.patience=0',
      where,
      t.min_val_clips,
      more,
    )
  return size


def _check_finite(loss: float, step: int, ckpts: checkpoint.Checkpoints):
  if not np.isfinite(loss):
    ckpts.wait()
    kept = ckpts.latest_step()
    where = (
      f'the last good checkpoint (step {kept}) is kept in {ckpts.directory}'
      if kept is not None
      else 'no checkpoint was saved yet'
    )
    raise UserError(
      f'training diverged: loss is {loss} at step {step}; {where}; lower '
      'optimizer.learning_rate or set optimizer.grad_clip_norm'
    )


class _StopSignals:
  """SIGTERM and SIGINT ask the training loop to stop at the next step
  boundary (after saving a checkpoint) instead of killing it.

  A second signal of the same kind acts as it did before (SIGINT: a
  KeyboardInterrupt, SIGTERM: the default kill), so a stuck run can still be
  stopped at once. The previous handlers are back after the block.
  Signals can only be handled in the main thread; elsewhere nothing changes.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self) -> '_StopSignals':
    if threading.current_thread() is threading.main_thread():
      for signum in self._SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    self.signum = signum
    signal.signal(signum, self._previous[signum])
    logging.warning(
      '%s: stopping after the current step, with a checkpoint; send it '
      'again to stop at once without one',
      signal.Signals(signum).name,
    )

  def requested(self) -> bool:
    """Whether to stop now; in a multi-process run, whether any process
    got a signal (all of them then stop at the same step)."""
    if jax.process_count() == 1:
      return self.signum is not None
    signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and signums.max():
      self.signum = int(signums.max())
    return bool(signums.max())


def _stop(
  stop: _StopSignals,
  step: int,
  ckpts: checkpoint.Checkpoints,
  logger: metrics.MetricLogger,
) -> None:
  """Ends a run on a signal, once its checkpoint is on disk."""
  ckpts.wait()
  saved = ckpts.latest_step()
  logger.close()
  ckpts.close()
  name = signal.Signals(stop.signum).name
  raise Interrupted(
    f'{name} at step {step}: checkpoint {saved} is saved in '
    f'{ckpts.directory}; run the same command again to resume',
    signum=stop.signum,
  )


def init_from(ts, spec: str, workdir: str) -> int:
  """Starts `ts`'s model from another run's checkpoint (`config.init_from`).

  Only the model's arrays are taken (parameters and batch-norm statistics);
  the optimizer, step counter and data order start afresh, so the other run
  may have used another optimizer or schedule.

  Args:
    ts: a fresh train state of the configured model.
    spec: 'WORKDIR' (its best checkpoint, else the latest) or 'WORKDIR:STEP'.
    workdir: this run's workdir (which must not be the source).

  Returns:
    The step of the checkpoint taken.

  Raises:
    UserError: no such workdir or step, a damaged checkpoint, or one whose
      arrays do not fit the configured model (naming the first that
      differs).
  """
  source, step = parse_init_from(spec)
  if os.path.realpath(source) == os.path.realpath(workdir):
    raise UserError(
      f"init_from: {source} is this run's own workdir; a run there resumes "
      'by itself, without init_from'
    )
  try:
    ckpts, step = workdir_lib.choose_checkpoint(source, step)
  except UserError as e:
    raise UserError(f'init_from: {e}') from None
  try:
    tree, _ = ckpts.restore_untyped(step)
  finally:
    ckpts.close()
  what = f'init_from checkpoint {ckpts.directory}/{step}'
  if not isinstance(tree, dict) or 'model' not in tree:
    raise UserError(f'{what} holds no model parameters')
  target = ts.checkpoint_tree()['model']
  ts.load_checkpoint_tree(
    {'model': checkpoint.fit_to(tree['model'], target, what)}
  )
  logging.info('model initialised from %s (fresh optimizer, step 0)', what)
  return step
