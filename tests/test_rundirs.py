"""What a run leaves in places it does not own: the source checkout's git
index (reading the commit stamp) and, after a failure, the directories it
made."""

import fcntl
import os
import subprocess

import numpy as np
import pytest

from hpr import rundirs, video_io
from hpr import workdir as workdir_lib
from hpr.errors import UserError
from tests.conftest import tiny_config


def _git(repo, *args):
  subprocess.run(
    ['git', '-c', 'user.email=t@t', '-c', 'user.name=t', *args],
    cwd=repo,
    check=True,
    capture_output=True,
  )


def test_reading_the_commit_stamp_does_not_write_the_index(
  tmp_path, monkeypatch
):
  # A checkout whose index is stale: one file touched (same content, so
  # `git status` would refresh its entry and rewrite the index) and one
  # changed (the stamp says -dirty).
  repo = tmp_path / 'checkout'
  repo.mkdir()
  (repo / 'a.py').write_text('a = 1\n')
  (repo / 'b.py').write_text('b = 1\n')
  _git(repo, 'init', '-q')
  _git(repo, 'add', '.')
  _git(repo, 'commit', '-qm', 'first')
  os.utime(repo / 'a.py', ns=(10**9, 10**9))
  (repo / 'b.py').write_text('b = 2\n')
  index = repo / '.git' / 'index'
  before = index.stat().st_mtime_ns, index.read_bytes()
  # The stamp reads hpr's checkout; GIT_DIR points git at this one.
  monkeypatch.setenv('GIT_DIR', str(repo / '.git'))
  monkeypatch.setenv('GIT_WORK_TREE', str(repo))
  stamp = workdir_lib.source_commit()
  assert stamp.endswith('-dirty') and len(stamp) == 40 + len('-dirty')
  assert (index.stat().st_mtime_ns, index.read_bytes()) == before
  assert not (repo / '.git' / 'index.lock').exists()


def _mixed_folder(root):
  """UCF-named videos and one without a group: split='stratified' of it
  is refused as leaky, during the dataset's preparation."""
  frames = np.zeros((4, 16, 16, 3), np.uint8)
  for name in ('Jump', 'Wave'):
    (root / name).mkdir(parents=True)
    for group in (1, 2):
      for clip in (1, 2):
        path = root / name / f'v_{name}_g{group:02d}_c{clip:02d}.avi'
        video_io.write_file(str(path), frames, 25.0)
  video_io.write_file(str(root / 'Wave' / 'home.avi'), frames, 25.0)
  return str(root)


def _folder_config(root, data_dir):
  config = tiny_config(data_dir)
  config.dataset.name = 'video_folder'
  vf = config.dataset.video_folder
  vf.root, vf.split, vf.num_workers = root, 'stratified', 1
  vf.min_frames = config.input.num_frames
  return config


def test_a_failed_run_removes_only_the_empty_directories_it_made(tmp_path):
  from hpr import train

  # A wrong video folder fails before TFDS makes anything.
  workdir = tmp_path / 'wrong_root' / 'w'
  with pytest.raises(UserError, match='no such folder'):
    train.train_and_evaluate(
      _folder_config('/no/such/videos', str(tmp_path / 'tfds0')), str(workdir)
    )
  assert not (tmp_path / 'wrong_root').exists()
  assert not (tmp_path / 'tfds0').exists()
  # A leaky split fails while TFDS prepares, after it made its folders.
  # New: the workdir and its parents, the data_dir and its parent.
  root = _mixed_folder(tmp_path / 'videos')
  workdir = tmp_path / 'runs' / 'new' / 'w'
  data_dir = tmp_path / 'data' / 'tfds'
  with pytest.raises(UserError, match='leaky split'):
    train.train_and_evaluate(_folder_config(root, str(data_dir)), str(workdir))
  assert not (tmp_path / 'runs').exists()
  assert not (tmp_path / 'data').exists()
  # There before the run: kept, with what they hold.
  workdir = tmp_path / 'existing'
  workdir.mkdir()
  data_dir = tmp_path / 'tfds'
  (data_dir / 'other').mkdir(parents=True)
  (data_dir / 'downloads').mkdir()
  with pytest.raises(UserError, match='leaky split'):
    train.train_and_evaluate(_folder_config(root, str(data_dir)), str(workdir))
  assert workdir.is_dir()  # Holding at most the lock file.
  assert set(os.listdir(workdir)) <= {rundirs.LOCK_FILE}
  assert sorted(os.listdir(data_dir)) == ['downloads', 'other']
  assert not os.listdir(data_dir / 'downloads')


def test_remove_empty_keeps_what_has_content_or_a_held_lock(tmp_path):
  made = rundirs.missing([str(tmp_path / 'a' / 'b'), str(tmp_path / 'c')])
  assert made == [
    str(tmp_path / 'a' / 'b'),
    str(tmp_path / 'a'),
    str(tmp_path / 'c'),
  ]
  with pytest.raises(RuntimeError):
    with rundirs.removed_on_failure(
      str(tmp_path / 'a' / 'b'), str(tmp_path / 'c')
    ):
      (tmp_path / 'a' / 'b').mkdir(parents=True)
      (tmp_path / 'c').mkdir()
      (tmp_path / 'c' / 'checkpoint').write_text('saved')
      raise RuntimeError('failed')
  assert not (tmp_path / 'a').exists()
  assert (tmp_path / 'c' / 'checkpoint').read_text() == 'saved'
  # A workdir holding only the lock file: removed once the lock is free,
  # kept while a run holds it.
  held = tmp_path / 'held'
  held.mkdir()
  with open(held / rundirs.LOCK_FILE, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    assert rundirs.remove_empty([str(held)]) == []
  assert os.listdir(held) == [rundirs.LOCK_FILE]
  assert rundirs.remove_empty([str(held)]) == [str(held)]
  assert not held.exists()
  # Without an exception nothing is removed.
  with rundirs.removed_on_failure(str(tmp_path / 'ok')):
    (tmp_path / 'ok').mkdir()
  assert (tmp_path / 'ok').is_dir()
