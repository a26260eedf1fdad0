"""The temporal-order probe of every evaluation report (hpr.evaluate):
the test split again with each clip's frames reversed and shuffled."""

import json
import os

import numpy as np
import pytest
from conftest import tiny_config

from hpr import evaluate


class _Config:
  """The keys `_reorder_frames` reads."""

  seed = 3

  class eval:  # noqa: N801
    batch_size = 4

  class input:  # noqa: N801
    modality = 'rgb'


def test_reorder_frames():
  video = np.arange(4 * 6, dtype=np.float32).reshape(4, 6, 1, 1, 1)
  reversed_ = evaluate._reorder_frames(video, 'reversed', _Config, 0)
  np.testing.assert_array_equal(reversed_, video[:, ::-1])
  shuffled = evaluate._reorder_frames(video, 'shuffled', _Config, 0)
  # Each clip keeps its own frames, in an order of its own.
  np.testing.assert_array_equal(np.sort(shuffled, axis=1), video)
  assert not np.array_equal(shuffled, video)
  assert len({tuple(row) for row in shuffled[:, :, 0, 0, 0] % 6}) > 1
  # The same (seed, batch) gives the same order; another batch another.
  again = evaluate._reorder_frames(video, 'shuffled', _Config, 0)
  np.testing.assert_array_equal(shuffled, again)
  other = evaluate._reorder_frames(video, 'shuffled', _Config, 1)
  assert not np.array_equal(shuffled, other)


def _logits_by_order(config):
  """Test-split clip logits of a freshly initialised model, per order."""
  from hpr import input_pipeline, parallel, train_state

  mesh = parallel.make_mesh()
  builder = input_pipeline.get_builder(config.dataset)
  info = input_pipeline.get_dataset_info(config, builder)
  ts = train_state.create_train_state(config, info.num_classes, mesh, 1)
  eval_fn = train_state.jit_eval_step(ts, mesh)
  return {
    order: evaluate.predict_clips(
      eval_fn,
      ts.state,
      config,
      builder,
      'test',
      mesh,
      frame_order=order,
    )['logits']
    for order in evaluate.FRAME_ORDERS
  }


def test_bag_of_frames_ignores_order_and_lrcn_does_not(data_dir):
  # SingleFrame averages per-frame predictions: any order, same logits.
  logits = _logits_by_order(tiny_config(data_dir, 'single_frame'))
  np.testing.assert_allclose(logits['reversed'], logits['normal'], atol=1e-5)
  np.testing.assert_allclose(logits['shuffled'], logits['normal'], atol=1e-5)
  # Even untrained, an LSTM over the frames sees the order.
  logits = _logits_by_order(tiny_config(data_dir, 'lrcn'))
  assert np.abs(logits['reversed'] - logits['normal']).max() > 1e-4
  assert np.abs(logits['shuffled'] - logits['normal']).max() > 1e-4


def _probe(workdir):
  with open(os.path.join(workdir, 'eval', 'report.json')) as f:
    return json.load(f)['order_probe']


def test_report_has_the_probe(trained_workdir):
  _, workdir, metrics = trained_workdir
  probe = _probe(workdir)
  assert probe['normal']['accuracy'] == metrics['accuracy']
  for order in ('reversed', 'shuffled'):
    assert 0 <= probe[order]['accuracy'] <= 1
    assert probe[order]['drop'] == pytest.approx(
      metrics['accuracy'] - probe[order]['accuracy']
    )
    assert set(probe[order]['per_class_accuracy']) == set(
      probe['normal']['per_class_accuracy']
    )


@pytest.mark.slow
def test_single_frame_shows_no_drop(data_dir, tmp_path):
  from hpr import train

  config = tiny_config(data_dir, 'single_frame')
  config.training.num_epochs = 1
  train.train_and_evaluate(config, str(tmp_path))
  probe = _probe(str(tmp_path))
  for order in ('reversed', 'shuffled'):
    assert probe[order]['drop'] == 0
    assert (
      probe[order]['per_class_accuracy']
      == (probe['normal']['per_class_accuracy'])
    )


@pytest.mark.slow
def test_lrcn_loses_the_time_reversed_pairs(data_dir, tmp_path):
  """An LRCN that has learnt the tiny training split (36 clips) tells
  SitDown from StandUp and RaiseArms from LowerArms by the order of their
  frames alone: reversed, each looks like its partner."""
  from hpr import train
  from hpr.datasets import synthetic_render

  config = tiny_config(data_dir, 'lrcn')
  config.model.lrcn.conv_features = (8, 16)
  config.model.lrcn.lstm_features = 32
  config.input.color_jitter = 0.0
  config.input.random_flip = False
  config.optimizer.learning_rate = 4e-3
  config.training.num_epochs = 30
  config.training.patience = 0
  # Probe the split it has learnt (the tiny test split has 1 clip a class).
  config.dataset.eval_split = 'train'
  config.dataset.test_split = 'train'
  train.train_and_evaluate(config, str(tmp_path))
  probe = _probe(str(tmp_path))
  pairs = set(synthetic_render.REVERSED) | set(
    synthetic_render.REVERSED.values()
  )
  assert len(pairs) == 4

  def mean(order, key, names):
    return np.mean([probe[order][key][n] for n in names])

  others = set(probe['normal']['per_class_accuracy']) - pairs
  assert mean('normal', 'per_class_accuracy', pairs) >= 0.75
  pair_drop = mean('reversed', 'per_class_drop', pairs)
  assert pair_drop >= 0.5
  assert pair_drop > mean('reversed', 'per_class_drop', others) + 0.3
  assert probe['reversed']['drop'] > 0.1
