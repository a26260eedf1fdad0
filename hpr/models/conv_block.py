"""The LRCN's per-frame block, conv ('same', stride 1) + bias + ReLU + max
pool (window = stride, 'valid'), as one op with a hand-written backward pass.

The numbers are those of `layers.conv2d` -> ReLU -> `layers.max_pool` under
autodiff (a pooled gradient is split evenly between tied maxima, as JAX's
`reduce_max` splits it), computed in fewer passes over the full-resolution
activations, which on a CPU cost more than the arithmetic:

- the backward pass reuses the forward's patches and pre-activations instead
  of differentiating the pool and the ReLU as separate ops;
- with `strip` > 1 each matmul row computes `strip` neighbouring output
  pixels from one row of patches, so a conv with few input channels builds
  (kw + strip - 1) / (kw * strip) of the usual im2col patches and multiplies
  them by a wider, banded kernel (more multiplications, on zeros, but a
  matmul shape the CPU runs faster).

One difference: with `strip` > 1, pixels that tie exactly in the plain
product (flat image regions) can differ in their last bit, so the input's
gradient may go to another pixel of the tie; the kernel's and the bias'
cannot tell, since the tied pixels of a flat region read the same patch.

On the 2-core CPU of benchmarks/README.md this makes the first LRCN block
(forward + backward, 640 frames in chunks of 16-32) 1.5-1.8x faster, and the
seed LRCN's training step 1.15-1.2x; with strip=1, or on the later blocks
(16+ input channels), it is slower than plain autodiff, so FrameCNN uses it
for its first block only.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hpr.models import layers

Array = jax.Array


def conv_relu_pool(
  x: Array, kernel: Array, bias: Array, pool: int, strip: int = 1
) -> Array:
  """max_pool(relu(conv2d(x, kernel, 'same') + bias), pool, 'valid').

  Args:
    x: (N, H, W, C) images.
    kernel: (kh, kw, C, F), Keras layout.
    bias: (F,).
    pool: square max-pool window and stride.
    strip: output pixels per matmul row; must divide W (1: plain im2col).

  Returns:
    (N, H // pool, W // pool, F).
  """
  if x.shape[2] % strip:
    raise ValueError(f'strip {strip} does not divide the width {x.shape[2]}')
  return _conv_relu_pool(x, kernel, bias, pool, strip)


def strip_patches(x: Array, kernel_size, strip: int) -> Array:
  """(N, H, W, C) -> (N, H, W / strip, kh (kw + strip - 1) C): for each
  strip of `strip` output pixels of a 'same' conv, the input pixels it
  reads, ordered (dy, dx, c). strip=1 gives `layers.patches`."""
  kh, kw = kernel_size
  height, width = x.shape[1:3]
  pads = (
    layers.same_padding(height, kh, 1),
    layers.same_padding(width, kw, 1),
  )
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  return jnp.concatenate(
    [
      x[:, dy : dy + height, dx : dx + width - strip + 1 : strip]
      for dy in range(kh)
      for dx in range(kw + strip - 1)
    ],
    axis=-1,
  )


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


def _forward(x, kernel, bias, pool, strip):
  n, height, width, _ = x.shape
  features = kernel.shape[-1]
  p = strip_patches(x, kernel.shape[:2], strip)
  y = (p @ strip_kernel(kernel, strip)).reshape(n, height, width, features)
  y = y + bias
  out = layers.max_pool(jax.nn.relu(y), (pool, pool), 'valid')
  return out, (p, y, out, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_relu_pool(x, kernel, bias, pool, strip):
  return _forward(x, kernel, bias, pool, strip)[0]


def _conv_relu_pool_fwd(x, kernel, bias, pool, strip):
  return _forward(x, kernel, bias, pool, strip)


def _conv_relu_pool_bwd(pool, strip, residuals, g):
  p, y, out, kernel = residuals
  n, height, width, features = y.shape
  out_h, out_w = out.shape[1:3]
  # The pool's and the ReLU's gradient in one pass: each pooled gradient
  # goes to the pixels equal to the window's maximum, split between ties;
  # nothing flows where the maximum is <= 0 (ReLU's gradient there is 0).
  windows = y[:, : out_h * pool, : out_w * pool].reshape(
    n, out_h, pool, out_w, pool, features
  )
  peak = out[:, :, None, :, None, :]
  hit = (windows == peak) & (peak > 0)
  ties = jnp.sum(hit, axis=(2, 4), keepdims=True, dtype=y.dtype)
  dy = jnp.where(hit, g[:, :, None, :, None, :] / jnp.maximum(ties, 1), 0.0)
  dy = dy.reshape(n, out_h * pool, out_w * pool, features)
  dy = jnp.pad(
    dy,
    ((0, 0), (0, height - out_h * pool), (0, width - out_w * pool), (0, 0)),
  )
  dy_strips = dy.reshape(n, height, width // strip, strip * features)
  banded, kernel_vjp = jax.vjp(lambda k: strip_kernel(k, strip), kernel)
  (dkernel,) = kernel_vjp(jnp.einsum('nhwk,nhwm->km', p, dy_strips))
  dbias = jnp.sum(dy, axis=(0, 1, 2))
  # The input's gradient (XLA drops it where the input is not
  # differentiated, as for the frames of the first block).
  patches_t = jax.linear_transpose(
    lambda x: strip_patches(x, kernel.shape[:2], strip),
    jax.ShapeDtypeStruct((n, height, width, kernel.shape[2]), y.dtype),
  )
  (dx,) = patches_t(dy_strips @ banded.T)
  return dx, dkernel, dbias


_conv_relu_pool.defvjp(_conv_relu_pool_fwd, _conv_relu_pool_bwd)
