"""The CPU implementations of hpr's named primitives, chosen from static
shapes and dtypes.

Each `*_impl` function returns the function that computes the primitive on
a CPU for those shapes, or None where the reference is the CPU's best (or
the only) implementation, as for any dtype but float32. The returned
functions take the same arrays as the reference and compute the same
numbers up to float rounding (tests/test_kernels*.py). Which formulation
pays off, and by how much on the 2-core CPU the project is tuned on, is
recorded in benchmarks/README.md.
"""

import functools

import jax
import jax.numpy as jnp

from hpr.kernels import (
  conv_block,
  conv_sum,
  im2col,
  native_block,
  native_convlstm,
  reference,
)

Array = jax.Array

# Frame-CNN blocks whose input is at least this many pixels high and wide
# run their conv as an XLA convolution with `conv_sum`'s backward pass; on
# smaller inputs (a 2x2 last block) the im2col patches are faster.
CONV_OP_MIN_SIZE = 4
# A ConvLSTM step whose input and hidden state have at most this many
# channels together runs its two convolutions as one `conv_sum`, packed
# CONV_SUM_PIXELS_PER_ROW pixels a row; with more, as one matmul of both
# convolutions' im2col patches side by side.
CONV_SUM_MAX_CHANNELS = 12
CONV_SUM_PIXELS_PER_ROW = 2


def _float32(*dtypes) -> bool:
  return all(jnp.dtype(d) == jnp.float32 for d in dtypes)


def conv_relu_pool_impl(x_shape, kernel_shape, pool: int, dtype):
  """The CPU's `conv_relu_pool(x, kernel, bias)` for (N, H, W, C) frames
  and a (kh, kw, C, F) kernel, or None for the reference.

  In order: `native_block`'s compiled kernels (a multiple of 16 output
  channels, and a multiple of 16 input channels, whose native backward
  pass computes the input's gradient, or at most 4, RGB frames);
  `conv_block`'s one XLA op, two output pixels a matmul row, for a block on
  at most 4 channels; else the conv (`conv_sum`, or im2col patches on small
  inputs), ReLU and the reshape max pool, under autodiff.
  """
  if not _float32(dtype):
    return None
  channels, (height, width) = x_shape[-1], x_shape[-3:-1]
  if (channels % native_block.LANES == 0 or channels <= 4) and (
    native_block.supports(x_shape, kernel_shape, pool, dtype)
  ):
    return functools.partial(_native_block, pool=pool)
  if channels <= 4 and width % 2 == 0 and pool <= conv_block.MAX_POOL:
    return functools.partial(conv_block.conv_relu_pool, pool=pool, strip=2)
  if min(height, width) >= CONV_OP_MIN_SIZE:
    pads = tuple(
      reference.same_padding(n, k, 1)
      for n, k in zip((height, width), kernel_shape[:2], strict=True)
    )
    conv = functools.partial(_conv_sum, pads=pads)
  else:
    conv = functools.partial(im2col.conv2d, strides=(1, 1), padding='same')
  return functools.partial(_conv_relu_pool, conv=conv, pool=pool)


def _native_block(x, kernel, bias, *, pool):
  return native_block.conv_relu_pool(x, kernel, bias, pool)


def _conv_sum(x, kernel, *, pads):
  return conv_sum.conv_sum((x,), (kernel,), (pads,))


def _conv_relu_pool(x, kernel, bias, *, conv, pool):
  y = jax.nn.relu(conv(x, kernel) + bias)
  return reference.max_pool(y, (pool, pool), 'valid')


