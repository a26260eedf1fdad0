"""Multi-process training with real processes: `python -m hpr.main` twice,
2 processes x 4 CPU devices (gloo collectives), against 1 process x 8.

The processes load their own rows of each global batch and all-reduce over
gloo, so their metrics.jsonl equals the single process's to float32
reduction order: 1e-5 relative, measured 1e-7. Killing both with SIGKILL
and starting them again ends with the uninterrupted run's metrics. A peer
that never comes, a wrong address or different process counts end each
process with one error line, within --initialization_timeout (+ about 5 s).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import tiny_config

# Liveness guards only (a hang fails the test instead of blocking CI); the
# runs take 1-3 minutes on 2 cores.
RUN_LIMIT_S = 900
INIT_TIMEOUT_S = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = dict(os.environ)
  # conftest's 8 fake devices per process would override cpu_devices.
  env.pop('XLA_FLAGS', None)
  for name in (
    'JAX_COORDINATOR_ADDRESS',
    'JAX_NUM_PROCESSES',
    'JAX_PROCESS_ID',
  ):
    env.pop(name, None)
  env['JAX_PLATFORMS'] = 'cpu'
  return env


@pytest.fixture(scope='module')
def config_file(data_dir, tmp_path_factory):
  """The tiny test config as a config file, with a checkpoint every 2
  steps (so a killed run resumes mid-epoch)."""
  config = tiny_config(data_dir)
  config.training.checkpoint_every_steps = 2
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, 'items'):
        walk(value, f'{prefix}{key}.')
      else:
        flat[prefix + key] = value

  walk(config, '')
  path = tmp_path_factory.mktemp('mp_config') / 'tiny.py'
  path.write_text(
    'from hpr import config as config_lib\n\n\n'
    'def get_config():\n'
    '  config = config_lib.default_config()\n'
    f'  config.update_from_flattened_dict({flat!r})\n'
    '  return config\n'
  )
  return str(path)


def _start(config_file, workdir, *, processes, devices, env_vars=False):
  """Starts the processes of one run; their output goes to workdir.N.log."""
  port = _free_port()
  procs = []
  for i in range(processes):
    env = _env()
    args = [
      sys.executable,
      '-m',
      'hpr.main',
      f'--config={config_file}',
      f'--workdir={workdir}',
      f'--config.cpu_devices={devices}',
      f'--initialization_timeout={60 if processes > 1 else INIT_TIMEOUT_S}',
    ]
    if processes > 1 and env_vars:  # The JAX_* variables instead of flags.
      env['JAX_COORDINATOR_ADDRESS'] = f'localhost:{port}'
      env['JAX_NUM_PROCESSES'] = str(processes)
      env['JAX_PROCESS_ID'] = str(i)
    elif processes > 1:
      args += [
        f'--coordinator_address=localhost:{port}',
        f'--num_processes={processes}',
        f'--process_id={i}',
      ]
    log = open(f'{workdir}.{i}.log', 'w')  # noqa: SIM115 (closed by the OS)
    procs.append(
      subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    )
  return procs


def _wait(procs, workdir):
  for i, p in enumerate(procs):
    try:
      p.wait(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f'process {i} of {workdir} did not finish')
  for i, p in enumerate(procs):
    if p.returncode:
      with open(f'{workdir}.{i}.log') as f:
        tail = f.read()[-3000:]
      pytest.fail(
        f'process {i} of {workdir} ended with {p.returncode}:\n{tail}'
      )


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  for r in records:
    r.pop('epoch_seconds', None)  # Wall time.
  return records


def _assert_same_metrics(got, want):
  assert [sorted(r) for r in got] == [sorted(r) for r in want]
  assert [r['step'] for r in got] == [r['step'] for r in want]
  for a, b in zip(got, want, strict=True):
    for key in b:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)


@pytest.fixture(scope='module')
def runs(config_file, tmp_path_factory):
  """The same training as 1 process x 8 devices and 2 processes x 4."""
  root = tmp_path_factory.mktemp('mp_runs')
  one, two = str(root / 'one'), str(root / 'two')
  _wait(_start(config_file, one, processes=1, devices=8), one)
  _wait(_start(config_file, two, processes=2, devices=4), two)
  return one, two


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
  one, two = runs
  want = _metrics(one)
  assert want[-1]['step'] == 8 and 'test_accuracy' in want[-1]
  _assert_same_metrics(_metrics(two), want)
  # Evaluation counted every test video once, over both processes.
  with open(os.path.join(two, 'eval', 'report.json')) as f:
    report = json.load(f)
  assert report['protocol']['num_videos'] == 12
  predictions = np.load(os.path.join(two, 'eval', 'predictions.npz'))
  np.testing.assert_array_equal(predictions['video_index'], np.arange(12))
  # Process 0 wrote the files; process 1 only logged.
  with open(f'{two}.1.log') as f:
    assert 'process 1 of 2' in f.read()


@pytest.mark.slow
def test_killed_processes_resume_to_the_same_metrics(
  runs, config_file, tmp_path
):
  _, two = runs
  workdir = str(tmp_path / 'killed')
  checkpoints = os.path.join(workdir, 'checkpoints')
  procs = _start(config_file, workdir, processes=2, devices=4, env_vars=True)
  deadline = time.monotonic() + RUN_LIMIT_S
  # Kill both as soon as a first checkpoint is complete (orbax renames its
  # temporary directory to the step number when it is).
  while not (
    os.path.isdir(checkpoints)
    and any(name.isdigit() for name in os.listdir(checkpoints))
  ):
    if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
      for p in procs:
        p.kill()
      pytest.fail('the run ended or hung before its first checkpoint')
    time.sleep(0.2)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait()
  saved = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  assert saved and saved[-1] < 8, saved  # Killed before the end.
  _wait(
    _start(config_file, workdir, processes=2, devices=4, env_vars=True), workdir
  )
  _assert_same_metrics(_metrics(workdir), _metrics(two))
  with open(f'{workdir}.0.log') as f:
    assert 'Resumed from step' in f.read()


@pytest.mark.slow
def test_a_process_that_dies_mid_run_ends_the_others(config_file, tmp_path):
  """Killing process 1 ends process 0 too (in one line when it was waiting
  on process 1, else by JAX's heartbeat check), never a hang."""
  workdir = str(tmp_path / 'orphan')
  procs = _start(config_file, workdir, processes=2, devices=4)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.monotonic() + RUN_LIMIT_S
  while not os.path.exists(metrics):
    if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
      for p in procs:
        p.kill()
      pytest.fail('the run ended or hung before its first metrics')
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  try:
    # JAX's heartbeat timeout is 100 s; a hang would pass this guard.
    code = procs[0].wait(timeout=400)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail('process 0 hung after process 1 died')
  assert code != 0
  with open(f'{workdir}.0.log') as f:
    log = f.read()
  assert 'Traceback' not in log


def _failure(procs, workdir):
  """Each process's exit code and its stderr lines (TF's start-up INFO
  lines left out)."""
  out = []
  for i, p in enumerate(procs):
    try:
      p.wait(timeout=INIT_TIMEOUT_S + 240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f'process {i} hung instead of failing')
    with open(f'{workdir}.{i}.log') as f:
      lines = [
        line
        for line in f.read().splitlines()
        if line.strip()
        and not line.startswith(('I0000', 'WARNING: All log'))
        and 'cuInit' not in line
      ]
    out.append((p.returncode, lines))
  return out


@pytest.mark.slow
def test_a_peer_that_never_comes_is_one_line(config_file, tmp_path):
  # Process 0 alone waits for process 1; process 1 alone finds nobody at
  # its (wrong) coordinator address.
  procs, workdirs = [], []
  for pid in (0, 1):
    workdir = str(tmp_path / f'alone{pid}')
    env = _env()
    log = open(f'{workdir}.0.log', 'w')  # noqa: SIM115
    procs.append(
      subprocess.Popen(
        [
          sys.executable,
          '-m',
          'hpr.main',
          f'--config={config_file}',
          f'--workdir={workdir}',
          f'--coordinator_address=localhost:{_free_port()}',
          '--num_processes=2',
          f'--process_id={pid}',
          f'--initialization_timeout={INIT_TIMEOUT_S}',
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
      )
    )
    workdirs.append(workdir)
  for proc, workdir in zip(procs, workdirs, strict=True):
    ((code, lines),) = _failure([proc], workdir)
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith('hpr: error: the 2 processes did not all ')
    assert f'within {INIT_TIMEOUT_S} s' in lines[0]


@pytest.mark.slow
def test_different_process_counts_are_one_line(config_file, tmp_path):
  workdir = str(tmp_path / 'counts')
  port = _free_port()
  procs = []
  for pid, count in ((0, 2), (1, 3)):
    log = open(f'{workdir}.{pid}.log', 'w')  # noqa: SIM115
    procs.append(
      subprocess.Popen(
        [
          sys.executable,
          '-m',
          'hpr.main',
          f'--config={config_file}',
          f'--workdir={workdir}',
          f'--coordinator_address=localhost:{port}',
          f'--num_processes={count}',
          f'--process_id={pid}',
          '--initialization_timeout=60',
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=log,
      )
    )
  (code0, lines0), (code1, lines1) = _failure(procs, workdir)
  assert code0 != 0 and code1 != 0
  assert lines0 == [
    'hpr: error: process 0 was started with 2 processes, process 1 with 3: '
    'start every process with the same --num_processes'
  ]
  assert lines1 == [
    'hpr: error: process 1 was started with 3 processes, process 0 with 2: '
    'start every process with the same --num_processes'
  ]
