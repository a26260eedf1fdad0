"""Shared pieces of the hpr models: Keras-compatible activations,
initializers, convolution, pooling and dropout helpers (the LSTM cells and
their time loops are in hpr.models.recurrent).

Everything here keeps Keras' parameter layouts (kernels (..., in, out), LSTM
gates concatenated in i, f, c, o order) so weights trained with the Keras
notebook import by plain assignment.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Activation = str | Callable[[Array], Array]


def hard_sigmoid_keras2(x: Array) -> Array:
  """Keras 2's hard sigmoid: clip(0.2 x + 0.5, 0, 1)."""
  return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def hard_sigmoid_keras3(x: Array) -> Array:
  """Keras 3's hard sigmoid: relu6(x + 3) / 6 (slope 1/6, not 0.2)."""
  return jax.nn.relu6(x + 3.0) / 6.0


# 'hard_sigmoid' means Keras 2's definition, the one the notebook ran with;
# Keras 3 changed it, so its version gets a name of its own.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  'linear': lambda x: x,
  'relu': jax.nn.relu,
  'sigmoid': jax.nn.sigmoid,
  'tanh': jnp.tanh,
  'hard_sigmoid': hard_sigmoid_keras2,
  'hard_sigmoid_keras3': hard_sigmoid_keras3,
  'softsign': jax.nn.soft_sign,
  'elu': jax.nn.elu,
  'swish': jax.nn.swish,
}


def get_activation(activation: Activation) -> Callable[[Array], Array]:
  """Returns the activation function for a Keras name (or a callable).

  Args:
    activation: a key of `ACTIVATIONS` or a callable, returned unchanged.

  Returns:
    The elementwise function.
  """
  if callable(activation):
    return activation
  if activation not in ACTIVATIONS:
    raise ValueError(
      f"unknown activation '{activation}'; valid: {', '.join(ACTIVATIONS)}"
    )
  return ACTIVATIONS[activation]


# Keras' defaults. jax's glorot_uniform and orthogonal flatten all but the last
# axis exactly as Keras does, so conv kernels get Keras' fan-in/fan-out.
glorot_uniform = nnx.initializers.glorot_uniform()
orthogonal = nnx.initializers.orthogonal()
zeros = nnx.initializers.zeros_init()


def lstm_bias_init(unit_forget_bias: bool) -> nnx.Initializer:
  """Keras' LSTM bias: zeros, with the forget-gate block set to one.

  Args:
    unit_forget_bias: whether to set the forget-gate bias to one.

  Returns:
    An initializer for a bias of shape (4 * units,), gates i, f, c, o.
  """

  def init(key, shape, dtype=jnp.float32):
    del key
    units = shape[-1] // 4
    bias = jnp.zeros(shape, dtype)
    return bias.at[units : 2 * units].set(1.0) if unit_forget_bias else bias

  return init


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
  """2-D convolution with a Keras-layout kernel, as patches @ kernel.

  XLA:CPU runs these small convs (few channels, 3x3) several times faster as
  one matmul over kh * kw shifted slices than as a convolution op under
  autodiff, above all the backward pass inside `jax.lax.scan` (for a
  convolution op with a backward pass that avoids this, see
  `hpr.models.conv_sum`).

  Args:
    x: (..., H, W, C) images (any number of leading batch axes).
    kernel: (kh, kw, C, F).
    strides: (sh, sw).
    padding: 'valid' or 'same' (TensorFlow's placement of odd padding).

  Returns:
    (..., H', W', F).
  """
  kh, kw, _, features = kernel.shape
  return patches(x, (kh, kw), strides, padding) @ kernel.reshape(-1, features)


def patches(
  x: Array, kernel_size: Sequence[int], strides: Sequence[int], padding: str
) -> Array:
  """The im2col patches of a conv: (..., H, W, C) -> (..., H', W', kh kw C),
  ordered (dy, dx, c) to match `kernel.reshape(-1, F)` of a Keras kernel."""
  kh, kw = kernel_size
  sh, sw = strides
  batch, (height, width) = x.shape[:-3], x.shape[-3:-1]
  # One flat batch axis: XLA:CPU is faster on (N, H, W, C) than on more axes.
  x = x.reshape((-1,) + x.shape[-3:])
  if padding.lower() == 'same':
    pads = (same_padding(height, kh, sh), same_padding(width, kw, sw))
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  out_h = conv_output_size(height, kh, sh, padding)
  out_w = conv_output_size(width, kw, sw, padding)
  out = jnp.concatenate(
    [
      x[
        ...,
        dy : dy + (out_h - 1) * sh + 1 : sh,
        dx : dx + (out_w - 1) * sw + 1 : sw,
        :,
      ]
      for dy in range(kh)
      for dx in range(kw)
    ],
    axis=-1,
  )
  return out.reshape(batch + out.shape[1:])


def max_pool(x: Array, window: Sequence[int], padding: str) -> Array:
  """Max pooling over (H, W) with stride = window, as Keras' MaxPooling2D.

  Written as a reshape + max rather than `reduce_window`: its gradient is
  elementwise, where `reduce_window`'s (select-and-scatter) is about twice
  as slow on XLA:CPU.

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
  x = x[..., : out_h * ph, : out_w * pw, :]
  x = x.reshape(x.shape[:-3] + (out_h, ph, out_w, pw, channels))
  return jnp.max(x, axis=(-4, -2))


def dropout_mask(dropout: nnx.Dropout, shape: Sequence[int]) -> Array | None:
  """The keep mask `dropout` would draw for an input of `shape`, or None
  where it is off (eval mode or rate 0).

  Draws one key from the module's stream, exactly as `nnx.Dropout` does, so
  `apply_dropout_mask(x, dropout_mask(d, x.shape), d.rate)` equals `d(x)`
  and a caller can draw the mask in one layout and apply it in another.
  """
  if dropout.deterministic or dropout.rate == 0.0:
    return None
  if dropout.rngs is None:
    raise ValueError('dropout is on but the module has no rngs')
  return jax.random.bernoulli(dropout.rngs(), 1.0 - dropout.rate, shape)


def apply_dropout_mask(x: Array, mask: Array | None, rate: float) -> Array:
  """x where mask is set, scaled by 1 / (1 - rate); 0 elsewhere (as
  `nnx.Dropout`)."""
  if mask is None:
    return x
  keep = 1.0 - rate
  return jax.lax.select(mask, x / keep if keep else x, jnp.zeros_like(x))


class Conv2D(nnx.Module):
  """Keras `Conv2D` (no activation): `kernel` (kh, kw, in, F), `bias` (F).

  Glorot-uniform kernel and zero bias, Keras' defaults; runs `conv2d`.
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    kernel_size: Sequence[int],
    *,
    strides: Sequence[int] = (1, 1),
    padding: str = 'valid',
    rngs: nnx.Rngs,
  ):
    shape = (*kernel_size, in_features, features)
    self.kernel = nnx.Param(glorot_uniform(rngs.params(), shape))
    self.bias = nnx.Param(jnp.zeros((features,)))
    self.strides = tuple(strides)
    self.padding = padding

  def __call__(self, x: Array) -> Array:
    # x: (..., H, W, C) -> (..., H', W', F)
    y = conv2d(x, self.kernel[...], self.strides, self.padding)
    return y + self.bias[...]


def log_mean_softmax(logits: Array, axis: int) -> Array:
  """log(mean(softmax(logits), axis)): averaged predictions as logits.

  The result is a valid logits tensor (its softmax is the mean of the
  softmaxes), so it can go straight into softmax cross-entropy.
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return jax.nn.logsumexp(log_p, axis=axis) - jnp.log(logits.shape[axis])
