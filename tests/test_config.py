"""Every config validates; bad configs give one-line errors."""

import pathlib

import pytest

from hpr import config as config_lib
from hpr.errors import ConfigError

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
