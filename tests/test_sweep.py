"""hpr.tools.sweep: seeds x folds over one decoded copy of a real video
folder; summary.json's mean, std and t-interval; the report's protocol
tells the runs apart."""

import json
import math
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from hpr.datasets import video_folder
from hpr.errors import ConfigError
from hpr.tools import sweep
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('Left', 'Right')


def write_video(path, label, phase):
  """16 frames of 24x24: a bright bar moving left or right."""
  with av.open(path, 'w') as container:
    stream = container.add_stream('mpeg4', rate=25)
    stream.width = stream.height = 24
    stream.pix_fmt = 'yuv420p'
    for i in range(16):
      frame = np.full((24, 24, 3), 30, np.uint8)
      x = (phase + (i if label else -i) * 2) % 24
      frame[:, x : x + 3] = 240
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, 'rgb24')))
    container.mux(stream.encode(None))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """2 classes x 4 groups x 2 clips, and one empty file (quarantined)."""
  root = tmp_path_factory.mktemp('lr')
  for label, name in enumerate(CLASSES):
    (root / name).mkdir()
    for group in range(1, 5):
      for clip in (1, 2):
        path = root / name / f'v_{name}_g{group:02d}_c{clip:02d}.avi'
        write_video(str(path), label, phase=5 * group + 3 * clip)
  (root / 'Left' / 'v_Left_g01_c03.avi').write_bytes(b'')
  return str(root)


def folder_config(root, data_dir):
  config = tiny_config(data_dir)
  config.dataset.name = 'video_folder'
  vf = config.dataset.video_folder
  vf.root = root
  vf.short_side = 24
  vf.min_frames = 4
  vf.val_groups = 1
  vf.num_workers = 1
  vf.test_groups = (4,)  # The folds replace it.
  config.input.num_frames = 4
  config.input.image_size = 16
  config.training.batch_size = 8  # The 8 training clips of a fold.
  config.training.num_epochs = 1
  config.eval.batch_size = 8
  config.model.lrcn.pool_sizes = (2, 2)
  return config


@pytest.mark.slow
def test_two_seeds_by_two_folds_decode_once(folder, tmp_path, capsys):
  data_dir = str(tmp_path / 'tfds')
  config = folder_config(folder, data_dir)
  before = video_folder.decode_counts()
  workdir = str(tmp_path / 'sweep')
  summary = sweep.sweep(config, workdir, seeds=[0, 1], folds=[1, 2])
  after = video_folder.decode_counts()
  # 17 files decoded once (the empty one too: it is quarantined once); the
  # second fold's preparation takes every one from the decoded copy.
  assert after['decoded'] - before['decoded'] == 17
  assert after['reused'] - before['reused'] == 17
  assert len(os.listdir(os.path.join(data_dir, 'video_folder_decoded'))) == 1
  prepared = os.listdir(os.path.join(data_dir, 'video_folder'))
  assert len(prepared) == 2  # One per fold; seeds share theirs.

  names = sorted(os.listdir(workdir))
  assert names == [
    'seed0_fold1',
    'seed0_fold2',
    'seed1_fold1',
    'seed1_fold2',
    'summary.json',
  ]
  with open(os.path.join(workdir, 'summary.json')) as f:
    saved = json.load(f)
  assert saved['seeds'] == [0, 1] and saved['folds'] == [1, 2]
  acc = saved['metrics']['accuracy']
  values = [r['metrics']['accuracy'] for r in saved['runs']]
  assert acc['n'] == 4 and acc['values'] == values
  assert acc['mean'] == pytest.approx(np.mean(values))
  assert acc['std'] == pytest.approx(np.std(values, ddof=1))
  half = 3.182 * acc['std'] / 2  # t(0.975, 3 dof) * std / sqrt(4).
  assert acc['ci95'] == pytest.approx([acc['mean'] - half, acc['mean'] + half])
  for run in saved['runs']:
    with open(os.path.join(run['workdir'], 'eval', 'report.json')) as f:
      report = json.load(f)
    assert report['metrics']['accuracy'] == run['metrics']['accuracy']
    p = report['protocol']
    assert p['split_scheme'] == 'groups'
    assert p['fold'] == run['fold'] and p['test_groups'] == [run['fold']]
    assert p['seed'] == run['seed'] and p['split_number'] is None
    assert p['num_quarantined'] == 1
    assert p['validation']['clips'] == 4 and len(p['validation']['groups']) == 1
  by_fold = {r['fold']: r['protocol'] for r in saved['runs']}
  # The same decoded videos in both folds, assigned differently.
  assert by_fold[1]['data_fingerprint'] == by_fold[2]['data_fingerprint']
  assert by_fold[1]['split_fingerprint'] != by_fold[2]['split_fingerprint']
  assert saved['data_fingerprints'] == [by_fold[1]['data_fingerprint']]
  text = sweep.table(summary)
  assert 'accuracy' in text and '±' in text and '4 runs' in text


def test_summarize_is_mean_std_and_t_interval():
  s = sweep.summarize([1.0, 2.0, 3.0])
  assert (s['n'], s['mean'], s['std']) == (3, 2.0, 1.0)
  half = 4.303 / math.sqrt(3)
  assert s['ci95'] == pytest.approx([2.0 - half, 2.0 + half])
  one = sweep.summarize([0.5])
  assert one['mean'] == 0.5 and math.isnan(one['std'])
  assert sweep.t_quantile(100) == 1.96 and sweep.t_quantile(1) == 12.706


def test_folds_need_a_video_folder_with_folds(tmp_path):
  config = tiny_config(str(tmp_path))
  with pytest.raises(ConfigError, match='--folds needs dataset.name'):
    sweep.apply_fold(config, 1)
  config = folder_config('/nowhere', str(tmp_path))
  sweep.apply_fold(config, 3)
  vf = config.dataset.video_folder
  assert (vf.fold, vf.test_groups) == (3, ())
  vf.split = 'official'
  sweep.apply_fold(config, 2)
  assert vf.split_number == 2
  with pytest.raises(ConfigError, match='official splits are 1, 2 and 3'):
    sweep.apply_fold(config, 4)
  vf.split = 'stratified'
  with pytest.raises(ConfigError, match="split 'groups'"):
    sweep.apply_fold(config, 1)


def test_parse_ints():
  assert sweep.parse_ints('seeds', '0,1,2') == [0, 1, 2]
  assert sweep.parse_ints('folds', '1-3') == [1, 2, 3]
  assert sweep.parse_ints('folds', '') == []
  with pytest.raises(ConfigError, match='repeats'):
    sweep.parse_ints('seeds', '1,1')


def test_cli_mistakes_are_one_line(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'hpr.tools.sweep',
      '--config',
      os.path.join(ROOT, 'configs', 'default.py'),
      '--workdir',
      str(tmp_path / 'w'),
      '--folds',
      '1,2',
      '--config.jax_cache_dir=',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
  )
  assert out.returncode != 0
  err = out.stderr.strip().splitlines()
  assert err[-1].startswith('hpr: error: --folds needs dataset.name')
  assert 'Traceback' not in out.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_report_protocol_of_a_synthetic_run(trained_workdir):
  _, workdir, _ = trained_workdir
  with open(os.path.join(workdir, 'eval', 'report.json')) as f:
    p = json.load(f)['protocol']
  assert p['split_scheme'] == 'groups' and p['test_groups'] == [5]
  assert p['seed'] == 0 and p['fold'] is None
  assert p['validation'] == {'split': 'validation', 'clips': 12, 'groups': [4]}
  assert isinstance(p['data_fingerprint'], str) and len(p['data_fingerprint'])
  assert p['modality'] == 'rgb'
