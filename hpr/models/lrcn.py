"""LRCN (Donahue et al., 2015) as in the Keras notebook: a per-frame CNN
encoder followed by an LSTM over the frame features."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpr import kernels
from hpr.models import layers, recurrent


class FrameCNN(nnx.Module):
  """Per-frame encoder: [conv 'same' + ReLU -> max pool -> dropout] blocks.

  Dropout follows every block but the last, as in the notebook; pools are
  Keras' default 'valid'. Each block is `hpr.kernels.conv_relu_pool`, run
  as `impl` says ('auto': the platform's fastest, or 'reference'). The last
  block's map becomes the frame's features flattened ('flatten', the
  notebook: where things are stays in the features) or averaged over space
  ('avgpool': one value per channel, the same wherever the thing is).
  """

  def __init__(
    self, input_shape, *, conv_features, kernel_size, pool_sizes, dropout,
    frame_features: str = 'flatten', impl: str = 'auto', rngs: nnx.Rngs,
  ):  # fmt: skip
    # input_shape: (H, W, C) of one frame; the rest as LRCN's arguments.
    if len(pool_sizes) != len(conv_features):
      raise ValueError(f'pool_sizes {tuple(pool_sizes)}: one per conv block')
    if frame_features not in ('flatten', 'avgpool'):
      raise ValueError(
        f"frame_features must be 'flatten' or 'avgpool', got '{frame_features}'"
      )
    self.frame_features = frame_features
    self.impl, self.pool_sizes = kernels.check_impl(impl), tuple(pool_sizes)
    self.convs, self.dropouts = nnx.List(), nnx.List()
    height, width, channels = input_shape
    for i, features in enumerate(conv_features):
      self.convs.append(
        layers.Conv2D(
          channels, features, kernel_size, padding='same', rngs=rngs
        )
      )
      if i < len(conv_features) - 1:
        self.dropouts.append(nnx.Dropout(dropout, rngs=rngs))
      height, width = height // pool_sizes[i], width // pool_sizes[i]
      channels = features
    if height < 1 or width < 1:
      raise ValueError(f'frames {tuple(input_shape)} too small for the pools')
    self.out_features = channels
    if frame_features == 'flatten':
      self.out_features *= height * width

  def __call__(self, x: jax.Array) -> jax.Array:
    # x: (..., H, W, C) -> (..., out_features), every frame on its own.
    y = x.reshape((-1,) + x.shape[-3:])  # (N, H, W, C)
    for i, conv in enumerate(self.convs):
      kernel, bias, pool = conv.kernel[...], conv.bias[...], self.pool_sizes[i]
      y = kernels.conv_relu_pool(y, kernel, bias, pool, impl=self.impl)
      if i < len(self.dropouts):
        y = self.dropouts[i](y)
    if self.frame_features == 'avgpool':
      y = y.mean(axis=(1, 2))
    return y.reshape(x.shape[:-3] + (-1,))


class LRCN(nnx.Module):
  """FrameCNN on every frame -> LSTM -> Dense.

  readout='last' classifies the last LSTM step (the notebook).
  readout='mean' classifies every step and averages the softmax predictions
  (the LRCN paper), returned as log(mean softmax) so the output is still a
  logits tensor for softmax cross-entropy. The default configuration is the
  notebook's network (73,060 parameters for 4 classes).
  """

  def __init__(
    self,
    num_classes: int,
    *,
    input_shape: Sequence[int] = (20, 64, 64, 3),
    conv_features: Sequence[int] = (16, 32, 64, 64),
    kernel_size: Sequence[int] = (3, 3),
    pool_sizes: Sequence[int] = (4, 4, 2, 2),
    dropout: float = 0.25,
    frame_features: str = 'flatten',
    lstm_features: int = 32,
    readout: str = 'last',
    impl: str = 'auto',
    dtype: str = 'float32',
    rngs: nnx.Rngs,
  ):
    """Builds the model.

    Args:
      num_classes: number of output logits.
      input_shape: (T, H, W, C) of one clip; T may differ at call time.
      conv_features: output channels of each conv block.
      kernel_size: (kh, kw) of every conv.
      pool_sizes: square max-pool window of each conv block.
      dropout: dropout rate after every conv block but the last.
      frame_features: 'flatten' (the notebook) or 'avgpool' (FrameCNN).
      lstm_features: LSTM hidden size.
      readout: 'last' or 'mean' (see the class docstring).
      impl: how the conv blocks run, 'auto' or 'reference' (hpr.kernels).
      dtype: compute dtype, 'float32' or 'bfloat16' (parameters float32).
      rngs: 'params' and 'dropout' streams.
    """
    if readout not in ('last', 'mean'):
      raise ValueError(f"readout must be 'last' or 'mean', got '{readout}'")
    self.readout, self.dtype = readout, layers.compute_dtype(dtype)
    self.encoder = FrameCNN(
      input_shape[1:],
      conv_features=conv_features,
      kernel_size=kernel_size,
      pool_sizes=pool_sizes,
      dropout=dropout,
      frame_features=frame_features,
      impl=impl,
      rngs=rngs,
    )
    self.lstm = recurrent.LSTM(
      self.encoder.out_features,
      lstm_features,
      return_sequences=readout == 'mean',
      rngs=rngs,
    )
    self.dense = nnx.Linear(
      lstm_features,
      num_classes,
      kernel_init=layers.glorot_uniform,
      dtype=self.dtype,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    # x: (B, T, H, W, C) -> features: (B, T, D) -> logits: (B, num_classes)
    return self.classify_encoded(self.encode_frames(x))

  # Streaming (hpr.tools.streaming): the per-frame part, the rest of a
  # window, and the recurrence one frame at a time.

  def encode_frames(self, frames: jax.Array) -> jax.Array:
    # frames: (..., H, W, C) -> features: (..., D), each frame on its own.
    return self.encoder(frames.astype(self.dtype))

  def classify_encoded(self, features: jax.Array) -> jax.Array:
    # features: (B, T, D) -> logits: (B, num_classes)
    logits = self.dense(self.lstm(features))
    logits = logits.astype(jnp.float32)  # Softmax and loss in float32.
    if self.readout == 'mean':
      # logits: (B, T, num_classes) -> (B, num_classes)
      logits = layers.log_mean_softmax(logits, axis=1)
    return logits

  def initial_state(self, features: jax.Array):
    # features: (B, D) of one frame -> zero LSTM carry (c, h): (B, F) each.
    cell = self.lstm.cell
    zeros = jnp.zeros(features.shape[:-1] + (cell.features,), features.dtype)
    return zeros, zeros

  def stream_step(self, state, features: jax.Array):
    # (c, h), features: (B, D) of the next frame -> (c', h'), step logits:
    # (B, num_classes). The LSTM step of `classify_encoded`.
    cell = self.lstm.cell
    state, h = cell.step(state, cell.project_inputs(features))
    return state, self.dense(h).astype(jnp.float32)

  def stream_readout(self, step_logits: jax.Array) -> jax.Array:
    # step_logits: (B, T, num_classes) of a window's frames -> (B, K)
    if self.readout == 'mean':
      return layers.log_mean_softmax(step_logits, axis=1)
    return step_logits[:, -1]
