"""conv_block.conv_relu_pool, the CPU's XLA formulation of a first frame-CNN
block, computes what `reference.conv_relu_pool` computes under autodiff:
outputs and the gradients of x, kernel and bias, for several strip widths,
pools that drop a remainder, and tied maxima (flat image regions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpr.kernels import conv_block, reference


def plain(x, kernel, bias, pool):
  return reference.conv_relu_pool(x, kernel, bias, pool)


def inputs(shape, features, ties):
  kx, kk, kb = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  if ties:
    # Flat regions (as in saturated or synthetic frames) make neighbouring
    # conv outputs exactly equal, so pooled gradients have ties to split.
    x = x.at[:, 2:12, 4:16].set(0.5)
  kernel = jax.random.normal(kk, (3, 3, shape[-1], features)) * 0.3
  bias = jax.random.normal(kb, (features,)) * 0.1
  return x, kernel, bias


@pytest.mark.parametrize(
  'shape, pool, strip, ties',
  [
    ((3, 16, 16, 3), 4, 2, False),
    ((3, 16, 16, 3), 4, 2, True),
    ((2, 18, 20, 3), 4, 4, True),  # The pool drops 2 rows and 0 columns.
    ((2, 13, 10, 5), 3, 1, True),  # Odd sizes, remainders on both axes.
    ((2, 12, 12, 2), 2, 3, False),
    ((2, 10, 12, 3), 5, 2, True),  # 25 window pixels: 25 mask bits.
  ],
)
def test_matches_the_plain_formulation(shape, pool, strip, ties):
  x, kernel, bias = inputs(shape, 8, ties)
  # Pixels that tie exactly in the plain product may differ in their last
  # bit in the banded one, so the input gradient can go to another pixel of
  # the tie; the kernel and bias gradients cannot tell (tied pixels of a
  # flat region read the same patch).
  assert_matches_plain(
    lambda x, k, b: conv_block.conv_relu_pool(x, k, b, pool, strip),
    (x, kernel, bias),
    pool,
    skip=('x',) if ties and strip > 1 else (),
    atol=1e-6,
  )


def assert_matches_plain(op, args, pool, skip=(), atol=1e-5):
  """op(x, kernel, bias) and its gradients equal `plain`'s (to 1e-5
  relative), but for the gradients named in `skip`."""
  got = op(*args)
  want = plain(*args, pool)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)

  cotangent = jax.random.normal(jax.random.key(1), want.shape)

  def grads(f):
    return jax.grad(lambda *a: jnp.sum(f(*a) * cotangent), (0, 1, 2))(*args)

  got_grads = grads(op)
  want_grads = grads(lambda x, k, b: plain(x, k, b, pool))
  names = ('x', 'kernel', 'bias')
  for name, g, w in zip(names, got_grads, want_grads, strict=True):
    if name in skip:
      continue
    assert float(jnp.abs(w).max()) > 0, name  # Something flows.
    np.testing.assert_allclose(
      g, w, rtol=1e-5, atol=1e-5 * float(jnp.abs(w).max()), err_msg=name
    )


@pytest.mark.slow
def test_ties_split_the_gradient():
  # One window of four equal positive pixels shares its gradient of 1.
  x = jnp.ones((1, 2, 2, 1))
  kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
  grad = jax.grad(
    lambda x: conv_block.conv_relu_pool(x, kernel, jnp.zeros(1), 2, 2).sum()
  )(x)
  np.testing.assert_allclose(grad, np.full((1, 2, 2, 1), 0.25))


@pytest.mark.parametrize('strip', [2, 4])
def test_strip_kernel_maps_strip_patches_to_the_conv(strip):
  # Strip 2 builds the patches from groups of 2 pixels, 4 one pixel at a
  # time (a 3-wide kernel's rows are not whole groups of 4).
  x, kernel, _ = inputs((2, 8, 8, 3), 4, False)
  strips = conv_block.strip_patches(x, (3, 3), strip) @ conv_block.strip_kernel(
    kernel, strip
  )
  np.testing.assert_allclose(
    strips.reshape(2, 8, 8, 4),
    reference.conv2d(x, kernel, (1, 1), 'same'),
    rtol=1e-5,
    atol=1e-6,
  )


@pytest.mark.slow
def test_a_chunk_is_the_op_on_that_slice_of_the_batch():
  # (N, chunks, H, W, C): chunk 1 of 3, as FrameCNN's loop takes it.
  xs, kernel, bias = inputs((2, 3, 8, 8, 3), 4, True)
  cotangent = jax.random.normal(jax.random.key(2), (2, 2, 2, 4))

  def loss(xs, k, b):
    out = conv_block.conv_relu_pool(xs, k, b, 4, 2, chunk=jnp.int32(1))
    return jnp.sum(out * cotangent)

  def want_loss(xs, k, b):
    return jnp.sum(conv_block.conv_relu_pool(xs[:, 1], k, b, 4, 2) * cotangent)

  got = jax.grad(loss, (0, 1, 2))(xs, kernel, bias)
  want = jax.grad(want_loss, (0, 1, 2))(xs, kernel, bias)
  assert float(jnp.abs(got[0][:, 1]).max()) > 0
  np.testing.assert_array_equal(got[0][:, [0, 2]], 0.0)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_ties_are_counted_per_window_and_channel():
  # Channel 0: three of the window's four pixels tie at the maximum, 1.
  # Channel 1: all four pixels are 0 (a tie too), so ReLU stops the gradient.
  x = jnp.array([[[1.0, 1.0], [1.0, 0.5]]]).reshape(1, 2, 2, 1)
  kernel = jnp.zeros((3, 3, 1, 2)).at[1, 1, 0, 0].set(1.0)

  def loss(x, kernel, bias):
    out = conv_block.conv_relu_pool(x, kernel, bias, 2, 2)
    return out[..., 0].sum() + 5.0 * out[..., 1].sum()

  dx, dkernel, dbias = jax.grad(loss, (0, 1, 2))(x, kernel, jnp.zeros(2))
  np.testing.assert_allclose(
    dx[0, :, :, 0], [[1 / 3, 1 / 3], [1 / 3, 0.0]], rtol=1e-6
  )
  np.testing.assert_allclose(dbias, [1.0, 0.0], rtol=1e-6)
  # The centre tap reads the three tied pixels (1 each), a third each.
  np.testing.assert_allclose(dkernel[1, 1, 0, 0], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(dkernel[..., 1], 0.0)


def test_a_pool_over_the_largest_is_refused():
  x, kernel, bias = inputs((1, 12, 12, 3), 4, False)
  with pytest.raises(ValueError, match='pool 6 is over the largest'):
    conv_block.conv_relu_pool(x, kernel, bias, 6, 2)


def test_a_strip_that_does_not_divide_the_width_is_refused():
  x, kernel, bias = inputs((1, 8, 10, 3), 4, False)
  with pytest.raises(ValueError, match='strip 4 does not divide the width 10'):
    conv_block.conv_relu_pool(x, kernel, bias, 2, 4)
