"""hpr.workdir: the training lock (real processes), unwritable workdirs, and
run files that a kill left half-written."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from hpr import metrics, train, workdir
from hpr.errors import UserError
from hpr.tools import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Takes the lock with hpr.workdir.lock, says so, and holds it until its
# stdin closes (no sleeps: the test decides when it ends).
_HOLDER = """
import sys
from hpr import workdir
with workdir.lock(sys.argv[1]):
  print('locked', flush=True)
  sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
  """A separate process holding tmp_path's lock: (process, workdir)."""
  process = subprocess.Popen(
    [sys.executable, '-c', _HOLDER, str(tmp_path)],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    cwd=ROOT,
  )
  assert process.stdout.readline().strip() == 'locked'
  yield process, str(tmp_path)
  if process.poll() is None:
    process.kill()
  process.wait(timeout=60)


def test_second_lock_is_refused_naming_the_holder(holder):
  process, path = holder
  with pytest.raises(UserError) as error:
    with workdir.lock(path):
      pass
  message = str(error.value)
  assert f'pid {process.pid} on host {socket.gethostname()}' in message
  assert 'started 20' in message and 'UTC' in message
  assert '\n' not in message
  process.stdin.close()  # The holder ends normally: the lock is free.
  assert process.wait(timeout=60) == 0
  with workdir.lock(path):
    pass


def test_a_killed_holder_leaves_no_stuck_lock(holder):
  process, path = holder
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert os.path.exists(os.path.join(path, workdir.LOCK_FILE))
  with workdir.lock(path):
    with open(os.path.join(path, workdir.LOCK_FILE)) as f:
      assert json.load(f)['pid'] == os.getpid()


def test_training_in_a_locked_workdir_is_refused(holder, data_dir):
  from tests.conftest import tiny_config

  process, path = holder
  with pytest.raises(UserError, match=f'in use by another training: pid '
                     f'{process.pid}'):  # fmt: skip
    train.train_and_evaluate(tiny_config(data_dir), path)
  assert sorted(os.listdir(path)) == [workdir.LOCK_FILE]  # Nothing written.


@pytest.mark.slow
def test_cli_refuses_a_locked_workdir_in_one_line(holder, data_dir):
  process, path = holder
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'hpr.main',
      '--config=configs/default.py',
      f'--workdir={path}',
      '--config.dataset.name=synthetic_actions/tiny',
      f'--config.dataset.data_dir={data_dir}',
      '--config.jax_cache_dir=',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=600,
  )
  assert run.returncode == 1
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('hpr: error: ') and f'pid {process.pid}' in last
  assert 'Traceback' not in run.stderr


def test_unwritable_workdir_is_one_line(tmp_path, data_dir):
  from tests.conftest import tiny_config

  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(UserError, match='cannot create workdir') as error:
    train.train_and_evaluate(tiny_config(data_dir), str(blocker / 'run'))
  assert '\n' not in str(error.value)
  if os.geteuid() != 0:  # root writes anywhere
    locked = tmp_path / 'read_only'
    locked.mkdir(mode=0o555)
    with pytest.raises(UserError, match='cannot write to workdir'):
      workdir.make(str(locked))


def test_evaluate_into_an_unwritable_workdir_is_one_line(
  trained_workdir, tmp_path
):
  from hpr import evaluate

  config, source, _ = trained_workdir
  path = str(tmp_path / 'run')
  shutil.copytree(source, path, ignore=shutil.ignore_patterns('eval'))
  with open(os.path.join(path, 'eval'), 'w') as f:
    f.write('a file where the report directory goes')
  with pytest.raises(UserError, match='cannot create report directory'):
    evaluate.evaluate(config, path)


def test_torn_last_metrics_line_is_dropped_and_rewritten_atomically(
  tmp_path,
):
  path = tmp_path / 'metrics.jsonl'
  records = [{'step': 1, 'loss': 2.0}, {'step': 2, 'loss': 1.5}]
  path.write_text(
    ''.join(json.dumps(r) + '\n' for r in records) + '{"step": 3, "lo'
  )
  assert metrics.read_jsonl(str(path)) == records
  before = os.stat(path).st_ino
  logger = metrics.MetricLogger(str(tmp_path), is_main=True)
  logger.truncate_after(1)
  logger.close()
  assert metrics.read_jsonl(str(path)) == records[:1]
  # os.replace of a new file, not a rewrite in place.
  assert os.stat(path).st_ino != before
  assert [p.name for p in tmp_path.iterdir() if p.name.endswith('.tmp')] == []
  # A damaged line that is not the last is not silently dropped.
  path.write_text('{"step": 1\n{"step": 2}\n')
  with pytest.raises(UserError, match='line 1'):
    metrics.read_jsonl(str(path))


def test_resume_with_a_torn_metrics_line(trained_workdir, tmp_path):
  config, source, result = trained_workdir
  path = str(tmp_path / 'run')
  shutil.copytree(source, path)
  with open(os.path.join(path, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 8, "train_loss": 0.5')  # Killed while writing.
  again = train.train_and_evaluate(config, path)
  assert again['accuracy'] == pytest.approx(result['accuracy'])
  records = metrics.read_jsonl(os.path.join(path, 'metrics.jsonl'))
  assert [r['epoch'] for r in records if 'val_loss' in r] == [1, 2]


@pytest.mark.parametrize(
  'content', ['["walk", "ru', '{"walk": 1}', '[]', '[1, 2]']
)
def test_damaged_class_names_is_one_line(trained_workdir, tmp_path, content):
  _, source, _ = trained_workdir
  path = str(tmp_path / 'run')
  shutil.copytree(source, path)
  with open(os.path.join(path, 'class_names.json'), 'w') as f:
    f.write(content)
  with pytest.raises(UserError, match='class names file .* is damaged'):
    predict.load_predictor(path)


@pytest.mark.parametrize('content', ['{"model": {"na', '[1]'])
def test_damaged_workdir_config_is_one_line(data_dir, tmp_path, content):
  from tests.conftest import tiny_config

  (tmp_path / 'config.json').write_text(content)
  with pytest.raises(UserError, match="workdir's config .* is damaged"):
    train.train_and_evaluate(tiny_config(data_dir), str(tmp_path))
