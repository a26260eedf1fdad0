"""Every config validates; bad configs give one-line errors."""

import os
import pathlib
import subprocess
import sys

import pytest

from hpr import config as config_lib
from hpr.errors import ConfigError

ROOT = pathlib.Path(__file__).parent.parent
CONFIGS = sorted(pathlib.Path(__file__).parent.parent.glob('configs/[!_]*.py'))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_every_config_validates(path):
  config_lib.validate(config_lib.load_config_file(str(path)))


def _bad(mutate, num_devices=1):
  config = config_lib.default_config()
  mutate(config)
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config, num_devices=num_devices)
  message = str(e.value)
  assert '\n' not in message
  return message


def test_unknown_key():
  def typo(c):
    c.unlock()
    c.training.batchsize = 3

  assert "unknown config key 'training.batchsize'" in _bad(typo)


def test_unknown_top_level_section():
  def typo(c):
    c.datset = {'name': 'x'}

  assert "'datset.name'" in _bad(typo)


def test_wrong_type():
  def wrong(c):
    c.unlock()
    del c.training['batch_size']
    c.training.batch_size = 'big'

  assert 'training.batch_size: expected int' in _bad(wrong)


@pytest.mark.parametrize(
  'key',
  [
    'training.batch_size',
    'input.num_frames',
    'input.image_size',
    'training.num_epochs',
  ],
)
def test_non_positive_size(key):
  section, name = key.split('.')
  msg = _bad(lambda c: setattr(c[section], name, 0))
  assert msg == f'{key}: must be positive, got 0'


def test_unknown_model_lists_valid_ones():
  msg = _bad(lambda c: setattr(c.model, 'name', 'resnet'))
  assert "unknown model 'resnet'" in msg and 'lrcn' in msg


def test_unknown_dataset():
  msg = _bad(lambda c: setattr(c.dataset, 'name', 'no_such_dataset'))
  assert "unknown dataset 'no_such_dataset'" in msg


def test_unknown_dataset_config():
  msg = _bad(lambda c: setattr(c.dataset, 'name', 'synthetic_actions/huge'))
  assert "no config 'huge'" in msg


def test_batch_not_divisible_by_devices():
  msg = _bad(lambda c: setattr(c.training, 'batch_size', 12), num_devices=8)
  assert 'training.batch_size: 12 is not divisible by the 8 devices' in msg


def test_bad_choice():
  msg = _bad(lambda c: setattr(c.input, 'train_sampling', 'random'))
  assert 'input.train_sampling' in msg and 'uniform' in msg


def test_fraction_range():
  msg = _bad(lambda c: setattr(c.model.lrcn, 'dropout', 1.5))
  assert msg == 'model.lrcn.dropout: must be in [0, 1), got 1.5'


def test_missing_config_file():
  with pytest.raises(ConfigError, match='config file not found'):
    config_lib.load_config_file('configs/nope.py')


def test_video_folder_tuples_may_be_empty_but_typed():
  config = config_lib.default_config()
  config.dataset.video_folder.classes = ('Lunges', 'PushUps')
  config.dataset.video_folder.test_groups = (1, 2)
  config_lib.validate(config)

  def numbers_as_classes(c):
    c.dataset.video_folder.classes = (1, 2)

  assert 'dataset.video_folder.classes: expected' in _bad(numbers_as_classes)


def test_crop_ranges():
  msg = _bad(lambda c: setattr(c.input, 'crop_area', (0.5, 1.5)))
  assert msg.startswith('input.crop_area: expected (low, high)')


def test_three_test_crops_or_one():
  msg = _bad(lambda c: setattr(c.eval, 'num_test_crops', 2))
  assert 'eval.num_test_crops' in msg


def test_video_folder_frame_counts_cover_a_clip():
  def short_min(c):
    c.dataset.name = 'video_folder'
    c.input.num_frames = 20
    c.dataset.video_folder.min_frames = 16

  assert _bad(short_min).startswith('dataset.video_folder.min_frames: 16 ')

  def capped(c):
    c.dataset.name = 'video_folder'
    c.dataset.video_folder.max_frames = 10

  assert 'max_frames: 10 is below min_frames 20' in _bad(capped)


@pytest.mark.parametrize(
  'key, value',
  [
    ('optimizer.learning_rate', float('nan')),
    ('optimizer.learning_rate', float('inf')),
    ('optimizer.weight_decay', float('nan')),
    ('input.crop_area', (0.5, float('nan'))),
  ],
)
def test_nan_and_inf_are_refused(key, value):
  section, _, name = key.rpartition('.')

  def set_value(c):
    c[section.split('.')[0]][name] = value

  assert _bad(set_value) == f'{key}: must be a finite number, got {value!r}'


BAD_CONFIG_FILES = {
  'syntax.py': (
    'import ml_collections\n\ndef get_config(:\n  return None\n',
    'SyntaxError at line 3: invalid syntax',
  ),
  'raises.py': (
    'from configs import default\n\n\ndef get_config():\n'
    '  config = default.get_config()\n'
    "  config.training['batch_size'] = {}['typo']\n"
    '  return config\n',
    "KeyError at line 6: 'typo'",
  ),
  'top_level.py': (
    'RATE = 1 / 0\n\n\ndef get_config():\n  return None\n',
    'ZeroDivisionError at line 1: division by zero',
  ),
}


@pytest.mark.parametrize('name', sorted(BAD_CONFIG_FILES))
def test_config_file_errors_name_the_file_and_line(tmp_path, name):
  text, expected = BAD_CONFIG_FILES[name]
  path = tmp_path / name
  path.write_text(text)
  with pytest.raises(ConfigError) as e:
    config_lib.load_config_file(str(path))
  assert str(e.value) == f'config file {path}: {expected}'


def test_a_bad_config_file_is_one_line_from_the_cli(tmp_path):
  for name, (text, expected) in BAD_CONFIG_FILES.items():
    path = tmp_path / name
    path.write_text(text)
    run = subprocess.run(
      [
        sys.executable,
        '-m',
        'hpr.main',
        f'--config={path}',
        f'--workdir={tmp_path / "w"}',
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=120,
      env={**os.environ, 'HPR_MALLOC_TUNING': '0'},
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [
      f'hpr: error: config file {path}: {expected}'
    ]
    assert not (tmp_path / 'w').exists()
