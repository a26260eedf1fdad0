"""Shared test set-up: 8 fake CPU devices, no GPUs for TF, a tiny dataset."""

import os

# Before JAX is imported anywhere: the whole suite runs on 8 CPU devices, so
# the data-parallel path is what the tests exercise.
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import pytest  # noqa: E402

TINY_DATASET = 'synthetic_actions/tiny'


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data_dir with synthetic_actions/tiny prepared once per session."""
  import tensorflow_datasets as tfds

  import hpr.datasets  # noqa: F401

  path = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder(TINY_DATASET, data_dir=path).download_and_prepare()
  return path


def tiny_config(data_dir: str, model: str = 'lrcn'):
  """A config that trains in seconds on the tiny dataset."""
  from hpr import config as config_lib

  config = config_lib.default_config()
  config.dataset.name = TINY_DATASET
  config.dataset.data_dir = data_dir
  config.input.num_frames = 6
  config.input.image_size = 32
  config.model.name = model
  config.model.lrcn.conv_features = (4, 8)
  config.model.lrcn.pool_sizes = (2, 2)
  config.model.lrcn.lstm_features = 8
  config.model.single_frame.conv_features = (4, 8)
  config.model.single_frame.pool_sizes = (2, 2)
  config.model.convlstm.filters = (4, 4)
  config.training.batch_size = 8
  config.training.num_epochs = 2
  config.training.log_every_steps = 2
  config.eval.batch_size = 8
  config.jax_cache_dir = ''
  return config


@pytest.fixture(scope='session')
def trained_workdir(data_dir, tmp_path_factory):
  """A tiny LRCN trained for 2 epochs: (config, workdir, test metrics).

  Shared by the evaluate, predict and plots tests; they must not change it.
  """
  from hpr import train

  workdir = str(tmp_path_factory.mktemp('trained'))
  config = tiny_config(data_dir)
  return config, workdir, train.train_and_evaluate(config, workdir)


def train_batches(config, builder, **kwargs):
  """`input_pipeline.train_batches` with `config`'s values, as the trainer
  calls it (`kwargs`: epoch, start_batch, rows)."""
  from hpr import input_pipeline

  names = tuple(builder.info.features['label'].names)
  flips = input_pipeline.flip_labels(config, names, builder)
  return input_pipeline.train_batches(
    builder,
    config.dataset.train_split,
    input_pipeline.clip_spec(config, training=True, flip_labels=flips),
    batch_size=config.training.batch_size,
    seed=config.seed,
    shuffle_buffer=config.input.shuffle_buffer,
    **kwargs,
  )


def eval_batches(config, builder, split, **kwargs):
  """`input_pipeline.eval_batches` with `config`'s values, as evaluation
  calls it (`kwargs`: num_views, num_crops, rows)."""
  from hpr import input_pipeline

  return input_pipeline.eval_batches(
    builder,
    split,
    input_pipeline.clip_spec(config, training=False),
    batch_size=config.eval.batch_size,
    seed=config.seed,
    **kwargs,
  )


@pytest.fixture(autouse=True)
def _absl_logger_level():
  """Restores the 'absl' logger's own level after each test: a CLI's main()
  lowers absl's verbosity, which would hide later tests' INFO records from
  caplog."""
  import logging

  logger = logging.getLogger('absl')
  before = logger.level
  yield
  logger.setLevel(before)


# Parametrized cases that the fast run (`-m 'not slow'`) leaves to the slow
# one: the fast run keeps one case of each kernel path, model and layer.
SLOW_CASES = {
  'test_predict.py::test_convlstm_predictor_recomputes_windows_exactly': [
    'unit',
  ],
  'test_import_keras.py::test_predictions_match_keras': [
    '2-convlstm_same',
    '2-convlstm_avgpool',
    '2-lrcn_variant',
    '3-convlstm_same',
    '3-convlstm_avgpool',
    '3-lrcn_variant',
  ],
  'test_predict.py::test_predict_respects_the_input_modality': [
    'rgb+diff',
    'rgb+flow',
  ],
  'test_predict.py::test_streaming_equals_the_model_on_every_window': [
    'single_frame',
    'lrcn-kwargs1',
    'convlstm-kwargs3',
  ],
  'test_train.py::test_cli_config_errors_are_one_line': [
    '--config.training.batchsize=4',
    '--config.training.batch_size=abc',
    '--config.training.batch_size=0',
    '--config.training.batch_size=12',
    '--config.dataset.name=nosuchdataset',
  ],
  'test_streaming.py::test_stateful_equals_the_window_after_each_reset': [
    'lrcn-kwargs0',
  ],
  'test_kernels.py::test_convlstm_layer_auto_matches_the_reference': [
    '4-8-9-same-False-tanh-hard_sigmoid-1-native',
    '14-16-6-valid-True-tanh-hard_sigmoid-1-native',
    '5-12-7-valid-True-tanh-hard_sigmoid-1-native',
    '3-4-9-valid-True-tanh-sigmoid-1-conv_sum',
    '4-6-8-same-False-relu-hard_sigmoid-1-conv_sum',
    '8-14-7-valid-True-tanh-sigmoid-1-patches',
    '3-4-9-same-True-tanh-sigmoid-2-patches',
  ],
  'test_kernels.py::test_conv_relu_pool_auto_matches_the_reference': [
    f'shape{i}'
    for i in (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19)
  ],
  'test_kernels_conv_block.py::test_matches_the_plain_formulation': [
    'shape0',
    'shape2',
    'shape3',
    'shape4',
    'shape5',
  ],
  'test_kernels_conv_block.py::test_strip_kernel_maps_strip_patches_to_the_conv': [
    '2'
  ],
  'test_kernels_conv_sum.py::test_conv_sum_matches_autodiff_of_two_convs': [
    'valid+same-3x3-3',
    'valid+same-3x3-odd-2',
    'valid+same-3x3-odd-3',
    'same+same-3x3-1',
    'same+same-3x3-2',
    'same+same-3x3-3',
    'same+same-2x3-2',
    'same+same-2x3-3',
    'valid+same-3x4-2',
    'same+same-2x3-1',
    'valid+same-3x3-1',
    'valid+same-3x3-odd-1',
    'valid+same-3x4-1',
  ],
  'test_kernels_models.py::test_auto_matches_reference_in_train_mode': [
    'lrcn-8',
    'single_frame-8',
    'convlstm-8',
    'convlstm_xla-1',
    'lrcn_xla-1',
    'lrcn-1',
    'convlstm-1',
  ],
  'test_parallel.py::test_sharded_step_equals_single_device_step': ['convlstm'],
  'test_modality.py::test_a_model_trains_a_step_on_each_modality': [
    'lrcn-rgb+diff',
    'lrcn-rgb+flow',
    'convlstm-rgb+diff',
  ],
  'test_mixed_precision.py::test_bfloat16_computes_in_bfloat16_from_float32_params': [
    'convlstm'
  ],
  'test_checkpoint.py::test_cli_step_on_a_damaged_checkpoint_is_one_line': [
    'predict',
    'evaluate',
  ],
}


def pytest_collection_modifyitems(items):
  for item in items:
    test, _, case = item.nodeid.rpartition('/')[2].partition('[')
    if any(
      case.rstrip(']') == c or case.startswith(c + '-')
      for c in SLOW_CASES.get(test, ())
    ):
      item.add_marker(pytest.mark.slow)
