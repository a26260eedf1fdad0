"""Keras-layout LSTM cells (the dense one; hpr.models.convlstm adds the
convolutional one) and the time loop that runs them with the input
projection hoisted out of the loop (`run_lstm`).

Parameters keep Keras' layout (kernels (in, 4F), gates concatenated in i, f,
c, o order) so Keras weights import by plain assignment.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from hpr.kernels.reference import lstm_gates
from hpr.models.layers import (
  Activation,
  get_activation,
  glorot_uniform,
  lstm_bias_init,
  orthogonal,
)

Array = jax.Array


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
    c, h = lstm_gates(c, z, self.activation, self.recurrent_activation)
    return (c, h), h

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
  (hpr.tools.streaming); the recurrence, dropout and outputs are `run_lstm`'s.
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
    # x: (..., in) -> (..., 4h), in x's dtype.
    z = x @ self.kernel[...].astype(x.dtype)
    return z if self.bias is None else z + self.bias[...].astype(z.dtype)

  def project_hidden(self, h: Array) -> Array:
    # h: (..., h) -> (..., 4h)
    return h @ self.recurrent_kernel[...].astype(h.dtype)

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
