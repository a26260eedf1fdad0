"""conv_sum against a sum of `lax.conv_general_dilated` under autodiff:
values and the gradients of every input and kernel, for the paddings the
ConvLSTM uses (valid input, 'same' hidden state, odd and even kernels), one
pixel per row and several (`pixels_per_row`, the packed convolution)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpr.kernels.conv_sum import conv_sum
from hpr.kernels.reference import same_padding


def reference(inputs, kernels, paddings):
  return sum(
    jax.lax.conv_general_dilated(
      x, k, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    for x, k, pad in zip(inputs, kernels, paddings, strict=True)
  )


def same(size, k):
  return same_padding(size, k, 1)


CASES = {
  # The ConvLSTM's first layer: a valid input conv and a 'same' recurrent
  # conv on the output grid.
  'valid+same-3x3': (
    (9, 8),
    ((0, 0), (0, 0)),
    (7, 6),
    (same(7, 3), same(6, 3)),
    (3, 3),
  ),
  # An odd output width: packed, it is rounded up and sliced.
  'valid+same-3x3-odd': (
    (9, 9),
    ((0, 0), (0, 0)),
    (7, 7),
    (same(7, 3), same(7, 3)),
    (3, 3),
  ),
  'same+same-3x3': (
    (7, 6),
    (same(7, 3), same(6, 3)),
    (7, 6),
    (same(7, 3), same(6, 3)),
    (3, 3),
  ),
  # An even kernel pads one side only.
  'same+same-2x3': (
    (7, 6),
    (same(7, 2), same(6, 3)),
    (7, 6),
    (same(7, 2), same(6, 3)),
    (2, 3),
  ),
  # Widths divisible by 3 (12 padded, 9 out), so 3 pixels a row pack too.
  'valid+same-3x4': (
    (9, 12),
    ((0, 0), (0, 0)),
    (7, 9),
    (same(7, 3), same(9, 4)),
    (3, 4),
  ),
}


@pytest.mark.parametrize('pixels', [1, 2, 3])
@pytest.mark.parametrize('case', list(CASES))
def test_conv_sum_matches_autodiff_of_two_convs(case, pixels):
  # pixels_per_row=2 packs the 3x3 kernels, 3 the 3x4 one; the others fall
  # back to one pixel a row.
  size_a, pad_a, size_b, pad_b, (kh, kw) = CASES[case]
  keys = jax.random.split(jax.random.key(0), 5)
  a = jax.random.normal(keys[0], (2, *size_a, 3))
  b = jax.random.normal(keys[1], (2, *size_b, 4))
  ka = jax.random.normal(keys[2], (kh, kw, 3, 16))
  kb = jax.random.normal(keys[3], (kh, kw, 4, 16))
  paddings = (pad_a, pad_b)

  def packed(inputs, kernels, paddings):
    return conv_sum(inputs, kernels, paddings, pixels_per_row=pixels)

  got = packed((a, b), (ka, kb), paddings)
  want = reference((a, b), (ka, kb), paddings)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  # A non-linear loss, so each output pixel's gradient differs.
  weights = jax.random.normal(keys[4], want.shape)

  def loss(fn):
    return lambda *args: jnp.sum(
      jnp.tanh(fn(args[:2], args[2:], paddings)) * weights
    )

  grads = jax.grad(loss(packed), argnums=(0, 1, 2, 3))(a, b, ka, kb)
  expected = jax.grad(loss(reference), argnums=(0, 1, 2, 3))(a, b, ka, kb)
  for name, g, e in zip(('a', 'b', 'ka', 'kb'), grads, expected, strict=True):
    assert g.shape == e.shape, name
    scale = float(jnp.max(jnp.abs(e)))
    assert scale > 0, name
    err = float(jnp.max(jnp.abs(g - e))) / scale
    assert err < 1e-5, (name, err)


def test_pixels_per_row_packs_the_convolution():
  # Two pixels a row: the forward convolution runs on (N, H, W/2, 2C)
  # images into 2F channels; an odd width is rounded up and sliced.
  a, b = jnp.ones((2, 9, 8, 3)), jnp.ones((2, 7, 6, 4))
  ka, kb = jnp.ones((3, 3, 3, 16)), jnp.ones((3, 3, 4, 16))
  pads = (((0, 0), (0, 0)), ((1, 1), (1, 1)))

  def hlo(a, b, pixels):
    fn = jax.jit(
      lambda a, b: conv_sum((a, b), (ka, kb), pads, pixels_per_row=pixels)
    )
    return fn.lower(a, b).as_text()

  assert 'tensor<2x7x3x32xf32>' in hlo(a, b, 2)
  assert 'tensor<2x7x6x16xf32>' in hlo(a, b, 1)
  odd_a, odd_b = jnp.ones((2, 9, 9, 3)), jnp.ones((2, 7, 7, 4))
  assert 'tensor<2x7x4x32xf32>' in hlo(odd_a, odd_b, 2)
  with pytest.raises(ValueError, match='pixels_per_row'):
    hlo(a, b, 0)


@pytest.mark.slow
def test_conv_sum_under_jit_and_scan():
  # The way the ConvLSTM calls it: inside a rematerialised scan body.
  keys = jax.random.split(jax.random.key(1), 3)
  xs = jax.random.normal(keys[0], (4, 2, 8, 8, 3))
  ka = jax.random.normal(keys[1], (3, 3, 3, 4)) * 0.3
  kb = jax.random.normal(keys[2], (3, 3, 4, 4)) * 0.3
  pads = (((0, 0), (0, 0)), ((1, 1), (1, 1)))

  def run(fn, ka, kb):
    @jax.checkpoint
    def body(h, x):
      h = jnp.tanh(fn((x, h), (ka, kb), pads))
      return h, h

    h, _ = jax.lax.scan(body, jnp.zeros((2, 6, 6, 4)), xs)
    return jnp.sum(h**2)

  got = jax.jit(jax.value_and_grad(lambda *k: run(conv_sum, *k), (0, 1)))(
    ka, kb
  )
  want = jax.jit(jax.value_and_grad(lambda *k: run(reference, *k), (0, 1)))(
    ka, kb
  )
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, e in zip(got[1], want[1], strict=True):
    np.testing.assert_allclose(
      g, e, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(e)))
    )


def test_conv_sum_refuses_inputs_of_different_padded_sizes():
  a, b = jnp.zeros((1, 9, 9, 3)), jnp.zeros((1, 7, 7, 4))
  ka, kb = jnp.zeros((3, 3, 3, 8)), jnp.zeros((3, 3, 4, 8))
  with pytest.raises(ValueError, match='padded inputs differ in size'):
    conv_sum((a, b), (ka, kb), (((0, 0), (0, 0)), ((0, 0), (0, 0))))
  with pytest.raises(ValueError, match='kernels differ'):
    conv_sum(
      (a, b), (ka, jnp.zeros((3, 3, 4, 4))), (((0, 0),) * 2, ((1, 1),) * 2)
    )
  with pytest.raises(ValueError, match='outside'):
    small = jnp.zeros((1, 3, 3, 4))
    conv_sum((a, small), (ka, kb), (((0, 0),) * 2, ((3, 3),) * 2))
