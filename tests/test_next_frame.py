"""experiments/next_frame: the moving-digit data, the baselines on a
hand-made case, the encoder-forecaster built from hpr's ConvLSTMCell, and a
few training steps through the CLI."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.next_frame import data, model, train
from hpr.models import ConvLSTM


def test_moving_glyphs_shapes_range_and_seed():
  x = data.moving_glyphs(np.random.default_rng(3), 4, num_frames=6, size=24)
  assert x.shape == (4, 6, 24, 24, 1) and x.dtype == np.float32
  assert x.min() == 0.0 and x.max() == 1.0
  assert (x.sum(axis=(2, 3, 4)) > 0).all()
  again = data.moving_glyphs(np.random.default_rng(3), 4, num_frames=6, size=24)
  other = data.moving_glyphs(np.random.default_rng(4), 4, num_frames=6, size=24)
  np.testing.assert_array_equal(x, again)
  assert not np.array_equal(x, other)


def test_one_digit_bounces_and_never_leaves_the_frame():
  # Long enough to hit a wall several times: the digit's ink never changes
  # (it is never clipped) and it moves by about `speed` pixels a frame.
  x = data.moving_glyphs(
    np.random.default_rng(0),
    8,
    num_frames=40,
    size=16,
    num_glyphs=1,
    scale=1,
    speed=(3.0, 3.0),
  )[..., 0]
  ink = x.sum(axis=(2, 3))
  np.testing.assert_allclose(ink, ink[:, :1].repeat(40, 1))
  ys, xs = np.arange(16), np.arange(16)
  cy = (x.sum(3) * ys).sum(2) / ink
  cx = (x.sum(2) * xs).sum(2) / ink
  step = np.hypot(np.diff(cy), np.diff(cx))
  assert step.max() <= 3.0 + 1.5  # rounding to whole pixels
  # Each sequence reverses direction at least once in 40 frames.
  turned = (np.diff(np.sign(np.diff(cy))) != 0) | (
    np.diff(np.sign(np.diff(cx))) != 0
  )
  assert turned.any(axis=1).all()


def test_baselines_and_metrics_on_a_hand_made_case():
  # One sequence of 1x2-pixel frames: inputs [0, 0], [1, 0], [.5, 1];
  # targets [1, 1], [0, 0].
  inputs = np.array([[0, 0], [1, 0], [0.5, 1]]).reshape(1, 3, 1, 2, 1)
  targets = np.array([[1, 1], [0, 0]]).reshape(1, 2, 1, 2, 1)
  last = data.copy_last_frame(inputs, 2)
  mean = data.mean_frame(inputs, 2)
  np.testing.assert_allclose(last[0, :, 0, :, 0], [[0.5, 1], [0.5, 1]])
  np.testing.assert_allclose(mean[0, :, 0, :, 0], [[0.5, 1 / 3]] * 2)
  np.testing.assert_allclose(
    data.per_frame_mse(last, targets), [0.25 / 2, (0.25 + 1) / 2]
  )
  np.testing.assert_allclose(
    data.per_frame_mse(mean, targets),
    [(0.25 + (2 / 3) ** 2) / 2, (0.25 + (1 / 3) ** 2) / 2],
  )
  # Copy-last, frame 1: p = .5 for y = 1, and p = 1 (clipped to .9) for
  # y = 1; frame 2: p = .5 for y = 0, and p = .9 for y = 0.
  np.testing.assert_allclose(
    data.per_frame_bce(last, targets, eps=0.1),
    [
      (math.log(2) - math.log(0.9)) / 2,
      (math.log(2) - math.log(0.1)) / 2,
    ],
  )
  inputs_seq, targets_seq = data.split(np.arange(5).reshape(1, 5), 3)
  np.testing.assert_array_equal(inputs_seq, [[0, 1, 2]])
  np.testing.assert_array_equal(targets_seq, [[3, 4]])


def test_patches_round_trip_in_row_major_order():
  x = jnp.arange(2 * 8 * 8 * 3.0).reshape(2, 8, 8, 3)
  z = model.space_to_depth(x, 4)
  assert z.shape == (2, 2, 2, 48)
  np.testing.assert_array_equal(z[0, 1, 0], x[0, 4:8, 0:4].reshape(-1))
  np.testing.assert_array_equal(model.depth_to_space(z, 4), x)


def test_cell_through_nnx_rnn_matches_the_convlstm_layer():
  # The forecaster drives hpr's ConvLSTMCell with nnx.RNN; from a zero
  # state that must be exactly the ConvLSTM layer.
  layer = ConvLSTM(3, 5, padding='same', impl='reference', rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (2, 4, 6, 6, 3))
  carry, hs = nnx.RNN(layer.cell, return_carry=True)(x)
  np.testing.assert_allclose(hs, layer(x), atol=1e-5)
  np.testing.assert_allclose(carry[1], hs[:, -1])
  assert carry[0].shape == (2, 6, 6, 5)


@pytest.mark.slow
def test_forecast_shape_and_depends_on_the_inputs_through_states():
  net = model.EncoderForecaster(
    patch=4, features=(4, 6), kernel_size=(3, 3), rngs=nnx.Rngs(0)
  )
  x = jax.random.uniform(jax.random.key(0), (2, 3, 16, 16, 1))
  logits = nnx.jit(lambda net, x: net(x, 2))(net, x)
  assert logits.shape == (2, 2, 16, 16, 1)
  # The forecaster reads no frames, so different forecasts for different
  # inputs show the encoder's states reached it.
  assert not np.allclose(logits[0], logits[1], atol=1e-3)


def test_train_cli_few_steps(tmp_path):
  out = str(tmp_path / 'out')
  args = [
    '--steps=25',
    '--batch_size=4',
    f'--out={out}',
    '--seed=1',
    '--size=16',
    '--scale=1',
    '--features=4,4',
    '--num_inputs=3',
    '--num_future=2',
    '--num_test=6',
    '--num_validation=4',
    '--learning_rate=0.01',
    '--log_every=5',
    '--num_shown=2',
  ]
  summary = train.main(args)
  assert summary['last_losses_mean'] < summary['first_loss'] - 0.05
  with open(os.path.join(out, 'results.json')) as f:
    saved = json.load(f)
  rows = saved['test']
  assert set(rows) >= {
    'ConvLSTM encoder-forecaster',
    'copy last frame',
    'mean of input frames',
  }
  for row in rows.values():
    assert len(row['mse_per_frame']) == len(row['bce_per_frame']) == 2
  # The saved baseline numbers are those of data's functions on the test set.
  test = data.moving_glyphs(
    np.random.default_rng(train.TEST_SEED),
    6,
    num_frames=5,
    size=16,
    scale=1,
    speed=(1.0, 2.0),
  )
  inputs, targets = data.split(test, 3)
  np.testing.assert_allclose(
    rows['copy last frame']['mse_per_frame'],
    data.per_frame_mse(data.copy_last_frame(inputs, 2), targets),
  )
  with open(os.path.join(out, 'predictions.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  lines = open(os.path.join(out, 'train_log.jsonl')).read().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [1, 5, 10, 15, 20, 25]


@pytest.mark.parametrize(
  'bad', [['--size=30'], ['--steps=0'], ['--scale=9'], ['--num_future=0']]
)
def test_train_cli_rejects_bad_arguments(bad, capsys):
  with pytest.raises(SystemExit) as e:
    train.parse_args(bad)
  assert e.value.code == 2
  assert 'error:' in capsys.readouterr().err
