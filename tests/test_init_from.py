"""config.init_from: another run's model arrays, with a fresh optimizer, step
counter and data order (fine-tuning with another optimizer or schedule)."""

import os

import numpy as np
import pytest
from flax import nnx

from hpr import checkpoint, parallel, train
from hpr import workdir as workdir_lib
from hpr.config import validate
from hpr.errors import ConfigError, UserError
from hpr.train_state import create_train_state


def _fine_tune_config(config, source):
  new = config.copy_and_resolve_references()
  new.optimizer.name = 'sgd'  # The source trained with adam.
  new.optimizer.schedule = 'constant'
  new.optimizer.learning_rate = 1e-3
  new.training.num_epochs = 1
  new.init_from = source
  return new


@pytest.mark.slow
def test_init_from_takes_the_model_and_starts_afresh(trained_workdir, tmp_path):
  config, source, _ = trained_workdir
  new = _fine_tune_config(config, f'{source}:4')
  run = str(tmp_path / 'run')

  ts = create_train_state(new, 12, parallel.make_mesh(), 4)
  assert train.init_from(ts, new.init_from, run) == 4
  ckpts, _ = workdir_lib.choose_checkpoint(source, 4)
  saved, _ = ckpts.restore_untyped(4)
  ckpts.close()
  want = checkpoint._named_leaves(saved['model'])
  got = checkpoint._named_leaves(nnx.to_pure_dict(ts.state['model']))
  assert got.keys() == want.keys()
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  assert ts.step == 0

  result = train.train_and_evaluate(new, run)
  assert result['count'] == 12 and np.isfinite(result['loss'])
  # A fresh step counter: one epoch of 4 steps ends at step 4, not 8.
  ckpts = checkpoint.Checkpoints(os.path.join(run, 'checkpoints'))
  assert ckpts.all_steps() == [4]
  ckpts.close()

  # The run now resumes its own checkpoint; init_from is not read again.
  again = new.copy_and_resolve_references()
  again.init_from = str(tmp_path / 'nowhere')
  assert train.train_and_evaluate(again, run)['accuracy'] == pytest.approx(
    result['accuracy']
  )


def test_init_from_another_model_names_the_first_mismatch(
  trained_workdir, tmp_path
):
  config, source, _ = trained_workdir
  new = _fine_tune_config(config, source)
  new.model.lrcn.lstm_features = 16
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(new, str(tmp_path / 'run'))
  message = str(error.value)
  assert message.startswith(f'init_from checkpoint {source}/checkpoints/')
  assert 'holds dense/kernel with shape (8, 12), but this config' in message
  assert '\n' not in message


def test_init_from_names_a_missing_step_or_workdir(trained_workdir, tmp_path):
  config, source, _ = trained_workdir
  for spec, message in [
    (f'{source}:5', 'init_from: no checkpoint for step 5'),
    (str(tmp_path / 'nowhere'), 'init_from: no checkpoints in'),
  ]:
    with pytest.raises(UserError, match=message):
      train.train_and_evaluate(
        _fine_tune_config(config, spec), str(tmp_path / 'run')
      )


@pytest.mark.parametrize('spec', ['runs/a:b', ':3', 'runs/a:-1'])
def test_init_from_format_is_validated(data_dir, spec):
  from tests.conftest import tiny_config

  config = tiny_config(data_dir)
  config.init_from = spec
  with pytest.raises(ConfigError, match='init_from'):
    validate(config, num_devices=8)
