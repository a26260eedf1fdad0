"""The CPU-speed rewrites compute what the plain formulation computes, in
train mode too (same dropout masks): the LRCN encoder in chunks of frames,
the ConvLSTM classifier time-major with each step's input conv in the time
loop, and `cli.configure_cpu_devices`."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpr.models import layers, lrcn, recurrent
from hpr.models.convlstm import ConvLSTMClassifier
from hpr.models.lrcn import LRCN, _num_chunks

CLIP = (2, 6, 16, 16, 3)  # B, T, H, W, C: 12 frames.


def clip():
  return jax.random.uniform(jax.random.key(7), CLIP)


def plain_frame_cnn(encoder, x):
  """FrameCNN as the notebook reads: all frames at once, nnx.Dropout."""
  frames = x.reshape((-1,) + x.shape[-3:])
  for i, (conv, pool) in enumerate(
    zip(encoder.convs, encoder.pool_sizes, strict=True)
  ):
    frames = layers.max_pool(jax.nn.relu(conv(frames)), (pool, pool), 'valid')
    if i < len(encoder.dropouts):
      frames = encoder.dropouts[i](frames)
  return frames.reshape(x.shape[:-3] + (-1,))


def plain_convlstm(model, x):
  """The classifier batch-major, the input conv of layer 1 over all frames
  before its time loop, nnx.Dropout (the path hpr.streaming uses)."""
  return model.from_input_projection(model.input_projection(x))


def loss_and_grads(model, fn, x):
  def loss(model):
    return jnp.sum(jnp.sin(fn(model, x)))

  return nnx.value_and_grad(loss)(model)


def build_lrcn(conv_features, pool_sizes, chunk_frames):
  """A small LRCN for CLIP in train mode (dropout 0.5), its encoder in
  chunks of `chunk_frames` frames."""
  model = LRCN(
    4,
    input_shape=CLIP[1:],
    conv_features=conv_features,
    pool_sizes=pool_sizes,
    lstm_features=8,
    dropout=0.5,
    rngs=nnx.Rngs(0),
  )
  model.encoder.chunk_frames = chunk_frames
  return model


def assert_close_tree(a, b, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    scale = max(np.abs(y).max(), 1e-12)
    assert np.abs(x - y).max() / scale < rtol


def assert_same_rng_counts(a, b):
  # Both drew the same number of keys from every stream.
  counts_a = jax.tree.leaves(nnx.state(a, nnx.RngCount))
  counts_b = jax.tree.leaves(nnx.state(b, nnx.RngCount))
  assert [int(c) for c in counts_a] == [int(c) for c in counts_b]
  assert any(int(c) for c in counts_a)


@pytest.mark.parametrize('chunk_frames', [0, 4, 5, 12])
def test_chunked_frame_cnn_matches_plain_in_train_mode(chunk_frames):
  # 12 frames in chunks of 4 (3 chunks), of <= 5 (4 chunks of 3), or whole.
  # Blocks on 16x16 (conv_block's fused op), 8x8 and 4x4 (XLA convolutions,
  # conv_sum) and 2x2 frames (patches @ kernel): every path FrameCNN takes.
  assert lrcn.CONV_OP_MIN_SIZE == 4

  def build():
    return build_lrcn((4, 8, 8, 8), (2, 2, 2, 2), chunk_frames)

  x = clip()
  ours, plain = build(), build()
  loss, grads = loss_and_grads(ours, lambda m, x: m.encoder(x), x)
  ref_loss, ref_grads = loss_and_grads(
    plain, lambda m, x: plain_frame_cnn(m.encoder, x), x
  )
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert_close_tree(grads, ref_grads)
  # Dropout was on, and both drew one key per dropout from the same streams.
  assert float(loss) != float(
    jnp.sum(jnp.sin(nnx.view(build(), deterministic=True).encoder(x)))
  )
  assert_same_rng_counts(ours, plain)


def test_num_chunks_divides_the_frames():
  assert _num_chunks(640, 32) == 20
  assert _num_chunks(80, 32) == 4  # 3 does not divide 80: 4 chunks of 20.
  assert _num_chunks(7, 2) == 7  # A prime count falls back to single frames.
  assert _num_chunks(12, 0) == 1
  assert _num_chunks(12, 12) == 1


@pytest.mark.parametrize('unroll', [1, True])
def test_time_major_convlstm_matches_batch_major_in_train_mode(unroll):
  def build():
    model = ConvLSTMClassifier(
      4,
      input_shape=CLIP[1:],
      filters=(4, 6),
      recurrent_dropout=0.3,
      dropout=0.3,
      rngs=nnx.Rngs(0),
    )
    for layer in model.convlstms:
      layer.unroll = unroll
    return model

  x = clip()
  ours, plain = build(), build()
  loss, grads = loss_and_grads(ours, lambda m, x: m(x), x)
  ref_loss, ref_grads = loss_and_grads(plain, plain_convlstm, x)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert_close_tree(grads, ref_grads)
  assert_same_rng_counts(ours, plain)


def test_convlstm_layer_time_major_is_its_call_transposed():
  model = ConvLSTMClassifier(
    4, input_shape=CLIP[1:], filters=(4,), rngs=nnx.Rngs(1)
  )
  layer = nnx.view(model, deterministic=True).convlstms[0]
  x = clip()
  np.testing.assert_allclose(
    jnp.swapaxes(layer.time_major(jnp.swapaxes(x, 0, 1)), 0, 1),
    recurrent.run_lstm(layer.cell, x),
    rtol=1e-5,
    atol=1e-6,
  )


CPU_DEVICES_SCRIPT = """
import sys
from hpr import cli
count = cli.configure_cpu_devices(int(sys.argv[1]), tuple(map(int, sys.argv[2:])))
import jax
print(count, jax.device_count())
"""


@pytest.mark.parametrize(
  'args, expected',
  [
    (['2', '32', '32'], '2 2'),
    (['4', '6', '12'], '3 3'),  # Lowered to divide both batch sizes.
    (['2', '5'], '1 1'),
  ],
)
def test_configure_cpu_devices(args, expected):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run(
    [sys.executable, '-c', CPU_DEVICES_SCRIPT, *args],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  assert out.stdout.split('\n')[-2] == expected


def test_configure_cpu_devices_leaves_fake_devices_and_a_started_jax():
  # This process has XLA_FLAGS' 8 fake devices (conftest) and JAX started.
  from hpr import cli

  assert cli.configure_cpu_devices(2, (8,)) == 0
  assert jax.device_count() == 8
