"""Maps a saved Keras Sequential model onto hpr's ConvLSTMClassifier or LRCN.

`convert(model)` of a `keras_format.open_model(path)` gives the model's name
and constructor keywords (the config's model section), the clip shape and
the parameters as an nnx pure dict of the file's declared arrays;
`read_params` reads them (once their shapes are checked). Only layers and options that hpr's models compute exactly
as Keras does are accepted, so softmax(hpr logits) equals the Keras output;
anything else, and options of the wrong type (a file is untrusted input),
raises a one-line `UserError` naming the layer and option and what hpr
supports. 'hard_sigmoid' means what the saving Keras meant: Keras 2's
clip(0.2 x + 0.5, 0, 1) or Keras 3's relu6(x + 3) / 6.
"""

import dataclasses

import numpy as np

from hpr.errors import UserError
from hpr.keras import files as keras_format
from hpr.keras.files import Layer

SUPPORTED_LAYERS = (
  'ConvLSTM2D',
  'Conv2D',
  'MaxPooling2D',
  'MaxPooling3D',
  'TimeDistributed',
  'Dropout',
  'Flatten',
  'GlobalAveragePooling3D',
  'LSTM',
  'Dense',
)
_CONVLSTM_SHAPE = (
  'ConvLSTM2D -> MaxPooling3D((1, p, p)) [-> Dropout], repeated, '
  '-> Flatten or GlobalAveragePooling3D -> Dense'
)
_LRCN_SHAPE = (
  'TimeDistributed(Conv2D) -> TimeDistributed(MaxPooling2D) '
  '[-> TimeDistributed(Dropout)], repeated, -> TimeDistributed(Flatten) '
  '-> LSTM -> Dense'
)
_CHANNELS_LAST = ('channels_last', None)
# Options that change what a layer computes, and the values hpr's models
# implement. Options not listed (initializers, regularizers, constraints,
# unroll, ...) do not change predictions and are not imported.
_FIXED = {
  'ConvLSTM2D': {
    'strides': ((1, 1),),
    'dilation_rate': ((1, 1),),
    'data_format': _CHANNELS_LAST,
    'padding': ('valid', 'same'),
    'use_bias': (True,),
    'return_sequences': (True,),
    'return_state': (False,),
    'go_backwards': (False,),
    'stateful': (False,),
    'time_major': (False,),
    'dropout': (0.0,),
  },
  'Conv2D': {
    'strides': ((1, 1),),
    'dilation_rate': ((1, 1),),
    'groups': (1,),
    'data_format': _CHANNELS_LAST,
    'padding': ('same',),
    'activation': ('relu',),
    'use_bias': (True,),
  },
  'MaxPooling2D': {'data_format': _CHANNELS_LAST},
  'MaxPooling3D': {'data_format': _CHANNELS_LAST, 'padding': ('same',)},
  'Dropout': {'noise_shape': (None,)},
  'Flatten': {'data_format': _CHANNELS_LAST},
  'GlobalAveragePooling3D': {
    'data_format': _CHANNELS_LAST,
    'keepdims': (False,),
  },
  'LSTM': {
    'activation': ('tanh',),
    'recurrent_activation': ('sigmoid',),
    'use_bias': (True,),
    'return_sequences': (False,),
    'return_state': (False,),
    'go_backwards': (False,),
    'stateful': (False,),
    'time_major': (False,),
    'dropout': (0.0,),
    'recurrent_dropout': (0.0,),
  },
  'Dense': {'activation': ('softmax', 'linear'), 'use_bias': (True,)},
}
# Keras activation names hpr's ConvLSTM implements ('hard_sigmoid' is
# resolved per Keras version); Keras 3 calls swish 'silu'.
_ACTIVATIONS = ('tanh', 'sigmoid', 'hard_sigmoid', 'relu', 'linear')
_ACTIVATIONS += ('softsign', 'elu', 'swish', 'silu')
# The arrays of each layer with weights, in Keras's order; hpr's parameters
# have the same names and layouts.
_LSTM_ARRAYS = ('kernel', 'recurrent_kernel', 'bias')
_DENSE_ARRAYS = ('kernel', 'bias')
_NUM_WEIGHTS = {'ConvLSTM2D': 3, 'Conv2D': 2, 'LSTM': 3, 'Dense': 2}


