"""A whole ConvLSTM layer (`reference.convlstm_layer`) as compiled CPU
kernels called through XLA's FFI.

`hpr/kernels/native/conv_lstm.cc`, built with the package (`pip install`) as
`hpr/kernels/_conv_lstm*.so`, runs the forward pass over all time steps and
the backward pass through time, each clip on one thread with its step's
gates, state and gradients in cache: per pixel the input and recurrent
convolutions accumulate all 4F gates in G / 16 vectors, the gate math runs
on rows of the step, and the backward pass keeps each step's gate gradient
for the kernels' gradients and the input's and the previous state's.

The forward pass keeps, for the backward pass, every step's cell state and
activated gates. What it computes is the reference layer with tanh
activation and Keras 2's hard sigmoid gates, stride 1, the recurrent dropout
mask on h; tanh is Eigen's rational approximation (float32, within a few
ulp), and the numbers agree with the reference to 1e-5
(tests/test_kernels.py). The input's gradient is computed only where it is
needed (`jax.custom_vjp`'s `symbolic_zeros`: not for the video entering the
first layer).

Each op is partitioned along the batch with `custom_partitioning`, so under
`jax.jit` on a batch sharded over a ('data',) mesh every device runs its
own clips and the kernels' gradients are summed over the devices with one
all-reduce. Summation orders are fixed (each clip's in float32, over clips
in float64, whatever the number of threads), so results are deterministic.

`available()` says whether the library loaded; `supports(...)` whether it
takes a layer. Measurements are in benchmarks/README.md.
"""

import ctypes
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from hpr.kernels.reference import hard_sigmoid, same_padding

Array = jax.Array

LANES = 16
# A pixel's 4F gates are at most this many vectors of LANES.
MAX_VECTORS = 4
# Input and hidden channels times the gate vectors, at most.
MAX_CHANNEL_VECTORS = 64
_FORWARD = 'hpr_conv_lstm_forward'
_BACKWARD = 'hpr_conv_lstm_backward'


@functools.cache
def available() -> bool:
  """Whether the compiled kernels loaded and are registered with XLA."""
  spec = importlib.util.find_spec('hpr.kernels._conv_lstm')
  if spec is None or spec.origin is None:
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(spec.origin)
  except OSError:
    return False
  for name, symbol in (
    (_FORWARD, lib.HprConvLstmForward),
    (_BACKWARD, lib.HprConvLstmBackward),
  ):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform='cpu')
  return True


