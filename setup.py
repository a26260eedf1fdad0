"""Builds hpr's compiled parts, CPU kernels called through XLA's FFI,
against the FFI headers that jaxlib ships: the LRCN's conv blocks
(hpr/kernels/native/conv_relu_pool.cc -> hpr/kernels/_conv_relu_pool*.so)
and the ConvLSTM layer (hpr/kernels/native/conv_lstm.cc ->
hpr/kernels/_conv_lstm*.so); everything else is in pyproject.toml.

Optional: where one does not compile, pip warns and installs hpr without
it, and 'auto' runs that part as XLA ops (`available()` in
hpr/kernels/native_block.py and hpr/kernels/native_convlstm.py)."""

import os

from setuptools import Extension, setup


def _xla_ffi_include() -> str:
  import jaxlib

  return os.path.join(os.path.dirname(jaxlib.__file__), 'include')


def _kernels(name: str) -> Extension:
  return Extension(
    f'hpr.kernels._{name}',
    sources=[f'hpr/kernels/native/{name}.cc'],
    depends=['hpr/kernels/native/ffi_util.h'],
    include_dirs=[_xla_ffi_include()],
    language='c++',
    optional=True,
    # Python's own flags include -fwrapv, which keeps GCC from assuming
    # that the kernels' signed index arithmetic does not overflow; the
    # ConvLSTM kernels are measurably slower with it (benchmarks/ARCHIVE.md,
    # "Sitting P").
    extra_compile_args=[
      '-std=c++17',
      '-O3',
      '-fno-wrapv',
      '-Wno-attributes',
      '-Wno-psabi',
    ],
  )


setup(ext_modules=[_kernels('conv_relu_pool'), _kernels('conv_lstm')])
