"""Hostile Keras model files: a file name that is Python code, HDF5 data
stored outside the file, sizes that would exhaust memory and malformed
architecture JSON are refused in one line, before anything is read or run.

Each hostile file is a copy of a model that tf_keras saved (committed by
tests/fixtures/make_keras_fixtures.py) changed with h5py and zipfile, so
these tests need no Keras."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from hpr import config as config_lib
from hpr.errors import UserError
from hpr.keras import importer as import_keras
from tests.fixtures import make_keras_fixtures as fixtures

# What the import bounds are, as hpr states them.
GIB = 1 << 30


@pytest.fixture
def absl_verbosity():
  """Restores absl's verbosity, which the CLI's main() lowers."""
  from absl import logging as absl_logging

  before = absl_logging.get_verbosity()
  yield
  absl_logging.set_verbosity(before)


# A file name that closes the generated config's docstring (as it was) and
# runs a line of Python, with quotes, backslashes and non-ASCII around it.
HOSTILE_NAME = (
  'model"""\nopen("INJECTED", "w").close()\n"""'
  " it's \\x41 \\\\ é 模型 \u2028\r.h5"
)


def test_a_file_name_holding_code_runs_nothing(
  tmp_path, keras_files, monkeypatch, capsys, absl_verbosity
):
  """The generated W/config.py holds the model's file name only as data:
  loading it as the printed command does runs nothing from the name."""
  hostile = tmp_path / HOSTILE_NAME
  shutil.copy(fixtures.model_file(keras_files, 2, 'tiny12', 'h5'), hostile)
  workdir = tmp_path / 'work \' é \\ "x'
  names = [f'class{i}' for i in range(12)]
  monkeypatch.chdir(tmp_path)
  import_keras.main(
    [str(hostile), '--class_names', ','.join(names)]
    + ['--workdir', str(workdir), '--dataset', 'synthetic_actions/tiny']
  )
  out = capsys.readouterr().out
  config_py = workdir / 'config.py'
  assert config_py.is_file()
  # Loaded in a fresh process with ml_collections' config_flags, as
  # `python -m hpr.main --config W/config.py` loads it.
  code = (
    'import json, sys\n'
    'from absl import flags\n'
    'from ml_collections import config_flags\n'
    "config = config_flags.DEFINE_config_file('config')\n"
    "flags.FLAGS(['prog', '--config', sys.argv[1]])\n"
    'print(config.value.to_json())\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code, str(config_py)],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=120,
    env={**os.environ, 'PYTHONPATH': _repo()},
  )
  assert result.returncode == 0, result.stderr
  assert not (tmp_path / 'INJECTED').exists()
  with open(workdir / 'config.json') as f:
    written = json.load(f)
  assert json.loads(result.stdout) == written
  assert written['dataset']['name'] == 'synthetic_actions/tiny'
  assert written['model']['convlstm']['filters'] == [4, 4]
  # The same in this process (importlib), and the file keeps the names.
  config = config_lib.load_config_file(str(config_py))
  assert json.loads(config.to_json()) == written
  assert not (tmp_path / 'INJECTED').exists()
  module = _load_module(config_py)
  assert module.KERAS_MODEL == str(hostile)
  assert shlex.split(module.EVALUATE)[-2] == str(workdir)
  # The printed command, one line, gives the workdir back in a shell.
  command = shlex.split(out.strip().splitlines()[-1])
  assert command[command.index('--workdir') + 1] == str(workdir)


def _repo() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_module(path):
  import importlib.util

  spec = importlib.util.spec_from_file_location('imported_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  'workdir',
  ['w"""\nopen("INJECTED", "w").close()\n"""', "w'\\\n#é", 'w\x00\udcff'],
)
def test_config_file_holds_names_as_data(tmp_path, monkeypatch, workdir):
  """Whatever the names hold, config.py is Python that runs none of it."""
  monkeypatch.chdir(tmp_path)
  config = config_lib.default_config()
  config.dataset.name = 'x"""\nopen("INJECTED", "w").close()\n"""'
  source = import_keras.config_file(config, HOSTILE_NAME, workdir)
  config_py = tmp_path / 'config.py'
  config_py.write_text(source, encoding='utf-8')
  module = _load_module(config_py)
  assert not (tmp_path / 'INJECTED').exists()
  assert module.KERAS_MODEL == os.path.abspath(HOSTILE_NAME)
  assert shlex.split(module.FINE_TUNE)[-1] == workdir
  assert module.get_config().dataset.name == config.dataset.name


# Crafted files: a real tiny model (Dense kernel (7, 3)) with one part
# replaced. Each case must end in one line naming what was refused.


@pytest.fixture(scope='module')
def keras_files(tmp_path_factory):
  """The folder of the committed Keras model files (extracted, checked)."""
  return fixtures.extract(tmp_path_factory.mktemp('keras_fixtures'))


@pytest.fixture(scope='module')
def originals(keras_files):
  """A small tf_keras ConvLSTM (convlstm_avgpool, saved in a fresh
  process) as .h5 and as .keras."""
  paths = {
    fmt: fixtures.model_file(keras_files, 2, 'convlstm_avgpool', fmt)
    for fmt in ('h5', 'keras')
  }
  for path in paths.values():
    assert import_keras.read(path).name == 'convlstm'
  return paths


def _dense_kernel(f: h5py.File, fmt: str) -> str:
  """The HDF5 path of the Dense kernel in a Keras file's weights."""
  if fmt == 'keras':
    return 'layers/dense/vars/0'
  names = f['model_weights/dense'].attrs['weight_names']
  names = [n.decode() if isinstance(n, bytes) else n for n in names]
  return 'model_weights/dense/' + next(n for n in names if 'kernel' in n)


