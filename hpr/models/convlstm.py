"""Convolutional LSTM (Shi et al., 2015) with Keras ConvLSTM2D semantics, and
the ConvLSTM video classifier of the Keras action-recognition notebook."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpr.models import conv_sum, layers, native_convlstm, recurrent

Array = jax.Array

# A step whose input and hidden state have at most this many channels
# together runs its two convolutions as one XLA convolution (`conv_sum`) on
# rows of CONV_SUM_PIXELS_PER_ROW pixels packed into one, not as im2col
# patches @ kernel. XLA:CPU's convolution gains from more channels in and
# out: packed two pixels a row, the notebook's first layer (3 + 4 channels
# -> 16) runs as 14 -> 32 and its second (4 + 8 -> 32) as 24 -> 64. The
# notebook's ConvLSTM trains 1.10-1.13x faster at batch 32 and 1.14x at
# batch 4 with its first layer so than with one pixel a row, and 1.14-1.16x
# faster again at batch 32 (as fast at batch 4) with its second layer too;
# the third and fourth (22 and 30 channels) gain nothing more
# (benchmarks/README.md). On a CPU with hpr's compiled kernels those layers
# run as `native_convlstm` instead (`ConvLSTM.time_major`); this path is the
# fallback there and the layers' path elsewhere.
CONV_SUM_MAX_CHANNELS = 12
CONV_SUM_PIXELS_PER_ROW = 2


@jax.checkpoint
def _recurrent_conv(h: Array, kernel: Array) -> Array:
  """The recurrent 'same' convolution, rematerialised in the backward pass
  (for `step`, the path of a precomputed input projection; the time-major
  path rematerialises whole steps).

  Inside `jax.lax.scan` autodiff would otherwise keep every step's im2col
  patches (9x the size of h) for the backward pass; recomputing them from h
  costs less than writing and reading them back (15-20% of a ConvLSTM
  training step on CPU, measured before the time-major path existed). The
  result is identical.
  """
  return layers.conv2d(h, kernel, (1, 1), 'same')


class ConvLSTMCell(recurrent.KerasLSTMCellBase):
  """Keras `ConvLSTM2D` cell, usable on its own or through `nnx.RNN`.

  Gates (Keras order i, f, c, o), with * a convolution:
    i = rec_act(x * Wi + h * Ui + bi)     f = rec_act(x * Wf + h * Uf + bf)
    c' = f c + i act(x * Wc + h * Uc + bc)
    o = rec_act(x * Wo + h * Uo + bo)     h' = o act(c')
  The input convolution uses `strides` and `padding`; the recurrent one is
  always stride 1, 'same', on the output grid.

  Parameters are in Keras layout so Keras weights import by assignment:
  `kernel` (kh, kw, in, 4F), `recurrent_kernel` (kh, kw, F, 4F), `bias` (4F).
  The carry is (c, h), each (*batch, H', W', F), like `nnx.LSTMCell`.
  Calling the cell applies no recurrent dropout; `ConvLSTM` applies it with
  one mask per sequence through `step(..., recurrent_mask)`.
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    kernel_size: Sequence[int] = (3, 3),
    *,
    strides: Sequence[int] = (1, 1),
    padding: str = 'valid',
    activation: layers.Activation = 'tanh',
    recurrent_activation: layers.Activation = 'sigmoid',
    recurrent_dropout: float = 0.0,
    use_bias: bool = True,
    unit_forget_bias: bool = True,
    rngs: nnx.Rngs,
  ):
    """Builds the cell; arguments follow Keras' `ConvLSTM2D`.

    Args:
      in_features: input channels.
      features: output channels F (Keras' `filters`).
      kernel_size: (kh, kw), shared by the input and recurrent convs.
      strides: input-conv strides.
      padding: input-conv padding, 'valid' or 'same'.
      activation: cell-input and output activation.
      recurrent_activation: gate activation ('hard_sigmoid' is Keras 2's).
      recurrent_dropout: rate of the dropout on h before the recurrent conv.
      use_bias: whether the cell has a bias.
      unit_forget_bias: initialise the forget-gate bias to one.
      rngs: 'params' for the weights, 'dropout' for recurrent dropout.
    """
    if padding.lower() not in ('valid', 'same'):
      raise ValueError(f"padding must be 'valid' or 'same', got '{padding}'")
    self.features = features
    self.kernel_size = tuple(kernel_size)
    self.strides = tuple(strides)
    self.padding = padding.lower()
    kh, kw = self.kernel_size
    self.kernel = nnx.Param(
      layers.glorot_uniform(rngs.params(), (kh, kw, in_features, 4 * features))
    )
    self.recurrent_kernel = nnx.Param(
      layers.orthogonal(rngs.params(), (kh, kw, features, 4 * features))
    )
    bias_init = layers.lstm_bias_init(unit_forget_bias)
    self.bias = (
      nnx.Param(bias_init(None, (4 * features,))) if use_bias else None
    )
    self._init_gates(activation, recurrent_activation, recurrent_dropout, rngs)

  def project_inputs(self, x: Array) -> Array:
    # x: (..., H, W, C) -> (..., H', W', 4F)
    z = layers.conv2d(x, self.kernel[...], self.strides, self.padding)
    return z if self.bias is None else z + self.bias[...]

  def project_hidden(self, h: Array) -> Array:
    # h: (..., H', W', F) -> (..., H', W', 4F)
    return _recurrent_conv(h, self.recurrent_kernel[...])

  def step_inputs(
    self,
    carry: tuple[Array, Array],
    x: Array,
    recurrent_mask: Array | None = None,
  ) -> tuple[tuple[Array, Array], Array]:
    """`step` from the step's input x: both convolutions as one matmul of
    the input's and the hidden state's patches side by side, or, with few
    channels (`CONV_SUM_MAX_CHANNELS`), as one XLA convolution of the two
    side by side."""
    c, h = carry
    if recurrent_mask is not None:
      h = h * recurrent_mask
    if self._uses_conv_sum(x):

      def same(a):
        return tuple(
          layers.same_padding(n, k, 1)
          for n, k in zip(a.shape[-3:-1], self.kernel_size, strict=True)
        )

      x_pads = same(x) if self.padding == 'same' else ((0, 0), (0, 0))
      batch = x.shape[:-3]
      z = conv_sum.conv_sum(
        (x.reshape((-1,) + x.shape[-3:]), h.reshape((-1,) + h.shape[-3:])),
        (self.kernel[...], self.recurrent_kernel[...]),
        (x_pads, same(h)),
        pixels_per_row=CONV_SUM_PIXELS_PER_ROW,
      )
      z = z.reshape(batch + z.shape[1:])
      return self.update(c, z if self.bias is None else z + self.bias[...])
    kernel = jnp.concatenate(
      [
        self.kernel[...].reshape(-1, 4 * self.features),
        self.recurrent_kernel[...].reshape(-1, 4 * self.features),
      ]
    )
    p = jnp.concatenate(
      [
        layers.patches(x, self.kernel_size, self.strides, self.padding),
        layers.patches(h, self.kernel_size, (1, 1), 'same'),
      ],
      axis=-1,
    )
    z = p @ kernel
    return self.update(c, z if self.bias is None else z + self.bias[...])

  def _uses_conv_sum(self, x: Array) -> bool:
    return (
      self.strides == (1, 1)
      and x.shape[-1] + self.features <= CONV_SUM_MAX_CHANNELS
    )

  def output_spatial_shape(self, height: int, width: int) -> tuple[int, int]:
    """(H', W') of the cell's output for an (H, W) input."""
    return tuple(
      layers.conv_output_size(n, k, s, self.padding)
      for n, k, s in zip(
        (height, width), self.kernel_size, self.strides, strict=True
      )
    )

  def initialize_carry(self, input_shape, rngs=None, carry_init=None):
    """Zero (c, h) for inputs of shape (*batch, H, W, C); rngs are unused."""
    *batch, height, width, _ = input_shape
    shape = (*batch, *self.output_spatial_shape(height, width), self.features)
    return jnp.zeros(shape), jnp.zeros(shape)

  @property
  def num_feature_axes(self) -> int:
    return 3


