"""hpr's named primitives: what the models compute, apart from how each
platform computes it fastest.

Each primitive has a reference implementation (`hpr.kernels.reference`,
plain `jax.lax`, for every platform) and platform implementations
(`hpr.kernels.cpu`: compiled FFI kernels and CPU-tuned XLA formulations).
`impl` chooses:

- 'reference': the reference everywhere;
- 'auto': `jax.lax.platform_dependent(cpu=..., default=reference)`, so the
  choice is made when the step is lowered, for the platform it is lowered
  for: one traced step runs its CPU implementation on a CPU and the
  reference on a GPU or TPU, and a step lowered or exported for cuda or tpu
  holds no CPU custom call. Where no CPU implementation applies to the
  shapes and dtype (anything but float32, for one), 'auto' is the reference.

The platform implementations compute the reference's numbers up to float
rounding, forward and backward (tests/test_kernels*.py).
"""

import functools

import jax
import jax.numpy as jnp

from hpr.kernels import cpu, reference

Array = jax.Array

IMPLS = ('auto', 'reference')


def check_impl(impl: str) -> str:
  """Returns impl, or raises ValueError naming the valid ones."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got '{impl}'")
  return impl


def _dispatch(impl: str, args: tuple, reference_fn, cpu_fn):
  check_impl(impl)
  if impl == 'reference' or cpu_fn is None:
    return reference_fn(*args)
  return jax.lax.platform_dependent(*args, cpu=cpu_fn, default=reference_fn)


def conv_relu_pool(
  x: Array, kernel: Array, bias: Array, pool: int, *, impl: str = 'auto'
) -> Array:
  """max_pool(relu(conv2d(x, kernel, 'same') + bias), pool, 'valid').

  Args:
    x: (N, H, W, C) frames.
    kernel: (kh, kw, C, F), Keras layout.
    bias: (F,).
    pool: square max-pool window and stride.
    impl: 'auto' or 'reference' (see the module docstring).

  Returns:
    (N, H // pool, W // pool, F).
  """
  fast = None
  if impl == 'auto':
    fast = cpu.conv_relu_pool_impl(x.shape, kernel.shape, pool, x.dtype)
  ref = functools.partial(reference.conv_relu_pool, pool=pool)
  return _dispatch(impl, (x, kernel, bias), ref, fast)


def convlstm_layer(
  x: Array,
  kernel: Array,
  recurrent_kernel: Array,
  bias: Array | None,
  mask: Array | None,
  *,
  strides=(1, 1),
  padding: str = 'valid',
  activation=jnp.tanh,
  recurrent_activation=reference.hard_sigmoid,
  unroll: int | bool = 1,
  impl: str = 'auto',
) -> Array:
  """A Keras ConvLSTM2D layer over time (`reference.convlstm_layer`).

  Args:
    x: (T, B, H, W, C), time-major.
    kernel: (kh, kw, C, 4F), Keras layout, gates i, f, c, o.
    recurrent_kernel: (kh, kw, F, 4F).
    bias: (4F,) or None.
    mask: (B, H', W', F) recurrent-dropout mask on h, or None.
    strides: the input conv's.
    padding: the input conv's, 'valid' or 'same'.
    activation: cell-input and output activation.
    recurrent_activation: gate activation.
    unroll: `jax.lax.scan` unroll factor.
    impl: 'auto' or 'reference' (see the module docstring).

  Returns:
    Every step's hidden state, (T, B, H', W', F).
  """
  options = dict(
    strides=tuple(strides),
    padding=padding.lower(),
    activation=activation,
    recurrent_activation=recurrent_activation,
    unroll=unroll,
  )
  fast = None
  if impl == 'auto':
    fast = cpu.convlstm_layer_impl(
      x.shape,
      kernel.shape,
      has_bias=bias is not None,
      dtype=x.dtype,
      **options,
    )
  ref = functools.partial(reference.convlstm_layer, **options)
  args = (x, kernel, recurrent_kernel, bias, mask)
  return _dispatch(impl, args, ref, fast)


__all__ = ['IMPLS', 'check_impl', 'conv_relu_pool', 'convlstm_layer']
