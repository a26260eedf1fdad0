"""A sum of stride-1 convolutions, conv(x_1, k_1) + conv(x_2, k_2) + ..., as
one XLA convolution of the inputs side by side, with a hand-written backward
pass that XLA:CPU runs fast.

On the CPU, 'auto' uses it for the input and recurrent convolutions of
ConvLSTM layers with few channels (packed two pixels a row) and for the
frame-CNN blocks on inputs of 4x4 pixels or more, where the compiled kernels
do not take them (`hpr.kernels.cpu`). With so few channels XLA's convolution
needs no im2col patches (9x the input, built and read back), but only while
its gradients are convolutions in XLA:CPU's canonical layout (batch, rows,
cols, features; kernel rows, cols, in, out); under plain autodiff inside a
time loop XLA emits them in other layouts, several times slower. Here:

- the input gradients are one convolution per input, of the output gradient
  with that input's flipped kernel, so one whose gradient is not used (the
  video entering the first layer) is not computed at all, each for its
  channels padded to a multiple of 8 and sliced (4 channels are slower than
  8 on XLA:CPU);
- the kernel gradient is one convolution of the inputs with the output
  gradient, both transposed to put the batch where the features go.

With `pixels_per_row=p` the forward convolution and the input gradients run
on rows of p pixels packed into one (`_packed`: the same memory, p times the
channels), through a kernel that maps p input pixels to p output pixels
(`_packed_kernel`); then the input gradients are one convolution for all
inputs, sliced apart. XLA:CPU's convolution runs faster on more channels
(the kernel gradient does not, so it is computed unpacked). Measurements
are in benchmarks/README.md.

The numbers are those of `jax.lax.conv_general_dilated` under autodiff up to
float rounding (summation order).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]

_DIMS = ('NHWC', 'HWIO', 'NHWC')
# XLA:CPU's convolution to 4 channels is slower than to 8, so input
# gradients are computed for channels padded to a multiple of 8 and sliced.
_MIN_OUT = 8


def _conv(x: Array, kernel: Array, padding) -> Array:
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=_DIMS
  )


def conv_sum(
  inputs: Sequence[Array],
  kernels: Sequence[Array],
  paddings: Sequence[Padding],
  *,
  pixels_per_row: int = 1,
) -> Array:
  """sum_i conv(inputs[i], kernels[i], paddings[i]), stride 1.

  Args:
    inputs: (N, H_i, W_i, C_i) images.
    kernels: (kh, kw, C_i, F), the same kh, kw and F for every input.
    paddings: ((top, bottom), (left, right)) of each input; the padded
      inputs must all have the same height and width.
    pixels_per_row: run the convolutions on images with this many
      neighbouring pixels of a row packed into the channels of one (the
      same memory: (N, H, W, C) as (N, H, W / p, p C)), with the kernel
      rewritten for them (zeros where a packed tap falls outside the
      kernel), where it divides the kernel width - 1 (otherwise one); an
      output width that is not a multiple of it is computed rounded up
      (from zeros) and sliced. More channels in and out suit XLA:CPU's
      convolution better than few (the ConvLSTM's first layer, 7 -> 16
      channels, runs 7 x 2 -> 16 x 2; see `_packed_kernel`); the kernel
      gradient is computed unpacked either way.

  Returns:
    (N, H', W', F).
  """
  inputs, kernels = tuple(inputs), tuple(kernels)
  paddings = tuple(
    tuple(tuple(int(p) for p in side) for side in pad) for pad in paddings
  )
  if not len(inputs) == len(kernels) == len(paddings):
    raise ValueError(
      f'{len(inputs)} inputs, {len(kernels)} kernels and {len(paddings)} '
      'paddings: need one of each per input'
    )
  sizes = {
    (x.shape[1] + sum(p[0]), x.shape[2] + sum(p[1]))
    for x, p in zip(inputs, paddings, strict=True)
  }
  if len(sizes) != 1:
    raise ValueError(f'padded inputs differ in size: {sorted(sizes)}')
  if len({k.shape[:2] + k.shape[3:] for k in kernels}) != 1:
    raise ValueError(
      f'kernels differ in (kh, kw, F): {[k.shape for k in kernels]}'
    )
  kh, kw = kernels[0].shape[:2]
  for pad in paddings:
    if not all(
      0 <= p < k for k, side in zip((kh, kw), pad, strict=True) for p in side
    ):
      raise ValueError(
        f'padding {pad} outside [0, kernel size - 1] for a {kh}x{kw} kernel'
      )
  if pixels_per_row < 1:
    raise ValueError(f'pixels_per_row must be >= 1, got {pixels_per_row}')
  if (kw - 1) % pixels_per_row:
    pixels_per_row = 1
  return _conv_sum(inputs, kernels, paddings, pixels_per_row)


def _padded(inputs, paddings) -> Array:
  return jnp.concatenate(
    [
      jnp.pad(x, ((0, 0), *pad, (0, 0)))
      for x, pad in zip(inputs, paddings, strict=True)
    ],
    axis=-1,
  )


def _packed(x: Array, pixels: int) -> Array:
  """(N, H, W, C) -> (N, H, W / p, p C): p neighbouring pixels of a row as
  the channels of one (the same memory)."""
  n, height, width, channels = x.shape
  return x.reshape(n, height, width // pixels, pixels * channels)


def _unpacked(x: Array, pixels: int) -> Array:
  n, height, width, channels = x.shape
  return x.reshape(n, height, width * pixels, channels // pixels)


def _packed_kernel(kernel: Array, pixels: int) -> Array:
  """The kernel of the same convolution on `_packed` inputs and outputs:
  (kh, kw, C, F) -> (kh, kw', p C, p F), output pixel q of a pack reading
  input pixel r of pack j through tap dx = p j + r - q (zero outside the
  kernel)."""
  kh, kw, channels, features = kernel.shape
  span = (kw - 1 + pixels - 1) // pixels + 1
  blocks = []
  for j in range(span):
    rows = []
    for r in range(pixels):
      cols = []
      for q in range(pixels):
        dx = pixels * j + r - q
        cols.append(
          kernel[:, dx]
          if 0 <= dx < kw
          else jnp.zeros((kh, channels, features), kernel.dtype)
        )
      rows.append(jnp.concatenate(cols, axis=-1))
    blocks.append(jnp.concatenate(rows, axis=-2))
  return jnp.stack(blocks, axis=1)


def _forward(inputs, kernels, paddings, pixels=1) -> Array:
  x = _padded(inputs, paddings)
  kernel = jnp.concatenate(kernels, axis=2)
  if pixels == 1:
    return _conv(x, kernel, 'VALID')
  out_width = x.shape[2] - kernel.shape[1] + 1
  x = jnp.pad(x, ((0, 0), (0, 0), (0, _extra(out_width, pixels)), (0, 0)))
  y = _conv(_packed(x, pixels), _packed_kernel(kernel, pixels), 'VALID')
  return _unpacked(y, pixels)[:, :, :out_width]


def _extra(width: int, pixels: int) -> int:
  """Columns that round `width` up to a multiple of `pixels`."""
  return -width % pixels


_conv_sum = jax.custom_vjp(_forward, nondiff_argnums=(2, 3))


def _conv_sum_fwd(inputs, kernels, paddings, pixels):
  return _forward(inputs, kernels, paddings, pixels), (inputs, kernels)


def _conv_sum_bwd(paddings, pixels, residuals, g):
  inputs, kernels = residuals
  kh, kw = kernels[0].shape[:2]
  if pixels > 1:
    return _packed_input_grads(paddings, pixels, inputs, kernels, g), (
      _kernel_grads(inputs, paddings, g)
    )
  d_inputs = []
  for kernel, ((top, bottom), (left, right)) in zip(
    kernels, paddings, strict=True
  ):
    # The transposed convolution: the output gradient, padded so that the
    # result has the unpadded input's size, with the kernel flipped and its
    # in/out axes swapped.
    channels = kernel.shape[2]
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    flipped = jnp.pad(
      flipped, ((0, 0), (0, 0), (0, 0), (0, -channels % _MIN_OUT))
    )
    d_input = _conv(
      g,
      flipped,
      ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)),
    )
    d_inputs.append(d_input[..., :channels])
  return tuple(d_inputs), _kernel_grads(inputs, paddings, g)


def _packed_input_grads(paddings, pixels, inputs, kernels, g):
  """The padded inputs' gradient as one transposed convolution of packed
  pixels, sliced into each input's."""
  kernel = jnp.concatenate(kernels, axis=2)
  kh = kernel.shape[0]
  packed = _packed_kernel(kernel, pixels)
  span = packed.shape[1]
  flipped = jnp.swapaxes(packed[::-1, ::-1], 2, 3)
  g = jnp.pad(g, ((0, 0), (0, 0), (0, _extra(g.shape[2], pixels)), (0, 0)))
  d_x = _unpacked(
    _conv(
      _packed(g, pixels), flipped, ((kh - 1, kh - 1), (span - 1, span - 1))
    ),
    pixels,
  )
  d_inputs = []
  start = 0
  for x_i, ((top, _), (left, _)) in zip(inputs, paddings, strict=True):
    _, height, width, channels = x_i.shape
    d_inputs.append(
      d_x[:, top : top + height, left : left + width, start : start + channels]
    )
    start += channels
  return tuple(d_inputs)


def _kernel_grads(inputs, paddings, g):
  # Kernel gradient: channels as the batch, the batch as the features.
  x = _padded(inputs, paddings)
  d_kernel = _conv(
    jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), 'VALID'
  )
  d_kernel = jnp.transpose(d_kernel, (1, 2, 0, 3))
  splits = []
  start = 0
  for x_i in inputs:
    splits.append(d_kernel[:, :, start : start + x_i.shape[-1]])
    start += x_i.shape[-1]
  return tuple(splits)


_conv_sum.defvjp(_conv_sum_fwd, _conv_sum_bwd)
