"""Convolutional LSTM (Shi et al., 2015) with Keras ConvLSTM2D semantics, and
the ConvLSTM video classifier of the Keras action-recognition notebook."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpr import kernels
from hpr.models import layers, recurrent

Array = jax.Array


class ConvLSTMCell(recurrent.KerasLSTMCellBase):
  """Keras `ConvLSTM2D` cell, usable on its own or through `nnx.RNN`.

  Gates (Keras order i, f, c, o), with * a convolution:
    i = rec_act(x * Wi + h * Ui + bi)     f = rec_act(x * Wf + h * Uf + bf)
    c' = f c + i act(x * Wc + h * Uc + bc)
    o = rec_act(x * Wo + h * Uo + bo)     h' = o act(c')
  The input conv uses `strides` and `padding`; the recurrent one is stride
  1, 'same'. Parameters are in Keras layout (weights import by assignment):
  `kernel` (kh, kw, in, 4F), `recurrent_kernel` (kh, kw, F, 4F), `bias` (4F).
  The carry is (c, h), each (*batch, H', W', F), like `nnx.LSTMCell`; the
  cell applies no recurrent dropout (`ConvLSTM` does, one mask a sequence).
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
    """Builds the cell; arguments follow Keras' `ConvLSTM2D` (`features` is
    its `filters`; `kernel_size` is shared by the input and recurrent convs;
    'hard_sigmoid' is Keras 2's). `rngs`: 'params' for the weights,
    'dropout' for recurrent dropout."""
    if padding.lower() not in ('valid', 'same'):
      raise ValueError(f"padding must be 'valid' or 'same', got '{padding}'")
    self.features, self.kernel_size = features, tuple(kernel_size)
    self.strides, self.padding = tuple(strides), padding.lower()
    shape = (*self.kernel_size, in_features, 4 * features)
    self.kernel = nnx.Param(layers.glorot_uniform(rngs.params(), shape))
    shape = (*self.kernel_size, features, 4 * features)
    self.recurrent_kernel = nnx.Param(layers.orthogonal(rngs.params(), shape))
    bias = layers.lstm_bias_init(unit_forget_bias)(None, (4 * features,))
    self.bias = nnx.Param(bias) if use_bias else None
    self._init_gates(activation, recurrent_activation, recurrent_dropout, rngs)

  def project_inputs(self, x: Array) -> Array:
    # x: (..., H, W, C) -> (..., H', W', 4F)
    z = layers.conv2d(x, self.kernel[...], self.strides, self.padding)
    return z if self.bias is None else z + self.bias[...].astype(z.dtype)

  def project_hidden(self, h: Array) -> Array:
    # h: (..., H', W', F) -> (..., H', W', 4F)
    return layers.conv2d(h, self.recurrent_kernel[...], (1, 1), 'same')

  def output_spatial_shape(self, height: int, width: int) -> tuple[int, int]:
    """(H', W') of the cell's output for an (H, W) input."""
    sizes = zip((height, width), self.kernel_size, self.strides, strict=True)
    return tuple(layers.conv_output_size(*a, self.padding) for a in sizes)

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
  is identical). The layer is `hpr.kernels.convlstm_layer`, run as `impl`
  says ('auto': the platform's fastest, 'reference').
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    kernel_size: Sequence[int] = (3, 3),
    *,
    return_sequences: bool = True,
    unroll: int | bool = 1,
    impl: str = 'auto',
    rngs: nnx.Rngs,
    **cell_kwargs,
  ):
    """Builds the layer: `ConvLSTMCell`'s arguments, and `return_sequences`
    (every step, or only the last), `unroll` (the time loop's unroll factor;
    True unrolls every step, as the benchmarks do to count FLOPs) and
    `impl` ('auto' or 'reference', hpr.kernels)."""
    self.cell = ConvLSTMCell(
      in_features, features, kernel_size, rngs=rngs, **cell_kwargs
    )
    self.return_sequences, self.unroll = return_sequences, unroll
    self.impl = kernels.check_impl(impl)

  def __call__(self, x: Array, *, time_major: bool = False) -> Array:
    # x: (B, T, H, W, C) -> (B, T, H', W', F); time_major: (T, B, ...).
    cell = self.cell
    xs = x if time_major else jnp.swapaxes(x, 0, 1)
    mask = cell.recurrent_dropout_mask(cell.initialize_carry(xs.shape[1:])[1])
    hs = kernels.convlstm_layer(
      xs,
      cell.kernel[...],
      cell.recurrent_kernel[...],
      None if cell.bias is None else cell.bias[...],
      mask,
      strides=cell.strides,
      padding=cell.padding,
      activation=cell.activation,
      recurrent_activation=cell.recurrent_activation,
      unroll=self.unroll,
      impl=self.impl,
    )
    if not self.return_sequences:
      return hs[-1]
    return hs if time_major else jnp.swapaxes(hs, 0, 1)


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
    impl: str = 'auto',
    dtype: str = 'float32',
    rngs: nnx.Rngs,
  ):
    """Builds the classifier.

    `input_shape` is (T, H, W, C) of one clip ('flatten' needs T, H and W);
    `filters`, `kernel_size`, `padding`, `activation`, `recurrent_activation`
    and `recurrent_dropout` are the ConvLSTM layers' (the default gate
    activation is Keras 2's ConvLSTM2D default, which the notebook ran with:
    'hard_sigmoid' = clip(0.2 x + 0.5, 0, 1); Keras 3's is 'sigmoid');
    `pool_size` is the spatial max pool's after each layer, `dropout` the
    rate after all but the last; `head` is 'flatten' (Flatten -> Dense, the
    notebook) or 'avgpool' (global average over time and space -> Dense);
    `impl` is 'auto' or 'reference' (hpr.kernels); `dtype` the compute
    dtype, 'float32' or 'bfloat16' (parameters and logits float32).
    """
    if head not in ('flatten', 'avgpool'):
      raise ValueError(f"head must be 'flatten' or 'avgpool', got '{head}'")
    num_frames, height, width, channels = input_shape
    self.pool_size, self.head = tuple(pool_size), head
    self.dtype = layers.compute_dtype(dtype)
    self.convlstms, self.dropouts = nnx.List(), nnx.List()
    for i, features in enumerate(filters):
      layer = ConvLSTM(
        channels,
        features,
        kernel_size,
        padding=padding,
        activation=activation,
        recurrent_activation=recurrent_activation,
        recurrent_dropout=recurrent_dropout,
        impl=impl,
        rngs=rngs,
      )
      self.convlstms.append(layer)
      if i < len(filters) - 1:
        self.dropouts.append(nnx.Dropout(dropout, rngs=rngs))
      height, width = layer.cell.output_spatial_shape(height, width)
      height, width = -(-height // pool_size[0]), -(-width // pool_size[1])
      channels = features
      if height < 1 or width < 1:
        raise ValueError(
          f'frames of {tuple(input_shape[1:3])} are too small for '
          f'{len(filters)} ConvLSTM layers with {padding} padding'
        )
    if head == 'flatten':
      channels *= num_frames * height * width
    init = layers.glorot_uniform
    self.dense = nnx.Linear(
      channels, num_classes, kernel_init=init, dtype=self.dtype, rngs=rngs
    )

  def __call__(self, x: Array) -> Array:
    # x: (B, T, H, W, C) -> logits: (B, num_classes). Time-major inside, so
    # no layer's input or output is transposed for its time loop.
    x = jnp.swapaxes(x.astype(self.dtype), 0, 1)
    for i, convlstm in enumerate(self.convlstms):
      x = convlstm(x, time_major=True)
      x = layers.max_pool(x, self.pool_size, 'same')
      if i < len(self.dropouts):
        # Dropped batch-major, so the mask does not depend on the layout.
        x = jnp.swapaxes(self.dropouts[i](jnp.swapaxes(x, 0, 1)), 0, 1)
    return self._head(jnp.swapaxes(x, 0, 1))

  # Streaming (hpr.tools.streaming): the per-frame part, the rest of a
  # window, and the ConvLSTM stack one frame at a time.

  def encode_frames(self, x: Array) -> Array:
    """The first layer's input convolution, (..., H, W, C) -> (..., H', W',
    4F): the only part that sees each frame on its own."""
    return self.convlstms[0].cell.project_inputs(x.astype(self.dtype))

  def classify_encoded(self, gates_x: Array) -> Array:
    """Logits (B, num_classes) from `encode_frames` of a clip."""
    x = recurrent.run_lstm_projected(self.convlstms[0].cell, gates_x)
    for i, convlstm in enumerate(self.convlstms):
      x = x if i == 0 else convlstm(x)
      x = layers.max_pool(x, self.pool_size, 'same')
      if i < len(self.dropouts):
        x = self.dropouts[i](x)
    return self._head(x)

  def initial_state(self, gates_x: Array) -> list[tuple[Array, Array]]:
    """Zero (c, h) of every layer for `encode_frames` of one frame, (B, H',
    W', 4F)."""
    b, height, width = gates_x.shape[:3]
    state = []
    for i, convlstm in enumerate(self.convlstms):
      cell = convlstm.cell
      if i:
        height, width = cell.output_spatial_shape(height, width)
      zeros = jnp.zeros((b, height, width, cell.features), gates_x.dtype)
      state.append((zeros, zeros))
      height, width = (
        -(-height // self.pool_size[0]),
        -(-width // self.pool_size[1]),
      )
    return state

  def stream_step(self, state, gates_x: Array):
    """One frame through the stack: (state, (B, H', W', 4F)) -> (state',
    the last layer's pooled output (B, H'', W'', C)), the time step of
    `classify_encoded`."""
    new_state = []
    x = gates_x
    for i, convlstm in enumerate(self.convlstms):
      cell = convlstm.cell
      carry, x = cell.step(state[i], x if i == 0 else cell.project_inputs(x))
      new_state.append(carry)
      x = layers.max_pool(x, self.pool_size, 'same')
      if i < len(self.dropouts):
        x = self.dropouts[i](x)
    return new_state, x

  def stream_readout(self, outputs: Array) -> Array:
    """Logits (B, num_classes) from a window's `stream_step` outputs,
    (B, T, H'', W'', C)."""
    return self._head(outputs)

  def _head(self, x: Array) -> Array:
    # x: (B, T, H, W, C) -> (B, num_classes)
    if self.head == 'flatten':
      # Row-major (T, H, W, C) order, as Keras' Flatten, for weight import.
      x = x.reshape(x.shape[0], -1)
    else:
      x = jnp.mean(x, axis=(1, 2, 3))
    return self.dense(x).astype(jnp.float32)  # Softmax and loss in float32.
