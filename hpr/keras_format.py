"""Reads saved Keras models without Keras: architecture JSON and weights.

Two containers hold a whole model (architecture and weights):
  .h5     legacy HDF5 (tf.keras 2 and Keras 3 `model.save('m.h5')`): the
          architecture is the root attribute `model_config`; each layer's
          arrays are in `model_weights/<layer name>/`, in the order its
          `weight_names` attribute lists.
  .keras  a zip (tf.keras >= 2.13 and Keras 3): `config.json`,
          `metadata.json` and `model.weights.h5`, where a Sequential's layers
          are `layers/<snake_case class name>[_<k>]` (named by class, counted
          per class, not by layer name) with their arrays in `vars/0, 1, ...`
          and those of a wrapped layer or RNN cell under `layer/` or `cell/`.
Only h5py, zipfile and json are used: reading a file executes nothing from it.
"""

import dataclasses
import io
import json
import os
import re
import zipfile
from typing import Any

import h5py
import numpy as np

from hpr.errors import UserError

_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
_ZIP_SIGNATURE = b'PK\x03\x04'


@dataclasses.dataclass
class Layer:
  """One layer of a Sequential model, as its saved config describes it.

  `weights` are the layer's arrays in Keras order (for TimeDistributed, its
  inner layer's); `inner` is the layer TimeDistributed wraps.
  """

  class_name: str
  config: dict[str, Any]
  weights: list[np.ndarray] = dataclasses.field(default_factory=list)
  inner: 'Layer | None' = None

  @property
  def name(self) -> str:
    return self.config.get('name', '?')

  def describe(self) -> str:
    """E.g. "layer 'time_distributed_1' (TimeDistributed(Conv2D))"."""
    kind = self.class_name
    if self.inner is not None:
      kind += f'({self.inner.class_name})'
    return f"layer '{self.name}' ({kind})"


@dataclasses.dataclass
class Model:
  """A saved Sequential model.

  `input_shape` is the batch input shape, e.g. (None, 20, 64, 64, 3);
  `keras_version` the version that saved it, e.g. '2.21.0'.
  """

  path: str
  keras_version: str
  input_shape: tuple | None
  layers: list[Layer]

  @property
  def keras_major(self) -> int:
    return int(self.keras_version.split('.')[0])


def read(path: str) -> Model:
  """Reads a whole-model .h5 or .keras file.

  Raises:
    UserError: a missing file, another format, a weights-only file, or a
      model that is not Sequential.
  """
  if not os.path.isfile(path):
    raise UserError(f'no such file: {path}')
  with open(path, 'rb') as f:
    head = f.read(8)
  try:
    if head.startswith(_HDF5_SIGNATURE):
      return _read_h5(path)
    if head.startswith(_ZIP_SIGNATURE):
      return _read_keras_zip(path)
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise UserError(f'cannot read {path}: {first or type(e).__name__}') from e
  raise UserError(
    f'{path} is neither a Keras .h5 (HDF5) nor a .keras (zip) file'
  )


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _read_h5(path: str) -> Model:
  with h5py.File(path, 'r') as f:
    if 'model_config' not in f.attrs:
      raise UserError(
        f'{path} holds weights only, no architecture; save the whole model '
        "with model.save('model.h5') or model.save('model.keras')"
      )
    arch = json.loads(_text(f.attrs['model_config']))
    version = _text(f.attrs.get('keras_version', ''))
    model = _parse_architecture(path, arch, version)
    group = f['model_weights']
    for layer in model.layers:
      if layer.name not in group:
        continue
      layer_group = group[layer.name]
      names = [_text(n) for n in layer_group.attrs.get('weight_names', [])]
      layer.weights = [np.asarray(layer_group[n]) for n in names]
  return model


def _read_keras_zip(path: str) -> Model:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    for required in ('config.json', 'model.weights.h5'):
      if required not in names:
        raise UserError(f'{path} is a zip without {required}: not a .keras')
    arch = json.loads(z.read('config.json'))
    meta = (
      json.loads(z.read('metadata.json')) if 'metadata.json' in names else {}
    )
    weights = z.read('model.weights.h5')
  model = _parse_architecture(path, arch, meta.get('keras_version', ''))
  with h5py.File(io.BytesIO(weights), 'r') as f:
    used: dict[str, int] = {}
    for layer in model.layers:
      name = _container_name(layer.class_name, used)
      group = f.get(f'layers/{name}')
      if group is not None:
        layer.weights = _vars(group)
        for sub in ('layer', 'cell'):
          if sub in group:
            layer.weights += _vars(group[sub])
  return model


def _container_name(class_name: str, used: dict[str, int]) -> str:
  """Keras's name for a list element in a weights file: the snake_case
  class name, then `_1`, `_2`, ... for later ones of the same class."""
  name = re.sub(r'\W+', '', class_name)
  name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
  name = re.sub('([a-z])([A-Z])', r'\1_\2', name).lower()
  if name in used:
    used[name] += 1
    return f'{name}_{used[name]}'
  used[name] = 0
  return name


def _vars(group: h5py.Group) -> list[np.ndarray]:
  if 'vars' not in group:
    return []
  variables = group['vars']
  return [np.asarray(variables[k]) for k in sorted(variables, key=int)]


def _parse_architecture(path: str, arch: dict, version: str) -> Model:
  if not version:
    raise UserError(
      f'{path} does not say which Keras version saved it (no keras_version)'
    )
  if arch.get('class_name') != 'Sequential':
    raise UserError(
      f'{path} holds a {arch.get("class_name")} model; only Sequential '
      'models can be imported'
    )
  config = arch['config']
  specs = config['layers'] if isinstance(config, dict) else config
  input_shape = (
    config.get('build_input_shape') if isinstance(config, dict) else None
  )
  layers = []
  for spec in specs:
    layer_config = spec.get('config', {})
    if spec['class_name'] == 'InputLayer':
      input_shape = layer_config.get('batch_shape') or layer_config.get(
        'batch_input_shape'
      )
      continue
    if not layers and 'batch_input_shape' in layer_config:
      input_shape = layer_config['batch_input_shape']
    layer = Layer(spec['class_name'], layer_config)
    if layer.class_name == 'TimeDistributed' and 'layer' in layer_config:
      inner = layer_config['layer']
      layer.inner = Layer(inner['class_name'], inner.get('config', {}))
    layers.append(layer)
  return Model(
    path=path,
    keras_version=version,
    input_shape=tuple(input_shape) if input_shape else None,
    layers=layers,
  )
