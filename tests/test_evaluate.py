"""--mode=evaluate: report.json checked against metrics recomputed here from
the saved predictions; multi-view testing; checkpoints of other models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from hpr import evaluate, figures, video_ops
from hpr.errors import UserError

ROOT = os.path.dirname(os.path.dirname(__file__))


@pytest.mark.parametrize('method', ['uniform', 'strided', 'segments'])
def test_view_zero_of_one_is_the_single_eval_clip(method):
  single = video_ops.frame_indices(40, 6, method, stride=2)
  view = video_ops.frame_indices(40, 6, method, stride=2, view=0, num_views=1)
  np.testing.assert_array_equal(single, view)


def test_views_cover_the_video_differently():
  def views(method, n=40, stride=2):
    return [
      video_ops.frame_indices(
        n, 4, method, stride=stride, view=v, num_views=3
      ).numpy()
      for v in range(3)
    ]

  uniform = views('uniform', n=12)
  np.testing.assert_array_equal(uniform[0], [0, 3, 6, 9])
  np.testing.assert_array_equal(uniform[2], [2, 5, 8, 11])
  strided = views('strided')  # Offsets 0, middle, last: room 40 - 7 = 33.
  assert [s[0] for s in strided] == [0, 16, 33]
  assert all((np.diff(s) == 2).all() for s in strided)
  segments = views('segments')  # Segments of 10 frames.
  np.testing.assert_array_equal(segments[0], [1, 11, 21, 31])
  np.testing.assert_array_equal(segments[2], [8, 18, 28, 38])
  # In a dataset map (the view is a tensor there).
  ds = tf.data.Dataset.from_tensors(tf.constant(2)).map(
    lambda v: video_ops.frame_indices(12, 4, 'uniform', view=v, num_views=3)
  )
  np.testing.assert_array_equal(next(iter(ds)), [2, 5, 8, 11])


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _independent_metrics(logits, labels, k):
  """The report's numbers, computed here without hpr.metrics."""
  order = np.argsort(-logits, axis=1)
  pred = order[:, 0]
  confusion = np.zeros((k, k), int)
  for t, p in zip(labels, pred, strict=True):
    confusion[t, p] += 1
  per_class = [
    (pred[labels == c] == c).mean() if (labels == c).any() else None
    for c in range(k)
  ]
  present = [a for a in per_class if a is not None]
  return {
    'accuracy': (pred == labels).mean(),
    'top5': np.mean([labels[i] in order[i, :5] for i in range(len(labels))]),
    'mean_class_accuracy': np.mean(present),
    'per_class': per_class,
    'confusion': confusion.tolist(),
    'loss': -_log_softmax(logits)[np.arange(len(labels)), labels].mean(),
    'count': len(labels),
  }


def _assert_matches(reported, expected):
  assert reported['count'] == expected['count']
  assert reported['confusion'] == expected['confusion']
  for key in ('accuracy', 'top5', 'mean_class_accuracy', 'loss'):
    assert reported[key] == pytest.approx(expected[key], abs=1e-6), key
  for got, want in zip(
    reported['per_class'], expected['per_class'], strict=True
  ):
    assert got == (None if want is None else pytest.approx(want))


@pytest.fixture(scope='module')
def report(trained_workdir, tmp_path_factory):
  """evaluate() with 2 temporal views on a copy of the trained workdir's
  eval output location (the workdir itself stays as training left it)."""
  config, workdir, _ = trained_workdir
  config = config.copy_and_resolve_references()
  config.eval.num_test_clips = 2
  out = str(tmp_path_factory.mktemp('evaluated'))
  for name in ('checkpoints', 'config.json', 'class_names.json'):
    os.symlink(os.path.join(workdir, name), os.path.join(out, name))
  result = evaluate.evaluate(config, out)
  with open(os.path.join(out, 'eval', 'report.json')) as f:
    return result, json.load(f), out, config


