"""Training end to end on the tiny synthetic dataset: outputs, evaluation
counts, kill-and-resume, divergence."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hpr import (
  evaluate,
  input_pipeline,
  malloc_tuning,
  metrics,
  parallel,
  train,
)
from hpr.errors import UserError
from hpr.train_state import create_train_state, jit_eval_step
from tests.conftest import tiny_config

# Keys whose values depend on the wall clock, not on the computation.
_TIMING = ('epoch_seconds', 'steps_per_sec', 'uptime')


def _records(workdir):
  return [
    {k: v for k, v in r.items() if k not in _TIMING}
    for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    if not set(r) <= {'step', *_TIMING}
  ]


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  """A tiny LRCN trained for 2 epochs: (config, workdir, test metrics)."""
  workdir = str(tmp_path_factory.mktemp('train'))
  config = tiny_config(data_dir)
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_train_writes_everything(trained):
  config, workdir, result = trained
  assert result['count'] == 12  # The tiny test split.
  assert 0.0 <= result['accuracy'] <= 1.0 and np.isfinite(result['loss'])
  records = _records(workdir)
  epochs = [r for r in records if 'val_loss' in r]
  assert [r['epoch'] for r in epochs] == [1, 2]
  assert all(np.isfinite(r['train_loss']) for r in epochs)
  assert records[-1]['test_accuracy'] == pytest.approx(result['accuracy'])
  events = [f for f in os.listdir(workdir) if f.startswith('events.out')]
  assert events and os.path.getsize(os.path.join(workdir, events[0])) > 0
  steps = sorted(
    int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
  )
  assert steps[-1] == 2 * 4  # 36 train clips // batch 8 = 4 steps/epoch.
  with open(os.path.join(workdir, 'class_names.json')) as f:
    assert len(json.load(f)) == 12
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['name'] == 'lrcn'


@pytest.mark.parametrize(
  'split,batch_size', [('test', 8), ('test', 16), ('validation[:7]', 8)]
)
def test_eval_counts_every_example_once(trained, split, batch_size):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.eval.batch_size = batch_size
  builder = input_pipeline.get_builder(config.dataset)
  mesh = parallel.make_mesh()
  ts = create_train_state(config, 12, mesh, 1)
  logits, labels = evaluate.predict_split(
    jit_eval_step(ts, mesh), ts.state, config, builder, split, mesh
  )
  expected = [
    ex['label']
    for ex in tfds.as_numpy(
      builder.as_dataset(
        split=split, decoders={'video': tfds.decode.SkipDecoding()}
      )
    )
  ]
  assert len(expected) % batch_size != 0  # Padding is really exercised.
  # Same examples, same order, none twice, no padding among them.
  np.testing.assert_array_equal(labels, expected)
  assert logits.shape == (len(expected), 12)
  scores = metrics.classification_metrics(logits, labels, 12)
  assert scores['count'] == len(expected)


def test_evaluate_mode_writes_report(trained):
  config, workdir, result = trained
  again = evaluate.evaluate(config, workdir)
  assert again['accuracy'] == pytest.approx(result['accuracy'])
  with open(os.path.join(workdir, 'eval', 'report.json')) as f:
    report = json.load(f)
  assert report['metrics']['count'] == 12
  assert np.sum(report['metrics']['confusion']) == 12
  with pytest.raises(UserError, match='no checkpoint for step 3'):
    evaluate.evaluate(config, workdir, step=3)


def _cli(config_path, workdir, overrides, **kwargs):
  cmd = [
    sys.executable,
    '-m',
    'hpr.main',
    f'--config={config_path}',
    f'--workdir={workdir}',
    *overrides,
  ]
  return subprocess.Popen(
    cmd,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    cwd=os.path.dirname(os.path.dirname(__file__)),
    **kwargs,
  )


def _overrides(data_dir, epochs):
  return [
    '--config.dataset.name=synthetic_actions/tiny',
    f'--config.dataset.data_dir={data_dir}',
    '--config.input.num_frames=4',
    '--config.input.image_size=32',
    '--config.model.lrcn.conv_features=(4,8)',
    '--config.model.lrcn.pool_sizes=(2,2)',
    '--config.model.lrcn.lstm_features=8',
    '--config.training.batch_size=8',
    f'--config.training.num_epochs={epochs}',
    '--config.training.log_every_steps=3',
    '--config.training.checkpoint_every_steps=3',
    '--config.jax_cache_dir=',
  ]


@pytest.mark.slow
def test_kill_and_resume_gives_identical_metrics(data_dir, tmp_path):
  overrides = _overrides(data_dir, epochs=3)
  straight = _cli('configs/default.py', tmp_path / 'straight', overrides)
  out, _ = straight.communicate(timeout=600)
  assert straight.returncode == 0, out
  # hpr.main draws the run's figures once it has trained.
  assert sorted(os.listdir(tmp_path / 'straight' / 'plots')) == [
    'accuracy.png',
    'confusion.png',
    'gallery.png',
    'loss.png',
    'reliability.png',
  ]

  # Kill the second run hard once it has saved a mid-epoch checkpoint of
  # epoch 2, then run the same command again.
  interrupted = tmp_path / 'interrupted'
  run = _cli('configs/default.py', interrupted, overrides)
  for line in run.stdout:
    if 'saved checkpoint at step 6' in line:
      run.send_signal(signal.SIGKILL)
      break
  run.wait(timeout=600)
  assert run.returncode == -signal.SIGKILL
  resumed = _cli('configs/default.py', interrupted, overrides)
  out2, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out2
  assert 'Resumed from step' in out2
  if malloc_tuning.enabled():  # hpr.main restarted with its malloc settings.
    assert 'glibc malloc settings: on' in out2

  assert _records(interrupted) == _records(tmp_path / 'straight')
  # The console summary's line (log lines carry times and thread ids).
  final = [line for line in out.splitlines() if line.startswith('test acc')]
  assert final and final == [
    line for line in out2.splitlines() if line.startswith('test acc')
  ]


@pytest.mark.slow
def test_divergence_stops_with_one_line_and_keeps_checkpoint(
  data_dir, tmp_path
):
  overrides = _overrides(data_dir, epochs=3) + [
    '--config.optimizer.learning_rate=1e30',
    '--config.training.log_every_steps=1',
  ]
  run = _cli('configs/default.py', tmp_path, overrides)
  out, _ = run.communicate(timeout=600)
  assert run.returncode == 1
  last = out.strip().splitlines()[-1]
  assert last.startswith('hpr: error: training diverged'), out
  assert 'Traceback' not in out


@pytest.mark.parametrize(
  'override,message',
  [
    ('--config.training.batchsize=4', 'training.batchsize'),
    ('--config.training.batch_size=abc', 'batch_size'),
    ('--config.training.batch_size=0', 'training.batch_size'),
    ('--config.training.batch_size=12', 'divisible'),
    ('--config.model.name=resnet', 'model.name'),
    ('--config.dataset.name=nosuchdataset', 'nosuchdataset'),
  ],
)
def test_cli_config_errors_are_one_line(data_dir, tmp_path, override, message):
  # 8 fake devices (conftest): a batch of 12 does not split evenly.
  overrides = _overrides(data_dir, epochs=1) + [override]
  run = _cli('configs/default.py', tmp_path, overrides)
  out, _ = run.communicate(timeout=300)
  assert run.returncode == 2, out
  last = out.strip().splitlines()[-1]
  assert last.startswith('hpr: error:') and message in last, out
  assert 'Traceback' not in out


def test_cli_missing_config_file(tmp_path):
  run = _cli('configs/nope.py', tmp_path, [])
  out, _ = run.communicate(timeout=300)
  assert run.returncode == 2
  assert out.strip().splitlines()[-1].startswith('hpr: error:')
  assert 'nope.py' in out and 'Traceback' not in out


def test_resume_refuses_another_model(trained):
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.model.name = 'single_frame'
  with pytest.raises(UserError, match='different model'):
    train.train_and_evaluate(other, workdir)
