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

A model file is untrusted input, so reading stays inside it and is bounded
before anything is read: HDF5 soft, external and user-defined links,
external storage, virtual datasets and unknown filters are refused (each
could make a read take data from another file); arrays that are not plain
numbers are refused; the arrays a model's layers name may declare at most
`MAX_WEIGHT_BYTES` (1 GiB) together, and of a .keras zip hpr reads at most
`MAX_JSON_BYTES` (16 MiB) of each JSON member and `MAX_WEIGHT_BYTES` of
`model.weights.h5`, by the sizes the zip declares (zipfile never returns more
than a member declares). `open_model` gives the declared arrays, so callers
check their shapes before `Array.read` reads them.
"""

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from hpr.errors import UserError

_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
_ZIP_SIGNATURE = b'PK\x03\x04'
# The notebook's models hold 0.2-0.3 MB of weights; 1 GiB is ample for any
# ConvLSTM or LRCN that trains on one accelerator.
MAX_WEIGHT_BYTES = 1 << 30
MAX_JSON_BYTES = 16 << 20
# HDF5 filters that decode inside the library; any other would be loaded
# from a plugin.
_FILTERS = {
  1: 'gzip',
  2: 'shuffle',
  3: 'fletcher32',
  4: 'szip',
  5: 'nbit',
  6: 'scaleoffset',
  32000: 'lzf',
}
_LINKS = {h5py.h5l.TYPE_SOFT: 'a soft', h5py.h5l.TYPE_EXTERNAL: 'an external'}


@dataclasses.dataclass(frozen=True)
class Array:
  """A weight array as the file declares it; `read()` reads it.

  Only valid inside `open_model`'s `with` block.
  """

  path: str  # The model file.
  name: str  # The dataset's HDF5 path inside it.
  layer: str  # Layer.describe() of the layer it belongs to.
  shape: tuple[int, ...]
  dtype: np.dtype
  dataset: h5py.Dataset = dataclasses.field(repr=False, compare=False)

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize

  def read(self) -> np.ndarray:
    with _reading(self.path):
      return np.asarray(self.dataset[()])


@dataclasses.dataclass
class Layer:
  """One layer of a Sequential model, as its saved config describes it.

  `weights` are the layer's arrays in Keras order (for TimeDistributed, its
  inner layer's): `Array`s inside `open_model`, numpy arrays from `read`;
  `inner` is the layer TimeDistributed wraps.
  """

  class_name: str
  config: dict[str, Any]
  weights: list = dataclasses.field(default_factory=list)
  inner: 'Layer | None' = None

  @property
  def name(self) -> str:
    return self.config.get('name', '?')

  def describe(self) -> str:
    """E.g. "layer 'time_distributed_1' (TimeDistributed(Conv2D))"."""
    kind = self.class_name
    if self.inner is not None:
      kind += f'({self.inner.class_name})'
    return f'layer {self.name!r} ({_show(kind)})'


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


@contextlib.contextmanager
def open_model(path: str) -> Iterator[Model]:
  """Opens a whole-model .h5 or .keras file; reads no weights.

  Yields:
    The model, whose layers' weights are the `Array`s the file declares,
    within the bounds above; read them inside the `with` block.

  Raises:
    UserError: a missing file, another format, a weights-only file, a model
      that is not Sequential, a malformed architecture, data outside the
      file or beyond the bounds.
  """
  if not os.path.isfile(path):
    raise UserError(f'no such file: {path}')
  with open(path, 'rb') as f:
    head = f.read(8)
  with contextlib.ExitStack() as stack:
    with _reading(path):
      if head.startswith(_HDF5_SIGNATURE):
        model = _open_h5(path, stack)
      elif head.startswith(_ZIP_SIGNATURE):
        model = _open_keras_zip(path, stack)
      else:
        raise UserError(
          f'{path} is neither a Keras .h5 (HDF5) nor a .keras (zip) file'
        )
    _check_sizes(model)
    yield model


def read(path: str) -> Model:
  """`open_model(path)` with every weight array read (as numpy arrays)."""
  with open_model(path) as model:
    for layer in model.layers:
      layer.weights = [array.read() for array in layer.weights]
  return model


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
  """Turns what h5py, zipfile and json raise for a damaged file into one
  line."""
  try:
    yield
  except (
    OSError,
    KeyError,
    ValueError,
    RuntimeError,  # h5py for a missing link, zipfile for an encrypted one.
    NotImplementedError,  # zipfile: an unknown compression method.
    RecursionError,  # json: nesting too deep.
    EOFError,
    zipfile.BadZipFile,
  ) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise UserError(f'cannot read {path}: {first or type(e).__name__}') from e


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _show(value, limit: int = 60) -> str:
  """`value` for a one-line message: a printable string as it is, anything
  else (or a long string) as a shortened repr."""
  if isinstance(value, str) and value.isprintable() and len(value) <= limit:
    return value
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + '...'


def _size(num_bytes: int) -> str:
  for unit, scale in (('GiB', 1 << 30), ('MiB', 1 << 20), ('KiB', 1 << 10)):
    if num_bytes >= scale:
      return f'{num_bytes / scale:.1f} {unit}'
  return f'{num_bytes} bytes'


def _open_h5(path: str, stack: contextlib.ExitStack) -> Model:
  f = stack.enter_context(h5py.File(path, 'r'))
  if 'model_config' not in f.attrs:
    raise UserError(
      f'{path} holds weights only, no architecture; save the whole model '
      "with model.save('model.h5') or model.save('model.keras')"
    )
  arch = _json(path, _text(f.attrs['model_config']), 'model_config')
  version = _text(f.attrs.get('keras_version', ''))
  model = _parse_architecture(path, arch, version)
  group = _node(path, f, 'model_weights')
  if not isinstance(group, h5py.Group):
    raise UserError(f'{path} has no model_weights group: not a whole model')
  for layer in model.layers:
    layer_group = _node(path, group, layer.name)
    if not isinstance(layer_group, h5py.Group):
      continue
    names = layer_group.attrs.get('weight_names', [])
    for name in np.atleast_1d(names):
      name = _text(name)
      dataset = _node(path, layer_group, name)
      if dataset is None:
        raise UserError(
          f'{path}: {layer.describe()} names weight {name!r}, which the '
          'file does not hold'
        )
      layer.weights.append(_declare(path, dataset, layer))
  return model


def _open_keras_zip(path: str, stack: contextlib.ExitStack) -> Model:
  with zipfile.ZipFile(path) as z:
    infos = {info.filename: info for info in z.infolist()}
    for required in ('config.json', 'model.weights.h5'):
      if required not in infos:
        raise UserError(f'{path} is a zip without {required}: not a .keras')
    limits = {
      'config.json': MAX_JSON_BYTES,
      'metadata.json': MAX_JSON_BYTES,
      'model.weights.h5': MAX_WEIGHT_BYTES,
    }
    archive_bytes = os.path.getsize(path)
    for name, limit in limits.items():
      if name in infos:
        _check_member(path, infos[name], limit, archive_bytes)
    arch = _json(path, z.read('config.json'), 'config.json')
    meta = {}
    if 'metadata.json' in infos:
      meta = _json(path, z.read('metadata.json'), 'metadata.json')
    if not isinstance(meta, dict):
      raise _malformed(path, f'metadata.json is {_json_kind(meta)}')
    weights = z.read('model.weights.h5')
  version = meta.get('keras_version', '')
  if not isinstance(version, str):
    raise _malformed(path, f'keras_version is {_json_kind(version)}')
  model = _parse_architecture(path, arch, version)
  f = stack.enter_context(h5py.File(io.BytesIO(weights), 'r'))
  used: dict[str, int] = {}
  for layer in model.layers:
    group = _node(path, f, f'layers/{_container_name(layer.class_name, used)}')
    if not isinstance(group, h5py.Group):
      continue
    groups = [group] + [_node(path, group, sub) for sub in ('layer', 'cell')]
    for sub in groups:
      if isinstance(sub, h5py.Group):
        layer.weights += _vars(path, sub, layer)
  return model


def _check_member(
  path: str, info: zipfile.ZipInfo, limit: int, archive_bytes: int
) -> None:
  """Refuses a member by its declared sizes, before decompressing it."""
  name = info.filename
  if info.flag_bits & 0x1:
    raise UserError(f'{path}: {name} is encrypted')
  if info.file_size > limit:
    raise UserError(
      f'{path}: {name} declares {_size(info.file_size)} uncompressed; hpr '
      f'reads at most {_size(limit)} of it'
    )
  if info.compress_size > archive_bytes:
    raise UserError(
      f'{path}: {name} declares {_size(info.compress_size)} compressed, more '
      f'than the whole file ({_size(archive_bytes)}): a damaged zip'
    )


def _json(path: str, text: str | bytes, what: str):
  if len(text) > MAX_JSON_BYTES:
    raise UserError(
      f'{path}: {what} holds {_size(len(text))}; hpr reads at most '
      f'{_size(MAX_JSON_BYTES)} of it'
    )
  try:
    return json.loads(text)
  except (ValueError, RecursionError) as e:
    raise UserError(f'{path}: {what} is not valid JSON ({e})') from e


def _node(path: str, group: h5py.Group, name: str):
  """group/name, or None if it does not exist; follows hard links only,
  as soft and external links may lead out of the file."""
  node = group
  for part in name.split('/'):
    if part in ('', '.'):
      continue
    if not isinstance(node, h5py.Group):
      return None
    key = part.encode('utf-8', 'surrogateescape')
    if not node.id.links.exists(key):
      return None
    kind = node.id.links.get_info(key).type
    if kind != h5py.h5l.TYPE_HARD:
      link = _LINKS.get(kind, 'a user-defined')
      raise UserError(
        f'{path}: {_show(node.name.rstrip("/") + "/" + part)} is {link} '
        'HDF5 link; hpr reads only data stored in the file itself'
      )
    node = node[key]
  return node


def _declare(path: str, dataset, layer: Layer) -> Array:
  """The declared array of `dataset`, refused unless its data is plain
  numbers stored in the file itself; reads none of it."""
  if not isinstance(dataset, h5py.Dataset):
    raise UserError(f'{path}: {_show(dataset.name)} is not an array')
  where = f'{path}: {layer.describe()} weight {_show(dataset.name)}'
  outside = '; hpr reads only data stored in the file itself'
  if dataset.is_virtual:
    raise UserError(
      f'{where} is an HDF5 virtual dataset (data in other files){outside}'
    )
  if dataset.external:
    raise UserError(
      f'{where} keeps its data in the external file '
      f'{_show(_text(dataset.external[0][0]), 200)}{outside}'
    )
  plist = dataset.id.get_create_plist()
  if plist.get_layout() not in (
    h5py.h5d.COMPACT,
    h5py.h5d.CONTIGUOUS,
    h5py.h5d.CHUNKED,
  ):
    raise UserError(f'{where} has an unknown storage layout{outside}')
  for i in range(plist.get_nfilters()):
    code = plist.get_filter(i)[0]
    if code not in _FILTERS:
      raise UserError(
        f'{where} is encoded with HDF5 filter {code}; hpr decodes only '
        f'{", ".join(sorted(_FILTERS.values()))}'
      )
  dtype = dataset.dtype
  if dtype.kind not in 'biuf' or dtype.fields or dtype.subdtype:
    raise UserError(f'{where} holds {dtype}, not numbers')
  if dataset.shape is None:
    raise UserError(f'{where} holds no array (an empty dataspace)')
  return Array(
    path=path,
    name=dataset.name,
    layer=layer.describe(),
    shape=tuple(int(n) for n in dataset.shape),
    dtype=dtype,
    dataset=dataset,
  )


def _check_sizes(model: Model) -> None:
  """Refuses arrays that declare more than MAX_WEIGHT_BYTES."""
  arrays = [a for layer in model.layers for a in layer.weights]
  total = 0
  for array in arrays:
    total += array.nbytes
    if total > MAX_WEIGHT_BYTES:
      what = (
        f'{array.layer} weight {_show(array.name)} declares shape '
        f'{array.shape} of {array.dtype} ({_size(array.nbytes)})'
      )
      if total > array.nbytes:
        what += f', {_size(total)} with the arrays before it'
      raise UserError(
        f'{model.path}: {what}; hpr reads at most '
        f'{_size(MAX_WEIGHT_BYTES)} of weights from a model file'
      )


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


def _vars(path: str, group: h5py.Group, layer: Layer) -> list[Array]:
  variables = _node(path, group, 'vars')
  if not isinstance(variables, h5py.Group):
    return []
  keys = list(variables)
  if not all(k.isdigit() for k in keys):
    raise UserError(
      f'{path}: {_show(variables.name)} holds {_show(keys)}, not 0, 1, ...'
    )
  keys.sort(key=int)
  return [_declare(path, _node(path, variables, k), layer) for k in keys]


def _json_kind(value) -> str:
  if value is None:
    return 'null'
  for kind, name in (
    (bool, 'true/false'),
    (str, 'a string'),
    (int | float, 'a number'),
    (list, 'a list'),
    (dict, 'an object'),
  ):
    if isinstance(value, kind):
      return name
  return type(value).__name__


def _malformed(path: str, what: str) -> UserError:
  return UserError(f'{path}: malformed Keras model config: {what}')


def _object(path: str, value, what: str) -> dict:
  if not isinstance(value, dict):
    raise _malformed(path, f'{what} is {_json_kind(value)}, not an object')
  return value


def _shape(path: str, value, what: str) -> tuple | None:
  """A batch shape: a list of positive integers or nulls."""
  if value is None:
    return None
  if not isinstance(value, list | tuple) or not all(
    n is None or (type(n) is int and n > 0) for n in value
  ):
    raise _malformed(
      path, f'{what} is {_show(value)}, not a list of positive sizes'
    )
  return tuple(value)


def _layer(path: str, spec, what: str) -> Layer:
  spec = _object(path, spec, what)
  class_name = spec.get('class_name')
  if not isinstance(class_name, str):
    raise _malformed(
      path, f'{what} has class_name {_json_kind(class_name)}, not a string'
    )
  config = _object(
    path, spec.get('config', {}), f'{what} ({_show(class_name)}) config'
  )
  name = config.get('name', '?')
  if not isinstance(name, str):
    raise _malformed(
      path, f'{what} ({_show(class_name)}) name is {_json_kind(name)}'
    )
  return Layer(class_name, config)


def _parse_architecture(path: str, arch, version: str) -> Model:
  if not version:
    raise UserError(
      f'{path} does not say which Keras version saved it (no keras_version)'
    )
  if not re.fullmatch(r'\d+(\.[\w-]+)*', version):
    raise _malformed(
      path, f'keras_version {version[:40]!r} is not a version number'
    )
  arch = _object(path, arch, 'the model')
  if arch.get('class_name') != 'Sequential':
    raise UserError(
      f'{path} holds a {_show(arch.get("class_name"))} model; only '
      'Sequential models can be imported'
    )
  config = arch.get('config')
  if isinstance(config, list):  # Keras < 2.2: the layers only.
    specs, input_shape = config, None
  else:
    config = _object(path, config, 'the Sequential config')
    specs = config.get('layers')
    input_shape = _shape(
      path, config.get('build_input_shape'), 'build_input_shape'
    )
  if not isinstance(specs, list):
    raise _malformed(path, f'layers is {_json_kind(specs)}, not a list')
  layers = []
  for i, spec in enumerate(specs):
    layer = _layer(path, spec, f'layer {i}')
    if layer.class_name == 'InputLayer':
      shape = layer.config.get('batch_shape') or layer.config.get(
        'batch_input_shape'
      )
      input_shape = _shape(path, shape, f'{layer.describe()} batch shape')
      continue
    if not layers and 'batch_input_shape' in layer.config:
      input_shape = _shape(
        path,
        layer.config['batch_input_shape'],
        f'{layer.describe()} batch_input_shape',
      )
    if layer.class_name == 'TimeDistributed' and 'layer' in layer.config:
      layer.inner = _layer(
        path, layer.config['layer'], f'the layer in {layer.describe()}'
      )
    layers.append(layer)
  return Model(
    path=path,
    keras_version=version,
    input_shape=input_shape,
    layers=layers,
  )
