"""train_and_evaluate: the training loop, validation, early stopping, test.

Running it again on the same workdir resumes from the latest checkpoint and
ends with exactly the numbers an uninterrupted run gives.
"""

import json
import math
import os
import time

import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview, periodic_actions
from flax import nnx

from hpr import (
  checkpoint,
  evaluate,
  input_pipeline,
  metrics,
  parallel,
  rundirs,
)
from hpr.config import validate
from hpr.errors import UserError
from hpr.evaluate import evaluate_split
from hpr.train_state import create_train_state, jit_eval_step, jit_train_step

# Config keys that change the model's arrays: a workdir cannot mix them.
_SHAPE_KEYS = ('model', 'dataset.name', 'input.num_frames', 'input.image_size')


def _check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir that holds a run of another model/data."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = ml_collections.ConfigDict(json.load(f))
  new = ml_collections.ConfigDict(json.loads(config.to_json()))
  for key in _SHAPE_KEYS:
    a, b = old, new
    for part in key.split('.'):
      a, b = a.get(part), b.get(part)
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
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))
  with open(os.path.join(workdir, 'class_names.json'), 'w') as f:
    json.dump(list(info.class_names), f)


class _EarlyStopping:
  """The notebook's EarlyStopping: stop after `patience` epochs without
  improvement of `monitor`; remember the best step."""

  def __init__(self, monitor: str, patience: int, saved: dict | None = None):
    self.monitor, self.patience = monitor, patience
    self.sign = 1.0 if monitor == 'val_loss' else -1.0
    saved = saved or {}
    self.best = saved.get('best', math.inf)
    self.best_step = saved.get('best_step')
    self.wait = saved.get('wait', 0)

  def update(self, value: float, step: int) -> bool:
    """Records an epoch's value; returns True when training should stop."""
    if self.sign * value < self.best:
      self.best, self.best_step, self.wait = self.sign * value, step, 0
    else:
      self.wait += 1
    return self.patience > 0 and self.wait >= self.patience

  def state(self) -> dict:
    return {'best': self.best, 'best_step': self.best_step, 'wait': self.wait}