def test_report_matches_metrics_recomputed_from_predictions(report):
  result, rep, out, config = report
  saved = np.load(os.path.join(out, 'eval', 'predictions.npz'))
  k = len(rep['class_names'])
  # 12 test videos x 2 views; each video's clips are consecutive here.
  assert saved['clip_logits'].shape == (24, k)
  np.testing.assert_array_equal(saved['clip_index'], np.repeat(range(12), 2))
  clip = _independent_metrics(saved['clip_logits'], saved['clip_labels'], k)
  _assert_matches(rep['clip_metrics'], clip)

  # Video level: the mean of each video's clip softmaxes.
  probs = np.exp(_log_softmax(saved['clip_logits'].astype(np.float64)))
  video_logits = np.log(probs.reshape(12, 2, k).mean(axis=1))
  video_labels = saved['clip_labels'][::2]
  np.testing.assert_allclose(saved['video_logits'], video_logits, atol=1e-5)
  video = _independent_metrics(video_logits, video_labels, k)
  _assert_matches(rep['metrics'], video)
  assert result['accuracy'] == pytest.approx(video['accuracy'])
  assert rep['per_class_accuracy'] == dict(
    zip(rep['class_names'], rep['metrics']['per_class'], strict=True)
  )

  # Video ids are the dataset's, in the test split's order.
  builder = tfds.builder(config.dataset.name, data_dir=config.dataset.data_dir)
  ids = [
    ex['video_id'].decode()
    for ex in tfds.as_numpy(
      builder.as_dataset(
        split='test', decoders={'video': tfds.decode.SkipDecoding()}
      )
    )
  ]
  assert list(saved['video_ids']) == ids


def test_report_protocol_and_outputs(report, trained_workdir):
  _, rep, out, config = report
  protocol = rep['protocol']
  assert protocol['dataset'] == 'synthetic_actions/tiny'
  assert protocol['split'] == 'test'
  assert protocol['views'] == {'temporal': 2, 'spatial': 1}
  assert (protocol['num_videos'], protocol['num_clips']) == (12, 24)
  assert protocol['num_frames'] == 6 and protocol['image_size'] == 32
  assert protocol['model'] == 'lrcn'
  steps = sorted(int(s) for s in os.listdir(os.path.join(out, 'checkpoints')))
  assert protocol['checkpoint_step'] in steps
  assert protocol['commit'] == 'unknown' or len(protocol['commit']) >= 40
  # The two views are different clips: their logits differ.
  saved = np.load(os.path.join(out, 'eval', 'predictions.npz'))
  assert not np.allclose(saved['clip_logits'][0], saved['clip_logits'][1])
  # Confusion PNG and TensorBoard events.
  png = os.path.join(out, 'eval', 'confusion.png')
  assert Image.open(png).size == figures.confusion_size(12)
  events = [f for f in os.listdir(os.path.join(out, 'eval')) if 'tfevents' in f]
  assert events
  # Training wrote the single-view report of the same checkpoint.
  with open(os.path.join(trained_workdir[1], 'eval', 'report.json')) as f:
    trained = json.load(f)
  assert trained['protocol']['views']['temporal'] == 1
  for key in ('confusion', 'accuracy', 'top5', 'count'):
    assert trained['metrics'][key] == trained['clip_metrics'][key]
  assert trained['metrics']['loss'] == pytest.approx(
    trained['clip_metrics']['loss']
  )
  assert trained['metrics']['accuracy'] == pytest.approx(
    trained_workdir[2]['accuracy']
  )


@pytest.mark.parametrize(
  'override,message',
  [
    (('name', 'single_frame'), 'different model'),
    (('lrcn.lstm_features', 16), 'different model or number of classes'),
  ],
)
def test_checkpoint_of_another_model_is_one_line(
  trained_workdir, override, message
):
  config, workdir, _ = trained_workdir
  config = config.copy_and_resolve_references()
  key, value = override
  section = config.model
  *parents, leaf = key.split('.')
  for part in parents:
    section = section[part]
  section[leaf] = value
  with pytest.raises(UserError, match=message) as info:
    evaluate.evaluate(config, workdir)
  assert '\n' not in str(info.value)


@pytest.mark.slow
def test_cli_evaluate_from_workdir_config(trained_workdir, tmp_path):
  _, workdir, _ = trained_workdir
  out = tmp_path / 'w'
  out.mkdir()
  for name in ('checkpoints', 'config.json', 'class_names.json'):
    os.symlink(os.path.join(workdir, name), out / name)
  run = subprocess.run(
    [sys.executable, '-m', 'hpr.main', f'--workdir={out}', '--mode=evaluate'],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr
  assert 'test accuracy' in run.stdout
  assert (out / 'eval' / 'report.json').exists()
  bad = subprocess.run(
    [
      sys.executable,
      '-m',
      'hpr.main',
      f'--workdir={out}',
      '--mode=evaluate',
      '--step=12345',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert bad.returncode == 1
  last = bad.stderr.strip().splitlines()[-1]
  assert last.startswith('hpr: error: no checkpoint for step 12345')
  assert 'Traceback' not in bad.stderr
