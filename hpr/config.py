"""Config loading and validation: one-line errors instead of tracebacks.

The schema is hpr/schema.py: a config may only hold keys that the schema
holds, with values of the same type, and each value must pass the rule
written beside its default there (`rule(default, check)`, with the checks
below). `validate` is a generic walker over it and raises `ConfigError`
naming the key and the problem.
"""

import importlib.util
import math
import pathlib
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections

from hpr.errors import ConfigError, UserError

Check = Callable[[str, Any], None]


class _Ruled:
  """A default and its check, until `unwrap_rules` separates them."""

  __slots__ = ('default', 'check')

  def __init__(self, default: Any, check: Check):
    self.default, self.check = default, check


def rule(default: Any, check: Check) -> Any:
  """Marks a schema default with the check its values must pass."""
  return _Ruled(default, check)


def unwrap_rules(
  schema: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, dict[str, Check]]:
  """(the plain config, {key: check}) of a schema built with `rule`."""
  checks = {}

  def walk(cfg, prefix):
    out = {}
    for key, value in cfg.items():
      if isinstance(value, ml_collections.ConfigDict):
        out[key] = walk(value, f'{prefix}{key}.')
      elif isinstance(value, _Ruled):
        checks[f'{prefix}{key}'] = value.check
        out[key] = value.default
      else:
        out[key] = value
    return out

  return ml_collections.ConfigDict(walk(schema, '')), checks


def _values(value: Any) -> list:
  return list(value) if isinstance(value, tuple | list) else [value]


def one_of(*choices: Any) -> Check:
  def check(key: str, value: Any) -> None:
    if value not in choices:
      raise ConfigError(
        f'{key}: {value!r} is not one of {", ".join(map(str, choices))}'
      )

  return check


def items(kind: type) -> Check:
  """A tuple, maybe empty, of `kind` items (replaces the type check)."""

  def check(key: str, value: Any) -> None:
    if not isinstance(value, tuple | list) or not all(
      isinstance(v, kind) and not isinstance(v, bool) for v in value
    ):
      raise ConfigError(
        f'{key}: expected a tuple of {kind.__name__}, got {_describe(value)}'
      )

  check.checks_type = True
  return check


def name_pairs(key: str, value: Any) -> None:
  """A tuple, maybe empty, of (name, name) pairs of different names, no name
  in two pairs (replaces the type check)."""
  if not isinstance(value, tuple | list) or not all(
    isinstance(p, tuple | list)
    and len(p) == 2
    and all(isinstance(n, str) for n in p)
    for p in value
  ):
    raise ConfigError(
      f"{key}: expected pairs of class names like (('Clockwise', "
      f"'CounterClockwise'),), got {_describe(value)}"
    )
  names = [n for p in value for n in p]
  for name in names:
    if names.count(name) > 1:
      raise ConfigError(
        f'{key}: class {name!r} is named more than once; each class may be '
        'in one pair'
      )


name_pairs.checks_type = True


def positive(key: str, value: Any) -> None:
  """Numbers (or tuples of numbers) >= 1 / > 0."""
  if any(v <= 0 for v in _values(value)):
    raise ConfigError(f'{key}: must be positive, got {value!r}')


def non_negative(key: str, value: Any) -> None:
  if value < 0:
    raise ConfigError(f'{key}: must be >= 0, got {value!r}')


def fraction(key: str, value: Any) -> None:
  if not 0 <= value < 1:
    raise ConfigError(f'{key}: must be in [0, 1), got {value!r}')


def interval(low: float, high: float | None) -> Check:
  """A (low, high) pair with low <= high inside the bounds (low exclusive
  when it is 0)."""

  def check(key: str, value: Any) -> None:
    value = tuple(value)
    if (
      len(value) != 2
      or value[0] > value[1]
      or value[0] < low
      or (low == 0.0 and value[0] <= 0)
      or (high is not None and value[1] > high)
    ):
      bounds = f'in ({low}, {high}]' if high else f'>= {low}' if low else '> 0'
      raise ConfigError(
        f'{key}: expected (low, high) with low <= high, {bounds}; got {value!r}'
      )

  return check


def model_name(key: str, name: str) -> None:
  # Late: keeps JAX out of import hpr.config.
  from hpr import models

  if name not in models.MODELS:
    raise ConfigError(
      f'{key}: unknown model {name!r}; valid: {", ".join(models.MODELS)}'
    )


def dataset_name(key: str, name: str) -> None:
  # Late: keeps TFDS out of import hpr.config.
  import tensorflow_datasets as tfds

  import hpr.datasets  # noqa: F401  (registers hpr's builders)

  builder_name = name.split('/')[0].split(':')[0]
  try:
    cls = tfds.builder_cls(builder_name)
  except Exception:  # TFDS raises several kinds of not-found errors.
    raise ConfigError(
      f'{key}: unknown dataset {name!r}; hpr provides '
      f'{", ".join(hpr.datasets.BUILDERS)}, or name any TFDS dataset'
    ) from None
  if '/' in name:
    config_name = name.split('/')[1].split(':')[0]
    known = [c.name for c in (cls.BUILDER_CONFIGS or [])]
    if config_name not in known:
      raise ConfigError(
        f'{key}: {builder_name} has no config {config_name!r}; '
        f'valid: {", ".join(known) or "none"}'
      )


