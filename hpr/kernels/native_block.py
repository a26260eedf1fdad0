"""The LRCN's conv blocks, conv ('same', stride 1) + bias + ReLU + max pool
(window = stride, 'valid'), as compiled CPU kernels called through XLA's FFI.

The same numbers as `reference.conv_relu_pool` (outputs, gradients split
evenly between tied maxima), from `hpr/kernels/native/conv_relu_pool.cc`,
built with the package (`pip install`) as `hpr/kernels/_conv_relu_pool*.so`.
Each pooling window's P x P conv outputs are computed at once for 16 output
channels (one AVX-512 register; the kernel is compiled for AVX-512, AVX2 and
plain x86-64, picked when it loads) and pooled in registers, so the
full-resolution activations never reach memory; the forward pass keeps a bit
mask of each window's maxima for the backward pass.

The backward pass has two forms. For a multiple of 16 input channels one
kernel computes the input's gradient and the kernel's: only a window's
maxima carry gradient, so it visits those pixels alone, 16 input channels at
a time. For fewer input channels (the RGB frames of a first block) the
kernel's gradient is native and the input's, which XLA drops when nothing
asks for it, is an XLA op, as is the bias' gradient everywhere.

Each call splits its images, in fixed blocks, between the calling thread
and XLA's intra-op thread pool. Each op is partitioned along the batch with
`custom_partitioning`, so under `jax.jit` on a batch sharded over a
('data',) mesh every device runs its own part, and the kernel's gradient is
summed over the devices with one all-reduce. Summation orders are fixed
(in float32 within a block of images, over blocks in float64, whatever the
number of threads), so results are deterministic.

`available()` says whether the library loaded (it is built on Linux and
macOS); `supports(...)` whether it takes a block. Measurements are in
benchmarks/README.md.
"""

import ctypes
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from hpr.kernels import conv_block, im2col
from hpr.kernels.reference import same_padding

Array = jax.Array

# Output channels are computed 16 at a time, pools unrolled for 2..5.
LANES = 16
POOLS = (2, 3, 4, 5)
_FORWARD = 'hpr_conv_relu_pool_forward'
_KERNEL_GRAD = 'hpr_conv_relu_pool_kernel_grad'
_BACKWARD = 'hpr_conv_relu_pool_backward'


@functools.cache
def available() -> bool:
  """Whether the compiled kernels loaded and are registered with XLA."""
  spec = importlib.util.find_spec('hpr.kernels._conv_relu_pool')
  if spec is None or spec.origin is None:
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(spec.origin)
  except OSError:
    return False
  for name, symbol in (
    (_FORWARD, lib.HprConvReluPoolForward),
    (_KERNEL_GRAD, lib.HprConvReluPoolKernelGrad),
    (_BACKWARD, lib.HprConvReluPoolBackward),
  ):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform='cpu')
  return True


def supports(shape, kernel_shape, pool: int, dtype) -> bool:
  """Whether `conv_relu_pool` runs here for (N, H, W, C) frames and a (kh,
  kw, C, F) kernel: the library loaded, float32, F a multiple of LANES,
  pool in POOLS, and at least one pooled pixel (the caller, under
  `jax.lax.platform_dependent`, runs it on a CPU only)."""
  return (
    available()
    and jnp.dtype(dtype) == jnp.float32
    and kernel_shape[-1] % LANES == 0
    and pool in POOLS
    and min(shape[-3:-1]) >= pool
  )


def conv_relu_pool(x: Array, kernel: Array, bias: Array, pool: int) -> Array:
  """max_pool(relu(conv2d(x, kernel, 'same') + bias), pool, 'valid').

  Args:
    x: (N, H, W, C) float32 images.
    kernel: (kh, kw, C, F), Keras layout; F a multiple of LANES.
    bias: (F,).
    pool: square max-pool window and stride, one of POOLS.

  Returns:
    (N, H // pool, W // pool, F).
  """
  if not supports(x.shape, kernel.shape, pool, x.dtype):
    raise ValueError(
      f'native conv_relu_pool does not run for frames {x.shape} '
      f'{jnp.dtype(x.dtype)}, kernel {kernel.shape}, pool {pool} '
      f'(library loaded: {available()})'
    )
  return _conv_relu_pool(x, kernel, bias, pool)


def _pads(kernel_shape) -> tuple[int, int]:
  """TensorFlow's 'same' padding before the first row and column."""
  return tuple(same_padding(1, k, 1)[0] for k in kernel_shape[:2])


def _attrs(pool, pads):
  return {
    'pool': np.int64(pool),
    'pad_top': np.int64(pads[0]),
    'pad_left': np.int64(pads[1]),
  }


