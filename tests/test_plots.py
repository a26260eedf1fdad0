"""The figures: curves, confusion matrix and gallery are PNGs of the
expected size, drawn at the end of training and by `python -m hpr.tools.plots`."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hpr import figures
from hpr.errors import UserError
from hpr.tools import plots

ROOT = os.path.dirname(os.path.dirname(__file__))


def _check_png(path, size):
  assert os.path.getsize(path) > 1000
  image = Image.open(path)
  assert image.format == 'PNG' and image.size == size
  pixels = np.asarray(image.convert('L'))
  assert pixels.std() > 10  # Something is drawn.


def _check_workdir_plots(directory):
  _check_png(os.path.join(directory, 'loss.png'), plots.CURVE_SIZE)
  _check_png(os.path.join(directory, 'accuracy.png'), plots.CURVE_SIZE)
  _check_png(
    os.path.join(directory, 'confusion.png'), figures.confusion_size(12)
  )
  _check_png(os.path.join(directory, 'gallery.png'), plots.gallery_size(12))
  _check_png(
    os.path.join(directory, 'reliability.png'), figures.RELIABILITY_SIZE
  )


def test_plot_workdir_draws_every_figure(trained_workdir, tmp_path):
  # hpr.main calls this at the end of training (tested in test_train).
  plots.plot_workdir(trained_workdir[1], out_dir=str(tmp_path))
  _check_workdir_plots(str(tmp_path))


def test_sizes():
  assert plots.gallery_size(12) == (1000, 660)
  assert plots.gallery_size(3) == (600, 220)
  assert figures.confusion_size(4) == (640, 640)
  assert figures.confusion_size(101) == (3270, 3270)


def test_curves_from_records(tmp_path):
  records = [
    {'step': 1, 'train_loss': 2.0, 'train_accuracy': 0.1},  # Not an epoch.
    *(
      {
        'step': 10 * e,
        'epoch': e,
        'train_loss': 2.0 / e,
        'val_loss': 2.2 / e,
        'train_accuracy': 0.2 * e,
        'val_accuracy': 0.15 * e,
      }
      for e in (1, 2, 3)
    ),
    {'step': 30, 'test_loss': 0.5, 'test_accuracy': 0.7},
  ]
  assert len(plots.epoch_records(records)) == 3
  paths = plots.plot_curves(records, str(tmp_path))
  for path in paths:
    _check_png(path, plots.CURVE_SIZE)
  with pytest.raises(UserError, match='no finished epoch'):
    plots.plot_curves(records[:1], str(tmp_path))


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'hpr.tools.plots', *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )


@pytest.mark.slow
def test_cli_workdir_and_dataset(trained_workdir, data_dir, tmp_path):
  run = _cli(f'--workdir={trained_workdir[1]}', f'--out={tmp_path / "w"}')
  assert run.returncode == 0, run.stderr
  assert len(run.stdout.split()) == 5  # reliability.png since issue 26.
  _check_workdir_plots(tmp_path / 'w')

  run = _cli(
    '--dataset=synthetic_actions/tiny',
    f'--data_dir={data_dir}',
    '--split=test',
    f'--out={tmp_path / "d"}',
  )
  assert run.returncode == 0, run.stderr
  _check_png(tmp_path / 'd' / 'gallery.png', plots.gallery_size(12))


@pytest.mark.parametrize(
  'args,message',
  [
    (['--workdir=/nonexistent/w'], 'no such workdir'),
    ([], 'give --workdir, or --dataset'),
    (['--dataset=synthetic_actions/tiny'], 'needs --out'),
  ],
)
def test_bad_arguments_are_one_line(args, message):
  with pytest.raises(UserError, match=message) as info:
    plots.main(args)
  assert '\n' not in str(info.value)


def test_cli_error_exit_code(tmp_path):
  run = _cli(f'--workdir={tmp_path}')
  assert run.returncode == 1
  assert (
    run.stderr.strip()
    .splitlines()[-1]
    .startswith(f'hpr: error: {tmp_path} has no metrics.jsonl')
  )
  assert 'Traceback' not in run.stderr
