"""hpr's recurrent layers and ConvLSTM classifier against float64 NumPy
references of the Keras equations, written independently of hpr's code.

Keras' (Conv)LSTM, gates concatenated in i, f, c, o order:
  z = x * W + h * U + b       (* a conv for ConvLSTM2D, a matmul for LSTM)
  i, f, o = rec_act(z_i), rec_act(z_f), rec_act(z_o)
  c' = f c + i act(z_c)       h' = o act(c')
The recurrent conv is stride 1, 'same', on the output grid; (c, h) start at
zero. TensorFlow's 'same' padding puts total // 2 before, the rest after.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpr import models
from hpr.models import layers

TOL = {'rtol': 1e-5, 'atol': 1e-5}

# --- NumPy references --------------------------------------------------------


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


NP_ACTIVATIONS = {
  'tanh': np.tanh,
  'sigmoid': np_sigmoid,
  'hard_sigmoid': lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),  # Keras 2.
  'relu': lambda x: np.maximum(x, 0.0),
}


def np_same_pads(size, kernel, stride):
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return out, (total // 2, total - total // 2)


def np_conv2d(x, kernel, strides, padding):
  """x: (N, H, W, C), kernel: (kh, kw, C, F) -> (N, H', W', F), per pixel."""
  kh, kw, _, features = kernel.shape
  sh, sw = strides
  n, h, w, _ = x.shape
  if padding == 'same':
    out_h, pad_h = np_same_pads(h, kh, sh)
    out_w, pad_w = np_same_pads(w, kw, sw)
    x = np.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  else:
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
  out = np.zeros((n, out_h, out_w, features))
  for r in range(out_h):
    for s in range(out_w):
      patch = x[:, r * sh : r * sh + kh, s * sw : s * sw + kw, :]
      out[:, r, s, :] = np.einsum('nhwc,hwcf->nf', patch, kernel)
  return out


def np_lstm_gates(z, c, act, rec_act):
  z_i, z_f, z_c, z_o = np.split(z, 4, axis=-1)
  c = rec_act(z_f) * c + rec_act(z_i) * act(z_c)
  h = rec_act(z_o) * act(c)
  return c, h


def np_convlstm(
  x,
  kernel,
  recurrent_kernel,
  bias,
  *,
  strides=(1, 1),
  padding='valid',
  activation='tanh',
  recurrent_activation='sigmoid',
  return_sequences=True,
):
  """x: (B, T, H, W, C) -> (B, T, H', W', F) or (B, H', W', F)."""
  act = NP_ACTIVATIONS[activation]
  rec_act = NP_ACTIVATIONS[recurrent_activation]
  features = recurrent_kernel.shape[-1] // 4
  c = h = None
  hs = []
  for t in range(x.shape[1]):
    z = np_conv2d(x[:, t], kernel, strides, padding) + bias
    if h is None:
      c = h = np.zeros(z.shape[:-1] + (features,))
    z = z + np_conv2d(h, recurrent_kernel, (1, 1), 'same')
    c, h = np_lstm_gates(z, c, act, rec_act)
    hs.append(h)
  return np.stack(hs, axis=1) if return_sequences else h


def np_lstm(
  x,
  kernel,
  recurrent_kernel,
  bias,
  *,
  activation='tanh',
  recurrent_activation='sigmoid',
  return_sequences=False,
):
  """x: (B, T, D) -> (B, T, F) or (B, F)."""
  act = NP_ACTIVATIONS[activation]
  rec_act = NP_ACTIVATIONS[recurrent_activation]
  features = recurrent_kernel.shape[0]
  c = h = np.zeros((x.shape[0], features))
  hs = []
  for t in range(x.shape[1]):
    z = x[:, t] @ kernel + h @ recurrent_kernel + bias
    c, h = np_lstm_gates(z, c, act, rec_act)
    hs.append(h)
  return np.stack(hs, axis=1) if return_sequences else h


def np_max_pool_same(x, window):
  """TF/Keras 'same' max pool, stride = window: x (..., H, W, C).

  Output ceil(n / p); window i starts at p * i of the input padded with
  total = out * p - n cells of -inf, total // 2 before and the rest after.
  """
  ph, pw = window
  h, w = x.shape[-3:-1]
  out_h, pad_h = np_same_pads(h, ph, ph)
  out_w, pad_w = np_same_pads(w, pw, pw)
  pads = ((0, 0),) * (x.ndim - 3) + (pad_h, pad_w, (0, 0))
  x = np.pad(x, pads, constant_values=-np.inf)
  out = np.empty(x.shape[:-3] + (out_h, out_w, x.shape[-1]))
  for r in range(out_h):
    for s in range(out_w):
      win = x[..., r * ph : (r + 1) * ph, s * pw : (s + 1) * pw, :]
      out[..., r, s, :] = win.max(axis=(-3, -2))
  return out


# --- Helpers -----------------------------------------------------------------


def _randomize_cell(cell, rng, scale=0.4):
  """Random kernel, recurrent kernel and bias, written into the module."""
  weights = {}
  for name in ('kernel', 'recurrent_kernel', 'bias'):
    param = getattr(cell, name)
    value = rng.normal(0.0, scale, param.shape)
    # Round to float32 so the reference sees exactly the module's weights.
    value = value.astype(np.float32).astype(np.float64)
    param[...] = jnp.asarray(value, jnp.float32)
    weights[name] = value
  return weights


def _inputs(rng, shape):
  return rng.normal(0.0, 1.0, shape).astype(np.float32).astype(np.float64)


# --- ConvLSTM layer ----------------------------------------------------------

CONVLSTM_CASES = {
  'valid-seq': {'padding': 'valid', 'return_sequences': True},
  'valid-last': {'padding': 'valid', 'return_sequences': False},
  'same-seq': {'padding': 'same', 'return_sequences': True},
  'same-last': {'padding': 'same', 'return_sequences': False},
  'same-hard-sigmoid': {
    'padding': 'same',
    'return_sequences': True,
    'activation': 'tanh',
    'recurrent_activation': 'hard_sigmoid',
  },
  'valid-hard-sigmoid-last': {
    'padding': 'valid',
    'return_sequences': False,
    'recurrent_activation': 'hard_sigmoid',
  },
  # Strided input conv; 'same' on 7x6 pads (1, 1) rows and (0, 1) columns.
  'same-stride2': {'padding': 'same', 'strides': (2, 2)},
  'valid-stride2': {'padding': 'valid', 'strides': (2, 2)},
  'same-relu-2x3-kernel': {
    'padding': 'same',
    'kernel_size': (2, 3),
    'activation': 'relu',
  },
}


@pytest.mark.parametrize('case', list(CONVLSTM_CASES))
def test_convlstm_layer_matches_numpy(case):
  kwargs = dict(CONVLSTM_CASES[case])
  kernel_size = kwargs.pop('kernel_size', (3, 3))
  return_sequences = kwargs.pop('return_sequences', True)
  rng = np.random.default_rng(0)
  layer = models.ConvLSTM(
    3,
    4,
    kernel_size,
    return_sequences=return_sequences,
    rngs=nnx.Rngs(0),
    **kwargs,
  )
  w = _randomize_cell(layer.cell, rng)
  assert w['kernel'].shape == (*kernel_size, 3, 16)
  assert w['recurrent_kernel'].shape == (*kernel_size, 4, 16)
  assert w['bias'].shape == (16,)
  x = _inputs(rng, (2, 5, 7, 6, 3))
  expected = np_convlstm(x, **w, return_sequences=return_sequences, **kwargs)
  got = layer(jnp.asarray(x, jnp.float32))
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, **TOL)
  h, w_ = layer.cell.output_spatial_shape(7, 6)
  assert expected.shape[-3:] == (h, w_, 4)


def test_convlstm_cell_step_matches_numpy():
  # The cell alone (as nnx.RNN would call it) from a non-zero carry.
  rng = np.random.default_rng(1)
  cell = models.ConvLSTMCell(3, 4, padding='same', rngs=nnx.Rngs(0))
  w = _randomize_cell(cell, rng)
  x = _inputs(rng, (2, 7, 6, 3))
  c0, h0 = _inputs(rng, (2, 7, 6, 4)), _inputs(rng, (2, 7, 6, 4))
  z = (
    np_conv2d(x, w['kernel'], (1, 1), 'same')
    + w['bias']
    + np_conv2d(h0, w['recurrent_kernel'], (1, 1), 'same')
  )
  c1, h1 = np_lstm_gates(z, c0, np.tanh, np_sigmoid)
  (c, h), out = cell(
    (jnp.asarray(c0, jnp.float32), jnp.asarray(h0, jnp.float32)),
    jnp.asarray(x, jnp.float32),
  )
  np.testing.assert_allclose(c, c1, **TOL)
  np.testing.assert_allclose(h, h1, **TOL)
  np.testing.assert_array_equal(out, h)
  zeros = cell.initialize_carry((2, 7, 6, 3))
  assert zeros[0].shape == zeros[1].shape == (2, 7, 6, 4)


def test_convlstm_default_bias_is_unit_forget():
  layer = models.ConvLSTM(3, 4, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(
    layer.cell.bias[...], np.repeat([0.0, 1.0, 0.0, 0.0], 4)
  )


# --- Dense LSTM layer --------------------------------------------------------

LSTM_CASES = {
  'last': {'return_sequences': False},
  'seq': {'return_sequences': True},
  'hard-sigmoid-seq': {
    'return_sequences': True,
    'recurrent_activation': 'hard_sigmoid',
  },
  'relu-last': {'return_sequences': False, 'activation': 'relu'},
}


@pytest.mark.parametrize('case', list(LSTM_CASES))
def test_lstm_layer_matches_numpy(case):
  kwargs = dict(LSTM_CASES[case])
  return_sequences = kwargs.pop('return_sequences')
  rng = np.random.default_rng(2)
  layer = models.LSTM(
    6, 4, return_sequences=return_sequences, rngs=nnx.Rngs(0), **kwargs
  )
  w = _randomize_cell(layer.cell, rng)
  assert w['kernel'].shape == (6, 16)
  assert w['recurrent_kernel'].shape == (4, 16)
  x = _inputs(rng, (2, 5, 6))
  expected = np_lstm(x, **w, return_sequences=return_sequences, **kwargs)
  got = layer(jnp.asarray(x, jnp.float32))
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, **TOL)


def test_lstm_default_bias_is_unit_forget():
  layer = models.LSTM(6, 4, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(
    layer.cell.bias[...], np.repeat([0.0, 1.0, 0.0, 0.0], 4)
  )


# --- Recurrent dropout -------------------------------------------------------


def _recurrent_layer(kind, rng):
  if kind == 'convlstm':
    layer = models.ConvLSTM(
      3,
      4,
      padding='same',
      recurrent_dropout=0.5,
      return_sequences=True,
      rngs=nnx.Rngs(0),
    )
    x = _inputs(rng, (2, 5, 7, 6, 3))
    ref = functools.partial(np_convlstm, padding='same')
  else:
    layer = models.LSTM(
      6, 4, recurrent_dropout=0.5, return_sequences=True, rngs=nnx.Rngs(0)
    )
    x = _inputs(rng, (2, 5, 6))
    ref = np_lstm
  w = _randomize_cell(layer.cell, rng)
  return layer, x, ref(x, **w, return_sequences=True)


@pytest.mark.parametrize('kind', ['convlstm', 'lstm'])
def test_recurrent_dropout_only_in_train_mode(kind):
  layer, x, expected = _recurrent_layer(kind, np.random.default_rng(3))
  x = jnp.asarray(x, jnp.float32)
  train_out = np.asarray(layer(x))  # Train mode is the default.
  # h_0 = 0, so the mask cannot change the first step; it changes the rest.
  np.testing.assert_allclose(train_out[:, 0], expected[:, 0], **TOL)
  assert not np.allclose(train_out[:, 1:], expected[:, 1:], atol=1e-3)
  assert not np.allclose(train_out, np.asarray(layer(x)), atol=1e-6)
  layer.eval()
  np.testing.assert_allclose(layer(x), expected, **TOL)
  np.testing.assert_array_equal(layer(x), layer(x))


def test_recurrent_dropout_mask_is_fixed_over_time():
  # In train mode the layer must equal the reference run with h * m fed to
  # the recurrent matmul, for one mask m (entries 0 or 1 / (1 - rate))
  # shared by all time steps; h itself is carried unmasked.
  rng = np.random.default_rng(4)
  layer = models.LSTM(
    6, 4, recurrent_dropout=0.5, return_sequences=True, rngs=nnx.Rngs(0)
  )
  w = _randomize_cell(layer.cell, rng)
  x = _inputs(rng, (2, 5, 6))
  got = np.asarray(layer(jnp.asarray(x, jnp.float32)), np.float64)
  best = None
  # 2 * 4 mask entries: try every mask and keep the one that fits.
  for bits in range(2 ** (2 * 4)):
    mask = np.array([(bits >> k) & 1 for k in range(8)], np.float64)
    mask = mask.reshape(2, 4) * 2.0
    c = h = np.zeros((2, 4))
    hs = []
    for t in range(5):
      z = x[:, t] @ w['kernel'] + (h * mask) @ w['recurrent_kernel'] + w['bias']
      c, h = np_lstm_gates(z, c, np.tanh, np_sigmoid)
      hs.append(h)
    err = np.abs(np.stack(hs, axis=1) - got).max()
    best = err if best is None else min(best, err)
  assert best < 1e-5


# --- Max pool 'same' ---------------------------------------------------------


@pytest.mark.parametrize(
  'window,height,width',
  [
    ((2, 2), 6, 6),  # No padding.
    ((2, 2), 7, 6),  # Odd rows: one -inf row at the bottom.
    ((2, 2), 5, 7),
    ((2, 2), 1, 1),
    ((3, 3), 9, 8),  # Total pad 0 and 1: all of it after.
    ((3, 3), 5, 8),
    ((2, 3), 7, 8),
  ],
)
def test_max_pool_same_matches_tensorflow_convention(window, height, width):
  rng = np.random.default_rng(5)
  x = _inputs(rng, (2, 3, height, width, 4))
  got = layers.max_pool(jnp.asarray(x, jnp.float32), window, 'same')
  expected = np_max_pool_same(x, window)
  assert got.shape == expected.shape
  assert got.shape[-3:-1] == (-(-height // window[0]), -(-width // window[1]))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
  'window,height,width',
  [
    ((3, 3), 7, 7),  # Total pad 2: TF pads 1 before and 1 after.
    ((3, 3), 5, 4),  # Columns: total pad 2.
    ((2, 3), 7, 7),  # Columns: total pad 2.
    ((4, 4), 5, 5),  # Total pad 3: TF pads 1 before and 2 after.
  ],
)
def test_max_pool_same_with_padding_before(window, height, width):
  rng = np.random.default_rng(6)
  x = _inputs(rng, (2, height, width, 4))
  got = layers.max_pool(jnp.asarray(x, jnp.float32), window, 'same')
  np.testing.assert_allclose(
    got, np_max_pool_same(x, window), rtol=0, atol=1e-7
  )


def test_max_pool_valid_drops_the_remainder():
  rng = np.random.default_rng(7)
  x = _inputs(rng, (2, 9, 7, 3))
  got = layers.max_pool(jnp.asarray(x, jnp.float32), (4, 2), 'valid')
  expected = x[:, :8, :6].reshape(2, 2, 4, 3, 2, 3).max(axis=(2, 4))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


# --- The notebook's ConvLSTM classifier --------------------------------------


def np_convlstm_classifier(x, cells, dense_kernel, dense_bias, **cell_kwargs):
  """ConvLSTM -> MaxPool3D((1, 2, 2), 'same') per layer -> Flatten -> Dense.

  Dropout is the identity at inference. Flatten is row-major over
  (T, H, W, C), as Keras' Flatten on channels_last.
  """
  for w in cells:
    x = np_convlstm(x, **w, return_sequences=True, **cell_kwargs)
    x = np_max_pool_same(x, (2, 2))
  flat = x.reshape(x.shape[0], -1)
  return flat @ dense_kernel + dense_bias


@pytest.mark.parametrize(
  'input_shape,padding,recurrent_activation',
  [
    # Small 16x16 frames need 'same' padding for 4 layers of 3x3 convs.
    ((6, 16, 16, 3), 'same', 'sigmoid'),
    # 'valid', as in the notebook: 32 -> 30 -> 15 -> 13 -> 7 -> 5 -> 3 ->
    # 1 -> 1, with odd sizes on the pools.
    ((4, 32, 32, 3), 'valid', 'hard_sigmoid'),
  ],
)
def test_convlstm_classifier_matches_numpy(
  input_shape, padding, recurrent_activation
):
  rng = np.random.default_rng(8)
  model = models.ConvLSTMClassifier(
    5,
    input_shape=input_shape,
    padding=padding,
    recurrent_activation=recurrent_activation,
    rngs=nnx.Rngs(0),
  )
  assert [m.cell.features for m in model.convlstms] == [4, 8, 14, 16]
  cells = [_randomize_cell(m.cell, rng, scale=0.3) for m in model.convlstms]
  dense_kernel = _inputs(rng, model.dense.kernel.shape) * 0.1
  dense_bias = _inputs(rng, model.dense.bias.shape)
  model.dense.kernel[...] = jnp.asarray(dense_kernel, jnp.float32)
  model.dense.bias[...] = jnp.asarray(dense_bias, jnp.float32)
  model.eval()

  x = rng.uniform(0.0, 1.0, (2, *input_shape))
  x = x.astype(np.float32).astype(np.float64)
  expected = np_convlstm_classifier(
    x,
    cells,
    dense_kernel,
    dense_bias,
    padding=padding,
    recurrent_activation=recurrent_activation,
  )
  got = model(jnp.asarray(x, jnp.float32))
  assert got.shape == (2, 5)
  np.testing.assert_allclose(got, expected, **TOL)