def _crafted(tmp_path, originals, fmt, replace, name='model'):
  """A copy of the original `fmt` file whose Dense kernel dataset is
  removed and `replace(f, kernel_path, kernel)` called in its place."""
  path = str(tmp_path / f'{name}.{fmt}')
  if fmt == 'h5':
    shutil.copy(originals['h5'], path)
    weights = path
  else:
    weights = str(tmp_path / 'model.weights.h5')
    with zipfile.ZipFile(originals['keras']) as z:
      members = {n: z.read(n) for n in z.namelist()}
    with open(weights, 'wb') as f:
      f.write(members.pop('model.weights.h5'))
  with h5py.File(weights, 'r+') as f:
    kernel_path = _dense_kernel(f, fmt)
    kernel = f[kernel_path][()]
    del f[kernel_path]
    replace(f, kernel_path, kernel)
  if fmt == 'keras':
    with zipfile.ZipFile(path, 'w') as z:
      for member, data in members.items():
        z.writestr(member, data)
      z.write(weights, 'model.weights.h5')
  return path


def _refused(path, *words):
  with pytest.raises(UserError) as e:
    import_keras.read(path)
  message = str(e.value)
  assert '\n' not in message
  for word in words:
    assert word in message, message
  return message


@pytest.fixture
def secret(tmp_path):
  """A local file an attacker wants read into a kernel: 21 float32s."""
  values = np.arange(100, 121, dtype='<f4')
  raw = tmp_path / 'secret.bin'
  raw.write_bytes(values.tobytes())
  with h5py.File(tmp_path / 'secret.h5', 'w') as f:
    f['data'] = values.reshape(7, 3)
    f['group/kernel'] = values.reshape(7, 3)
  return {'raw': str(raw), 'h5': str(tmp_path / 'secret.h5')}


def _external_storage(secret):
  def replace(f, name, kernel):
    f.create_dataset(
      name, kernel.shape, '<f4', external=[(secret['raw'], 0, kernel.nbytes)]
    )

  return replace, ('external file', 'secret.bin')