def supports(
  x_shape,
  kernel_shape,
  strides,
  activation,
  recurrent_activation,
  has_bias: bool,
  dtype,
) -> bool:
  """Whether `conv_lstm` takes a layer on a time-major (T, B, H, W, C)
  input with a (kh, kw, C, 4F) kernel: the library loaded, float32, stride
  1, tanh and Keras 2's hard sigmoid, a bias, 4F a multiple of LANES (at
  most MAX_VECTORS of them), and few enough channels (MAX_CHANNEL_VECTORS).
  The caller, under `jax.lax.platform_dependent`, runs it on a CPU only."""
  gates = kernel_shape[-1]
  vectors = gates // LANES
  return (
    available()
    and jnp.dtype(dtype) == jnp.float32
    and tuple(strides) == (1, 1)
    and activation is jnp.tanh
    and recurrent_activation is hard_sigmoid
    and has_bias
    and gates % LANES == 0
    and 1 <= vectors <= MAX_VECTORS
    and max(x_shape[-1], gates // 4) * vectors <= MAX_CHANNEL_VECTORS
    and len(x_shape) == 5
  )


def conv_lstm(
  x: Array,
  kernel: Array,
  recurrent_kernel: Array,
  bias: Array,
  mask: Array,
  padding: str,
) -> Array:
  """The hidden states of a ConvLSTM layer, every step.

  Args:
    x: (T, B, H, W, C) float32, time-major.
    kernel: (kh, kw, C, 4F), Keras layout, gates i, f, c, o.
    recurrent_kernel: (kh, kw, F, 4F).
    bias: (4F,).
    mask: (B, H', W', F), multiplied onto h before the recurrent
      convolution (ones for none).
    padding: the input convolution's, 'valid' or 'same'.

  Returns:
    (T, B, H', W', F).
  """
  if not available():
    raise ValueError(
      'native conv_lstm: the compiled kernels (hpr/kernels/_conv_lstm*.so) '
      "did not load; reinstall hpr with a C++ compiler, or use impl='reference'"
    )
  kh, kw = kernel.shape[:2]
  if padding == 'same':
    pads = tuple(
      same_padding(n, k, 1)[0]
      for n, k in zip(x.shape[2:4], (kh, kw), strict=True)
    )
  else:
    pads = (0, 0)
  hpads = tuple(
    same_padding(n, k, 1)[0]
    for n, k in zip(mask.shape[1:3], (kh, kw), strict=True)
  )
  return _conv_lstm(x, kernel, recurrent_kernel, bias, mask, pads + hpads)


def _attrs(pads):
  return {
    name: np.int64(p)
    for name, p in zip(
      ('pad_top', 'pad_left', 'hpad_top', 'hpad_left'), pads, strict=True
    )
  }


def _forward_call(x, kernel, recurrent_kernel, bias, mask, pads):
  steps, n = x.shape[:2]
  _, height, width, features = mask.shape
  state = jax.ShapeDtypeStruct((steps, n, height, width, features), x.dtype)
  gates = jax.ShapeDtypeStruct(
    (steps, n, height, 4 * width * features), x.dtype
  )
  return jax.ffi.ffi_call(
    _FORWARD, (state, state, gates), vmap_method='sequential'
  )(x, kernel, recurrent_kernel, bias, mask, **_attrs(pads))


def _backward_call(
  dy, x, kernel, recurrent_kernel, mask, hs, cs, gates, pads, input_grad
):
  """(dx or an empty array, and each clip's gradients of the kernel, the
  recurrent kernel and the bias: (B, ...) each)."""
  n = x.shape[1]
  return jax.ffi.ffi_call(
    _BACKWARD,
    (
      jax.ShapeDtypeStruct(x.shape if input_grad else (0,), x.dtype),
      jax.ShapeDtypeStruct((n,) + kernel.shape, x.dtype),
      jax.ShapeDtypeStruct((n,) + recurrent_kernel.shape, x.dtype),
      jax.ShapeDtypeStruct((n,) + kernel.shape[-1:], x.dtype),
    ),
    vmap_method='sequential',
  )(dy, x, kernel, recurrent_kernel, mask, hs, cs, gates, **_attrs(pads))


def _batch_axis(arg_shapes, dim):
  """The mesh axis (or axes) dimension `dim` of the first operand is sharded
  over."""
  spec = arg_shapes[0].sharding.spec
  return spec[dim] if len(spec) > dim else None


def _shardings(mesh, axis):
  return (
    NamedSharding(mesh, PartitionSpec(None, axis)),  # time-major
    NamedSharding(mesh, PartitionSpec(axis)),  # the mask
    NamedSharding(mesh, PartitionSpec()),
  )


@functools.partial(custom_partitioning, static_argnums=(5,))
def _forward(x, kernel, recurrent_kernel, bias, mask, pads):
  """(h, c, gates) of every step."""
  return _forward_call(x, kernel, recurrent_kernel, bias, mask, pads)


def _forward_infer(pads, mesh, arg_shapes, result_shape):
  time_major, _, _ = _shardings(mesh, _batch_axis(arg_shapes, 1))
  return time_major, time_major, time_major


def _forward_partition(pads, mesh, arg_shapes, result_shape):
  time_major, batch, whole = _shardings(mesh, _batch_axis(arg_shapes, 1))

  def lower(x, kernel, recurrent_kernel, bias, mask):
    return _forward_call(x, kernel, recurrent_kernel, bias, mask, pads)

  return (
    mesh,
    lower,
    (time_major,) * 3,
    (time_major, whole, whole, whole, batch),
  )


_forward.def_partition(
  _forward_partition,
  infer_sharding_from_operands=_forward_infer,
  sharding_rule=(
    't n h w c, y x c g, y x f g, g, n i j f -> t n i j f, t n i j f, t n i e'
  ),
)


def _make_backward(input_grad: bool):
  @functools.partial(custom_partitioning, static_argnums=(8,))
  def backward(dy, x, kernel, recurrent_kernel, mask, hs, cs, gates, pads):
    return _backward_call(
      dy, x, kernel, recurrent_kernel, mask, hs, cs, gates, pads, input_grad
    )

  def out_shardings(mesh, axis):
    time_major, batch, whole = _shardings(mesh, axis)
    return (time_major if input_grad else whole, batch, batch, batch)

  def infer(pads, mesh, arg_shapes, result_shape):
    return out_shardings(mesh, _batch_axis(arg_shapes, 1))

  def partition(pads, mesh, arg_shapes, result_shape):
    axis = _batch_axis(arg_shapes, 1)
    time_major, batch, whole = _shardings(mesh, axis)

    def lower(dy, x, kernel, recurrent_kernel, mask, hs, cs, gates):
      return _backward_call(
        dy, x, kernel, recurrent_kernel, mask, hs, cs, gates, pads, input_grad
      )

    return (
      mesh,
      lower,
      out_shardings(mesh, axis),
      (time_major, time_major, whole, whole, batch) + (time_major,) * 3,
    )

  dx = 't n h w c' if input_grad else 'z'
  backward.def_partition(
    partition,
    infer_sharding_from_operands=infer,
    sharding_rule=(
      't n i j f, t n h w c, y x c g, y x f g, n i j f, t n i j f, '
      f't n i j f, t n i e -> {dx}, n y x c g, n y x f g, n g'
    ),
  )
  return backward


_BACKWARDS = {True: _make_backward(True), False: _make_backward(False)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _conv_lstm(x, kernel, recurrent_kernel, bias, mask, pads):
  return _forward(x, kernel, recurrent_kernel, bias, mask, pads)[0]


def _conv_lstm_fwd(x, kernel, recurrent_kernel, bias, mask, pads):
  values = [a.value for a in (x, kernel, recurrent_kernel, bias, mask)]
  hs, cs, gates = _forward(*values, pads)
  x_v, kernel_v, recurrent_v, _, mask_v = values
  # Whether x needs a gradient, as the residual's static shape.
  flag = jnp.zeros((1 if x.perturbed else 0,), jnp.float32)
  return hs, (x_v, kernel_v, recurrent_v, mask_v, hs, cs, gates, flag)


def _conv_lstm_bwd(pads, residuals, g):
  x, kernel, recurrent_kernel, mask, hs, cs, gates, flag = residuals
  input_grad = flag.shape[0] == 1
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    g = jnp.zeros(hs.shape, hs.dtype)
  dx, *per_clip = _BACKWARDS[input_grad](
    g, x, kernel, recurrent_kernel, mask, hs, cs, gates, pads
  )
  dkernel, drecurrent, dbias = (jnp.sum(d, axis=0) for d in per_clip)
  return (dx if input_grad else None), dkernel, drecurrent, dbias, None


_conv_lstm.defvjp(_conv_lstm_fwd, _conv_lstm_bwd, symbolic_zeros=True)