def convlstm_layer_impl(
  x_shape,
  kernel_shape,
  *,
  strides,
  padding: str,
  activation,
  recurrent_activation,
  has_bias: bool,
  unroll,
  dtype,
):
  """The CPU's `convlstm_layer(x, kernel, recurrent_kernel, bias, mask)` on
  a time-major (T, B, H, W, C) input (bias and mask may be None), or None
  for the reference.

  `native_convlstm`'s compiled kernels where they take the layer (stride 1,
  tanh and Keras 2's hard sigmoid, a bias, 4F a multiple of 16 up to 64,
  few channels); else the time loop with each step's input convolution
  inside it, on that step's B frames, as one convolution (`conv_sum`, few
  channels) or one matmul (im2col patches) with the recurrent one, each
  step rematerialised in the backward pass: a step's gates stay in cache
  instead of the whole clip's making a round trip through memory.
  """
  if not _float32(dtype):
    return None
  strides = tuple(strides)
  if native_convlstm.supports(
    x_shape,
    kernel_shape,
    strides,
    activation,
    recurrent_activation,
    has_bias,
    dtype,
  ):
    return functools.partial(_native_convlstm, padding=padding)
  step = functools.partial(
    _convlstm_step,
    strides=strides,
    padding=padding,
    activation=activation,
    recurrent_activation=recurrent_activation,
  )
  return functools.partial(
    _time_major_convlstm,
    step=step,
    strides=strides,
    padding=padding,
    unroll=unroll,
  )


def _hidden_shape(x, kernel, strides, padding):
  """(B, H', W', F) of a layer's hidden state for a (T, B, H, W, C) x."""
  out_h, out_w = (
    reference.conv_output_size(n, k, s, padding)
    for n, k, s in zip(x.shape[2:4], kernel.shape[:2], strides, strict=True)
  )
  return (x.shape[1], out_h, out_w, kernel.shape[-1] // 4)


def _native_convlstm(x, kernel, recurrent_kernel, bias, mask, *, padding):
  if mask is None:
    mask = jnp.ones(_hidden_shape(x, kernel, (1, 1), padding), x.dtype)
  return native_convlstm.conv_lstm(
    x, kernel, recurrent_kernel, bias, mask, padding
  )


def _time_major_convlstm(
  x, kernel, recurrent_kernel, bias, mask, *, step, strides, padding, unroll
):
  h = jnp.zeros(_hidden_shape(x, kernel, strides, padding), x.dtype)
  weights = (kernel, recurrent_kernel, bias, mask)

  # Rematerialised: the backward pass recomputes each step from its carry
  # and input instead of reading back every intermediate of every step
  # (patches, gates), which costs more on a CPU than computing them again.
  @jax.checkpoint
  def body(carry, x_t):
    return step(carry, x_t, *weights)

  return jax.lax.scan(body, (h, h), x, unroll=unroll)[1]


def _convlstm_step(
  carry,
  x,
  kernel,
  recurrent_kernel,
  bias,
  mask,
  *,
  strides,
  padding,
  activation,
  recurrent_activation,
):
  """One ConvLSTM step from its input x: ((c', h'), h')."""
  c, h = carry
  if mask is not None:
    h = h * mask
  kernel_size = kernel.shape[:2]
  if strides == (1, 1) and x.shape[-1] + h.shape[-1] <= CONV_SUM_MAX_CHANNELS:

    def same(a):
      return tuple(
        reference.same_padding(n, k, 1)
        for n, k in zip(a.shape[-3:-1], kernel_size, strict=True)
      )

    x_pads = same(x) if padding == 'same' else ((0, 0), (0, 0))
    z = conv_sum.conv_sum(
      (x, h),
      (kernel, recurrent_kernel),
      (x_pads, same(h)),
      pixels_per_row=CONV_SUM_PIXELS_PER_ROW,
    )
  else:
    gates = kernel.shape[-1]
    both = jnp.concatenate(
      [kernel.reshape(-1, gates), recurrent_kernel.reshape(-1, gates)]
    )
    p = jnp.concatenate(
      [
        im2col.patches(x, kernel_size, strides, padding),
        im2col.patches(h, kernel_size, (1, 1), 'same'),
      ],
      axis=-1,
    )
    z = p @ both
  if bias is not None:
    z = z + bias
  c, h = reference.lstm_gates(c, z, activation, recurrent_activation)
  return (c, h), h
