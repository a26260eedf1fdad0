"""input.modality: 'rgb', 'diff' (TSN's RGB difference) and 'rgb+diff'.

The NumPy `video_ops.to_modality` (the tools') and the input pipeline's op
give the same clips; every model builds its input channels from the
modality and trains a step on the pipeline's real batches; a workdir
refuses a run of another modality; a Keras import refuses a non-rgb one.
"""

import itertools
import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from hpr import input_pipeline, parallel, train, video_ops
from hpr.errors import ConfigError, UserError
from hpr.train_state import create_train_state, jit_train_step
from tests import conftest
from tests.conftest import tiny_config

MODALITIES = ('rgb', 'diff', 'rgb+diff', 'rgb+flow')


def _clip(seed=0, shape=(2, 5, 4, 4, 3)):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize(
  'modality,channels',
  [('rgb', 3), ('diff', 3), ('rgb+diff', 6), ('rgb+flow', 5)],
)
def test_shapes_and_channels(modality, channels):
  clip = _clip()
  out = video_ops.to_modality(clip, modality)
  assert out.shape == (2, 5, 4, 4, channels)
  assert out.dtype == np.float32
  assert video_ops.modality_channels(modality) == channels
  # One clip without a batch axis works the same.
  one = video_ops.to_modality(clip[0], modality)
  np.testing.assert_array_equal(one, out[0])


def test_diff_is_consecutive_differences_with_a_zero_first_step():
  clip = _clip()
  diff = video_ops.to_modality(clip, 'diff')
  np.testing.assert_array_equal(diff[:, 0], 0.0)
  np.testing.assert_allclose(diff[:, 1:], clip[:, 1:] - clip[:, :-1])
  both = video_ops.to_modality(clip, 'rgb+diff')
  np.testing.assert_array_equal(both[..., :3], clip)
  np.testing.assert_array_equal(both[..., 3:], diff)
  np.testing.assert_array_equal(video_ops.to_modality(clip, 'rgb'), clip)


def test_diff_of_a_static_clip_is_zero():
  frame = _clip(1, (1, 4, 4, 3))
  static = np.repeat(frame, 6, axis=0)  # (T, H, W, C), nothing moves.
  assert np.abs(video_ops.to_modality(static, 'diff')).max() == 0.0
  moving = static.copy()
  moving[3] += 0.5
  assert np.abs(video_ops.to_modality(moving, 'diff')).max() > 0.4


@pytest.mark.parametrize('modality', MODALITIES)
def test_reordering_model_inputs_is_reordering_frames(modality):
  """The order probe reorders model inputs; for 'diff' that must be the
  differences of the reordered frames, not reordered differences."""
  clip = _clip(3)
  order = np.stack([np.arange(5)[::-1], np.array([2, 0, 4, 1, 3])])
  rows = np.arange(2)[:, None]
  want = video_ops.to_modality(clip[rows, order], modality)
  got = video_ops.reorder_frames(
    video_ops.to_modality(clip, modality), order, modality
  )
  np.testing.assert_allclose(got, want, atol=1e-5)
  if modality == 'diff':  # Not the same as reordering the differences.
    naive = video_ops.to_modality(clip, modality)[rows, order]
    assert np.abs(naive - want).max() > 0.1


def _square(t, step, light=True, size=24):
  """(T, H, W, 3) frames: a square moving `step` pixels a frame to the
  right (negative: left), light on dark or dark on light."""
  frames = np.full((t, size, size, 3), -0.8 if light else 0.8, np.float32)
  for i in range(t):
    x = 8 + i * step
    frames[i, 6:16, x : x + 8] = 0.8 if light else -0.8
  return frames


@pytest.mark.parametrize('light', [True, False])
def test_normal_flow_points_the_way_things_move(light):
  """'rgb+flow': the flow's x channel is positive where an edge moves right
  and negative where it moves left, whether the thing is lighter or darker
  than what is behind it (a difference's sign flips with the contrast); y
  stays 0 for a horizontal motion; a still clip and the first step have 0."""
  right = video_ops.to_modality(_square(4, 2, light), 'rgb+flow')
  left = video_ops.to_modality(_square(4, -2, light), 'rgb+flow')
  np.testing.assert_array_equal(right[..., :3], _square(4, 2, light))
  assert right.shape == (4, 24, 24, 5)
  np.testing.assert_array_equal(right[0, ..., 3:], 0.0)
  assert right[1:, ..., 3].sum() > 10 and left[1:, ..., 3].sum() < -10
  assert (right[1:, ..., 3] >= -1e-6).all()  # No edge moves left.
  np.testing.assert_allclose(right[..., 4].sum(), 0.0, atol=1e-4)
  still = video_ops.to_modality(_square(4, 0, light), 'rgb+flow')
  assert np.abs(still[..., 3:]).max() == 0.0
  # Where the square's front edge arrives (row 10, column 16 at step 1):
  # the flow says right for both contrasts, the difference's sign flips.
  assert right[1, 10, 16, 3] > 0.1
  diff = video_ops.to_modality(_square(4, 2, light), 'diff')
  assert (diff[1, 10, 16, 0] > 0) == light