class ConvLSTM(nnx.Module):
  """Keras `ConvLSTM2D` layer: x: (B, T, H, W, C) -> (B, T, H', W', F).

  With `return_sequences=False` it returns the last step, (B, H', W', F).
  Recurrent dropout follows Keras: one mask on h per sequence, fixed across
  time steps, only in train mode (Keras 2 draws one mask per gate; inference
  is identical).
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    kernel_size: Sequence[int] = (3, 3),
    *,
    return_sequences: bool = True,
    unroll: int | bool = 1,
    rngs: nnx.Rngs,
    **cell_kwargs,
  ):
    """Builds the layer.

    Args:
      in_features: input channels.
      features: output channels (Keras' `filters`).
      kernel_size: (kh, kw).
      return_sequences: return every step, or only the last.
      unroll: `jax.lax.scan` unroll factor (True unrolls every step; the
        benchmarks do so to count FLOPs, which XLA counts once per loop).
      rngs: 'params' for the weights, 'dropout' for recurrent dropout.
      **cell_kwargs: the other `ConvLSTMCell` arguments (strides, padding,
        activation, recurrent_activation, recurrent_dropout, use_bias,
        unit_forget_bias).
    """
    self.cell = ConvLSTMCell(
      in_features, features, kernel_size, rngs=rngs, **cell_kwargs
    )
    self.return_sequences = return_sequences
    self.unroll = unroll

  def __call__(self, x: Array) -> Array:
    y = self.time_major(jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(y, 0, 1) if self.return_sequences else y

  def time_major(self, x: Array) -> Array:
    """The layer on a time-major (T, B, H, W, C) input: (T, B, H', W', F),
    or (B, H', W', F) without return_sequences.

    Each step's input convolution runs inside the time loop, on that step's
    B frames, as one matmul (or one convolution, with few channels) with
    the recurrent convolution (`ConvLSTMCell.step_inputs`), instead of over
    all T * B frames before
    it: on a CPU the gates of the whole clip (4F channels per pixel and
    step) would make a round trip through memory, while one step's stay in
    cache. The backward pass recomputes each step (`run_lstm_time_major`).

    On a CPU, where `native_convlstm.supports` the cell (the notebook's
    first, second and fourth layers), the whole layer runs as
    `native_convlstm`'s compiled kernels instead: the same numbers to float
    rounding, the same recurrent-dropout mask.
    """
    cell = self.cell
    if native_convlstm.supports(cell, x.shape, x.dtype):
      h = cell.initialize_carry(x.shape[1:])[1]
      mask = cell.recurrent_dropout_mask(h)
      hs = native_convlstm.conv_lstm(
        x,
        cell.kernel[...],
        cell.recurrent_kernel[...],
        cell.bias[...],
        jnp.ones_like(h) if mask is None else mask,
        cell.padding,
      )
      return hs if self.return_sequences else hs[-1]
    return recurrent.run_lstm_time_major(
      self.cell,
      x,
      return_sequences=self.return_sequences,
      unroll=self.unroll,
    )

  def from_projection(self, gates_x: Array) -> Array:
    """The layer's output from `self.cell.project_inputs(x)`."""
    return recurrent.run_lstm_projected(
      self.cell,
      gates_x,
      return_sequences=self.return_sequences,
      unroll=self.unroll,
    )


class ConvLSTMClassifier(nnx.Module):
  """The notebook's ConvLSTM network: stacked ConvLSTM layers -> Dense.

  Each ConvLSTM layer is followed by MaxPool (1, *pool_size) with 'same'
  padding, and all but the last by dropout. The default configuration is
  exactly the Keras notebook's network (44,524 parameters for 4 classes).
  """

  def __init__(
    self,
    num_classes: int,
    *,
    input_shape: Sequence[int] = (20, 64, 64, 3),
    filters: Sequence[int] = (4, 8, 14, 16),
    kernel_size: Sequence[int] = (3, 3),
    padding: str = 'valid',
    activation: str = 'tanh',
    recurrent_activation: str = 'hard_sigmoid',
    recurrent_dropout: float = 0.2,
    pool_size: Sequence[int] = (2, 2),
    dropout: float = 0.2,
    head: str = 'flatten',
    rngs: nnx.Rngs,
  ):
    """Builds the classifier.

    Args:
      num_classes: number of output logits.
      input_shape: (T, H, W, C) of one clip; 'flatten' needs T, H and W.
      filters: output channels of each ConvLSTM layer.
      kernel_size: (kh, kw) of every ConvLSTM conv.
      padding: input-conv padding of the ConvLSTM layers.
      activation: ConvLSTM cell activation.
      recurrent_activation: ConvLSTM gate activation. The default is Keras
        2's ConvLSTM2D default, which the notebook ran with: 'hard_sigmoid'
        = clip(0.2 x + 0.5, 0, 1) (Keras 3 changed it to 'sigmoid').
      recurrent_dropout: ConvLSTM recurrent dropout rate.
      pool_size: (ph, pw) of the spatial max pool after each layer.
      dropout: rate of the dropout after every layer but the last.
      head: 'flatten' (Flatten -> Dense, the notebook) or 'avgpool' (global
        average over time and space -> Dense).
      rngs: 'params' and 'dropout' streams.
    """
    if head not in ('flatten', 'avgpool'):
      raise ValueError(f"head must be 'flatten' or 'avgpool', got '{head}'")
    num_frames, height, width, channels = input_shape
    self.pool_size = tuple(pool_size)
    self.head = head
    self.convlstms = nnx.List()
    self.dropouts = nnx.List()
    for i, features in enumerate(filters):
      layer = ConvLSTM(
        channels,
        features,
        kernel_size,
        padding=padding,
        activation=activation,
        recurrent_activation=recurrent_activation,
        recurrent_dropout=recurrent_dropout,
        rngs=rngs,
      )
      self.convlstms.append(layer)
      if i < len(filters) - 1:
        self.dropouts.append(nnx.Dropout(dropout, rngs=rngs))
      height, width = (
        layers.conv_output_size(n, p, p, 'same')
        for n, p in zip(
          layer.cell.output_spatial_shape(height, width),
          pool_size,
          strict=True,
        )
      )
      channels = features
      if height < 1 or width < 1:
        raise ValueError(
          f'frames of {tuple(input_shape[1:3])} are too small for '
          f'{len(filters)} ConvLSTM layers with {padding} padding and '
          f'pool_size {self.pool_size}'
        )
    head_features = channels
    if head == 'flatten':
      head_features *= num_frames * height * width
    self.dense = nnx.Linear(
      head_features,
      num_classes,
      kernel_init=layers.glorot_uniform,
      rngs=rngs,
    )

  def __call__(self, x: Array) -> Array:
    # x: (B, T, H, W, C) -> logits: (B, num_classes). Time-major inside, so
    # no layer's input or output is transposed for its time loop.
    x = jnp.swapaxes(x, 0, 1)
    for i, convlstm in enumerate(self.convlstms):
      x = layers.max_pool(convlstm.time_major(x), self.pool_size, 'same')
      if i < len(self.dropouts):
        # The mask of a batch-major input, so the numbers do not depend on
        # the layout.
        mask = layers.dropout_mask(
          self.dropouts[i], (x.shape[1], x.shape[0]) + x.shape[2:]
        )
        x = layers.apply_dropout_mask(
          x,
          None if mask is None else jnp.swapaxes(mask, 0, 1),
          self.dropouts[i].rate,
        )
    return self._head(jnp.swapaxes(x, 0, 1))

  def input_projection(self, x: Array) -> Array:
    """The first layer's input convolution, (..., H, W, C) -> (..., H', W',
    4F): the only part that sees each frame on its own."""
    return self.convlstms[0].cell.project_inputs(x)

  def from_input_projection(self, gates_x: Array) -> Array:
    """Logits (B, num_classes) from `input_projection` of a (B, T, ...)
    clip."""
    x = gates_x
    for i, convlstm in enumerate(self.convlstms):
      x = convlstm.from_projection(x) if i == 0 else convlstm(x)
      x = layers.max_pool(x, self.pool_size, 'same')
      if i < len(self.dropouts):
        x = self.dropouts[i](x)
    return self._head(x)

  def _head(self, x: Array) -> Array:
    # x: (B, T, H, W, C) -> (B, num_classes)
    if self.head == 'flatten':
      # Row-major (T, H, W, C) order, as Keras' Flatten, for weight import.
      x = x.reshape(x.shape[0], -1)
    else:
      x = jnp.mean(x, axis=(1, 2, 3))
    return self.dense(x)
