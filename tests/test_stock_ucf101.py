"""The stock TFDS `ucf101` builder, prepared as TFDS prepares it, is read by
name (`dataset.name = 'ucf101/ucf101_1'`) and trained on.

UCF101 cannot be downloaded here, so the test prepares TFDS's own Ucf101
builder (its features, names, configs and file layout) from a few small
generated clips instead of the downloaded archive: everything after
`_split_generators` is TFDS's real code.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.video import ucf101

from hpr import input_pipeline
from hpr.errors import UserError
from tests.conftest import tiny_config


def _clips(labels, seed):
  rng = np.random.default_rng(seed)
  for i, label in enumerate(labels):
    video = rng.integers(0, 256, (8, 24, 32, 3), dtype=np.uint8)
    yield f'v_{label}_g{i + 1:02d}_c01.avi', {'video': video, 'label': label}


@pytest.fixture(scope='module')
def stock_ucf101(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds_ucf101'))
  labels = ('ApplyEyeMakeup', 'Archery', 'YoYo')
  builder = tfds.builder('ucf101/ucf101_1', data_dir=data_dir)
  assert isinstance(builder, ucf101.Ucf101)

  def split_generators(dl_manager):
    del dl_manager  # Nothing to download: generated clips.
    return {
      'train': _clips(labels * 4, seed=0),
      'test': _clips(labels * 2, seed=1),
    }

  builder._split_generators = split_generators
  builder.download_and_prepare()
  return data_dir


@pytest.mark.slow
def test_stock_ucf101_trains_by_name(stock_ucf101, tmp_path):
  from hpr import train

  config = tiny_config(stock_ucf101)
  config.dataset.name = 'ucf101/ucf101_1'
  # TFDS's ucf101 has train and test only: validation from training.
  config.dataset.train_split = 'train[:9]'
  config.dataset.eval_split = 'train[9:]'
  config.training.num_epochs = 1
  builder = input_pipeline.get_builder(config.dataset)
  info = input_pipeline.get_dataset_info(config, builder)
  assert info.num_classes == 101 and info.class_names[-1] == 'YoYo'
  assert info.num_examples == {'train[:9]': 9, 'train[9:]': 3, 'test': 6}
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['count'] == 6


def test_unprepared_stock_dataset_is_a_one_line_error(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset.name = 'ucf101/ucf101_1'
  with pytest.raises(UserError, match='not prepared in .* hpr does not'):
    input_pipeline.get_builder(config.dataset)