def test_unknown_modality_is_refused():
  with pytest.raises(ValueError, match='unknown modality'):
    video_ops.to_modality(_clip(), 'flow')
  with pytest.raises(ValueError, match='unknown modality'):
    video_ops.modality('flow')


@pytest.mark.parametrize('modality', MODALITIES)
def test_tf_op_matches_numpy(modality):
  clip = _clip(2)[0]
  op = video_ops.modality(modality)
  got = op({'video': tf.constant(clip)})['video'].numpy()
  np.testing.assert_allclose(
    got, video_ops.to_modality(clip, modality), atol=1e-6
  )


def test_config_refuses_an_unknown_modality(data_dir):
  from hpr.config import validate

  config = tiny_config(data_dir)
  config.input.modality = 'flow'
  with pytest.raises(ConfigError, match='input.modality'):
    validate(config)


@pytest.mark.parametrize(
  'model,modality',
  [
    *itertools.product(('lrcn',), MODALITIES),
    ('convlstm', 'rgb+diff'),
    ('single_frame', 'diff'),
  ],
)
def test_a_model_trains_a_step_on_each_modality(data_dir, model, modality):
  config = tiny_config(data_dir, model)
  config.input.modality = modality
  config.optimizer.schedule = 'constant'  # A warm-up starts at rate 0.
  builder = input_pipeline.get_builder(config.dataset)
  batch = next(conftest.train_batches(config, builder, epoch=0))
  channels = video_ops.modality_channels(modality)
  assert batch['video'].shape == (8, 6, 32, 32, channels)
  if modality == 'diff':
    np.testing.assert_array_equal(batch['video'][:, 0], 0.0)
    assert np.abs(batch['video'][:, 1:]).max() > 0.0
  # The same clips as the NumPy function gives on the 'rgb' pipeline's.
  rgb = config.copy_and_resolve_references()
  rgb.input.modality = 'rgb'
  rgb_batch = next(conftest.train_batches(rgb, builder, epoch=0))
  np.testing.assert_allclose(
    batch['video'],
    video_ops.to_modality(rgb_batch['video'], modality),
    atol=1e-5,
  )
  mesh = parallel.make_mesh()
  ts = create_train_state(config, 12, mesh, steps_per_epoch=1)
  step = jit_train_step(ts, mesh, seed=0, label_smoothing=0.0)
  before = _flat(ts.checkpoint_tree()['model'])
  ts.state, loss = step(ts.state, parallel.shard_batch(batch, mesh), 0)
  after = _flat(ts.checkpoint_tree()['model'])
  assert np.isfinite(float(loss))
  assert np.abs(after - before).max() > 0.0


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_eval_padding_has_the_modality_channels(data_dir):
  config = tiny_config(data_dir)
  config.input.modality = 'rgb+diff'
  config.eval.batch_size = 32  # 12 test clips: one padded batch.
  builder = input_pipeline.get_builder(config.dataset)
  batches = list(conftest.eval_batches(config, builder, 'test'))
  assert all(b['video'].shape[-1] == 6 for b in batches)


def test_a_workdir_refuses_another_modality(data_dir, tmp_path):
  config = tiny_config(data_dir)
  workdir = str(tmp_path)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json())
  config.input.modality = 'diff'
  with pytest.raises(UserError, match='different input.modality'):
    train._check_workdir(config, workdir)
  # A workdir written before the key existed was trained on rgb.
  old = config.copy_and_resolve_references()
  old.input.modality = 'rgb'
  saved = old.to_dict()
  del saved['input']['modality']
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  train._check_workdir(old, workdir)
  with pytest.raises(UserError, match='different input.modality'):
    train._check_workdir(config, workdir)


def test_keras_import_refuses_a_non_rgb_modality(data_dir, tmp_path):
  tf_keras = pytest.importorskip('tf_keras')
  from hpr.keras import importer

  layers = tf_keras.layers
  model = tf_keras.Sequential(
    [
      layers.Input((6, 32, 32, 3)),
      layers.ConvLSTM2D(4, (3, 3), return_sequences=True),
      layers.MaxPooling3D((1, 2, 2), padding='same'),
      layers.Flatten(),
      layers.Dense(12, activation='softmax'),
    ]
  )
  path = str(tmp_path / 'm.h5')
  model.save(path)
  base = tiny_config(data_dir)
  base.input.modality = 'diff'
  names = [f'c{i}' for i in range(12)]
  with pytest.raises(UserError, match="input.modality 'diff'") as e:
    importer.import_model(path, str(tmp_path / 'w'), names, base=base)
  assert len(str(e.value).splitlines()) == 1
  assert not os.path.exists(tmp_path / 'w')
