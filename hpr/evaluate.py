"""Evaluation: run a model over a whole split, every example exactly once;
test a checkpoint with several temporal views and write the report.

`--mode=evaluate` (and the end of training) writes to WORKDIR/eval:
  report.json      video- and clip-level metrics, per-class accuracy,
                   confusion matrix and the protocol (dataset, split, views,
                   frames, resolution, checkpoint step, commit);
  predictions.npz  what the metrics were computed from: clip logits, labels
                   and video index; video logits, labels and ids;
  confusion.png    the confusion matrix;
  reliability.png  the reliability diagram (report['calibration']);
  events.out.*     the same numbers and image for TensorBoard.
and WORKDIR/calibration.json, the temperature fitted on the validation split
(hpr.calibration).

Besides the normal test, the report holds two probes of the same test clips:
`order_probe`, the accuracy with each clip's frames time-reversed and
shuffled (how much the model uses frame order), and `calibration`, the
expected calibration error, NLL and reliability bins of its confidences,
before and after the temperature.
"""

import json
import math
import os
import re

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from clu import metric_writers

from hpr import (
  calibration,
  checkpoint,
  input_pipeline,
  metrics,
  parallel,
  train_state,
  video_ops,
)
from hpr import workdir as workdir_lib
from hpr.config import validate


def predict_clips(
  eval_fn,
  state,
  config: ml_collections.ConfigDict,
  builder,
  split: str,
  mesh,
  *,
  num_views: int = 1,
  num_crops: int = 1,
  frame_order: str = 'normal',
) -> dict[str, np.ndarray]:
  """Logits of every clip of `split`: `num_views` x `num_crops` per
  example.

  Args:
    eval_fn: `logits(state, batch)`, e.g. from `train_state.jit_eval_step`.
    state: the train state pytree `eval_fn` takes.
    config: the experiment config (input and eval keys).
    builder: the prepared TFDS builder.
    split: TFDS split name.
    mesh: the device mesh.
    num_views: temporal views per example.
    num_crops: spatial views (1 or 3) per temporal view.
    frame_order: 'normal', or the order probe's 'reversed' (each clip's
      frames last to first) or 'shuffled' (each clip's frames in a random
      order, the same for every run with `config.seed`).

  Returns:
    {'logits': float32 (M, K), 'labels': int32 (M,), 'index': int32 (M,)}
    with M = N * num_views * num_crops, padding removed; `index` is the example's
    position in `split`.
  """
  if frame_order not in FRAME_ORDERS:
    raise ValueError(f'frame_order {frame_order!r}: one of {FRAME_ORDERS}')
  out = {'logits': [], 'labels': [], 'index': []}
  for number, batch in enumerate(
    input_pipeline.eval_batches(
      builder,
      split,
      input_pipeline.clip_spec(config, training=False),
      batch_size=config.eval.batch_size,
      seed=config.seed,
      num_views=num_views,
      num_crops=num_crops,
    )
  ):
    if frame_order != 'normal':
      batch['video'] = _reorder_frames(
        batch['video'], frame_order, config, number
      )
    batch = parallel.shard_batch(
      {k: batch[k] for k in input_pipeline.EVAL_KEYS}, mesh
    )
    mask = parallel.gather(batch['mask'])
    out['logits'].append(parallel.gather(eval_fn(state, batch))[mask])
    out['labels'].append(parallel.gather(batch['label'])[mask])
    out['index'].append(parallel.gather(batch['index'])[mask])
  return {k: np.concatenate(v) for k, v in out.items()}


FRAME_ORDERS = ('normal', 'reversed', 'shuffled')


def _reorder_frames(
  video: np.ndarray, frame_order: str, config, number: int
) -> np.ndarray:
  """`video` (b, T, S, S, 3), this process's rows of global batch `number`,
  with its frames reversed or shuffled (one permutation per clip, drawn for
  the whole global batch from (config.seed, number), so the clips get the
  same order whatever the number of processes). Model inputs of another
  input.modality than 'rgb' are those of the reordered frames
  (`video_ops.reorder_frames`)."""
  if frame_order == 'reversed':
    order = np.tile(np.arange(video.shape[1])[::-1], (len(video), 1))
  else:
    start, stop = parallel.process_rows(config.eval.batch_size)
    rng = np.random.default_rng([config.seed, number])
    frames = np.tile(np.arange(video.shape[1]), (config.eval.batch_size, 1))
    order = rng.permuted(frames, axis=1)[start:stop]
  return video_ops.reorder_frames(video, order, config.input.modality)


