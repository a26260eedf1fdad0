"""hpr.kernels' primitives, 'auto' against 'reference' on one device:
outputs and every gradient, for each CPU implementation 'auto' can pick
(the compiled kernels, conv_block's op, conv_sum, im2col patches, the
time-major loop), with tied maxima, remainders, odd sizes, 'same' padding
and recurrent-dropout masks; plus which one 'auto' picks, and that it
picks the reference where none applies."""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpr import kernels
from hpr.kernels import cpu, native_block, native_convlstm, reference

ON_X86_LINUX = platform.system() == 'Linux' and platform.machine() == 'x86_64'


def block_inputs(shape, features, ties, kernel_size=3):
  kx, kk, kb = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  if ties:
    # Flat regions (as in saturated or synthetic frames) make neighbouring
    # conv outputs exactly equal, so pooled gradients have ties to split.
    x = x.at[:, 2:12, 4:16].set(0.5)
  kernel = jax.random.normal(
    kk, (kernel_size, kernel_size, shape[-1], features)
  ) / np.sqrt(kernel_size * kernel_size * shape[-1] / 3)
  bias = jax.random.normal(kb, (features,)) * 0.1
  return x, kernel, bias


def assert_same_values_and_grads(fn, args, argnums, skip=(), rtol=1e-5):
  """fn(*args, impl='auto') and its gradients (a non-linear loss, so each
  output's gradient differs) equal those of impl='reference'."""
  got = jax.jit(lambda *a: fn(*a, impl='auto'))(*args)
  want = fn(*args, impl='reference')
  assert got.shape == want.shape and got.dtype == want.dtype
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)
  weights = jax.random.normal(jax.random.key(9), want.shape)

  def grads(impl):
    def loss(*a):
      return jnp.sum(jnp.tanh(fn(*a, impl=impl)) * weights)

    return jax.jit(jax.grad(loss, argnums))(*args)

  for i, g, w in zip(argnums, grads('auto'), grads('reference'), strict=True):
    if i in skip:
      continue
    scale = float(jnp.abs(w).max())
    assert scale > 0, i  # Something flows.
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=i)


def block_path(x, kernel, pool):
  fn = cpu.conv_relu_pool_impl(x.shape, kernel.shape, pool, x.dtype)
  if fn is None:
    return 'reference'
  if fn.func is cpu._native_block:
    return 'native'
  if fn.func is cpu._conv_relu_pool:
    return fn.keywords['conv'].func.__name__  # _conv_sum or conv2d (im2col)
  return fn.func.__module__.rsplit('.', 1)[-1]  # conv_block


def test_the_libraries_are_built_and_load():
  if not ON_X86_LINUX:
    pytest.skip('CI builds them on x86-64 Linux')
  assert native_block.available()
  assert native_convlstm.available()


NATIVE = 'native' if ON_X86_LINUX else None
BLOCK_CASES = [
  # shape, kernel size, features, pool, ties, the path 'auto' takes.
  ((3, 16, 16, 3), 3, 16, 4, False, NATIVE),
  ((3, 16, 16, 3), 3, 16, 4, True, NATIVE),
  ((2, 13, 10, 3), 3, 16, 3, True, NATIVE),  # Remainders on both axes.
  ((2, 12, 12, 2), 3, 32, 2, False, NATIVE),  # Two groups of 16 channels.
  ((2, 10, 12, 1), 3, 16, 5, True, NATIVE),  # 25 window pixels, 25 bits.
  ((2, 12, 12, 3), 5, 16, 2, False, NATIVE),
  ((2, 12, 12, 3), 2, 16, 2, False, NATIVE),  # Even kernel: pads after.
  # A multiple of 16 input channels: the native backward pass, the input's
  # gradient included.
  ((3, 16, 16, 16), 3, 32, 4, False, NATIVE),
  ((3, 16, 16, 16), 3, 32, 4, True, NATIVE),
  ((2, 13, 10, 32), 3, 16, 3, True, NATIVE),
  ((3, 4, 4, 32), 3, 64, 2, False, NATIVE),
  ((3, 2, 2, 64), 3, 64, 2, False, NATIVE),  # One window: a last block.
  ((2, 10, 12, 16), 3, 16, 5, True, NATIVE),
  ((2, 12, 12, 16), 5, 16, 2, False, NATIVE),
  ((2, 12, 12, 16), 2, 16, 2, True, NATIVE),
  # 8 output channels: no compiled kernel. RGB frames: conv_block's op.
  ((3, 16, 16, 3), 3, 8, 4, False, 'conv_block'),
  ((2, 18, 20, 3), 3, 8, 4, True, 'conv_block'),  # Drops 2 rows.
  ((2, 10, 12, 3), 3, 8, 5, True, 'conv_block'),
  # More channels: conv_sum's convolution, or patches on small inputs.
  ((3, 8, 8, 8), 3, 8, 2, False, '_conv_sum'),
  ((2, 9, 7, 5), 3, 8, 3, True, '_conv_sum'),  # Odd width.
  ((3, 2, 2, 8), 3, 8, 2, False, 'conv2d'),
]