# A run that fails before writing anything leaves no empty workdir behind.
@rundirs.remove_on_failure('workdir')
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, validates every epoch, stops early, tests the best checkpoint.

  Args:
    config: a validated-or-not experiment config (validated here).
    workdir: where config, checkpoints, metrics and events go; an existing
      run there is resumed.

  Returns:
    The test split's metrics (see `metrics.classification_metrics`).
  """
  mesh = parallel.make_mesh()
  validate(config, num_devices=parallel.num_devices(mesh))
  logging.info('hpr on %s', parallel.describe_devices())
  os.makedirs(workdir, exist_ok=True)
  _check_workdir(config, workdir)
  builder = input_pipeline.get_builder(config.dataset)
  info = input_pipeline.get_dataset_info(config, builder)
  _write_config(config, workdir, info)
  steps_per_epoch = input_pipeline.steps_per_epoch(config, info)
  if steps_per_epoch == 0:
    raise UserError(
      f'training.batch_size {config.training.batch_size} is larger than the '
      f'{info.num_examples[config.dataset.train_split]} training examples'
    )
  num_steps = steps_per_epoch * config.training.num_epochs
  logging.info(
    '%s: %s classes, splits %s; %d steps per epoch',
    info.name,
    info.num_classes,
    info.num_examples,
    steps_per_epoch,
  )

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
  latest = ckpts.latest_step()
  if latest is not None:
    tree, meta = ckpts.restore(latest, ts.checkpoint_tree())
    ts.load_checkpoint_tree(tree)
    logger.truncate_after(latest)
    logging.info('Resumed from step %d (epoch %d)', latest, meta['epoch'])
  stopper = _EarlyStopping(t.monitor, t.patience, meta['early_stopping'])

  train_fn = jit_train_step(
    ts, mesh, seed=config.seed, label_smoothing=t.label_smoothing
  )
  eval_fn = jit_eval_step(ts, mesh)
  report = periodic_actions.ReportProgress(
    num_train_steps=num_steps, writer=logger.writer, every_secs=30
  )
  step = ts.step
  epoch, start_batch = meta['epoch'], meta['batch']
  while not meta['stopped'] and epoch < t.num_epochs:
    epoch_start = time.time()
    batches = input_pipeline.train_batches(
      config, builder, epoch=epoch, start_batch=start_batch
    )
    for batch_index, batch in enumerate(batches, start=start_batch):
      ts.state, loss = train_fn(
        ts.state, parallel.shard_batch(batch, mesh), step
      )
      step += 1
      report(step)
      if step % t.log_every_steps == 0:
        _check_finite(float(loss), step, ckpts)
        logger.write(
          step, {f'train_{k}': v for k, v in ts.metrics().compute().items()}
        )
      if (
        t.checkpoint_every_steps
        and step % t.checkpoint_every_steps == 0
        and batch_index + 1 < steps_per_epoch
      ):
        meta = {
          'epoch': epoch,
          'batch': batch_index + 1,
          'stopped': False,
          'early_stopping': stopper.state(),
        }
        _check_finite(float(loss), step, ckpts)
        ckpts.save(step, ts.checkpoint_tree(), meta)
        logging.info('saved checkpoint at step %d', step)
    train_scores = ts.metrics().compute()
    _check_finite(float(train_scores['loss']), step, ckpts)
    ts.reset_metrics()
    val = evaluate_split(
      eval_fn,
      ts.state,
      config,
      builder,
      config.dataset.eval_split,
      mesh,
      info.num_classes,
    )
    scores = {
      'epoch': epoch + 1,
      'train_loss': train_scores['loss'],
      'train_accuracy': train_scores['accuracy'],
      'val_loss': val['loss'],
      'val_accuracy': val['accuracy'],
      'epoch_seconds': time.time() - epoch_start,
    }
    logger.write(step, scores)
    stop = stopper.update(scores[t.monitor], step)
    epoch, start_batch = epoch + 1, 0
    meta = {
      'epoch': epoch,
      'batch': 0,
      'early_stopping': stopper.state(),
      'stopped': stop,
    }
    ckpts.save(
      step,
      ts.checkpoint_tree(),
      meta,
      metrics={k: scores[k] for k in ('val_loss', 'val_accuracy')},
    )
    logging.info('saved checkpoint at step %d', step)
    logging.info(
      'epoch %d/%d: loss %.4f accuracy %.4f | val_loss %.4f val_accuracy '
      '%.4f (%.1fs)%s',
      epoch,
      t.num_epochs,
      scores['train_loss'],
      scores['train_accuracy'],
      val['loss'],
      val['accuracy'],
      scores['epoch_seconds'],
      ' | early stop' if stop else '',
    )
  ckpts.wait()

  best = stopper.best_step if stopper.best_step is not None else step
  if best != step:
    tree, _ = ckpts.restore(best, ts.checkpoint_tree())
    ts.load_checkpoint_tree(tree)
  # The test split with the configured views; writes workdir/eval.
  test = evaluate.test_and_report(
    eval_fn, ts.state, config, builder, mesh, info, workdir, best
  )
  logger.write(
    step,
    {
      'test_loss': test['loss'],
      'test_accuracy': test['accuracy'],
      'test_best_step': best,
    },
  )
  logger.close()
  ckpts.close()
  logging.info(
    'test (checkpoint %d, %d videos): accuracy %.4f loss %.4f',
    best,
    test['count'],
    test['accuracy'],
    test['loss'],
  )
  if parallel.is_main_process():
    _plot(workdir, builder, config.dataset.train_split)
  return test


def _plot(workdir: str, builder, split: str) -> None:
  """The figures of the run (hpr.plots); a failure only logs a warning."""
  try:
    from hpr import plots

    paths = plots.plot_workdir(workdir, builder=builder, split=split)
    logging.info('plots: %s', ', '.join(paths))
  except Exception as e:  # Plots must never fail a finished run.
    logging.warning('could not draw the plots of %s: %s', workdir, e)


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