def _virtual(secret):
  def replace(f, name, kernel):
    layout = h5py.VirtualLayout(kernel.shape, '<f4')
    layout[:] = h5py.VirtualSource(secret['h5'], 'data', kernel.shape)
    f.create_virtual_dataset(name, layout)

  return replace, ('virtual dataset',)


def _soft_link(secret):
  def replace(f, name, kernel):
    f['elsewhere'] = kernel
    f[name] = h5py.SoftLink('/elsewhere')

  return replace, ('a soft HDF5 link',)


def _external_link(secret):
  def replace(f, name, kernel):
    f[name] = h5py.ExternalLink(secret['h5'], 'data')

  return replace, ('an external HDF5 link',)


def _external_group(secret):
  """The Dense layer's whole group lives in another file."""

  def replace(f, name, kernel):
    group = name.rsplit('/', 1)[0]
    parent, leaf = group.rsplit('/', 1)
    del f[group]
    f[parent][leaf] = h5py.ExternalLink(secret['h5'], 'group')

  return replace, ('an external HDF5 link',)


@pytest.mark.parametrize('fmt', ['h5', 'keras'])
@pytest.mark.parametrize(
  'case',
  [_external_storage, _virtual, _soft_link, _external_link, _external_group],
  ids=lambda f: f.__name__.strip('_'),
)
def test_data_outside_the_file_is_refused(
  tmp_path, originals, secret, fmt, case
):
  """HDF5 can make a dataset read another file: none of those is read."""
  replace, words = case(secret)
  path = _crafted(tmp_path, originals, fmt, replace)
  message = _refused(path, *words)
  assert 'dense' in message
  assert 'hpr reads only data stored in the file itself' in message


def _declared(shape, chunks):
  """A kernel declared with `shape`, never written: HDF5 stores no chunk,
  so the file stays small and a read would allocate the fill value."""

  def replace(f, name, kernel):
    f.create_dataset(name, shape, '<f4', chunks=chunks, fillvalue=1.0)

  return replace


