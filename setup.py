"""Builds hpr's compiled parts, CPU kernels called through XLA's FFI,
against the FFI headers that jaxlib ships: the LRCN's conv blocks
(hpr/native/conv_relu_pool.cc -> hpr/_conv_relu_pool*.so) and the ConvLSTM
layer (hpr/native/conv_lstm.cc -> hpr/_conv_lstm*.so); everything else is in
pyproject.toml.

Optional: where one does not compile, pip warns and installs hpr without
it, and the model runs that part as XLA ops (`available()` in
hpr/models/native_block.py and hpr/models/native_convlstm.py)."""

import os

from setuptools import Extension, setup


def _xla_ffi_include() -> str:
  import jaxlib

  return os.path.join(os.path.dirname(jaxlib.__file__), 'include')


def _kernels(name: str) -> Extension:
  return Extension(
    f'hpr._{name}',
    sources=[f'hpr/native/{name}.cc'],
    depends=['hpr/native/ffi_util.h'],
    include_dirs=[_xla_ffi_include()],
    language='c++',
    optional=True,
    # Python's own flags include -fwrapv, which keeps GCC from assuming
    # that the kernels' signed index arithmetic does not overflow; without
    # it the seed ConvLSTM's training step took 0.93x and 0.97x the time in
    # two A/B runs (benchmarks/README.md, "Sitting P").
    extra_compile_args=[
      '-std=c++17',
      '-O3',
      '-fno-wrapv',
      '-Wno-attributes',
      '-Wno-psabi',
    ],
  )


setup(ext_modules=[_kernels('conv_relu_pool'), _kernels('conv_lstm')])