def init_from(key: str, value: str) -> None:
  if value:
    parse_init_from(value)


def load_config_file(
  path: str, argument: str | None = None
) -> ml_collections.ConfigDict:
  """Loads `get_config()` (or `get_config(argument)`) from a Python file.

  Raises:
    ConfigError: the file is missing, does not compile, fails while it runs
      or in `get_config`, or has no `get_config`; one line that names the
      file, the error and its line, e.g. `config file c.py: SyntaxError at
      line 3: invalid syntax`.
  """
  p = pathlib.Path(path)
  if not p.is_file():
    raise ConfigError(f'config file not found: {path}')
  spec = importlib.util.spec_from_file_location(f'hpr_config_{p.stem}', p)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConfigError(f'{path} defines no get_config()')
    if argument is None:
      return module.get_config()
    return module.get_config(argument)
  except UserError:
    raise
  except Exception as e:  # Whatever the file's own code raises.
    raise ConfigError(f'config file {path}: {_code_error(e, p)}') from None


def _code_error(error: Exception, path: pathlib.Path) -> str:
  """'SyntaxError at line 3: invalid syntax', the line in `path`."""
  if isinstance(error, SyntaxError) and error.lineno:
    line, text = error.lineno, error.msg
  else:
    frames = traceback.extract_tb(error.__traceback__)
    lines = [
      f.lineno
      for f in frames
      if pathlib.Path(f.filename).resolve() == path.resolve()
    ]
    line = lines[-1] if lines else None
    text = str(error)
  text = ' '.join(str(text).split()) or type(error).__name__
  where = f' at line {line}' if line else ''
  return f'{type(error).__name__}{where}: {text}'


def default_config() -> ml_collections.ConfigDict:
  """Returns the schema's defaults (hpr/schema.py)."""
  # Late: hpr.schema imports this module's rules (a cycle).
  from hpr import schema

  return schema.get_config()


def _leaves(cfg: Any, prefix: str = '') -> Iterator[tuple[str, Any]]:
  for key, value in cfg.items():
    path = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict | dict):
      yield from _leaves(value, path + '.')
    else:
      yield path, value


def _get(cfg: ml_collections.ConfigDict, path: str) -> Any:
  for part in path.split('.'):
    cfg = cfg[part]
  return cfg


def _type_ok(value: Any, default: Any) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, int | float)
  if isinstance(default, tuple | list):
    if not isinstance(value, tuple | list) or not value:
      return False
    kinds = {type(v) for v in default} or {int}
    return all(type(v) in kinds for v in value)
  return isinstance(value, type(default))


def _describe(value: Any) -> str:
  return f'{value!r} ({type(value).__name__})'


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Checks `config` against the schema (hpr/schema.py).

  Args:
    config: the experiment config.
    num_devices: devices the global batch is split over.

  Raises:
    ConfigError: one line naming the key and the problem.
  """
  # Late: hpr.schema imports this module's rules (a cycle).
  from hpr import schema

  defaults = dict(_leaves(default_config()))
  checks = schema.rules()
  given = dict(_leaves(config))
  for key, value in given.items():
    if key not in defaults:
      parent = key.rpartition('.')[0]
      siblings = sorted(
        k.rpartition('.')[2] for k in defaults if k.rpartition('.')[0] == parent
      )
      hint = f'; valid keys here: {", ".join(siblings)}' if siblings else ''
      raise ConfigError(f'unknown config key {key!r}{hint}')
    check = checks.get(key)
    if getattr(check, 'checks_type', False):
      check(key, value)
    elif not _type_ok(value, defaults[key]):
      raise ConfigError(
        f'{key}: expected {type(defaults[key]).__name__} like '
        f'{defaults[key]!r}, got {_describe(value)}'
      )
  for key in defaults:
    if key not in given:
      raise ConfigError(f'config key {key!r} is missing')
  for key, value in given.items():
    # NaN passes every comparison (nan <= 0 is False) and inf every lower
    # bound; neither is a usable rate, size or fraction.
    if any(
      isinstance(v, float) and not math.isfinite(v) for v in _values(value)
    ):
      raise ConfigError(f'{key}: must be a finite number, got {value!r}')
  for key, check in checks.items():
    check(key, given[key])
  for key in ('training.batch_size', 'eval.batch_size'):
    if given[key] % num_devices:
      raise ConfigError(
        f'{key}: {given[key]} is not divisible by the {num_devices} devices; '
        f'use a multiple of {num_devices}'
      )
  schema.cross_checks(config)


def parse_init_from(value: str) -> tuple[str, int | None]:
  """'WORKDIR[:STEP]' -> (WORKDIR, STEP or None).

  Raises:
    ConfigError: an empty workdir or a STEP that is not a number >= 0.
  """
  workdir, sep, step = value.rpartition(':')
  if not sep or '/' in step:  # No step: a path (which may hold a colon).
    workdir, step = value, ''
  elif not step.isdigit():
    raise ConfigError(
      f'init_from: expected WORKDIR or WORKDIR:STEP with a step number, got '
      f'{value!r}'
    )
  if not workdir:
    raise ConfigError(f'init_from: no workdir in {value!r}')
  return workdir, int(step) if step else None


def lists_to_tuples(value):
  # JSON turned the config's tuples into lists.
  if isinstance(value, dict):
    return {k: lists_to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(lists_to_tuples(v) for v in value)
  return value
