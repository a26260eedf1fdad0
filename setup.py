"""Builds hpr's one compiled part, the LRCN first block's CPU kernels
(hpr/native/conv_relu_pool.cc -> hpr/_conv_relu_pool*.so), against the XLA
FFI headers that jaxlib ships; everything else is in pyproject.toml.

Optional: where it does not compile, pip warns and installs hpr without
it, and the LRCN runs its first block as XLA ops
(hpr/models/native_block.py, `available()`)."""

import os

from setuptools import Extension, setup


def _xla_ffi_include() -> str:
  import jaxlib

  return os.path.join(os.path.dirname(jaxlib.__file__), 'include')


setup(
  ext_modules=[
    Extension(
      'hpr._conv_relu_pool',
      sources=['hpr/native/conv_relu_pool.cc'],
      include_dirs=[_xla_ffi_include()],
      language='c++',
      optional=True,
      extra_compile_args=['-std=c++17', '-O3', '-Wno-attributes', '-Wno-psabi'],
    )
  ]
)
