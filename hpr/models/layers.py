"""Shared pieces of the hpr models: Keras-compatible activations,
initializers, the Conv2D module, pooling and dropout helpers (the LSTM cells
and their time loops are in hpr.models.recurrent; convolution and pooling
are defined in hpr.kernels.reference).

Everything here keeps Keras' parameter layouts (kernels (..., in, out), LSTM
gates concatenated in i, f, c, o order) so weights trained with the Keras
notebook import by plain assignment.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpr.kernels.reference import (
  conv2d,
  conv_output_size,
  hard_sigmoid,
  max_pool,
  same_padding,
)

Array = jax.Array
Activation = str | Callable[[Array], Array]


# Keras 2's hard sigmoid, clip(0.2 x + 0.5, 0, 1); hpr.kernels knows it by
# identity (the CPU's compiled ConvLSTM computes it).
hard_sigmoid_keras2 = hard_sigmoid


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

  Glorot-uniform kernel and zero bias, Keras' defaults. (`nnx.Conv` holds
  the same parameters but draws a key for its bias too, which would change
  every later layer's initial weights for a given seed.)
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


DTYPES = ('float32', 'bfloat16')


def compute_dtype(dtype) -> jnp.dtype:
  """A model's compute dtype from 'float32' or 'bfloat16' (or the dtype)."""
  if jnp.dtype(dtype).name not in DTYPES:
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got '{dtype}'")
  return jnp.dtype(dtype)


def log_mean_softmax(logits: Array, axis: int) -> Array:
  """log(mean(softmax(logits), axis)): averaged predictions as logits.

  The result is a valid logits tensor (its softmax is the mean of the
  softmaxes), so it can go straight into softmax cross-entropy.
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return jax.nn.logsumexp(log_p, axis=axis) - jnp.log(logits.shape[axis])


__all__ = [
  'ACTIVATIONS',
  'Activation',
  'Conv2D',
  'apply_dropout_mask',
  'compute_dtype',
  'conv2d',
  'conv_output_size',
  'dropout_mask',
  'get_activation',
  'glorot_uniform',
  'hard_sigmoid_keras2',
  'hard_sigmoid_keras3',
  'log_mean_softmax',
  'lstm_bias_init',
  'max_pool',
  'orthogonal',
  'same_padding',
  'zeros',
]