def _forward_call(x, kernel, bias, pool, pads):
  n, height, width, _ = x.shape
  shape = (n, height // pool, width // pool, kernel.shape[-1])
  return jax.ffi.ffi_call(
    _FORWARD,
    (
      jax.ShapeDtypeStruct(shape, jnp.float32),
      jax.ShapeDtypeStruct(shape, jnp.int32),
    ),
    vmap_method='sequential',
  )(x, kernel, bias, **_attrs(pool, pads))


def _kernel_grad_call(x, kernel, mask, g, pool, pads, axis):
  dkernel = jax.ffi.ffi_call(
    _KERNEL_GRAD,
    jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
    vmap_method='sequential',
  )(x, kernel, mask, g, **_attrs(pool, pads))
  return dkernel if axis is None else jax.lax.psum(dkernel, axis)


def _backward_call(x, kernel, mask, g, pool, pads, axis):
  dx, dkernel = jax.ffi.ffi_call(
    _BACKWARD,
    (
      jax.ShapeDtypeStruct(x.shape, jnp.float32),
      jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
    ),
    vmap_method='sequential',
  )(x, kernel, mask, g, **_attrs(pool, pads))
  return dx, dkernel if axis is None else jax.lax.psum(dkernel, axis)


def _batch_axis(arg_shapes):
  """The mesh axis (or axes) the first operand's batch is sharded over."""
  spec = arg_shapes[0].sharding.spec
  return spec[0] if len(spec) else None


@functools.partial(custom_partitioning, static_argnums=(3, 4))
def _forward(x, kernel, bias, pool, pads):
  """(pooled output, mask), each (N, H / pool, W / pool, F)."""
  return _forward_call(x, kernel, bias, pool, pads)


def _forward_infer(pool, pads, mesh, arg_shapes, result_shape):
  batch = NamedSharding(mesh, PartitionSpec(_batch_axis(arg_shapes)))
  return batch, batch


def _forward_partition(pool, pads, mesh, arg_shapes, result_shape):
  batch = NamedSharding(mesh, PartitionSpec(_batch_axis(arg_shapes)))
  whole = NamedSharding(mesh, PartitionSpec())

  def lower(x, kernel, bias):
    return _forward_call(x, kernel, bias, pool, pads)

  return mesh, lower, (batch, batch), (batch, whole, whole)


_forward.def_partition(
  _forward_partition,
  infer_sharding_from_operands=_forward_infer,
  sharding_rule='n h w c, y x c f, f -> n i j f, n i j f',
)


@functools.partial(custom_partitioning, static_argnums=(4, 5))
def _kernel_grad(x, kernel, mask, g, pool, pads):
  """The kernel's gradient, (kh, kw, C, F), from the forward's mask and the
  pooled output's gradient g."""
  return _kernel_grad_call(x, kernel, mask, g, pool, pads, None)


def _kernel_grad_infer(pool, pads, mesh, arg_shapes, result_shape):
  return NamedSharding(mesh, PartitionSpec())


def _kernel_grad_partition(pool, pads, mesh, arg_shapes, result_shape):
  axis = _batch_axis(arg_shapes)
  batch = NamedSharding(mesh, PartitionSpec(axis))
  whole = NamedSharding(mesh, PartitionSpec())

  def lower(x, kernel, mask, g):
    return _kernel_grad_call(x, kernel, mask, g, pool, pads, axis)

  return mesh, lower, whole, (batch, whole, batch, batch)


_kernel_grad.def_partition(
  _kernel_grad_partition,
  infer_sharding_from_operands=_kernel_grad_infer,
  sharding_rule='n h w c, y x c f, n i j f, n i j f -> y x c f',
  reduction_factors=('n',),
)


@functools.partial(custom_partitioning, static_argnums=(4, 5))
def _backward(x, kernel, mask, g, pool, pads):
  """(the input's gradient, the kernel's), from the forward's mask and the
  pooled output's gradient g; x has a multiple of LANES channels."""
  return _backward_call(x, kernel, mask, g, pool, pads, None)


def _backward_infer(pool, pads, mesh, arg_shapes, result_shape):
  batch = NamedSharding(mesh, PartitionSpec(_batch_axis(arg_shapes)))
  return batch, NamedSharding(mesh, PartitionSpec())


def _backward_partition(pool, pads, mesh, arg_shapes, result_shape):
  axis = _batch_axis(arg_shapes)
  batch = NamedSharding(mesh, PartitionSpec(axis))
  whole = NamedSharding(mesh, PartitionSpec())

  def lower(x, kernel, mask, g):
    return _backward_call(x, kernel, mask, g, pool, pads, axis)

  return mesh, lower, (batch, whole), (batch, whole, batch, batch)


_backward.def_partition(
  _backward_partition,
  infer_sharding_from_operands=_backward_infer,
  # The kernel's gradient is summed over the batch inside `lower` (a
  # factor of a result cannot also be a reduction factor).
  sharding_rule='n h w c, y x c f, n i j f, n i j f -> n h w c, y x c f',
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_relu_pool(x, kernel, bias, pool):
  return _forward(x, kernel, bias, pool, _pads(kernel.shape))[0]


def _conv_relu_pool_fwd(x, kernel, bias, pool):
  out, mask = _forward(x, kernel, bias, pool, _pads(kernel.shape))
  return out, (x, kernel, mask)


def _conv_relu_pool_bwd(pool, residuals, g):
  x, kernel, mask = residuals
  # Each window's shares add up to its pooled gradient.
  dbias = jnp.sum(jnp.where(mask != 0, g, 0.0), axis=(0, 1, 2))
  # The native input gradient needs a multiple of LANES input channels.
  if x.shape[-1] % LANES == 0:
    dx, dkernel = _backward(x, kernel, mask, g, pool, _pads(kernel.shape))
    return dx, dkernel, dbias
  dkernel = _kernel_grad(x, kernel, mask, g, pool, _pads(kernel.shape))
  return _input_grad(x, kernel, mask, g, pool), dkernel, dbias


def _input_grad(x, kernel, mask, g, pool):
  """The input's gradient: the pooled gradients, split between each
  window's maxima, through the transposed conv (patches' transpose)."""
  dy = conv_block.spread_pooled_grad(mask, g, pool, x.shape[1:3])
  patches_t = jax.linear_transpose(
    lambda x: im2col.patches(x, kernel.shape[:2], (1, 1), 'same'),
    jax.ShapeDtypeStruct(x.shape, x.dtype),
  )
  (dx,) = patches_t(dy @ kernel.reshape(-1, kernel.shape[-1]).T)
  return dx


_conv_relu_pool.defvjp(_conv_relu_pool_fwd, _conv_relu_pool_bwd)
