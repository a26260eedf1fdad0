"""SIGTERM and SIGINT: a checkpoint at the next step boundary, one line, an
exit code that says which signal, and a rerun that ends exactly as an
uninterrupted run."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from hpr import checkpoint, metrics, train
from tests.test_multiprocess import (  # noqa: F401 (config_file: a fixture)
  RUN_LIMIT_S,
  _start,
  _wait,
  config_file,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Keys whose values depend on the wall clock, not on the computation.
_TIMING = ('epoch_seconds', 'steps_per_sec', 'uptime')


def test_signal_sets_the_flag_and_handlers_are_restored():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with train._StopSignals() as stop:
    assert not stop.requested()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested() and stop.signum == signal.SIGTERM
    # A second SIGTERM would act as before the block (here: Python's).
    assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
  assert {s: signal.getsignal(s) for s in before} == before


def _command(data_dir, workdir):
  return [
    sys.executable,
    '-m',
    'hpr.main',
    '--config=configs/default.py',
    f'--workdir={workdir}',
    '--config.dataset.name=synthetic_actions/tiny',
    f'--config.dataset.data_dir={data_dir}',
    '--config.input.num_frames=4',
    '--config.input.image_size=32',
    '--config.model.lrcn.conv_features=(4,8)',
    '--config.model.lrcn.pool_sizes=(2,2)',
    '--config.model.lrcn.lstm_features=8',
    '--config.training.batch_size=8',
    '--config.training.num_epochs=2',
    '--config.training.log_every_steps=1',
    '--config.jax_cache_dir=',
  ]


def _run(data_dir, workdir):
  run = subprocess.run(
    _command(data_dir, workdir),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    cwd=ROOT,
    timeout=600,
  )
  assert run.returncode == 0, run.stdout
  return run.stdout


def _records(workdir):
  return [
    {k: v for k, v in r.items() if k not in _TIMING}
    for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    if not set(r) <= {'step', *_TIMING}
  ]


def _final(output):
  # The console summary's line (log lines carry times and thread ids).
  return [line for line in output.splitlines() if line.startswith('test acc')]


def _interrupt(data_dir, workdir, signum):
  """Starts a training, sends `signum` once it has logged a step, and
  returns (exit code, output)."""
  process = subprocess.Popen(
    _command(data_dir, workdir),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    cwd=ROOT,
  )
  lines = []
  for line in process.stdout:
    lines.append(line)
    if re.search(r'\] train_(accuracy|loss)=', line):  # A step is done.
      process.send_signal(signum)
      break
  lines += process.stdout.readlines()
  process.wait(timeout=600)
  return process.returncode, ''.join(lines)


@pytest.fixture(scope='module')
def straight(data_dir, tmp_path_factory):
  """An uninterrupted run: (workdir, output)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  return workdir, _run(data_dir, workdir)


@pytest.mark.slow
def test_sigterm_saves_and_the_rerun_resumes_exactly(
  straight, data_dir, tmp_path
):
  workdir = str(tmp_path / 'run')
  code, output = _interrupt(data_dir, workdir, signal.SIGTERM)
  assert code == 128 + signal.SIGTERM, output
  assert 'Traceback' not in output
  last = output.strip().splitlines()[-1]
  assert re.match(r'hpr: stopped: SIGTERM at step \d+: checkpoint \d+ is', last)
  step = int(re.search(r'checkpoint (\d+)', last).group(1))
  ckpts = checkpoint.Checkpoints(
    os.path.join(workdir, 'checkpoints'), read_only=True
  )
  assert ckpts.all_steps()[-1] == step
  ckpts.close()
  assert 'test accuracy' not in output  # It stopped before the test.

  again = _run(data_dir, workdir)
  assert f'Resumed from step {step}' in again
  assert _final(again) == _final(straight[1]) and _final(again)
  assert _records(workdir) == _records(straight[0])


@pytest.mark.slow
def test_sigint_saves_and_exits_130_without_a_traceback(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  code, output = _interrupt(data_dir, workdir, signal.SIGINT)
  assert code == 128 + signal.SIGINT, output
  assert 'Traceback' not in output and 'KeyboardInterrupt' not in output
  last = output.strip().splitlines()[-1]
  assert last.startswith('hpr: stopped: SIGINT at step ')
  assert os.listdir(os.path.join(workdir, 'checkpoints'))


@pytest.mark.slow
def test_two_processes_stop_together_when_one_gets_sigterm(
  config_file,  # noqa: F811 (the fixture imported above)
  tmp_path,
):
  workdir = str(tmp_path / 'two')
  procs = _start(config_file, workdir, processes=2, devices=4)
  deadline = time.monotonic() + RUN_LIMIT_S
  log0 = f'{workdir}.0.log'
  # Poll process 0's log for its first logged step, then signal process 1
  # only: process 0 must learn of it and stop at the same step.
  while not (
    os.path.exists(log0) and re.search(r'\] train_\w+=', open(log0).read())
  ):
    if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
      for p in procs:
        p.kill()
      pytest.fail('the run ended or hung before its first step')
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  stops = []
  for i, p in enumerate(procs):
    assert p.wait(timeout=RUN_LIMIT_S) == 128 + signal.SIGTERM, i
    with open(f'{workdir}.{i}.log') as f:
      text = f.read()
    assert 'Traceback' not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith('hpr: stopped: SIGTERM at step '), last
    stops.append(int(re.search(r'checkpoint (\d+)', last).group(1)))
  assert stops[0] == stops[1]
  assert str(stops[0]) in os.listdir(os.path.join(workdir, 'checkpoints'))

  _wait(_start(config_file, workdir, processes=2, devices=4), workdir)
  with open(log0) as f:
    assert f'Resumed from step {stops[0]}' in f.read()
