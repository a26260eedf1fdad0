"""hpr.checkpoint: which orbax checkpoints are kept, also across a restart;
what a damaged checkpoint does to resume, evaluate and predict."""

import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import pytest

from hpr import checkpoint, evaluate, metrics, train
from hpr.errors import UserError
from hpr.tools import predict


@pytest.mark.parametrize('monitor, best, worse', [
  ('val_accuracy', 0.9, 0.1),
  ('val_loss', 0.1, 0.9),
])  # fmt: skip
def test_best_checkpoint_survives_a_restart(tmp_path, monitor, best, worse):
  def metrics_of(value):
    return {monitor: value}

  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=1, monitor=monitor)
  ckpts.save(1, {'w': jnp.ones(2)}, {'step': 1}, metrics_of(best))
  ckpts.save(2, {'w': jnp.ones(2)}, {'step': 2}, metrics_of(worse))
  ckpts.wait()
  ckpts.close()  # The run is interrupted here and resumed below.

  resumed = checkpoint.Checkpoints(str(tmp_path), keep=1, monitor=monitor)
  for step in (3, 4):
    resumed.save(step, {'w': jnp.ones(2)}, {'step': step}, metrics_of(worse))
  resumed.save(5, {'w': jnp.ones(2)}, {'step': 5})  # Mid-epoch: no metrics.
  resumed.wait()
  assert resumed.all_steps() == [1, 5]
  assert resumed.read_meta(1) == {'step': 1}
  resumed.close()


# Damage done to a checkpoint's files, as a crash, a full disk or a broken
# copy leaves them.
def _truncate_largest_array_file(path):
  files = [
    os.path.join(root, name)
    for root, _, names in os.walk(os.path.join(path, 'state'))
    for name in names
  ]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)


def _remove_array_index(path):
  os.remove(os.path.join(path, 'state', '_METADATA'))


def _remove_meta_item(path):
  shutil.rmtree(os.path.join(path, 'meta'))


def _half_written(path):
  # A step directory whose copy stopped early: the array database's
  # manifest and data files never arrived.
  state = os.path.join(path, 'state')
  for name in os.listdir(state):
    if name.startswith(('manifest', 'ocdbt', 'd')):
      full = os.path.join(state, name)
      shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)


DAMAGES = {
  'truncated data file': (_truncate_largest_array_file, 'cannot be read'),
  'no _METADATA': (_remove_array_index, '_METADATA is missing'),
  'no meta item': (_remove_meta_item, "'meta' item is missing"),
  'half-written step': (_half_written, 'array index is unreadable'),
}


@pytest.fixture
def workdir_copy(trained_workdir, tmp_path):
  """A copy of the shared trained workdir (checkpoints 4 and 8) to damage."""
  config, workdir, _ = trained_workdir
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return config, copy


def _target(config):
  from hpr import parallel
  from hpr.train_state import create_train_state

  ts = create_train_state(config, 12, parallel.make_mesh(), 4)
  return ts.checkpoint_tree()


@pytest.mark.parametrize('damage', DAMAGES)
def test_damaged_latest_checkpoint_falls_back(workdir_copy, damage, capfd):
  config, workdir = workdir_copy
  directory = os.path.join(workdir, 'checkpoints')
  make_damage, reason = DAMAGES[damage]
  make_damage(os.path.join(directory, '8'))

  ckpts = checkpoint.Checkpoints(directory, monitor=config.training.monitor)
  with pytest.raises(checkpoint.DamagedCheckpoint, match=reason):
    ckpts.restore(8, _target(config))
  step, tree, meta = ckpts.restore_latest(_target(config))
  ckpts.close()
  assert step == 4 and meta['epoch'] == 1
  assert tree['optimizer']['step'] == 4
  # Set aside, not deleted: the resumed run can save step 8 again.
  assert sorted(os.listdir(directory)) == ['4', '8.damaged']
  assert 'Traceback' not in capfd.readouterr().err


@pytest.mark.slow
def test_resume_skips_a_damaged_checkpoint_and_finishes(workdir_copy):
  config, workdir = workdir_copy
  directory = os.path.join(workdir, 'checkpoints')
  _truncate_largest_array_file(os.path.join(directory, '8'))
  result = train.train_and_evaluate(config, workdir)
  assert result['count'] == 12
  assert sorted(os.listdir(directory)) == ['4', '8', '8.damaged']
  epochs = [
    r['epoch']
    for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    if 'val_loss' in r
  ]
  assert epochs == [1, 2]  # Epoch 2 again from step 4, recorded once.


def test_no_intact_checkpoint_is_one_line_and_deletes_nothing(workdir_copy):
  config, workdir = workdir_copy
  directory = os.path.join(workdir, 'checkpoints')
  _remove_meta_item(os.path.join(directory, '8'))
  _remove_array_index(os.path.join(directory, '4'))
  with pytest.raises(UserError, match='no intact checkpoint') as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert '\n' not in message
  assert f'{directory}/8' in message and f'{directory}/4' in message
  assert sorted(os.listdir(directory)) == ['4', '8']


def test_evaluate_and_predict_name_the_damage(workdir_copy):
  config, workdir = workdir_copy
  _truncate_largest_array_file(os.path.join(workdir, 'checkpoints', '8'))
  for load in (
    lambda: evaluate.evaluate(config, workdir, step=8),
    lambda: predict.load_predictor(workdir, step=8),
  ):
    with pytest.raises(checkpoint.DamagedCheckpoint) as error:
      load()
    assert 'checkpoints/8 is damaged: its arrays cannot be read' in str(
      error.value
    )
    assert '\n' not in str(error.value)
  predict.load_predictor(workdir, step=4)  # The intact one still works.


def test_another_model_does_not_fit_rather_than_damaged(workdir_copy):
  config, workdir = workdir_copy
  other = config.copy_and_resolve_references()
  other.model.lrcn.lstm_features = 16
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'))
  with pytest.raises(UserError, match='does not fit this model') as error:
    ckpts.restore_latest(_target(other))
  ckpts.close()
  assert not isinstance(error.value, checkpoint.DamagedCheckpoint)
  assert 'model/dense/kernel with shape (8, 12)' in str(error.value)


@pytest.mark.parametrize('tool', ['predict', 'evaluate'])
def test_cli_step_on_a_damaged_checkpoint_is_one_line(workdir_copy, tool):
  _, workdir = workdir_copy
  _truncate_largest_array_file(os.path.join(workdir, 'checkpoints', '8'))
  if tool == 'predict':
    video = os.path.join(workdir, 'clip.avi')  # Never read: the model fails.
    with open(video, 'wb') as f:
      f.write(b'RIFF')
    args = ['hpr.tools.predict', f'--workdir={workdir}', '--step=8', video]
  else:
    args = ['hpr.main', '--mode=evaluate', f'--workdir={workdir}', '--step=8']
  run = subprocess.run(
    [sys.executable, '-m', *args],
    capture_output=True,
    text=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    timeout=600,
  )
  assert run.returncode == 1, run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('hpr: error: checkpoint ') and last.endswith(')')
  assert 'checkpoints/8 is damaged: its arrays cannot be read' in last
  assert 'Traceback' not in run.stderr and 'Exception ignored' not in run.stderr
