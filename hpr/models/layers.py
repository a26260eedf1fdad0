"""Shared pieces of the hpr models: Keras-compatible activations,
initializers, convolution helpers and a Keras-layout LSTM.

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


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
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
  one matmul over kh * kw shifted slices than as a convolution op, above all
  the backward pass inside `jax.lax.scan`.

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
    pads = (_same_padding(height, kh, sh), _same_padding(width, kw, sw))
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


class KerasLSTMCellBase(nnx.RNNCellBase):
  """LSTM gate math shared by the dense and the convolutional cell.

  Subclasses own `kernel`, `recurrent_kernel` and `bias` (gates concatenated
  in Keras' i, f, c, o order) and define how inputs and hidden states are
  projected. Splitting the step into `project_inputs` (no recurrence, can run
  over all time steps at once) and `step` (the recurrence) is what lets
  `run_lstm` hoist the input projection out of the time loop.
  """

  def _init_gates(
    self,
    activation: Activation,
    recurrent_activation: Activation,
    recurrent_dropout: float,
    rngs: nnx.Rngs,
  ):
    self.activation = get_activation(activation)
    self.recurrent_activation = get_activation(recurrent_activation)
    self.recurrent_dropout = nnx.Dropout(recurrent_dropout, rngs=rngs)

  def project_inputs(self, x: Array) -> Array:
    """Input contribution to the four gates, bias included: (..., 4F)."""
    raise NotImplementedError

  def project_hidden(self, h: Array) -> Array:
    """Recurrent contribution to the four gates: (..., 4F)."""
    raise NotImplementedError

  def step(
    self,
    carry: tuple[Array, Array],
    gates_x: Array,
    recurrent_mask: Array | None = None,
  ) -> tuple[tuple[Array, Array], Array]:
    """One LSTM step from precomputed input projections.

    Args:
      carry: (c, h), each (..., F).
      gates_x: `project_inputs(x_t)`, (..., 4F).
      recurrent_mask: optional dropout mask multiplied onto h before the
        recurrent projection (Keras' recurrent dropout); the carried h is
        left unmasked, as in Keras.

    Returns:
      ((c', h'), h').
    """
    c, h = carry
    if recurrent_mask is not None:
      h = h * recurrent_mask
    return self.update(c, gates_x + self.project_hidden(h))

  def update(self, c: Array, z: Array) -> tuple[tuple[Array, Array], Array]:
    """The gate math: ((c', h'), h') from c and all four gates' inputs z."""
    z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)
    i = self.recurrent_activation(z_i)
    f = self.recurrent_activation(z_f)
    o = self.recurrent_activation(z_o)
    c = f * c + i * self.activation(z_c)
    h = o * self.activation(c)
    return (c, h), h

  def step_inputs(
    self,
    carry: tuple[Array, Array],
    x: Array,
    recurrent_mask: Array | None = None,
  ) -> tuple[tuple[Array, Array], Array]:
    """`step` from the step's input x rather than its projection."""
    return self.step(carry, self.project_inputs(x), recurrent_mask)

  def __call__(
    self, carry: tuple[Array, Array], inputs: Array
  ) -> tuple[tuple[Array, Array], Array]:
    """One step without recurrent dropout (for `nnx.RNN`; see `run_lstm`)."""
    return self.step(carry, self.project_inputs(inputs))

  def recurrent_dropout_mask(self, h: Array) -> Array | None:
    """One recurrent-dropout mask shaped like h, or None in eval mode.

    Keras 2 draws four masks, one per gate, and Keras 3 one; we draw one.
    Either way the mask is fixed across the time steps of a sequence, and
    inference is identical.
    """
    dropout = self.recurrent_dropout
    if dropout.deterministic or dropout.rate == 0.0:
      return None
    return dropout(jnp.ones_like(h))


def run_lstm(
  cell: KerasLSTMCellBase,
  x: Array,
  *,
  return_sequences: bool = True,
  unroll: int | bool = 1,
) -> Array:
  """Runs an LSTM cell over time with the input projection hoisted.

  The input projection (and its bias) is computed for all B * T steps in one
  batched op; only the recurrent projection and gate math run inside
  `jax.lax.scan`, which is several times faster than projecting per step.

  Args:
    cell: the cell.
    x: (B, T, *features_in).
    return_sequences: return every step's h, or only the last.
    unroll: `jax.lax.scan` unroll factor (True: every step).

  Returns:
    (B, T, *features_out) if return_sequences else (B, *features_out).
  """
  return run_lstm_projected(
    cell,
    cell.project_inputs(x),
    return_sequences=return_sequences,
    unroll=unroll,
  )


def run_lstm_projected(
  cell: KerasLSTMCellBase,
  gates_x: Array,
  *,
  return_sequences: bool = True,
  unroll: int | bool = 1,
) -> Array:
  """`run_lstm` from precomputed `cell.project_inputs(x)`: (B, T, ..., 4F).

  Lets a caller compute the input projection once per frame and reuse it
  (hpr.streaming); the recurrence, dropout and outputs are `run_lstm`'s.
  """
  # (B, T, ..., 4F) -> (T, B, ..., 4F), time-major for the scan.
  gates_x = jnp.swapaxes(gates_x, 0, 1)
  # Zero initial state, shaped like one step's output: (B, ..., F).
  h = jnp.zeros(gates_x.shape[1:-1] + (gates_x.shape[-1] // 4,), gates_x.dtype)
  mask = cell.recurrent_dropout_mask(h)

  def body(carry, gates_x_t):
    return cell.step(carry, gates_x_t, mask)

  (_, h), hs = jax.lax.scan(body, (h, h), gates_x, unroll=unroll)
  return jnp.swapaxes(hs, 0, 1) if return_sequences else h


def run_lstm_time_major(
  cell: KerasLSTMCellBase,
  x: Array,
  *,
  return_sequences: bool = True,
  unroll: int | bool = 1,
) -> Array:
  """`run_lstm` on a time-major (T, B, ...) input, projecting each step's
  input inside the time loop (`cell.step_inputs`).

  Returns (T, B, *features_out) if return_sequences else (B,
  *features_out). The same numbers as `run_lstm` on the transposed input.
  """
  c, h = cell.initialize_carry(x.shape[1:])
  mask = cell.recurrent_dropout_mask(h)

  # Rematerialised: the backward pass recomputes each step from its carry
  # and input instead of reading back every intermediate of every step
  # (patches, gates), which costs more on a CPU than computing them again.
  @jax.checkpoint
  def body(carry, x_t):
    return cell.step_inputs(carry, x_t, mask)

  (_, h), hs = jax.lax.scan(body, (c, h), x, unroll=unroll)
  return hs if return_sequences else h


class LSTMCell(KerasLSTMCellBase):
  """Keras LSTM cell: `kernel` (in, 4h), `recurrent_kernel` (h, 4h), `bias`."""

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    activation: Activation = 'tanh',
    recurrent_activation: Activation = 'sigmoid',
    recurrent_dropout: float = 0.0,
    use_bias: bool = True,
    unit_forget_bias: bool = True,
    rngs: nnx.Rngs,
  ):
    self.features = features
    self.kernel = nnx.Param(
      glorot_uniform(rngs.params(), (in_features, 4 * features))
    )
    self.recurrent_kernel = nnx.Param(
      orthogonal(rngs.params(), (features, 4 * features))
    )
    self.bias = (
      nnx.Param(lstm_bias_init(unit_forget_bias)(None, (4 * features,)))
      if use_bias
      else None
    )
    self._init_gates(activation, recurrent_activation, recurrent_dropout, rngs)

  def project_inputs(self, x: Array) -> Array:
    # x: (..., in) -> (..., 4h)
    z = x @ self.kernel[...]
    return z if self.bias is None else z + self.bias[...]

  def project_hidden(self, h: Array) -> Array:
    # h: (..., h) -> (..., 4h)
    return h @ self.recurrent_kernel[...]

  def initialize_carry(self, input_shape, rngs=None, carry_init=None):
    """Zero (c, h) for inputs of shape (*batch, in); rngs are unused."""
    shape = tuple(input_shape[:-1]) + (self.features,)
    return jnp.zeros(shape), jnp.zeros(shape)

  @property
  def num_feature_axes(self) -> int:
    return 1


class LSTM(nnx.Module):
  """Keras `LSTM` layer: x: (B, T, in) -> (B, T, h) or (B, h)."""

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    return_sequences: bool = False,
    unroll: int | bool = 1,
    rngs: nnx.Rngs,
    **cell_kwargs,
  ):
    """Builds the layer.

    Args:
      in_features: input size.
      features: hidden size (Keras' `units`).
      return_sequences: return every step, or only the last.
      unroll: `jax.lax.scan` unroll factor (True: every step).
      rngs: 'params' for the weights, 'dropout' for recurrent dropout.
      **cell_kwargs: the other `LSTMCell` arguments (activation,
        recurrent_activation, recurrent_dropout, use_bias, unit_forget_bias).
    """
    self.cell = LSTMCell(in_features, features, rngs=rngs, **cell_kwargs)
    self.return_sequences = return_sequences
    self.unroll = unroll

  def __call__(self, x: Array) -> Array:
    return run_lstm(
      self.cell, x, return_sequences=self.return_sequences, unroll=self.unroll
    )