def predict_split(
  eval_fn, state, config: ml_collections.ConfigDict, builder, split: str, mesh
) -> tuple[np.ndarray, np.ndarray]:
  """Logits (N, K) and labels (N,) of every example of `split` (one clip
  each), in dataset order."""
  clips = predict_clips(eval_fn, state, config, builder, split, mesh)
  return clips['logits'], clips['labels']


def evaluate_split(
  eval_fn, state, config, builder, split: str, mesh, num_classes: int
) -> dict:
  """`metrics.classification_metrics` of a whole split."""
  logits, labels = predict_split(eval_fn, state, config, builder, split, mesh)
  return metrics.classification_metrics(logits, labels, num_classes)


def video_level(
  logits: np.ndarray, labels: np.ndarray, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Averages the softmax of each video's clips (Scenic's multi-view test).

  Args:
    logits: (M, K) clip logits.
    labels: (M,) clip labels (a video's clips share its label).
    index: (M,) video of each clip.

  Returns:
    log(mean softmax) (V, K), labels (V,) and video indices (V,), sorted by
    video index.
  """
  videos, inverse = np.unique(index, return_inverse=True)
  probs = np.exp(metrics.log_softmax(logits.astype(np.float64)))
  sums = np.zeros((len(videos), logits.shape[1]))
  np.add.at(sums, inverse, probs)
  counts = np.bincount(inverse, minlength=len(videos))[:, None]
  video_labels = np.zeros(len(videos), labels.dtype)
  video_labels[inverse] = labels
  with np.errstate(divide='ignore'):
    return np.log(sums / counts), video_labels, videos


def video_ids(builder, split: str) -> list[str]:
  """Each example's video id (its position where the dataset has none)."""
  if 'video_id' not in builder.info.features:
    return [str(i) for i in range(builder.info.splits[split].num_examples)]
  ds = builder.as_dataset(
    split=split, decoders=tfds.decode.PartialDecoding({'video_id': True})
  )
  return [ex['video_id'].decode() for ex in tfds.as_numpy(ds)]


def _json_safe(value):
  """NaN (a class absent from the split) as null: report.json stays JSON."""
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_json_safe(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _dumps(value) -> str:
  """Indented JSON with each list of numbers (a confusion row) on one line."""
  text = json.dumps(value, indent=2)
  return re.sub(
    r'\[\s+([^\[\]{}"]*?)\s+\]',
    lambda m: '[' + ' '.join(m.group(1).split()) + ']',
    text,
  )


def test_and_report(
  eval_fn,
  state,
  config: ml_collections.ConfigDict,
  builder,
  mesh,
  info: input_pipeline.DatasetInfo,
  workdir: str,
  step: int,
) -> dict:
  """Tests `state` on the test split with `eval.num_test_clips` x
  `eval.num_test_crops` views and writes WORKDIR/eval (see the module docstring).

  Returns:
    The video-level metrics (`metrics.classification_metrics`).
  """
  split = config.dataset.test_split
  views = config.eval.num_test_clips
  crops = config.eval.num_test_crops
  clips = predict_clips(
    eval_fn,
    state,
    config,
    builder,
    split,
    mesh,
    num_views=views,
    num_crops=crops,
  )
  k = info.num_classes
  clip_scores = metrics.classification_metrics(
    clips['logits'], clips['labels'], k
  )
  logits, labels, index = video_level(
    clips['logits'], clips['labels'], clips['index']
  )
  scores = metrics.classification_metrics(logits, labels, k)
  # Every process runs the probes' passes: they are collective.
  probe = order_probe(
    eval_fn,
    state,
    config,
    builder,
    split,
    mesh,
    info.class_names,
    scores,
    num_views=views,
    num_crops=crops,
  )
  fit = fit_temperature(eval_fn, state, config, builder, mesh)
  if not parallel.is_main_process():
    return scores
  calib = calibration_report(clips, fit['temperature'], fit)
  workdir_lib.write_atomic(
    os.path.join(workdir, calibration.CALIBRATION_FILE),
    json.dumps(_json_safe(fit), indent=2) + '\n',
  )
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  ids = np.asarray(video_ids(builder, split))[index]
  np.savez_compressed(
    os.path.join(out_dir, 'predictions.npz'),
    clip_logits=clips['logits'],
    clip_labels=clips['labels'],
    clip_index=clips['index'],
    video_logits=logits.astype(np.float32),
    video_labels=labels,
    video_index=index,
    video_ids=ids,
    class_names=np.asarray(info.class_names),
  )
  dataset_config = config.dataset.name.partition('/')[2].split(':')[0]
  report = {
    'metrics': scores,
    'clip_metrics': clip_scores,
    'per_class_accuracy': dict(
      zip(info.class_names, scores['per_class'], strict=True)
    ),
    'protocol': {
      'dataset': config.dataset.name,
      'dataset_config': dataset_config or None,
      # Split scheme, fold, test groups, seed, quarantined count, data
      # fingerprints, validation size (hpr.input_pipeline.data_protocol).
      **input_pipeline.data_protocol(config, builder),
      'split': split,
      'num_videos': len(index),
      'num_clips': len(clips['index']),
      'views': {'temporal': views, 'spatial': crops},
      'crop': 'three_crops' if crops == 3 else config.input.eval_crop,
      'num_frames': config.input.num_frames,
      'sampling': config.input.eval_sampling,
      'frame_stride': config.input.frame_stride,
      'image_size': config.input.image_size,
      'normalization': config.input.normalization,
      'modality': config.input.modality,
      'model': config.model.name,
      'checkpoint_step': int(step),
      'commit': workdir_lib.source_commit(),
      'jax': jax.__version__,
    },
    'order_probe': probe,
    'calibration': calib,
    'class_names': list(info.class_names),
    'predictions': 'predictions.npz',
  }
  with open(os.path.join(out_dir, 'report.json'), 'w') as f:
    f.write(_dumps(_json_safe(report)) + '\n')
  _write_summaries(out_dir, step, scores, clip_scores, info.class_names, report)
  _log_summary(probe, calib)
  return scores


def order_probe(
  eval_fn,
  state,
  config: ml_collections.ConfigDict,
  builder,
  split: str,
  mesh,
  class_names,
  normal: dict,
  *,
  num_views: int = 1,
  num_crops: int = 1,
) -> dict:
  """How much the model uses frame order: the video-level accuracy of
  `split` with each clip's frames reversed and shuffled.

  Two more passes over `split`, with the views of the normal test, so the
  numbers compare with `normal`. A bag-of-frames model (SingleFrame) loses
  nothing; a model of motion loses most on classes that are each other's
  time reversal (synthetic_actions' SitDown/StandUp).

  Args:
    eval_fn, state, config, builder, split, mesh: as for `predict_clips`.
    class_names: the K class names.
    normal: `metrics.classification_metrics` of the normal test.
    num_views, num_crops: the test's views.

  Returns:
    {'normal': {...}, 'reversed': {...}, 'shuffled': {...}, 'shuffle_seed'}:
    each order's `accuracy` and `per_class_accuracy`; the probes also have
    their `drop` and `per_class_drop` (normal minus probe).
  """

  def named(values):
    return dict(zip(class_names, values, strict=True))

  out = {
    'normal': {
      'accuracy': normal['accuracy'],
      'per_class_accuracy': named(normal['per_class']),
    }
  }
  for order in FRAME_ORDERS[1:]:
    clips = predict_clips(
      eval_fn,
      state,
      config,
      builder,
      split,
      mesh,
      num_views=num_views,
      num_crops=num_crops,
      frame_order=order,
    )
    logits, labels, _ = video_level(
      clips['logits'], clips['labels'], clips['index']
    )
    scores = metrics.classification_metrics(logits, labels, len(class_names))
    out[order] = {
      'accuracy': scores['accuracy'],
      'drop': normal['accuracy'] - scores['accuracy'],
      'per_class_accuracy': named(scores['per_class']),
      'per_class_drop': named(
        (np.asarray(normal['per_class']) - scores['per_class']).tolist()
      ),
    }
  out['shuffle_seed'] = int(config.seed)
  return out


def fit_temperature(
  eval_fn, state, config: ml_collections.ConfigDict, builder, mesh
) -> dict:
  """Fits the softmax temperature on the validation split (one clip per
  video), the record of WORKDIR/calibration.json
  (`calibration.calibration_summary`, plus the split's name)."""
  split = config.dataset.eval_split
  logits, labels = predict_split(eval_fn, state, config, builder, split, mesh)
  fit = calibration.calibration_summary(
    logits, labels, calibration.fit_temperature(logits, labels)
  )
  return {**fit, 'split': split}


def _columns(bins: list[dict]) -> dict:
  """Reliability bins as one list per field (one JSON line each)."""
  return {k: [b[k] for b in bins] for k in ('count', 'confidence', 'accuracy')}


def calibration_report(
  clips: dict[str, np.ndarray], temperature: float, fit: dict
) -> dict:
  """ECE, NLL and reliability bins of the test videos' confidences (the
  mean softmax of their clips), as they are and with each clip's logits
  divided by `temperature` (as `hpr.tools.predict --calibrated` does)."""

  def scores(logits):
    probs, labels, _ = video_level(logits, clips['labels'], clips['index'])
    probs = np.exp(probs)  # video_level gives log(mean softmax).
    return {
      'ece': calibration.ece(probs, labels),
      'nll': calibration.nll_from_probs(probs, labels),
      'reliability': _columns(calibration.reliability_bins(probs, labels)),
    }

  return {
    'num_bins': calibration.NUM_BINS,
    'binning': 'equal-width bins of the top-class probability, per video',
    **scores(clips['logits']),
    'temperature': float(temperature),
    'temperature_fit': {k: fit[k] for k in ('split', 'count')},
    'calibrated': scores(clips['logits'] / temperature),
  }


def _log_summary(probe: dict, calib: dict) -> None:
  logging.info(
    'order probe (test accuracy): normal %.4f, reversed %.4f (drop %+.4f), '
    'shuffled %.4f (drop %+.4f)',
    probe['normal']['accuracy'],
    probe['reversed']['accuracy'],
    probe['reversed']['drop'],
    probe['shuffled']['accuracy'],
    probe['shuffled']['drop'],
  )
  fit = calib['temperature_fit']
  logging.info(
    'calibration (test, %d-bin ECE): ECE %.4f NLL %.4f; temperature %.3f '
    '(fitted on %s, %d videos): ECE %.4f NLL %.4f',
    calib['num_bins'],
    calib['ece'],
    calib['nll'],
    calib['temperature'],
    fit['split'],
    fit['count'],
    calib['calibrated']['ece'],
    calib['calibrated']['nll'],
  )


def _write_summaries(
  out_dir, step, scores, clip_scores, class_names, report
) -> None:
  # Late: matplotlib loads only when a report is written.
  from hpr import figures

  writer = metric_writers.create_default_writer(out_dir)
  writer.write_scalars(
    step,
    {
      'test/accuracy': scores['accuracy'],
      'test/top5': scores['top5'],
      'test/mean_class_accuracy': scores['mean_class_accuracy'],
      'test/loss': scores['loss'],
      'test/clip_accuracy': clip_scores['accuracy'],
      'test/reversed_accuracy': report['order_probe']['reversed']['accuracy'],
      'test/shuffled_accuracy': report['order_probe']['shuffled']['accuracy'],
      'test/ece': report['calibration']['ece'],
      'test/calibrated_ece': report['calibration']['calibrated']['ece'],
    },
  )
  title = f'test, checkpoint {step}'
  figures.plot_confusion(
    scores['confusion'],
    class_names,
    os.path.join(out_dir, 'confusion.png'),
    title,
  )
  image = figures.figure_to_array(
    figures.confusion_figure(scores['confusion'], class_names, title)
  )
  figures.plot_reliability(
    report['calibration'], os.path.join(out_dir, 'reliability.png'), title
  )
  writer.write_images(step, {'test/confusion': image[None]})
  writer.close()


def evaluate(
  config: ml_collections.ConfigDict | None,
  workdir: str,
  *,
  step: int | None = None,
) -> dict:
  """Tests a checkpoint of `workdir` and writes WORKDIR/eval.

  Args:
    config: the experiment config; None reads the workdir's config.json.
    workdir: a training workdir.
    step: checkpoint step; None takes the best (by the monitored metric).

  Returns:
    The test split's video-level metrics.

  Raises:
    UserError: no checkpoints, an unknown step, or a checkpoint of another
      model or class count.
  """
  if config is None:
    config = workdir_lib.load_config(workdir)
  mesh = parallel.make_mesh()
  validate(config, num_devices=parallel.num_devices(mesh))
  ckpts, step = workdir_lib.choose_checkpoint(workdir, step)
  if parallel.is_main_process():  # Before the work, not at its end.
    workdir_lib.make(os.path.join(workdir, 'eval'), 'report directory')
  builder = input_pipeline.get_builder(config.dataset)
  info = input_pipeline.get_dataset_info(config, builder)
  ts = train_state.create_train_state(config, info.num_classes, mesh, 1)
  tree, _ = ckpts.restore_untyped(step)
  target = ts.checkpoint_tree()['model']
  what = f'checkpoint {ckpts.directory}/{step}'
  ts.load_checkpoint_tree(
    {'model': checkpoint.fit_to(tree['model'], target, what)}
  )
  ckpts.close()
  eval_fn = train_state.jit_eval_step(ts, mesh)
  return test_and_report(
    eval_fn, ts.state, config, builder, mesh, info, workdir, step
  )