def _zip_bomb(path, members, name, size):
  """A zip with `members` (stored) and `name`: `size` zero bytes deflated,
  written without holding them in memory (one 16 MiB block, repeated: after
  a full flush deflate encodes the same input the same way)."""
  import struct
  import zlib

  block = 1 << 24
  assert size % block == 0
  compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
  chunk = compressor.compress(bytes(block))
  chunk += compressor.flush(zlib.Z_FULL_FLUSH)
  tail = compressor.flush()
  crc = 0
  for _ in range(size // block):
    crc = zlib.crc32(bytes(block), crc)
  entries = [(n, 0, d, zlib.crc32(d), len(d)) for n, d in members.items()]
  with open(path, 'wb') as f:
    central = b''
    for member, method, data, member_crc, raw_size in entries + [
      (name, 8, None, crc, size)
    ]:
      offset = f.tell()
      encoded = member.encode()
      packed = (
        len(data)
        if data is not None
        else (len(chunk) * (size // block) + len(tail))
      )
      fields = (20, 0, method, 0, 0x21, member_crc, packed, raw_size)
      f.write(
        struct.pack('<4s5HL2L2H', b'PK\x03\x04', *fields, len(encoded), 0)
      )
      f.write(encoded)
      if data is not None:
        f.write(data)
      else:
        for _ in range(size // block):
          f.write(chunk)
        f.write(tail)
      central += struct.pack(
        '<4s6HL2L5H2L',
        b'PK\x01\x02',
        20,
        *fields,
        len(encoded),
        0,
        0,
        0,
        0,
        0,
        offset,
      )
      central += encoded
    start = f.tell()
    f.write(central)
    count = len(entries) + 1
    f.write(
      struct.pack(
        '<4s4H2LH', b'PK\x05\x06', 0, 0, count, count, len(central), start, 0
      )
    )


MEASURE = """
import json, resource, sys
from hpr.keras import importer as import_keras
from hpr.errors import UserError

def peak_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

import_keras.read(sys.argv[1])  # Imports and builds everything once.
results = []
for path in sys.argv[2:]:
  before = peak_mib()
  try:
    import_keras.read(path)
    message = None
  except UserError as e:
    message = str(e)
  results.append({'message': message, 'grew_mib': peak_mib() - before})
print(json.dumps(results))
"""


@pytest.mark.slow
def test_declared_sizes_are_refused_before_reading(tmp_path, originals):
  """A 30000x30000 kernel in a small .h5 or .keras, a 4 TiB one, and a
  .keras whose weights member inflates to over 1 GiB are refused by their
  declared sizes: the process's peak memory does not grow."""
  paths = {
    'h5_30000': _crafted(
      tmp_path, originals, 'h5', _declared((30000, 30000), (1000, 1000)), 'a'
    ),
    'keras_30000': _crafted(
      tmp_path,
      originals,
      'keras',
      _declared((30000, 30000), (1000, 1000)),
      'b',
    ),
    'h5_4tib': _crafted(
      tmp_path, originals, 'h5', _declared((1 << 20, 1 << 20), (1024, 1024))
    ),
  }
  with zipfile.ZipFile(originals['keras']) as z:
    members = {n: z.read(n) for n in z.namelist() if n.endswith('.json')}
  paths['zip_bomb'] = str(tmp_path / 'bomb.keras')
  _zip_bomb(paths['zip_bomb'], members, 'model.weights.h5', GIB + (1 << 24))
  for path in paths.values():
    assert os.path.getsize(path) < 2 << 20
  result = subprocess.run(
    [sys.executable, '-c', MEASURE, originals['h5'], *paths.values()],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'PYTHONPATH': _repo()},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  results = dict(zip(paths, json.loads(result.stdout), strict=True))
  grew = {case: round(got['grew_mib'], 1) for case, got in results.items()}
  print('peak memory growth while refusing (MiB):', grew)
  for case, got in results.items():
    assert got['message'] is not None, case
    assert '\n' not in got['message']
    assert got['grew_mib'] < 64, (case, got)
  for case in ('h5_30000', 'keras_30000'):
    message = results[case]['message']
    assert 'declares shape (30000, 30000) of float32 (3.4 GiB)' in message
    assert 'hpr reads at most 1.0 GiB of weights' in message
  assert (
    'shape (1048576, 1048576) of float32 (4096.0 GiB)'
    in (results['h5_4tib']['message'])
  )
  assert (
    'model.weights.h5 declares 1.0 GiB uncompressed; hpr reads at most '
    '1.0 GiB of it'
  ) in results['zip_bomb']['message']


@pytest.mark.parametrize('fmt', ['h5', 'keras'])
def test_shapes_must_be_the_architectures(tmp_path, originals, fmt):
  """A kernel within the bounds but larger than the model it belongs to is
  refused before it is read."""
  path = _crafted(tmp_path, originals, fmt, _declared((3000, 3000), None))
  _refused(
    path,
    "layer 'dense' (Dense)",
    'declares shape (3000, 3000), but the architecture in the file gives '
    '(7, 3); nothing was read',
  )


def test_a_4_tib_tensor_is_one_line_from_the_cli(
  tmp_path, originals, capsys, absl_verbosity
):
  path = _crafted(
    tmp_path, originals, 'h5', _declared((1 << 20, 1 << 20), (1024, 1024))
  )
  with pytest.raises(SystemExit) as e:
    import_keras.main(
      [path, '--class_names', 'a,b,c', '--workdir', str(tmp_path / 'w')]
    )
  assert e.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('hpr: error: ')
  assert '4096.0 GiB' in err[0]
  assert not (tmp_path / 'w').exists()


# Malformed architecture JSON. Layers of the original: 0 InputLayer,
# 1 ConvLSTM2D, 2 TimeDistributed(MaxPooling2D), 3 Dropout, 4 ConvLSTM2D,
# 5 TimeDistributed(MaxPooling2D), 6 GlobalAveragePooling3D, 7 Dense.


def _with_config(tmp_path, originals, fmt, mutate=None, version=None):
  """A copy of the original whose architecture JSON is `mutate(arch)` (a
  JSON value, or text as it is) and whose keras_version is `version`."""
  path = str(tmp_path / f'model.{fmt}')
  if fmt == 'h5':
    shutil.copy(originals['h5'], path)
    with h5py.File(path, 'r+') as f:
      arch = json.loads(f.attrs['model_config'])
      if mutate:
        f.attrs['model_config'] = _dumps(mutate(arch))
      if version is not None:
        f.attrs['keras_version'] = version
    return path
  with zipfile.ZipFile(originals['keras']) as z:
    members = {n: z.read(n) for n in z.namelist()}
  if mutate:
    members['config.json'] = _dumps(mutate(json.loads(members['config.json'])))
  if version is not None:
    members['metadata.json'] = json.dumps({'keras_version': version})
  with zipfile.ZipFile(path, 'w') as z:
    for member, data in members.items():
      z.writestr(member, data)
  return path


def _dumps(value) -> str:
  return value if isinstance(value, str) else json.dumps(value)


def _set(index, key, value, *, inner=False):
  """A mutation: layers[index].config[key] = value (of the wrapped layer's
  config with inner)."""

  def mutate(arch):
    config = arch['config']['layers'][index]['config']
    if inner:
      config = config['layer']['config']
    config[key] = value
    return arch

  return mutate


def _layers(change):
  def mutate(arch):
    change(arch['config']['layers'])
    return arch

  return mutate


MALFORMED = {
  # case: (mutation, words the one-line error holds)
  'model_is_a_list': (lambda a: [a], 'the model is a list, not an object'),
  'model_is_a_string': (lambda a: '"Sequential"', 'the model is a string'),
  'config_null': (
    lambda a: {**a, 'config': None},
    'the Sequential config is null, not an object',
  ),
  'layers_null': (
    lambda a: {**a, 'config': {**a['config'], 'layers': None}},
    'layers is null, not a list',
  ),
  'layers_an_object': (
    lambda a: {**a, 'config': {**a['config'], 'layers': {}}},
    'layers is an object, not a list',
  ),
  'layer_a_string': (
    _layers(lambda layers: layers.__setitem__(1, 'ConvLSTM2D')),
    'layer 1 is a string, not an object',
  ),
  'layer_null': (
    _layers(lambda layers: layers.__setitem__(7, None)),
    'layer 7 is null, not an object',
  ),
  'class_name_a_number': (
    _layers(lambda layers: layers[7].__setitem__('class_name', 3)),
    'layer 7 has class_name a number, not a string',
  ),
  'layer_config_a_string': (
    _layers(lambda layers: layers[7].__setitem__('config', 'Dense')),
    'layer 7 (Dense) config is a string, not an object',
  ),
  'name_a_list': (_set(7, 'name', ['dense']), 'layer 7 (Dense) name is a list'),
  'wrapped_layer_a_string': (
    _set(2, 'layer', 'MaxPooling2D'),
    "the layer in layer 'time_distributed' (TimeDistributed) is a string",
  ),
  'batch_shape_strings': (
    _set(0, 'batch_input_shape', [None, 'four', 24, 24, 3]),
    "batch shape is [None, 'four', 24, 24, 3], not a list of positive sizes",
  ),
  'filters_a_string': (
    _set(1, 'filters', 'five'),
    "filters='five' is not a positive integer",
  ),
  'units_negative': (_set(7, 'units', -3), 'units=-3 is not a positive'),
  'units_true': (_set(7, 'units', True), 'units=True is not a positive'),
  'units_a_float': (_set(7, 'units', 3.0), 'units=3.0 is not a positive'),
  'kernel_size_floats': (
    _set(1, 'kernel_size', [5.5, 5]),
    'kernel_size=(5.5, 5) is not 2 positive integers',
  ),
  'pool_size_null': (
    _set(2, 'pool_size', None, inner=True),
    'pool_size=None is not 2 positive integers',
  ),
  'rate_a_string': (
    _set(3, 'rate', 'half'),
    "rate='half' is not a rate in [0, 1)",
  ),
  'rate_nan': (_set(3, 'rate', float('nan')), 'rate=nan is not a rate'),
  'recurrent_dropout_2': (
    _set(1, 'recurrent_dropout', 2),
    'recurrent_dropout=2 is not a rate in [0, 1)',
  ),
  'dtype_a_bad_policy': (
    _set(7, 'dtype', {'config': 3}),
    "layer 'dense' (Dense): dtype={'config': 3} is not supported",
  ),
  'filters_huge': (
    _set(4, 'filters', 10**12),
    'hpr cannot build the convlstm model it describes',
  ),
  'units_huge': (
    _set(7, 'units', 10**6),
    'gives (1000000,); nothing was read',
  ),
  'not_json': (lambda a: '{"class_name": ', 'is not valid JSON'),
  'nested_too_deep': (
    lambda a: '[' * 100_000 + ']' * 100_000,
    'is not valid JSON',
  ),
}


@pytest.mark.parametrize('fmt', ['h5', 'keras'])
@pytest.mark.parametrize('case', list(MALFORMED))
def test_malformed_config_is_one_line(tmp_path, originals, fmt, case):
  mutate, words = MALFORMED[case]
  _refused(_with_config(tmp_path, originals, fmt, mutate), words)


@pytest.mark.parametrize('fmt', ['h5', 'keras'])
def test_keras_version_must_be_a_version(tmp_path, originals, fmt):
  path = _with_config(tmp_path, originals, fmt, version='two')
  _refused(path, "keras_version 'two' is not a version number")


def test_metadata_must_be_an_object(tmp_path, originals):
  path = str(tmp_path / 'model.keras')
  with zipfile.ZipFile(originals['keras']) as z:
    members = {n: z.read(n) for n in z.namelist()}
  members['metadata.json'] = '["2.21.0"]'
  with zipfile.ZipFile(path, 'w') as z:
    for member, data in members.items():
      z.writestr(member, data)
  _refused(path, 'metadata.json is a list')


@pytest.mark.parametrize(
  'case', ['model_is_a_list', 'layer_a_string', 'layers_null']
)
def test_malformed_config_from_the_cli(
  tmp_path, originals, capsys, absl_verbosity, case
):
  path = _with_config(tmp_path, originals, 'keras', MALFORMED[case][0])
  with pytest.raises(SystemExit) as e:
    import_keras.main(
      [path, '--class_names', 'a,b,c', '--workdir', str(tmp_path / 'w')]
    )
  assert e.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('hpr: error: ')
  assert 'malformed Keras model config' in err[0]


@pytest.mark.parametrize(
  'offset, value, words',
  [
    (20, 1 << 31, 'config.json declares 2.0 GiB compressed, more than the'),
    (8, 0x1, 'config.json is encrypted'),
  ],
  ids=['compressed_size', 'encrypted'],
)
def test_zip_members_are_checked_by_their_declared_sizes(
  tmp_path, originals, offset, value, words
):
  """The central directory's word is checked before a member is read."""
  import struct

  data = bytearray(pathlib.Path(originals['keras']).read_bytes())
  entry = data.index(b'PK\x01\x02')  # The central directory's entries.
  while data[entry + 46 : entry + 46 + len(b'config.json')] != b'config.json':
    entry = data.index(b'PK\x01\x02', entry + 4)
  size = 4 if offset == 20 else 2
  fmt = '<L' if size == 4 else '<H'
  old = struct.unpack_from(fmt, data, entry + offset)[0]
  struct.pack_into(fmt, data, entry + offset, old | value)
  path = tmp_path / 'model.keras'
  path.write_bytes(bytes(data))
  _refused(str(path), words)
