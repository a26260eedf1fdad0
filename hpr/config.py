"""Config loading and validation: one-line errors instead of tracebacks.

The schema is `configs/default.py`: a config may only hold keys that the
default holds, with values of the same type; sizes must be positive and names
must be known. `validate` raises `ConfigError` naming the key and the problem.
"""

import importlib.util
import math
import pathlib
import traceback
from collections.abc import Iterator
from typing import Any

import ml_collections

from hpr.errors import ConfigError, UserError

_CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'

# key -> allowed values.
_CHOICES = {
  'input.train_sampling': ('uniform', 'strided', 'segments'),
  'input.eval_sampling': ('uniform', 'strided', 'segments'),
  'input.normalization': ('unit', 'centered', 'clip_centered'),
  'optimizer.name': ('adam', 'adamw', 'sgd'),
  'optimizer.schedule': ('constant', 'warmup_cosine'),
  'training.monitor': ('val_loss', 'val_accuracy'),
  'model.convlstm.padding': ('valid', 'same'),
  'model.convlstm.head': ('flatten', 'avgpool'),
  'model.lrcn.readout': ('last', 'mean'),
  'model.impl': ('auto', 'reference'),
  'model.dtype': ('float32', 'bfloat16'),
  'input.train_crop': ('resize', 'random_resized', 'scale_jitter'),
  'input.eval_crop': ('resize', 'center'),
  'eval.num_test_crops': (1, 3),
  'dataset.video_folder.short_video': ('loop', 'repeat_last', 'drop'),
  'dataset.video_folder.split': (
    'groups',
    'official',
    'stratified',
    'random_clips',
  ),
}
# Tuples that may be empty, and the type of their items.
_MAYBE_EMPTY = {
  'dataset.video_folder.classes': str,
  'dataset.video_folder.test_groups': int,
}
# Integers (or tuples of integers) that must be >= 1.
_POSITIVE = (
  'cpu_devices',
  'input.num_frames',
  'input.image_size',
  'input.frame_stride',
  'input.shuffle_buffer',
  'training.batch_size',
  'training.num_epochs',
  'training.log_every_steps',
  'training.checkpoints_to_keep',
  'eval.batch_size',
  'eval.num_test_clips',
  'model.convlstm.filters',
  'model.convlstm.kernel_size',
  'model.convlstm.pool_size',
  'model.lrcn.conv_features',
  'model.lrcn.kernel_size',
  'model.lrcn.pool_sizes',
  'model.lrcn.lstm_features',
  'model.single_frame.conv_features',
  'model.single_frame.kernel_size',
  'model.single_frame.pool_sizes',
  'optimizer.learning_rate',
  'dataset.video_folder.short_side',
  'dataset.video_folder.fold',
  'dataset.video_folder.val_groups',
  'dataset.video_folder.split_number',
)
# Numbers that must be >= 0.
_NON_NEGATIVE = (
  'training.patience',
  'training.checkpoint_every_steps',
  'optimizer.warmup_epochs',
  'optimizer.weight_decay',
  'optimizer.grad_clip_norm',
  'dataset.video_folder.max_frames',
  'dataset.video_folder.min_frames',
  'dataset.video_folder.num_workers',
)
# Fractions in [0, 1).
_FRACTIONS = (
  'training.label_smoothing',
  'input.color_jitter',
  'optimizer.momentum',
  'model.convlstm.dropout',
  'model.convlstm.recurrent_dropout',
  'model.lrcn.dropout',
  'model.single_frame.dropout',
  'dataset.video_folder.test_fraction',
  'dataset.video_folder.val_fraction',
)


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
  """Returns `configs/default.py`'s config: the schema."""
  return load_config_file(str(_CONFIGS_DIR / 'default.py'))


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


