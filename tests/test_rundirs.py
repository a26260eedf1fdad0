"""What a run leaves in places it does not own: the source checkout's git
index (reading the commit stamp) and, after a failure, the directories it
made."""

import os
import subprocess

from hpr import evaluate


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
  stamp = evaluate.source_commit()
  assert stamp.endswith('-dirty') and len(stamp) == 40 + len('-dirty')
  assert (index.stat().st_mtime_ns, index.read_bytes()) == before
  assert not (repo / '.git' / 'index.lock').exists()