@pytest.mark.parametrize('shape, size, features, pool, ties, path', BLOCK_CASES)
def test_conv_relu_pool_auto_matches_the_reference(
  shape, size, features, pool, ties, path
):
  x, kernel, bias = block_inputs(shape, features, ties, size)
  if path is not None:
    assert block_path(x, kernel, pool) == path
  # Pixels that tie exactly in the plain product may differ in their last
  # bit in conv_block's banded one, so the input's gradient can go to
  # another pixel of the tie; the kernel's and the bias' cannot tell.
  skip = (0,) if ties and path == 'conv_block' else ()
  assert_same_values_and_grads(
    lambda x, k, b, impl: kernels.conv_relu_pool(x, k, b, pool, impl=impl),
    (x, kernel, bias),
    (0, 1, 2),
    skip=skip,
  )


def test_conv_relu_pool_ties_split_the_gradient_evenly():
  # One window of four equal positive pixels shares its gradient of 1.
  x = jnp.ones((1, 2, 2, 1))
  kernel = jnp.zeros((3, 3, 1, 16)).at[1, 1].set(1.0)
  for impl in kernels.IMPLS:
    grad = jax.grad(
      lambda x, impl=impl: kernels.conv_relu_pool(
        x, kernel, jnp.zeros(16), 2, impl=impl
      )[..., 0].sum()
    )(x)
    np.testing.assert_allclose(grad, np.full((1, 2, 2, 1), 0.25))


def test_other_dtypes_and_reference_take_the_reference():
  shape, kshape = (2, 16, 16, 3), (3, 3, 3, 16)
  assert cpu.conv_relu_pool_impl(shape, kshape, 4, jnp.bfloat16) is None
  x = jnp.ones(shape, jnp.bfloat16)
  k, b = jnp.ones(kshape, jnp.bfloat16), jnp.zeros(16, jnp.bfloat16)
  for impl in kernels.IMPLS:
    jaxpr = str(jax.make_jaxpr(
      lambda x, impl=impl: kernels.conv_relu_pool(x, k, b, 4, impl=impl)
    )(x))  # fmt: skip
    assert 'platform_index' not in jaxpr and 'custom_vjp' not in jaxpr
  jaxpr = str(jax.make_jaxpr(
    lambda x: kernels.conv_relu_pool(x, k, b, 4, impl='reference')
  )(x.astype(jnp.float32)))  # fmt: skip
  assert 'platform_index' not in jaxpr


def test_an_unknown_impl_is_refused():
  x, kernel, bias = block_inputs((1, 8, 8, 3), 16, False)
  with pytest.raises(ValueError, match='impl must be one of auto, reference'):
    kernels.conv_relu_pool(x, kernel, bias, 2, impl='cuda')


def test_unsupported_shapes_are_refused_by_the_native_block():
  x, kernel, bias = block_inputs((2, 8, 8, 3), 8, False)
  with pytest.raises(ValueError, match=r'kernel \(3, 3, 3, 8\)'):
    native_block.conv_relu_pool(x, kernel, bias, 2)
  assert not native_block.supports(x.shape, (3, 3, 3, 16), 6, jnp.float32)
  assert not native_block.supports(x.shape, (3, 3, 3, 16), 2, jnp.bfloat16)


def layer_inputs(channels, features, size, dropout, padding='valid', stride=1):
  kernel_size = (3, 3)
  keys = jax.random.split(jax.random.key(1), 5)
  x = jax.random.normal(keys[0], (4, 3, size, size, channels))
  kernel = jax.random.normal(keys[1], (*kernel_size, channels, 4 * features))
  kernel = kernel / np.sqrt(np.prod(kernel_size) * channels)
  recurrent_kernel = jax.random.normal(
    keys[2], (*kernel_size, features, 4 * features)
  ) / np.sqrt(np.prod(kernel_size) * features)
  bias = jax.random.normal(keys[3], (4 * features,)) * 0.1
  mask = None
  if dropout:
    out = reference.conv_output_size(size, 3, stride, padding)
    keep = jax.random.uniform(keys[4], (3, out, out, features)) > 0.3
    mask = keep / 0.7
  return x, kernel, recurrent_kernel, bias, mask