@dataclasses.dataclass
class Imported:
  """A Keras model as an hpr model: `models.build_model(name, kwargs, ...)`
  with `params` (nnx pure dict) builds it."""

  name: str  # 'convlstm' or 'lrcn'.
  kwargs: dict  # The config's model.<name> keys.
  num_frames: int
  image_size: int
  num_classes: int
  params: dict  # keras_format.Array leaves until read_params.
  source: keras_format.Model


def _value(value):
  if isinstance(value, list):
    return tuple(_value(v) for v in value)
  if isinstance(value, dict) and isinstance(value.get('config'), dict):
    # Keras 3 DTypePolicy.
    return value['config'].get('name', value.get('class_name'))
  return value


def _option(layer: Layer, option: str, default=None):
  config = layer.inner.config if layer.inner else layer.config
  return _value(config.get(option, default))


def _positive_int(layer: Layer, option: str) -> int:
  value = _option(layer, option)
  if type(value) is not int or value < 1:
    raise UserError(
      f'{layer.describe()}: {option}={value!r} is not a positive integer'
    )
  return value


def _sizes(layer: Layer, option: str, n: int) -> tuple[int, ...]:
  """A window option: n positive integers (one int means n of them)."""
  value = _option(layer, option)
  if type(value) is int:
    value = (value,) * n
  if (
    not isinstance(value, tuple)
    or len(value) != n
    or not all(type(v) is int and v > 0 for v in value)
  ):
    raise UserError(
      f'{layer.describe()}: {option}={value!r} is not {n} positive integers'
    )
  return value


def _fraction(layer: Layer, option: str) -> float:
  value = _option(layer, option, 0.0)
  if type(value) not in (int, float) or not 0 <= value < 1:
    raise UserError(
      f'{layer.describe()}: {option}={value!r} is not a rate in [0, 1)'
    )
  return float(value)


def _fail(layer: Layer, option: str, value, supported) -> UserError:
  allowed = ' or '.join(f'{option}={v!r}' for v in supported)
  return UserError(
    f'{layer.describe()}: {option}={value!r} is not supported; hpr '
    f'supports {allowed}'
  )


def _kind(layer: Layer) -> str:
  """The class that computes: the wrapped one for TimeDistributed."""
  for cls in (layer.class_name, layer.inner and layer.inner.class_name):
    if cls and cls not in SUPPORTED_LAYERS:
      raise UserError(
        f'{layer.describe()} is not supported; supported layers: '
        f'{", ".join(SUPPORTED_LAYERS)}'
      )
  if layer.class_name == 'TimeDistributed':
    if layer.inner is None or layer.inner.class_name == 'TimeDistributed':
      raise UserError(f'{layer.describe()} is not supported')
    return 'td:' + layer.inner.class_name
  return layer.class_name


def _check(layer: Layer) -> None:
  """Rejects options of `layer` that hpr's models do not implement."""
  cls = layer.inner.class_name if layer.inner else layer.class_name
  for sub in filter(None, (layer, layer.inner)):
    dtype = _value(sub.config.get('dtype'))
    if dtype not in ('float32', None):
      raise _fail(layer, 'dtype', dtype, ('float32',))
  for option, supported in _FIXED.get(cls, {}).items():
    value = _option(layer, option)
    if option == 'activation' and value is None:
      value = 'linear'
    if value is not None and value not in supported:
      raise _fail(layer, option, value, supported)
  if cls in _NUM_WEIGHTS and len(layer.weights) != _NUM_WEIGHTS[cls]:
    raise UserError(
      f'{layer.describe()} holds {len(layer.weights)} weight arrays, '
      f'expected {_NUM_WEIGHTS[cls]}'
    )


def _activation(layer: Layer, option: str, keras_major: int) -> str:
  value = _option(layer, option)
  if value not in _ACTIVATIONS:
    raise _fail(layer, option, value, _ACTIVATIONS)
  if value == 'hard_sigmoid' and keras_major >= 3:
    return 'hard_sigmoid_keras3'  # relu6(x + 3) / 6, not clip(0.2x + 0.5).
  return {'silu': 'swish'}.get(value, value)


def _pool(layer: Layer, padding: str) -> tuple[int, int]:
  """(ph, pw) of a MaxPooling3D((1, ph, pw)) or TimeDistributed(
  MaxPooling2D((ph, pw))) whose strides equal its window."""
  three = layer.class_name == 'MaxPooling3D'
  window = _sizes(layer, 'pool_size', 3 if three else 2)
  if three:
    if window[0] != 1:
      raise _fail(layer, 'pool_size', window, ['(1, ph, pw)'])
    window = window[1:]
  else:
    if _option(layer, 'padding', 'valid') != padding:
      raise _fail(layer, 'padding', _option(layer, 'padding'), (padding,))
  strides = _option(layer, 'strides')
  full = window if layer.class_name != 'MaxPooling3D' else (1, *window)
  if strides is not None and strides != full:
    raise _fail(layer, 'strides', strides, (None, full))
  return tuple(window)