def _type_ok(value: Any, default: Any, key: str = '') -> bool:
  if key in _MAYBE_EMPTY:
    kind = _MAYBE_EMPTY[key]
    return isinstance(value, tuple | list) and all(
      isinstance(v, kind) and not isinstance(v, bool) for v in value
    )
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
  """Checks `config` against the schema.

  Args:
    config: the experiment config.
    num_devices: devices the global batch is split over.

  Raises:
    ConfigError: one line naming the key and the problem.
  """
  schema = dict(_leaves(default_config()))
  given = dict(_leaves(config))
  for key, value in given.items():
    if key not in schema:
      parent = key.rpartition('.')[0]
      siblings = sorted(
        k.rpartition('.')[2] for k in schema if k.rpartition('.')[0] == parent
      )
      hint = f'; valid keys here: {", ".join(siblings)}' if siblings else ''
      raise ConfigError(f'unknown config key {key!r}{hint}')
    if not _type_ok(value, schema[key], key):
      raise ConfigError(
        f'{key}: expected {type(schema[key]).__name__} like '
        f'{schema[key]!r}, got {_describe(value)}'
      )
  for key in schema:
    if key not in given:
      raise ConfigError(f'config key {key!r} is missing')
  for key, value in given.items():
    # NaN passes every comparison below (nan <= 0 is False) and inf every
    # lower bound; neither is a usable rate, size or fraction.
    values = value if isinstance(value, tuple | list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
      raise ConfigError(f'{key}: must be a finite number, got {value!r}')

  for key, choices in _CHOICES.items():
    if given[key] not in choices:
      raise ConfigError(
        f'{key}: {given[key]!r} is not one of {", ".join(map(str, choices))}'
      )
  _check_model_name(config.model.name)
  for key in _POSITIVE:
    values = (
      given[key] if isinstance(given[key], tuple | list) else [given[key]]
    )
    if any(v <= 0 for v in values):
      raise ConfigError(f'{key}: must be positive, got {given[key]!r}')
  for key in _NON_NEGATIVE:
    if given[key] < 0:
      raise ConfigError(f'{key}: must be >= 0, got {given[key]!r}')
  for key in _FRACTIONS:
    if not 0 <= given[key] < 1:
      raise ConfigError(f'{key}: must be in [0, 1), got {given[key]!r}')
  for key in ('training.batch_size', 'eval.batch_size'):
    if given[key] % num_devices:
      raise ConfigError(
        f'{key}: {given[key]} is not divisible by the {num_devices} devices; '
        f'use a multiple of {num_devices}'
      )
  _check_ranges(config.input)
  if config.init_from:
    parse_init_from(config.init_from)
  _check_dataset_name(config.dataset.name)
  if config.dataset.name == 'video_folder':
    _check_video_folder(config.dataset.video_folder, config.input.num_frames)


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


def _check_video_folder(v: ml_collections.ConfigDict, num_frames: int) -> None:
  if v.min_frames < num_frames:
    raise ConfigError(
      f'dataset.video_folder.min_frames: {v.min_frames} is below '
      f'input.num_frames {num_frames}, so videos shorter than a clip would '
      f'escape short_video={v.short_video!r}; set it to at least {num_frames}'
    )
  if 0 < v.max_frames < v.min_frames:
    raise ConfigError(
      f'dataset.video_folder.max_frames: {v.max_frames} is below min_frames '
      f'{v.min_frames}; every video would be short'
    )


def _check_ranges(i: ml_collections.ConfigDict) -> None:
  for key, low, high in (
    ('crop_area', 0.0, 1.0),
    ('crop_aspect', 0.0, None),
    ('scale_jitter', 1.0, None),
  ):
    value = tuple(i[key])
    if (
      len(value) != 2
      or value[0] > value[1]
      or value[0] < low
      or (low == 0.0 and value[0] <= 0)
      or (high is not None and value[1] > high)
    ):
      bounds = f'in ({low}, {high}]' if high else f'>= {low}' if low else '> 0'
      raise ConfigError(
        f'input.{key}: expected (low, high) with low <= high, {bounds}; got '
        f'{value!r}'
      )


def _check_model_name(name: str) -> None:
  from hpr import models

  if name not in models.MODELS:
    raise ConfigError(
      f'model.name: unknown model {name!r}; valid: {", ".join(models.MODELS)}'
    )


def _check_dataset_name(name: str) -> None:
  import tensorflow_datasets as tfds

  import hpr.datasets  # noqa: F401  (registers hpr's builders)

  builder_name = name.split('/')[0].split(':')[0]
  try:
    cls = tfds.builder_cls(builder_name)
  except Exception:  # TFDS raises several kinds of not-found errors.
    raise ConfigError(
      f'dataset.name: unknown dataset {name!r}; hpr provides '
      f'{", ".join(hpr.datasets.BUILDERS)}, or name any TFDS dataset'
    ) from None
  if '/' in name:
    config_name = name.split('/')[1].split(':')[0]
    known = [c.name for c in (cls.BUILDER_CONFIGS or [])]
    if config_name not in known:
      raise ConfigError(
        f'dataset.name: {builder_name} has no config {config_name!r}; '
        f'valid: {", ".join(known) or "none"}'
      )


def lists_to_tuples(value):
  # JSON turned the config's tuples into lists.
  if isinstance(value, dict):
    return {k: lists_to_tuples(v) for k, v in value.items()}
  return tuple(value) if isinstance(value, list) else value