def layer_path(x, kernel, **options):
  fn = cpu.convlstm_layer_impl(
    x.shape, kernel.shape, has_bias=True, dtype=x.dtype, unroll=1, **options
  )
  if fn is None:
    return 'reference'
  if fn.func is cpu._native_convlstm:
    return 'native'
  step = fn.keywords['step'].keywords
  channels = x.shape[-1] + kernel.shape[-1] // 4
  uses_conv_sum = (
    step['strides'] == (1, 1) and channels <= cpu.CONV_SUM_MAX_CHANNELS
  )
  return 'conv_sum' if uses_conv_sum else 'patches'


LAYER_CASES = [
  # channels, features, size, padding, recurrent dropout, activation,
  # recurrent activation, strides, the path 'auto' takes.
  (3, 4, 10, 'valid', True, 'tanh', 'hard_sigmoid', 1, NATIVE),  # Layer 1.
  (4, 8, 9, 'same', False, 'tanh', 'hard_sigmoid', 1, NATIVE),
  (5, 12, 7, 'valid', True, 'tanh', 'hard_sigmoid', 1, NATIVE),
  (14, 16, 6, 'valid', True, 'tanh', 'hard_sigmoid', 1, NATIVE),  # Layer 4.
  # Without the compiled kernels' activations: the time-major loop, its
  # convolutions packed two pixels a row (conv_sum; an odd width) or as
  # patches (more channels, or strides).
  (3, 4, 9, 'valid', True, 'tanh', 'sigmoid', 1, 'conv_sum'),
  (4, 6, 8, 'same', False, 'relu', 'hard_sigmoid', 1, 'conv_sum'),
  (8, 14, 7, 'valid', True, 'tanh', 'sigmoid', 1, 'patches'),  # Layer 3.
  (3, 4, 9, 'same', True, 'tanh', 'sigmoid', 2, 'patches'),
]


@pytest.mark.parametrize(
  'channels, features, size, padding, dropout, act, rec_act, stride, path',
  LAYER_CASES,
)
def test_convlstm_layer_auto_matches_the_reference(
  channels, features, size, padding, dropout, act, rec_act, stride, path
):
  from hpr.models import layers

  x, kernel, recurrent_kernel, bias, mask = layer_inputs(
    channels, features, size, dropout, padding, stride
  )
  options = dict(
    strides=(stride, stride),
    padding=padding,
    activation=layers.get_activation(act),
    recurrent_activation=layers.get_activation(rec_act),
  )
  if path is not None:
    assert layer_path(x, kernel, **options) == path

  def layer(x, kernel, recurrent_kernel, bias, impl):
    return kernels.convlstm_layer(
      x, kernel, recurrent_kernel, bias, mask, impl=impl, **options
    )

  args = (x, kernel, recurrent_kernel, bias)
  assert_same_values_and_grads(layer, args, (0, 1, 2, 3))
  if channels == 3:
    # Without the input's gradient too (a first layer's video).
    assert_same_values_and_grads(layer, args, (1, 2, 3))


def test_convlstm_layers_native_does_not_take_are_refused():
  shape, kshape = (5, 2, 8, 8, 3), (3, 3, 3, 16)
  args = ((1, 1), jnp.tanh, reference.hard_sigmoid, True)
  assert native_convlstm.supports(shape, kshape, *args, jnp.float32) == (
    native_convlstm.available()
  )
  assert not native_convlstm.supports(shape, kshape, *args, jnp.bfloat16)
  assert not native_convlstm.supports(shape, (3, 3, 3, 56), *args, jnp.float32)
  sigmoid = ((1, 1), jnp.tanh, jax.nn.sigmoid, True)
  assert not native_convlstm.supports(shape, kshape, *sigmoid, jnp.float32)
  no_bias = ((1, 1), jnp.tanh, reference.hard_sigmoid, False)
  assert not native_convlstm.supports(shape, kshape, *no_bias, jnp.float32)
  assert (
    cpu.convlstm_layer_impl(
      shape,
      kshape,
      strides=(1, 1),
      padding='valid',
      activation=jnp.tanh,
      recurrent_activation=reference.hard_sigmoid,
      has_bias=True,
      unroll=1,
      dtype=jnp.bfloat16,
    )
    is None
  )