def _dropout(layer: Layer | None) -> float:
  return 0.0 if layer is None else _fraction(layer, 'rate')


def _blocks(steps, first: str, pool_kinds: tuple, shape: str):
  """Splits steps into [main layer, pool, dropout or None] blocks; returns
  (blocks, remaining steps)."""
  blocks, i = [], 0
  while i < len(steps) and steps[i][0] == first:
    main, i = steps[i][1], i + 1
    if i == len(steps) or steps[i][0] not in pool_kinds:
      raise UserError(
        f'{main.describe()} is not followed by max pooling; hpr imports {shape}'
      )
    pool, i = steps[i][1], i + 1
    drop = None
    if i < len(steps) and steps[i][0] in ('Dropout', 'td:Dropout'):
      drop, i = steps[i][1], i + 1
    blocks.append((main, pool, drop))
  return blocks, steps[i:]


def _same(values: list[tuple[Layer, object]], what: str):
  """The one value of `what` that all (layer, value) pairs share."""
  first = values[0][1]
  for layer, value in values:
    if value != first:
      raise UserError(
        f'{layer.describe()}: {what}={value!r} differs from the first '
        f"layer's {first!r}; hpr uses one {what} for all layers"
      )
  return first


def _shared(blocks, what: str, get=None):
  """`_same` of an option (or of `get(layer)`) over the blocks' main
  layers."""
  get = get or (lambda layer: _option(layer, what))
  return _same([(main, get(main)) for main, _, _ in blocks], what)


def _dropout_rate(blocks) -> float:
  """hpr's one dropout rate: after every block but the last."""
  *inner, last = blocks
  if last[2] is not None and _dropout(last[2]) > 0:
    raise UserError(
      f'{last[2].describe()}: hpr has no dropout after the last block'
    )
  rates = [_dropout(drop) for _, _, drop in inner]
  for (main, _, drop), rate in zip(inner, rates, strict=True):
    if rate != rates[0]:
      raise UserError(
        f'{(drop or main).describe()}: dropout rate {rate} after this block '
        f'differs from {rates[0]} after the first; hpr uses one rate'
      )
  return rates[0] if rates else 0.0


def _expect(rest, kinds: tuple, shape: str):
  if not rest:
    raise UserError(f'the model ends early; hpr imports {shape}')
  kind, layer = rest[0]
  if kind not in kinds:
    raise UserError(f'{layer.describe()} cannot come here; hpr imports {shape}')
  return layer, rest[1:]


def _convlstm(steps, keras_major: int):
  blocks, rest = _blocks(
    steps, 'ConvLSTM2D', ('MaxPooling3D', 'td:MaxPooling2D'), _CONVLSTM_SHAPE
  )
  head, rest = _expect(
    rest, ('Flatten', 'GlobalAveragePooling3D'), _CONVLSTM_SHAPE
  )
  dense, rest = _expect(rest, ('Dense',), _CONVLSTM_SHAPE)
  if rest:
    _expect(rest, (), _CONVLSTM_SHAPE)
  kwargs = {
    'filters': tuple(_positive_int(m, 'filters') for m, _, _ in blocks),
    'kernel_size': _shared(
      blocks, 'kernel_size', lambda m: _sizes(m, 'kernel_size', 2)
    ),
    'padding': _shared(blocks, 'padding'),
    'activation': _shared(
      blocks, 'activation', lambda m: _activation(m, 'activation', keras_major)
    ),
    'recurrent_activation': _shared(
      blocks,
      'recurrent_activation',
      lambda m: _activation(m, 'recurrent_activation', keras_major),
    ),
    'recurrent_dropout': _shared(
      blocks,
      'recurrent_dropout',
      lambda m: _fraction(m, 'recurrent_dropout'),
    ),
    'pool_size': _same(
      [(p, _pool(p, 'same')) for _, p, _ in blocks], 'pool_size'
    ),
    'dropout': _dropout_rate(blocks),
    'head': 'flatten' if head.class_name == 'Flatten' else 'avgpool',
  }
  convlstms = {
    i: {'cell': _arrays(m, _LSTM_ARRAYS)} for i, (m, _, _) in enumerate(blocks)
  }
  params = {'convlstms': convlstms, 'dense': _arrays(dense, _DENSE_ARRAYS)}
  return kwargs, params, dense


