"""hpr's models, usable without hpr's config system.

`build_model` is the one place where a config's model section becomes a
module; the classes can equally be built directly.
"""

import inspect

import jax
from flax import nnx

from hpr.models.baselines import SingleFrame
from hpr.models.convlstm import ConvLSTM, ConvLSTMCell, ConvLSTMClassifier
from hpr.models.lrcn import LRCN, FrameCNN
from hpr.models.recurrent import LSTM, LSTMCell

MODELS = {
  'convlstm': ConvLSTMClassifier,
  'lrcn': LRCN,
  'single_frame': SingleFrame,
}

# Supplied by build_model itself, never by the config's model.<name>.
_BUILD_ARGS = ('num_classes', 'input_shape', 'impl', 'dtype', 'rngs')


def build_model(
  name: str,
  kwargs: dict,
  *,
  num_classes: int,
  input_shape: tuple,
  impl: str = 'auto',
  dtype: str = 'float32',
  rngs: nnx.Rngs,
) -> nnx.Module:
  """Builds a model of `MODELS` from its constructor keywords.

  Args:
    name: a key of `MODELS`.
    kwargs: the model's own keyword arguments (e.g. `filters`, `dropout`).
    num_classes: number of output logits.
    input_shape: (T, H, W, C) of one clip.
    impl: how the named primitives run (hpr.kernels): 'auto' (the
      platform's fastest, chosen when the step is lowered) or 'reference'.
    dtype: compute dtype, 'float32' or 'bfloat16'; parameters and the
      returned logits are float32 either way.
    rngs: 'params' and 'dropout' streams.

  Returns:
    The model, in train mode.

  Raises:
    ValueError: for an unknown name or an argument the model does not take.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model '{name}'; valid: {', '.join(MODELS)}")
  cls = MODELS[name]
  params = inspect.signature(cls.__init__).parameters
  valid = [p for p in params if p not in (*_BUILD_ARGS, 'self')]
  for key in kwargs:
    if key not in valid:
      raise ValueError(
        f"unknown argument '{key}' for model '{name}'; valid: "
        f'{", ".join(valid)}'
      )
  return cls(
    num_classes=num_classes,
    input_shape=tuple(input_shape),
    impl=impl,
    dtype=dtype,
    rngs=rngs,
    **kwargs,
  )


def count_params(model: nnx.Module) -> int:
  """Number of scalar parameters (`nnx.Param`) in a model."""
  params = nnx.state(model, nnx.Param)
  return sum(x.size for x in jax.tree.leaves(params))


__all__ = [
  'LRCN',
  'LSTM',
  'MODELS',
  'ConvLSTM',
  'ConvLSTMCell',
  'ConvLSTMClassifier',
  'FrameCNN',
  'LSTMCell',
  'SingleFrame',
  'build_model',
  'count_params',
]
