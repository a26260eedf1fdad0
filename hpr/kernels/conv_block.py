"""The LRCN's per-frame block, conv ('same', stride 1) + bias + ReLU + max
pool (window = stride, 'valid'), as one op with a hand-written backward pass.

This is an XLA formulation tuned for the CPU, where 'auto' uses it for a
first block (few input channels) that `hpr.kernels.native_block`'s compiled
kernels do not take; those compute the same numbers (the same mask, the
same split of tied maxima).

The numbers are those of `reference.conv_relu_pool` under
autodiff (a pooled gradient is split evenly between tied maxima, as JAX's
`reduce_max` splits it), computed in fewer passes over the full-resolution
activations, which on a CPU cost more than the arithmetic:

- the forward pass keeps, for the backward, only its input and one int32
  per pooled value whose bits mark the window's maxima (found with the
  pool's max), not the patches and pre-activations: the pooled gradients
  go straight to the marked pixels, and only the patches are built again,
  patch axis first, so the weight gradient is one plain matmul;
- with `chunk`, the op slices one chunk of a larger batch itself, so in a
  loop over chunks the backward pass keeps the batch, not a copy of every
  chunk, and the op need not be rematerialised;
- with `strip` > 1 each matmul row computes `strip` neighbouring output
  pixels from one row of patches, so a conv with few input channels builds
  (kw + strip - 1) / (kw * strip) of the usual im2col patches and multiplies
  them by a wider, banded kernel (more multiplications, on zeros, but a
  matmul shape the CPU runs faster).

One difference: with `strip` > 1, pixels that tie exactly in the plain
product (flat image regions) can differ in their last bit, so the input's
gradient may go to another pixel of the tie; the kernel's and the bias'
cannot tell, since the tied pixels of a flat region read the same patch.

Its measured effect on the CPU is in benchmarks/README.md.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hpr.kernels.reference import same_padding

Array = jax.Array

# The backward pass keeps the maxima of each pool window as the bits of one
# int32.
MAX_POOL = 5


def conv_relu_pool(
  x: Array,
  kernel: Array,
  bias: Array,
  pool: int,
  strip: int = 1,
  *,
  chunk: Array | None = None,
) -> Array:
  """max_pool(relu(conv2d(x, kernel, 'same') + bias), pool, 'valid').

  Args:
    x: (N, H, W, C) images, or with `chunk` (N, chunks, H, W, C).
    kernel: (kh, kw, C, F), Keras layout.
    bias: (F,).
    pool: square max-pool window and stride, at most MAX_POOL.
    strip: output pixels per matmul row; must divide W (1: plain im2col).
    chunk: an int scalar: the op runs on x[:, chunk] only. Inside a loop
      over the chunks its backward pass then keeps x itself rather than a
      copy of every chunk.

  Returns:
    (N, H // pool, W // pool, F).
  """
  if pool > MAX_POOL:
    raise ValueError(f'pool {pool} is over the largest supported, {MAX_POOL}')
  if x.shape[-2] % strip:
    raise ValueError(f'strip {strip} does not divide the width {x.shape[-2]}')
  if chunk is None:
    return _conv_relu_pool(x[:, None], jnp.int32(0), kernel, bias, pool, strip)
  return _conv_relu_pool(x, chunk, kernel, bias, pool, strip)


def strip_patches(x: Array, kernel_size, strip: int) -> Array:
  """(N, H, W, C) -> (N, H, W / strip, kh (kw + strip - 1) C): for each
  strip of `strip` output pixels of a 'same' conv, the input pixels it
  reads, ordered (dy, dx, c). strip=1 gives `im2col.patches`."""
  return jnp.concatenate(_strip_slices(x, kernel_size, strip), axis=-1)


def strip_patches_t(x: Array, kernel_size, strip: int) -> Array:
  """`strip_patches` with the patch axis first: (K, N, H, W / strip).

  Built from the padded input with its channels (of a group of `strip`
  pixels, where `_strip_slices` groups them) moved first, once, so that
  every slice is contiguous along the width, which XLA:CPU copies faster
  than one strided slice per channel (benchmarks/README.md)."""
  return jnp.concatenate(
    _strip_slices(x, kernel_size, strip, channels_first=True), axis=0
  )


def _strip_slices(x, kernel_size, strip, channels_first=False):
  """The input slices of a strip's patch, in (dy, dx, c) order: (N, H, W /
  strip, strip C) slices of `strip` pixels side by side, one per (dy,
  group of `strip` dx), where the padded width allows, else (N, H, W /
  strip, C) slices, one per (dy, dx); with `channels_first`, the padded
  input's channels are moved first (once) and the slices are (strip C or
  C, N, H, W / strip)."""
  kh, kw = kernel_size
  height, width = x.shape[1:3]
  pads = (
    same_padding(height, kh, 1),
    same_padding(width, kw, 1),
  )
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  n, padded_h, padded_w, channels = x.shape
  if (kw - 1) % strip == 0 and padded_w % strip == 0:
    # The pixels of each strip's patch row are whole groups of `strip`
    # neighbours: contiguous slices of the padded image seen as rows of
    # groups (the same memory), fewer and wider than one per dx, which
    # XLA:CPU copies faster (strip 2: 6 slices of 6 channels, not 12
    # strided ones of 3; benchmarks/README.md).
    x = x.reshape(n, padded_h, padded_w // strip, strip * channels)
    cols = [slice(j, j + width // strip) for j in range((kw - 1) // strip + 1)]
  else:
    cols = [
      slice(dx, dx + width - strip + 1, strip) for dx in range(kw + strip - 1)
    ]
  if channels_first:
    x = jnp.moveaxis(x, -1, 0)
    return [x[:, :, dy : dy + height, col] for dy in range(kh) for col in cols]
  return [x[:, dy : dy + height, col] for dy in range(kh) for col in cols]


def strip_kernel(kernel: Array, strip: int) -> Array:
  """(kh, kw, C, F) -> (kh (kw + strip - 1) C, strip F): the banded matrix
  that maps `strip_patches` to `strip` output pixels of F channels."""
  kh, kw, channels, features = kernel.shape
  # select[j, p, dx] = 1 where input column j of a strip feeds output pixel
  # p through kernel column dx.
  select = np.zeros((kw + strip - 1, strip, kw), np.float32)
  for p in range(strip):
    for dx in range(kw):
      select[p + dx, p, dx] = 1.0
  banded = jnp.einsum('jpx,yxcf->yjcpf', select, kernel)
  return banded.reshape(kh * (kw + strip - 1) * channels, strip * features)


def _take(xs, chunk):
  return jax.lax.dynamic_index_in_dim(xs, chunk, axis=1, keepdims=False)


def _forward(xs, chunk, kernel, bias, pool, strip):
  x = _take(xs, chunk)
  n, height, width, _ = x.shape
  features = kernel.shape[-1]
  p = strip_patches(x, kernel.shape[:2], strip)
  y = (p @ strip_kernel(kernel, strip)).reshape(n, height, width, features)
  out_h, out_w = height // pool, width // pool
  windows = y[:, : out_h * pool, : out_w * pool].reshape(
    n, out_h, pool, out_w, pool, features
  )
  # Rounding is monotonic, so max(y + bias) = max(y) + bias exactly, and
  # max(relu(.)) = relu(max(.)): the bias is added to the pooled values.
  peak = jnp.max(windows, axis=(2, 4)) + bias
  out = jax.nn.relu(peak)
  # Which pixels of each window hold its maximum, as the bits of one int32:
  # the pooled gradient goes to them, split evenly (none where the maximum
  # is <= 0, where ReLU's gradient is 0). One window position at a time,
  # each bit a scalar: an array of the bits broadcast over the windows is
  # loop-invariant, and XLA would hoist it out of an enclosing loop as a
  # materialised (N, H, W, F) int32 array that every iteration then reads.
  positive = peak > 0
  mask = sum(
    jnp.where(
      (windows[:, :, a, :, b] + bias == peak) & positive,
      np.int32(1 << (a * pool + b)),
      np.int32(0),
    )
    for a in range(pool)
    for b in range(pool)
  )
  return out, (xs, chunk, mask, kernel)


def _bits(pool):
  """1 << (a * pool + b) for window position (a, b), shaped to broadcast
  against (N, H / pool, pool, W / pool, pool, F)."""
  bits = np.left_shift(1, np.arange(pool * pool, dtype=np.int32))
  return bits.reshape(1, 1, pool, 1, pool, 1)


def spread_pooled_grad(mask: Array, g: Array, pool: int, size) -> Array:
  """The pooled gradient g (N, H / pool, W / pool, F) at full resolution
  (N, H, W, F) for `size` = (H, W): on the window maxima that `mask`'s bits
  mark, split evenly between tied ones; zero elsewhere."""
  n, out_h, out_w, features = mask.shape
  height, width = size
  ties = jax.lax.population_count(mask)
  share = g / jnp.maximum(ties, 1).astype(g.dtype)
  hit = (mask[:, :, None, :, None] & _bits(pool)) != 0
  dy = jnp.where(hit, share[:, :, None, :, None], 0.0)
  dy = dy.reshape(n, out_h * pool, out_w * pool, features)
  return jnp.pad(
    dy,
    ((0, 0), (0, height - out_h * pool), (0, width - out_w * pool), (0, 0)),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _conv_relu_pool(xs, chunk, kernel, bias, pool, strip):
  return _forward(xs, chunk, kernel, bias, pool, strip)[0]


def _conv_relu_pool_fwd(xs, chunk, kernel, bias, pool, strip):
  return _forward(xs, chunk, kernel, bias, pool, strip)


def _conv_relu_pool_bwd(pool, strip, residuals, g):
  xs, chunk, mask, kernel = residuals
  x = _take(xs, chunk)
  n, height, width, _ = x.shape
  features = kernel.shape[-1]
  dy = spread_pooled_grad(mask, g, pool, (height, width))
  dy_strips = dy.reshape(n, height, width // strip, strip * features)
  # The patches built again, patch axis first: the weight gradient is then
  # a plain matmul, with no transposed copy of them.
  p_t = strip_patches_t(x, kernel.shape[:2], strip)
  banded, kernel_vjp = jax.vjp(lambda k: strip_kernel(k, strip), kernel)
  (dkernel,) = kernel_vjp(
    p_t.reshape(p_t.shape[0], -1) @ dy_strips.reshape(-1, strip * features)
  )
  # Each window's shares add up to its pooled gradient.
  dbias = jnp.sum(jnp.where(mask != 0, g, 0.0), axis=(0, 1, 2))
  # The input's gradient (XLA drops it where the input is not
  # differentiated, as for the frames of the first block).
  patches_t = jax.linear_transpose(
    lambda x: strip_patches(x, kernel.shape[:2], strip),
    jax.ShapeDtypeStruct(x.shape, x.dtype),
  )
  (dx,) = patches_t(dy_strips @ banded.T)
  dxs = jax.lax.dynamic_update_index_in_dim(jnp.zeros_like(xs), dx, chunk, 1)
  return dxs, None, dkernel, dbias


_conv_relu_pool.defvjp(_conv_relu_pool_fwd, _conv_relu_pool_bwd)