def _lrcn(steps):
  blocks, rest = _blocks(steps, 'td:Conv2D', ('td:MaxPooling2D',), _LRCN_SHAPE)
  _, rest = _expect(rest, ('td:Flatten',), _LRCN_SHAPE)
  lstm, rest = _expect(rest, ('LSTM',), _LRCN_SHAPE)
  dense, rest = _expect(rest, ('Dense',), _LRCN_SHAPE)
  if rest:
    _expect(rest, (), _LRCN_SHAPE)
  pools = []
  for _, pool, _ in blocks:
    ph, pw = _pool(pool, 'valid')
    if ph != pw:
      raise _fail(pool, 'pool_size', (ph, pw), ['(p, p)'])
    pools.append(ph)
  kwargs = {
    'conv_features': tuple(_positive_int(m, 'filters') for m, _, _ in blocks),
    'kernel_size': _shared(
      blocks, 'kernel_size', lambda m: _sizes(m, 'kernel_size', 2)
    ),
    'pool_sizes': tuple(pools),
    'dropout': _dropout_rate(blocks),
    'lstm_features': _positive_int(lstm, 'units'),
    'readout': 'last',
  }
  convs = {i: _arrays(m, _DENSE_ARRAYS) for i, (m, _, _) in enumerate(blocks)}
  params = {
    'encoder': {'convs': convs},
    'lstm': {'cell': _arrays(lstm, _LSTM_ARRAYS)},
    'dense': _arrays(dense, _DENSE_ARRAYS),
  }
  return kwargs, params, dense


def _arrays(layer: Layer, names: tuple[str, ...]) -> dict:
  """The layer's arrays by name (`_check` made sure of their number)."""
  return dict(zip(names, layer.weights, strict=True))


def convert(model: keras_format.Model, num_frames: int | None = None):
  """Maps a read Keras model onto hpr's ConvLSTMClassifier or LRCN.

  Args:
    model: from `keras_format.open_model` (or `read`).
    num_frames: clip length, needed only if the model leaves it open.

  Returns:
    `Imported`.

  Raises:
    UserError: one line naming the first layer or option hpr cannot express.
  """
  steps = [(_kind(layer), layer) for layer in model.layers]
  for _, layer in steps:
    _check(layer)
  shape = model.input_shape
  if shape is None or len(shape) != 5:
    raise UserError(
      f'{model.path}: input shape {shape} is not (batch, frames, height, '
      'width, channels)'
    )
  _, frames, height, width, channels = shape
  if height is None or height != width:
    raise UserError(
      f'{model.path}: frames of {height}x{width}; hpr supports square '
      'frames of a fixed size only'
    )
  if channels != 3:
    raise UserError(f'{model.path}: {channels} channels; hpr supports 3 (RGB)')
  if frames is not None and num_frames not in (None, frames):
    raise UserError(
      f'{model.path} takes clips of {frames} frames, not {num_frames}'
    )
  frames = frames or num_frames
  if frames is None:
    raise UserError(
      f'{model.path} takes clips of any length; give --num_frames'
    )
  if not steps:
    raise UserError(f'{model.path} has no layers')
  if steps[0][0] == 'ConvLSTM2D':
    name = 'convlstm'
    kwargs, params, dense = _convlstm(steps, model.keras_major)
  elif steps[0][0] == 'td:Conv2D':
    name = 'lrcn'
    kwargs, params, dense = _lrcn(steps)
  else:
    raise UserError(
      f'{steps[0][1].describe()} cannot start the model; hpr imports '
      f'{_CONVLSTM_SHAPE} (ConvLSTM) or {_LRCN_SHAPE} (LRCN)'
    )
  return Imported(
    name=name,
    kwargs=kwargs,
    num_frames=int(frames),
    image_size=int(height),
    num_classes=_positive_int(dense, 'units'),
    params=params,
    source=model,
  )


def read_params(imported: Imported) -> Imported:
  """`imported` with its parameters read, as float32 numpy arrays."""
  return dataclasses.replace(imported, params=_float32(imported.params))


def _float32(tree):
  if isinstance(tree, dict):
    return {k: _float32(v) for k, v in tree.items()}
  if isinstance(tree, keras_format.Array):
    tree = tree.read()
  return np.asarray(tree, np.float32)
