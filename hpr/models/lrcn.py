"""LRCN (Donahue et al., 2015) as in the Keras notebook: a per-frame CNN
encoder followed by an LSTM over the frame features."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpr.models import conv_block, conv_sum, layers, native_block, recurrent

Array = jax.Array

# A later block in the chunk loop (one that native_block's kernels do not
# take) whose input is at least this many pixels high and wide
# runs its conv as an XLA convolution with `conv_sum`'s backward pass, not
# as im2col patches @ kernel: on the seed LRCN (blocks on 16x16 and 4x4
# inputs) the training step at batch 32 is 1.06-1.13x faster, at batch 4
# as fast (benchmarks/README.md, "Sitting I"); on the 2x2 input of the last block
# XLA's convolution is several times slower than the patches.
CONV_OP_MIN_SIZE = 4


class FrameCNN(nnx.Module):
  """Per-frame encoder: [conv 'same' + relu -> max pool -> dropout] blocks.

  Dropout follows every block but the last, as in the notebook; pools are
  Keras' default 'valid'. Dropout masks are drawn for the whole batch at
  once, exactly as `nnx.Dropout` draws them.

  On the CPU, the leading blocks that the compiled kernels of
  `hpr.models.native_block` support (a multiple of 16 output channels,
  pools of 2-5, and either a multiple of 16 input channels or, for the
  first block, the RGB frames) run one op each on the whole batch: conv,
  ReLU and pool in registers, a bit mask of each window's maxima kept for
  the backward pass, which touches only those maxima. That is every block
  of the seed LRCN, whose training step became 1.7-1.9x faster at batch
  32 and 1.3-1.5x at batch 4 than with only its first block native
  (benchmarks/README.md, "Sitting P"; the first block alone had made it
  1.5x and 1.7x faster than the XLA version).

  The other blocks (all of them elsewhere) go through the frames
  `chunk_frames` at a time (a `lax.scan` over the chunks whose body is
  rematerialised in the backward pass), so each chunk's patches and
  activations stay in the CPU caches instead of making several trips
  through memory for the whole batch: the same numbers, a 1.3-1.5x faster
  training step and a 2.6x faster forward pass on the 2-core CPU. A first
  block on at most 4 channels runs there as `hpr.models.conv_block`'s one
  op with its own backward pass, two output pixels per matmul row (1.4x
  faster than plain autodiff), outside the rematerialised part: it keeps
  little for its backward pass (the frames and a bit mask of the pool's
  maxima), so recomputing it would cost more than it saves. Later blocks
  on inputs of at least CONV_OP_MIN_SIZE pixels a side run their conv as an
  XLA convolution with `hpr.models.conv_sum`'s backward pass, the others
  as patches @ kernel.
  """

  def __init__(
    self,
    input_shape: Sequence[int],
    *,
    conv_features: Sequence[int],
    kernel_size: Sequence[int],
    pool_sizes: Sequence[int],
    dropout: float,
    chunk_frames: int = 32,
    rngs: nnx.Rngs,
  ):
    """Builds the encoder.

    Args:
      input_shape: (H, W, C) of one frame.
      conv_features: output channels of each conv block.
      kernel_size: (kh, kw) of every conv.
      pool_sizes: square max-pool window (and stride) of each block.
      dropout: rate of the dropout after every block but the last.
      chunk_frames: at most this many frames go through the blocks at a
        time (0: all at once). Changes speed and memory, not the result.
      rngs: 'params' and 'dropout' streams.
    """
    if chunk_frames < 0:
      raise ValueError(f'chunk_frames must be >= 0, got {chunk_frames}')
    self.chunk_frames = chunk_frames
    if len(pool_sizes) != len(conv_features):
      raise ValueError(
        f'pool_sizes {tuple(pool_sizes)} needs one entry per conv block '
        f'{tuple(conv_features)}'
      )
    height, width, channels = input_shape
    self.pool_sizes = tuple(pool_sizes)
    self.convs = nnx.List()
    self.dropouts = nnx.List()
    for i, (features, pool) in enumerate(
      zip(conv_features, pool_sizes, strict=True)
    ):
      self.convs.append(
        layers.Conv2D(
          channels, features, kernel_size, padding='same', rngs=rngs
        )
      )
      if i < len(conv_features) - 1:
        self.dropouts.append(nnx.Dropout(dropout, rngs=rngs))
      height, width, channels = height // pool, width // pool, features
    if height < 1 or width < 1:
      raise ValueError(
        f'frames of {tuple(input_shape)} are too small for pool_sizes '
        f'{self.pool_sizes}'
      )
    self.out_features = height * width * channels

  def __call__(self, x: Array) -> Array:
    # x: (..., H, W, C) -> (..., out_features), every frame on its own.
    batch = x.shape[:-3]
    frames = x.reshape((-1,) + x.shape[-3:])  # (N, H, W, C)
    masks = self._dropout_masks(frames)
    params = [(conv.kernel[...], conv.bias[...]) for conv in self.convs]
    # On the CPU the leading blocks that hpr.models.native_block's compiled
    # kernels take run on the whole batch, one op each.
    start = 0
    while start < len(params) and _native(
      frames, params[start][0], self.pool_sizes[start], start == 0
    ):
      frames = native_block.conv_relu_pool(
        frames, *params[start], self.pool_sizes[start]
      )
      if start < len(masks):
        frames = layers.apply_dropout_mask(
          frames, masks[start], self.dropouts[start].rate
        )
      start += 1
    if start < len(params):
      frames = self._chunked(frames, masks, params, start)
    return frames.reshape(batch + (-1,))

  def _chunked(self, frames, masks, params, start: int) -> Array:
    """Blocks start.. on (N, H, W, C) frames, chunk_frames at a time, ->
    (N, out_features)."""
    num = frames.shape[0]
    chunks = _num_chunks(num, self.chunk_frames)

    # Chunk j holds frames j, j + chunks, j + 2 chunks, ...: a batch sharded
    # along its first axis stays sharded along the chunk's. Each chunk is
    # sliced out inside the loop, where XLA reads it in place, rather than
    # the whole batch being transposed to chunk-major first.
    def split(a):
      return (
        None if a is None else a.reshape((num // chunks, chunks) + a.shape[1:])
      )

    def take(a, j):
      return (
        None
        if a is None
        else jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)
      )

    frames, masks = split(frames), [split(m) for m in masks]
    # A fused first block stays out of the rematerialised part of the loop
    # body (see the class docstring).
    fused = start == 0 and _fused(frames.shape, self.pool_sizes[0])

    def block(i, x, j):
      (kernel, bias), conv, pool = params[i], self.convs[i], self.pool_sizes[i]
      if i == 0 and fused:
        # The RGB frames: conv, ReLU and pool as one op, two output pixels
        # per matmul row (hpr.models.conv_block); it slices chunk j itself.
        x = conv_block.conv_relu_pool(x, kernel, bias, pool, 2, chunk=j)
      else:
        y = _conv(x, kernel, conv.strides, conv.padding) + bias
        x = layers.max_pool(jax.nn.relu(y), (pool, pool), 'valid')
      if i < len(masks):
        x = layers.apply_dropout_mask(
          x, take(masks[i], j), self.dropouts[i].rate
        )
      return x

    def rest(x, j):
      for i in range(start + fused, len(params)):
        x = block(i, x, j)
      return x.reshape(x.shape[0], -1)

    def encode(j):
      x = block(0, frames, j) if fused else take(frames, j)
      return (jax.checkpoint(rest) if chunks > 1 else rest)(x, j)

    if chunks == 1:
      return encode(0)
    _, out = jax.lax.scan(lambda c, j: (c, encode(j)), None, jnp.arange(chunks))
    return jnp.moveaxis(out, 0, 1).reshape(num, -1)

  def _dropout_masks(self, frames: Array) -> list[Array | None]:
    """Each dropout's keep mask for the whole (N, H, W, C) batch, drawn as
    nnx.Dropout draws it, or None where it is off."""
    masks = []
    height, width = frames.shape[1:3]
    # One dropout per block but the last: zip stops there.
    for conv, pool, dropout in zip(
      self.convs, self.pool_sizes, self.dropouts, strict=False
    ):
      height, width = height // pool, width // pool
      features = conv.kernel[...].shape[-1]
      shape = (frames.shape[0], height, width, features)
      masks.append(layers.dropout_mask(dropout, shape))
    return masks


def _conv(x: Array, kernel: Array, strides, padding: str) -> Array:
  """A block's conv on (N, H, W, C) frames (see CONV_OP_MIN_SIZE)."""
  height, width = x.shape[1:3]
  if tuple(strides) != (1, 1) or min(height, width) < CONV_OP_MIN_SIZE:
    return layers.conv2d(x, kernel, strides, padding)
  if padding == 'same':
    pads = tuple(
      layers.same_padding(n, k, 1)
      for n, k in zip((height, width), kernel.shape[:2], strict=True)
    )
  else:
    pads = ((0, 0), (0, 0))
  return conv_sum.conv_sum((x,), (kernel,), (pads,))


