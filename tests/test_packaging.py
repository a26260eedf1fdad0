"""The package as users install it: entry points, layers, and what a
non-editable install (`pip install .`) holds.

A non-editable install holds hpr's modules and its compiled kernels, not the
repository's configs/ or tests/. `test_installed_copy_*` runs hpr from such a
copy (the .py and .so files of hpr/, the files setuptools installs), from a
directory outside the checkout, so nothing can be read from configs/.
"""

import ast
import importlib
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'hpr')
# The layers (docs/architecture.md): tools and the Keras importer import the
# core, never the reverse.
OUTER = ('hpr.tools', 'hpr.keras')


def _scripts() -> dict[str, str]:
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']['scripts']


@pytest.mark.parametrize('name', sorted(_scripts()))
def test_entry_point_resolves_to_a_function(name):
  module, _, attr = _scripts()[name].partition(':')
  assert callable(getattr(importlib.import_module(module), attr))


def _imports(path: str) -> list[tuple[str, int]]:
  """(module imported, line) of every hpr import in a source file."""
  with open(path) as f:
    tree = ast.parse(f.read())
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [f'{node.module}.{a.name}' for a in node.names]
      found += [(n, node.lineno) for n in [node.module, *names]]
    elif isinstance(node, ast.Import):
      found += [(a.name, node.lineno) for a in node.names]
  return [(n, line) for n, line in found if n.startswith('hpr')]


def _modules() -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[: -len('.py')].replace(os.sep, '.')
        out[rel.removesuffix('.__init__')] = path
  return out


def test_the_core_imports_no_tool():
  offending = []
  for module, path in _modules().items():
    if module.startswith(OUTER) or module == 'hpr.main':
      continue  # The entry point may call the tools (it draws the plots).
    for name, line in _imports(path):
      if name.startswith(OUTER):
        offending.append(f'{module}:{line} imports {name}')
  assert not offending, offending


def test_no_import_cycle_at_module_level():
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    edges = set()
    for node in tree.body:  # Module level only: late imports do not cycle.
      if isinstance(node, ast.ImportFrom) and node.module:
        for a in node.names:
          full = f'{node.module}.{a.name}'
          edges.add(full if full in modules else node.module)
      elif isinstance(node, ast.Import):
        edges.update(a.name for a in node.names)
    graph[module] = {e for e in edges if e in modules and e != module}

  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        cycle = stack[stack.index(nxt) :] + [nxt]
        raise AssertionError(' -> '.join(cycle))
      if nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
IMPORTS = (ast.Import, ast.ImportFrom)


def _late_import_runs(tree: ast.Module) -> list[list[ast.stmt]]:
  """The imports inside function bodies, in runs of adjacent import
  statements of one statement list (blank lines between them allowed)."""
  parents = {}
  for node in ast.walk(tree):
    for child in ast.iter_child_nodes(node):
      parents[child] = node

  def in_function(node) -> bool:
    while node is not None:
      if isinstance(node, FUNCTIONS):
        return True
      node = parents.get(node)
    return False

  runs = []
  for node in ast.walk(tree):
    if not in_function(node):
      continue
    for field in ('body', 'orelse', 'finalbody'):
      statements = getattr(node, field, None)
      if not isinstance(statements, list):
        continue
      run = []
      for statement in [*statements, None]:
        if isinstance(statement, IMPORTS):
          run.append(statement)
        elif run:
          runs.append(run)
          run = []
  return runs


def test_late_imports_say_why():
  """An import inside a function (a late import) must save start-up time
  or break a cycle, and say which: the comment directly above it (or above
  the first of the adjacent imports it belongs to) starts with `# Late:`.
  hpr/__init__.py is a lazy exporter (PEP 562) on purpose."""
  offenders = []
  for module, path in sorted(_modules().items()):
    if module == 'hpr':
      continue
    with open(path) as f:
      source = f.read()
    lines = source.splitlines()
    for run in _late_import_runs(ast.parse(source)):
      # The comment lines directly above the run's first import.
      above = top = run[0].lineno - 2
      while top >= 0 and lines[top].strip().startswith('#'):
        top -= 1
      top += 1
      if top > above or not lines[top].strip().startswith('# Late:'):
        rel = os.path.relpath(path, ROOT)
        offenders += [(rel, node.lineno) for node in run]
  assert not offenders, (
    'late imports without a `# Late:` comment saying why: '
    + ', '.join(f'{rel}:{line}' for rel, line in sorted(offenders))
  )


