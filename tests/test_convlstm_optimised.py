"""The optimised ConvLSTM (time-major, rematerialised in the backward pass,
scan unrolled or not; the first two layers' convs (3 + 4 and 4 + 6
channels) as one XLA convolution on packed 2-pixel rows with a hand-written
backward pass, the first on an odd width, the third's (6 + 10) as patches @
kernel)
against the straightforward formulation: a Python loop over time with
`lax.conv_general_dilated` for both convolutions, as the Keras equations
read. Forward and gradients agree to 1e-5 relative error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpr.models import layers
from hpr.models.convlstm import ConvLSTMClassifier

# 17x17 frames: 15x15 out of the first layer (odd, packed rounded up), 6x6
# out of the second, 1x1 out of the third.
INPUT_SHAPE = (5, 17, 17, 3)
FILTERS = (4, 6, 10)


def conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    padding.upper(),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


def straightforward_logits(params, x):
  """The notebook network, step by step; `params` is the model's pure dict."""
  out = x
  for i in range(len(FILTERS)):
    cell = params['convlstms'][i]['cell']
    kernel, rec, bias = cell['kernel'], cell['recurrent_kernel'], cell['bias']
    features = kernel.shape[-1] // 4
    hs = []
    h = c = None
    for t in range(out.shape[1]):
      z = conv(out[:, t], kernel, 'valid') + bias
      if h is None:
        h = c = jnp.zeros(z.shape[:-1] + (features,))
      z = z + conv(h, rec, 'same')
      z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)
      gate = layers.hard_sigmoid_keras2
      c = gate(z_f) * c + gate(z_i) * jnp.tanh(z_c)
      h = gate(z_o) * jnp.tanh(c)
      hs.append(h)
    out = layers.max_pool(jnp.stack(hs, axis=1), (2, 2), 'same')
  flat = out.reshape(out.shape[0], -1)
  return flat @ params['dense']['kernel'] + params['dense']['bias']


def make_model(unroll):
  model = ConvLSTMClassifier(
    4,
    input_shape=INPUT_SHAPE,
    filters=FILTERS,
    recurrent_dropout=0.0,
    dropout=0.0,
    rngs=nnx.Rngs(3),
  )
  for layer in model.convlstms:
    layer.unroll = unroll
  return model


@pytest.mark.parametrize('unroll', [1, True])
def test_optimised_convlstm_matches_straightforward(unroll):
  model = make_model(unroll)
  graphdef, state, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(state)
  x = jax.random.normal(jax.random.key(0), (2, *INPUT_SHAPE))
  labels = jnp.array([1, 3])

  def loss(fn):
    def f(p):
      logits = fn(p)
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    return f

  def optimised(p):
    s = nnx.clone(state)
    nnx.replace_by_pure_dict(s, p)
    return nnx.merge(graphdef, s, rest)(x)

  got = jax.jit(optimised)(params)
  want = jax.jit(lambda p: straightforward_logits(p, x))(params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  g_got = jax.jit(jax.grad(loss(optimised)))(params)
  g_want = jax.jit(jax.grad(loss(lambda p: straightforward_logits(p, x))))(
    params
  )
  flat_got = jax.tree_util.tree_leaves_with_path(g_got)
  flat_want = dict(jax.tree_util.tree_leaves_with_path(g_want))
  # 3 x (kernel, rec, bias), dense
  assert len(flat_got) == len(flat_want) == 11
  for path, value in flat_got:
    want_value = flat_want[path]
    scale = float(jnp.max(jnp.abs(want_value)))
    assert scale > 0, path
    err = float(jnp.max(jnp.abs(value - want_value))) / scale
    assert err < 1e-5, (jax.tree_util.keystr(path), err)


def test_the_layers_cover_both_convolution_paths():
  # So the test above checks conv_sum (layers 1-2) and patches (layer 3).
  model = make_model(1)
  uses = [
    layer.cell._uses_conv_sum(jnp.zeros((1, 3, 3, channels)))
    for layer, channels in zip(model.convlstms, (3, 4, 6), strict=True)
  ]
  assert uses == [True, True, False]