def _native(frames: Array, kernel: Array, pool: int, first: bool) -> bool:
  """Whether a block on (N, H, W, C) frames runs as native_block's compiled
  kernels: where they support it, for a multiple of LANES channels (their
  backward pass computes the input's gradient) or, for the first block, at
  most 4 (its input's gradient, an XLA op there, is not needed)."""
  channels = frames.shape[-1]
  return (
    channels % native_block.LANES == 0 or (first and channels <= 4)
  ) and native_block.supports(frames.shape, kernel.shape, pool, frames.dtype)


def _fused(shape, pool: int) -> bool:
  """Whether a first block on (..., H, W, C) frames runs as conv_block's
  one op."""
  return shape[-1] <= 4 and shape[-2] % 2 == 0 and pool <= conv_block.MAX_POOL


def _num_chunks(num_frames: int, chunk_frames: int) -> int:
  """The fewest chunks that divide num_frames into at most chunk_frames."""
  if chunk_frames == 0 or num_frames <= chunk_frames:
    return 1
  for chunks in range(-(-num_frames // chunk_frames), num_frames + 1):
    if num_frames % chunks == 0:
      return chunks
  return num_frames


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
    lstm_features: int = 32,
    readout: str = 'last',
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
      lstm_features: LSTM hidden size.
      readout: 'last' or 'mean' (see the class docstring).
      rngs: 'params' and 'dropout' streams.
    """
    if readout not in ('last', 'mean'):
      raise ValueError(f"readout must be 'last' or 'mean', got '{readout}'")
    self.readout = readout
    self.encoder = FrameCNN(
      input_shape[1:],
      conv_features=conv_features,
      kernel_size=kernel_size,
      pool_sizes=pool_sizes,
      dropout=dropout,
      rngs=rngs,
    )
    self.lstm = recurrent.LSTM(
      self.encoder.out_features,
      lstm_features,
      return_sequences=readout == 'mean',
      rngs=rngs,
    )
    self.dense = nnx.Linear(
      lstm_features, num_classes, kernel_init=layers.glorot_uniform, rngs=rngs
    )

  def __call__(self, x: Array) -> Array:
    # x: (B, T, H, W, C) -> features: (B, T, D) -> logits: (B, num_classes)
    logits = self.dense(self.lstm(self.encoder(x)))
    if self.readout == 'mean':
      # logits: (B, T, num_classes) -> (B, num_classes)
      logits = layers.log_mean_softmax(logits, axis=1)
    return logits