def _installed_copy(tmp_path) -> str:
  """What `pip install .` puts in site-packages: hpr's .py and .so files."""
  site = tmp_path / 'site'

  def ignore(folder, names):
    def keep(name):
      return name.endswith(('.py', '.so')) or os.path.isdir(
        os.path.join(folder, name)
      )

    return [n for n in names if not keep(n) or n == '__pycache__']

  shutil.copytree(PACKAGE, site / 'hpr', ignore=ignore)
  return str(site)


def _run_installed(site, cwd, *args, timeout=600):
  env = {
    **os.environ,
    'PYTHONPATH': site,
    'CUDA_VISIBLE_DEVICES': '',
    'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
    'HPR_MALLOC_TUNING': '0',
  }
  return subprocess.run(
    [sys.executable, *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_installed_copy_validates_configs_outside_the_checkout(tmp_path):
  site = _installed_copy(tmp_path)
  work = tmp_path / 'work'
  work.mkdir()
  code = (
    'import hpr, hpr.config as c\n'
    f'assert hpr.__file__.startswith({site!r}), hpr.__file__\n'
    'config = c.default_config()\n'
    'c.validate(config)\n'
    'config.training.batch_size = 0\n'
    'try:\n'
    '  c.validate(config)\n'
    'except hpr.ConfigError as e:\n'
    '  print(e)\n'
  )
  out = _run_installed(site, work, '-c', code)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == 'training.batch_size: must be positive, got 0'


@pytest.mark.slow
def test_installed_copy_trains_and_evaluates(tmp_path, data_dir):
  site = _installed_copy(tmp_path)
  work = tmp_path / 'work'
  work.mkdir()
  (work / 'my_config.py').write_text(
    'from hpr import schema\n\n\n'
    'def get_config():\n'
    '  config = schema.get_config()\n'
    "  config.dataset.name = 'synthetic_actions/tiny'\n"
    f'  config.dataset.data_dir = {data_dir!r}\n'
    '  config.input.num_frames = 4\n'
    '  config.input.image_size = 32\n'
    '  config.model.lrcn.conv_features = (4, 8)\n'
    '  config.model.lrcn.pool_sizes = (2, 2)\n'
    '  config.model.lrcn.lstm_features = 8\n'
    '  config.training.num_epochs = 1\n'
    "  config.jax_cache_dir = ''\n"
    '  return config\n'
  )
  args = ['-m', 'hpr.main', '--config=my_config.py', '--workdir=w']
  out = _run_installed(site, work, *args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'test accuracy:' in out.stdout
  out = _run_installed(site, work, '-m', 'hpr.main', '--workdir=w',
                       '--mode=evaluate')  # fmt: skip
  assert out.returncode == 0, out.stderr[-3000:]
  assert (work / 'w' / 'eval' / 'report.json').exists()
  bad = _run_installed(site, work, *args, '--config.training.batchsize=4')
  assert bad.returncode != 0
  assert (
    bad.stderr.strip()
    .splitlines()[-1]
    .startswith("hpr: error: unknown config key 'training.batchsize'")
  )


@pytest.mark.slow
def test_installed_copy_imports_a_keras_model(tmp_path):
  from tests.fixtures import make_keras_fixtures as fixtures

  site = _installed_copy(tmp_path)
  work = tmp_path / 'work'
  work.mkdir()
  (tmp_path / 'fixtures').mkdir()
  root = fixtures.extract(tmp_path / 'fixtures')
  model = fixtures.model_file(root, 3, 'tiny12', 'keras')
  names = ','.join(f'class{i}' for i in range(12))
  out = _run_installed(site, work, '-m', 'hpr.keras.importer', model,
                       '--class_names', names, '--workdir', 'imported')  # fmt: skip
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'imported convlstm (12 classes' in out.stdout
  assert os.listdir(work / 'imported' / 'checkpoints') == ['0']
