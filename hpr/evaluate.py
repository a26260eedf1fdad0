"""Evaluation: run a model over a whole split, every example exactly once."""

import json
import os

import ml_collections
import numpy as np

from hpr import input_pipeline, metrics, parallel


def predict_split(
  eval_fn, state, config: ml_collections.ConfigDict, builder, split: str, mesh
) -> tuple[np.ndarray, np.ndarray]:
  """Logits and labels of every example of `split`, in dataset order.

  Args:
    eval_fn: `logits(state, batch)`, e.g. from `train_state.jit_eval_step`.
    state: the train state pytree `eval_fn` takes.
    config: the experiment config (input and eval keys).
    builder: the prepared TFDS builder.
    split: TFDS split name.
    mesh: the device mesh.

  Returns:
    logits float32 (N, K) and labels int32 (N,), padding removed.
  """
  all_logits, all_labels = [], []
  for batch in input_pipeline.eval_batches(config, builder, split):
    batch = parallel.shard_batch(
      {k: batch[k] for k in input_pipeline.DEVICE_KEYS}, mesh
    )
    logits = parallel.gather(eval_fn(state, batch))
    mask = parallel.gather(batch['mask'])
    all_logits.append(logits[mask])
    all_labels.append(parallel.gather(batch['label'])[mask])
  return np.concatenate(all_logits), np.concatenate(all_labels)


def evaluate_split(
  eval_fn, state, config, builder, split: str, mesh, num_classes: int
) -> dict:
  """`metrics.classification_metrics` of a whole split."""
  logits, labels = predict_split(eval_fn, state, config, builder, split, mesh)
  return metrics.classification_metrics(logits, labels, num_classes)


def evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None
) -> dict:
  """Tests a checkpoint of `workdir` and writes `workdir/eval/report.json`.

  Args:
    config: the experiment config.
    workdir: a training workdir.
    step: checkpoint step; None takes the best (by the monitored metric).

  Returns:
    The test split's metrics.

  Raises:
    UserError: no checkpoints, an unknown step, or a checkpoint of another
      model.
  """
  from hpr import checkpoint, train_state
  from hpr.config import validate
  from hpr.errors import UserError

  mesh = parallel.make_mesh()
  validate(config, num_devices=parallel.num_devices(mesh))
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise UserError(f'no checkpoints in {workdir}: train there first')
  ckpts = checkpoint.Checkpoints(directory, read_only=True)
  steps = ckpts.all_steps()
  if not steps:
    raise UserError(f'no checkpoints in {directory}')
  if step is None:
    meta = ckpts.read_meta(max(steps))
    step = (meta.get('early_stopping') or {}).get('best_step') or max(steps)
  elif step not in steps:
    raise UserError(
      f'no checkpoint for step {step} in {directory}; '
      f'available: {", ".join(map(str, sorted(steps)))}'
    )
  builder = input_pipeline.get_builder(config.dataset)
  info = input_pipeline.get_dataset_info(config, builder)
  ts = train_state.create_train_state(config, info.num_classes, mesh, 1)
  tree, _ = ckpts.restore_untyped(step)
  target = ts.checkpoint_tree()['model']
  ts.load_checkpoint_tree(
    {
      'model': checkpoint.fit_to(
        tree['model'], target, f'checkpoint {directory}/{step}'
      )
    }
  )
  eval_fn = train_state.jit_eval_step(ts, mesh)
  split = config.dataset.test_split
  logits, labels = predict_split(
    eval_fn, ts.state, config, builder, split, mesh
  )
  result = metrics.classification_metrics(logits, labels, info.num_classes)
  report = {
    'metrics': result,
    'protocol': {
      'dataset': info.name,
      'split': split,
      'checkpoint_step': int(step),
      'num_frames': config.input.num_frames,
      'image_size': config.input.image_size,
      'sampling': config.input.eval_sampling,
    },
    'class_names': info.class_names,
  }
  if parallel.is_main_process():
    os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
    with open(os.path.join(workdir, 'eval', 'report.json'), 'w') as f:
      json.dump(report, f, indent=2)
  ckpts.close()
  return result
