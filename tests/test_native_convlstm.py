"""native_convlstm.conv_lstm, the compiled CPU kernels of a whole ConvLSTM
layer: built here, the numbers of the XLA layer (a `lax.scan` of
`ConvLSTMCell` steps) forward and under autodiff, the same on 8 devices as
on one, and taken by `ConvLSTM.time_major`."""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from hpr import parallel
from hpr.models import convlstm, layers, native_convlstm


def make_layer(channels, features, padding='valid', **kwargs):
  return convlstm.ConvLSTM(
    channels,
    features,
    (3, 3),
    padding=padding,
    recurrent_activation='hard_sigmoid',
    rngs=nnx.Rngs(0),
    **kwargs,
  )


def scan_layer(cell, mask, padding):
  """The straightforward formulation: one step per scan iteration."""

  def run(x, kernel, recurrent_kernel, bias):
    h = jnp.zeros((x.shape[1],) + mask.shape[1:])

    def step(carry, x_t):
      c, h = carry
      z = (
        layers.conv2d(x_t, kernel, (1, 1), padding)
        + layers.conv2d(h * mask, recurrent_kernel, (1, 1), 'same')
        + bias
      )
      return cell.update(c, z)

    return jax.lax.scan(step, (h, h), x)[1]

  return run


def test_the_library_is_built_and_loads():
  if platform.system() != 'Linux' or platform.machine() != 'x86_64':
    pytest.skip('CI builds it on x86-64 Linux')
  assert native_convlstm.available()
  cell = make_layer(3, 4).cell
  assert native_convlstm.supports(cell, (5, 2, 8, 8, 3), jnp.float32)


@pytest.mark.parametrize(
  'channels, features, size, padding, dropout',
  [
    (3, 4, 10, 'valid', True),  # The notebook's first layer.
    (4, 8, 9, 'same', False),  # Two gate vectors, 'same' input padding.
    (5, 12, 7, 'valid', True),  # Three.
    (14, 16, 6, 'valid', True),  # Four: the notebook's last layer.
  ],
)
def test_matches_the_scan_forward_and_gradients(
  channels, features, size, padding, dropout
):
  cell = make_layer(channels, features, padding).cell
  x = jax.random.normal(jax.random.key(1), (4, 3, size, size, channels))
  out = cell.output_spatial_shape(size, size)
  mask = jnp.ones((3, *out, features))
  if dropout:
    keep = jax.random.uniform(jax.random.key(2), mask.shape) > 0.3
    mask = keep / 0.7
  params = (cell.kernel[...], cell.recurrent_kernel[...], cell.bias[...])
  ref = scan_layer(cell, mask, padding)

  def native(x, kernel, recurrent_kernel, bias):
    return native_convlstm.conv_lstm(
      x, kernel, recurrent_kernel, bias, mask, padding
    )

  np.testing.assert_allclose(
    jax.jit(native)(x, *params), ref(x, *params), rtol=1e-5, atol=1e-6
  )
  cotangent = jax.random.normal(jax.random.key(3), (4, 3, *out, features))
  # With the input's gradient, and without (the first layer's video).
  for argnums in ((0, 1, 2, 3), (1, 2, 3)):
    grads = [
      jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums))(
        x, *params
      )
      for f in (native, ref)
    ]
    for ours, theirs in zip(*grads, strict=True):
      scale = float(jnp.max(jnp.abs(theirs)))
      np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale)


def test_eight_devices_equal_one_and_the_batch_is_not_gathered():
  layer = make_layer(3, 4)
  cell = layer.cell
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 8, 3))
  mask = jnp.ones((8, 6, 6, 4))
  cotangent = jax.random.normal(jax.random.key(2), (3, 8, 6, 6, 4))
  params = (cell.kernel[...], cell.recurrent_kernel[...], cell.bias[...])

  def f(x, params):
    def loss(params):
      hs = native_convlstm.conv_lstm(x, *params, mask, 'valid')
      return jnp.sum(hs * cotangent)

    return jax.value_and_grad(loss)(params)

  mesh = parallel.make_mesh()
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, 'data')))
  step = jax.jit(f)
  hlo = step.lower(sharded, params).compile().as_text()
  assert 'all-gather' not in hlo
  assert 'hpr_conv_lstm_backward' in hlo
  (loss8, grads8), (loss1, grads1) = step(sharded, params), f(x, params)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-5)
  for g8, g1 in zip(grads8, grads1, strict=True):
    np.testing.assert_allclose(g8, g1, rtol=1e-5, atol=1e-6)


def test_the_layer_takes_it_with_the_same_numbers_and_dropout(monkeypatch):
  calls = []
  native = native_convlstm.conv_lstm

  def counted(x, *args):
    calls.append(x.shape)
    return native(x, *args)

  monkeypatch.setattr(native_convlstm, 'conv_lstm', counted)
  x = jax.random.normal(jax.random.key(1), (2, 4, 9, 9, 3))

  def loss(layer, x):
    return jnp.sum(jnp.sin(layer(x)))

  results = []
  for use_native in (True, False):
    if not use_native:
      monkeypatch.setattr(native_convlstm, 'supports', lambda *a: False)
    layer = make_layer(3, 4, recurrent_dropout=0.3)
    layer.cell.recurrent_dropout.deterministic = False
    results.append(nnx.value_and_grad(loss)(layer, x))
  assert calls == [(4, 2, 9, 9, 3)]
  (loss_n, grads_n), (loss_x, grads_x) = results
  np.testing.assert_allclose(loss_n, loss_x, rtol=1e-5)
  for ours, theirs in zip(
    jax.tree.leaves(grads_n), jax.tree.leaves(grads_x), strict=True
  ):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_cells_it_does_not_cover_are_refused():
  shape = (5, 2, 8, 8, 3)
  assert not native_convlstm.supports(
    make_layer(3, 14).cell, shape, jnp.float32
  )
  assert not native_convlstm.supports(
    make_layer(3, 4).cell, shape, jnp.bfloat16
  )
  sigmoid = convlstm.ConvLSTM(3, 4, rngs=nnx.Rngs(0))
  assert not native_convlstm.supports(sigmoid.cell, shape, jnp.float32)
