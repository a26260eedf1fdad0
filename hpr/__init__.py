"""hpr: human action recognition in video with JAX and Flax NNX.

The public API (docs/api.md), all importable from `hpr` itself:

  Models (Flax NNX; plain constructor arguments, no config needed):
    ConvLSTMCell, ConvLSTM, ConvLSTMClassifier, LSTMCell, LSTM, FrameCNN,
    LRCN, SingleFrame, build_model, count_params.
  Configs: default_config, load_config_file.
  Clip pipeline on a TFDS builder: get_builder, get_dataset_info,
    DatasetInfo, ClipSpec, clip_spec, train_batches, eval_batches,
    steps_per_epoch.
  Training: train_and_evaluate(config, workdir).
  A trained workdir: load_trained(workdir, step=None) ->
    (model, config, class_names).
  Errors: UserError, ConfigError.

Every name is imported on first use (PEP 562), so `import hpr` loads
nothing heavy, and the models load JAX and Flax only: TensorFlow comes with
the pipeline, training and `load_trained`, never with the models.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = '0.1.0'

# Public name -> the module that defines it.
_LAZY = {
  # Models: JAX and Flax only.
  'ConvLSTMCell': 'hpr.models',
  'ConvLSTM': 'hpr.models',
  'ConvLSTMClassifier': 'hpr.models',
  'LSTMCell': 'hpr.models',
  'LSTM': 'hpr.models',
  'FrameCNN': 'hpr.models',
  'LRCN': 'hpr.models',
  'SingleFrame': 'hpr.models',
  'build_model': 'hpr.models',
  'count_params': 'hpr.models',
  # Configs: ml_collections only.
  'default_config': 'hpr.config',
  'load_config_file': 'hpr.config',
  # The clip pipeline: TensorFlow and TFDS.
  'DatasetInfo': 'hpr.input_pipeline',
  'ClipSpec': 'hpr.input_pipeline',
  'clip_spec': 'hpr.input_pipeline',
  'get_builder': 'hpr.input_pipeline',
  'get_dataset_info': 'hpr.input_pipeline',
  'train_batches': 'hpr.input_pipeline',
  'eval_batches': 'hpr.input_pipeline',
  'steps_per_epoch': 'hpr.input_pipeline',
  # Training and trained workdirs: TensorFlow, orbax.
  'train_and_evaluate': 'hpr.train',
  'load_trained': 'hpr.workdir',
  # Errors.
  'UserError': 'hpr.errors',
  'ConfigError': 'hpr.errors',
}

__all__ = [
  'ClipSpec',
  'ConfigError',
  'ConvLSTM',
  'ConvLSTMCell',
  'ConvLSTMClassifier',
  'DatasetInfo',
  'FrameCNN',
  'LRCN',
  'LSTM',
  'LSTMCell',
  'SingleFrame',
  'UserError',
  'build_model',
  'clip_spec',
  'count_params',
  'default_config',
  'eval_batches',
  'get_builder',
  'get_dataset_info',
  'load_config_file',
  'load_trained',
  'steps_per_epoch',
  'train_and_evaluate',
  'train_batches',
]

if TYPE_CHECKING:  # For type checkers and IDEs; at run time, __getattr__.
  from hpr.config import default_config, load_config_file
  from hpr.errors import ConfigError, UserError
  from hpr.input_pipeline import (
    ClipSpec,
    DatasetInfo,
    clip_spec,
    eval_batches,
    get_builder,
    get_dataset_info,
    steps_per_epoch,
    train_batches,
  )
  from hpr.models import (
    LRCN,
    LSTM,
    ConvLSTM,
    ConvLSTMCell,
    ConvLSTMClassifier,
    FrameCNN,
    LSTMCell,
    SingleFrame,
    build_model,
    count_params,
  )
  from hpr.train import train_and_evaluate
  from hpr.workdir import load_trained


def __getattr__(name: str):
  module = _LAZY.get(name)
  if module is None:
    raise AttributeError(f"module 'hpr' has no attribute '{name}'")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value  # Later look-ups skip __getattr__.
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_LAZY})
