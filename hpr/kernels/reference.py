"""The reference implementations: what each of hpr's named primitives
computes, in plain `jax.lax` / `jax.numpy`, for every platform.

These are the definitions the platform implementations are tested against
(tests/test_kernels*.py), and what 'auto' runs wherever no platform
implementation applies (GPUs, TPUs, non-float32 inputs). Shapes and
paddings follow Keras (TensorFlow's 'same': the odd pixel goes after), so
weights trained with the Keras notebook import by assignment.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Activation = Callable[[Array], Array]


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
  """Output length of a conv or pool along one axis, as Keras computes it."""
  if padding.lower() == 'same':
    return -(-size // stride)
  return -(-(size - kernel + 1) // stride)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's 'same' padding: the odd pixel goes after."""
  total = max(
    (conv_output_size(size, kernel, stride, 'same') - 1) * stride
    + kernel
    - size,
    0,
  )
  return total // 2, total - total // 2


def conv2d(
  x: Array, kernel: Array, strides: Sequence[int], padding: str
) -> Array:
  """2-D convolution with a Keras-layout kernel.

  Args:
    x: (..., H, W, C) images (any number of leading batch axes).
    kernel: (kh, kw, C, F).
    strides: (sh, sw).
    padding: 'valid' or 'same' (TensorFlow's placement of odd padding).

  Returns:
    (..., H', W', F).
  """
  batch = x.shape[:-3]
  x = x.reshape((-1,) + x.shape[-3:])
  if padding.lower() == 'same':
    pads = [
      same_padding(n, k, s)
      for n, k, s in zip(x.shape[1:3], kernel.shape[:2], strides, strict=True)
    ]
  else:
    pads = [(0, 0), (0, 0)]
  y = jax.lax.conv_general_dilated(
    x,
    kernel.astype(x.dtype),
    tuple(strides),
    pads,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  return y.reshape(batch + y.shape[1:])


def max_pool(x: Array, window: Sequence[int], padding: str) -> Array:
  """Max pooling over (H, W) with stride = window, as Keras' MaxPooling2D.

  A reshape and a max over each window, so a pooled gradient is split
  evenly between tied maxima (as JAX's `reduce_max` splits it; a
  `reduce_window` would give it all to one of them).

  Args:
    x: (..., H, W, C).
    window: (ph, pw).
    padding: 'valid' (drops the remainder) or 'same' (pads with -inf as
      TensorFlow does: half before, the odd one after).

  Returns:
    (..., H', W', C).
  """
  ph, pw = window
  height, width, channels = x.shape[-3:]
  out_h = conv_output_size(height, ph, ph, padding)
  out_w = conv_output_size(width, pw, pw, padding)
  if padding.lower() == 'same':
    extra_h, extra_w = out_h * ph - height, out_w * pw - width
    pads = (
      (extra_h // 2, extra_h - extra_h // 2),
      (extra_w // 2, extra_w - extra_w // 2),
      (0, 0),
    )
    x = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + pads, constant_values=-jnp.inf)
  batch = x.shape[:-3]
  x = x[..., : out_h * ph, : out_w * pw, :]
  # Leading axes as one: the windows are then 6-D, the most TFLite's
  # XNNPACK delegate takes (exported models, see hpr.tools.export).
  x = x.reshape((-1, out_h, ph, out_w, pw, channels))
  return jnp.max(x, axis=(2, 4)).reshape(batch + (out_h, out_w, channels))


def hard_sigmoid(x: Array) -> Array:
  """Keras 2's hard sigmoid: clip(0.2 x + 0.5, 0, 1)."""
  return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def conv_relu_pool(x: Array, kernel: Array, bias: Array, pool: int) -> Array:
  """One frame-CNN block: max_pool(relu(conv 'same' + bias), pool, 'valid').

  Args:
    x: (N, H, W, C) frames.
    kernel: (kh, kw, C, F), Keras layout.
    bias: (F,).
    pool: square max-pool window and stride.

  Returns:
    (N, H // pool, W // pool, F).
  """
  y = conv2d(x, kernel, (1, 1), 'same') + bias.astype(x.dtype)
  return max_pool(jax.nn.relu(y), (pool, pool), 'valid')


def lstm_gates(
  c: Array,
  z: Array,
  activation: Activation,
  recurrent_activation: Activation,
) -> tuple[Array, Array]:
  """An LSTM step's (c', h') from c and all four gates' inputs z (Keras'
  order i, f, c, o along the last axis)."""
  z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)
  i = recurrent_activation(z_i)
  f = recurrent_activation(z_f)
  o = recurrent_activation(z_o)
  c = f * c + i * activation(z_c)
  return c, o * activation(c)


def convlstm_layer(
  x: Array,
  kernel: Array,
  recurrent_kernel: Array,
  bias: Array | None,
  mask: Array | None,
  *,
  strides: Sequence[int] = (1, 1),
  padding: str = 'valid',
  activation: Activation = jnp.tanh,
  recurrent_activation: Activation = hard_sigmoid,
  unroll: int | bool = 1,
) -> Array:
  """A Keras ConvLSTM2D layer over time: every step's hidden state.

    z_t = conv(x_t, kernel) + conv(h_{t-1} * mask, recurrent_kernel) + bias
    (c_t, h_t) = lstm_gates(c_{t-1}, z_t)

  Args:
    x: (T, B, H, W, C), time-major.
    kernel: (kh, kw, C, 4F), Keras layout, gates i, f, c, o.
    recurrent_kernel: (kh, kw, F, 4F); its conv is stride 1, 'same'.
    bias: (4F,) or None.
    mask: (B, H', W', F) recurrent-dropout mask on h, or None.
    strides: the input conv's.
    padding: the input conv's, 'valid' or 'same'.
    activation: cell-input and output activation.
    recurrent_activation: gate activation.
    unroll: `jax.lax.scan` unroll factor.

  Returns:
    (T, B, H', W', F).
  """
  # The input conv sees each frame on its own: one conv over all T * B.
  gates_x = conv2d(x, kernel, strides, padding)
  if bias is not None:
    gates_x = gates_x + bias.astype(gates_x.dtype)
  h = jnp.zeros(gates_x.shape[1:-1] + (recurrent_kernel.shape[-2],), x.dtype)

  def step(carry, gates_x_t):
    c, h = carry
    h_in = h if mask is None else h * mask.astype(h.dtype)
    z = gates_x_t + conv2d(h_in, recurrent_kernel, (1, 1), 'same')
    c, h = lstm_gates(c, z, activation, recurrent_activation)
    return (c, h), h

  return jax.lax.scan(step, (h, h), gates_x, unroll=unroll)[1]
