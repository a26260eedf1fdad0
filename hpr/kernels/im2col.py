"""Convolutions as im2col patches @ kernel, the form XLA:CPU runs fastest
for small convolutions (few channels, 3x3), above all their backward pass
inside `jax.lax.scan`: one matmul over kh * kw shifted slices."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from hpr.kernels.reference import conv_output_size, same_padding

Array = jax.Array


def conv2d(
  x: Array, kernel: Array, strides: Sequence[int], padding: str
) -> Array:
  """`reference.conv2d` as patches @ kernel: (..., H, W, C) with a (kh, kw,
  C, F) kernel -> (..., H', W', F)."""
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
    pads = (same_padding(height, kh, sh), same_padding(width, kw, sw))
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
