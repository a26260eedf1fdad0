"""Hostile Keras model files: a file name that is Python code, HDF5 data
stored outside the file, sizes that would exhaust memory and malformed
architecture JSON are refused in one line, before anything is read or run."""

import json
import os
import shlex
import subprocess
import sys

# Keras 3 reads its backend once, on import.
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')

import pytest  # noqa: E402

from hpr import config as config_lib  # noqa: E402
from hpr import import_keras  # noqa: E402
from tests.test_import_keras import (  # noqa: E402
  _tiny_keras_model,
  save,
)

pytest.importorskip('tf_keras')
pytest.importorskip('keras', minversion='3')

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
  tmp_path, monkeypatch, capsys, absl_verbosity
):
  """The generated W/config.py holds the model's file name only as data:
  loading it as the printed command does runs nothing from the name."""
  path = save(_tiny_keras_model(2), str(tmp_path), 2, 'h5')
  hostile = tmp_path / HOSTILE_NAME
  os.rename(path, hostile)
  workdir = tmp_path / 'work \' é \\ "x'
  names = [f'class{i}' for i in range(12)]
  monkeypatch.chdir(tmp_path)
  import_keras.main(
    [str(hostile), '--class-names', ','.join(names)]
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
