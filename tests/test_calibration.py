"""Calibration: ECE, NLL, reliability bins, the temperature fit, and the
calibration part of an evaluation report (hpr.calibration, hpr.evaluate)."""

import json
import math
import os

import numpy as np
import pytest

from hpr import calibration
from hpr.errors import UserError


def test_ece_by_hand():
  # Confidences 0.95, 0.85, 0.7, 0.62 fall in 4 different 15-bins
  # ((13/15, 14/15] = (0.867, 0.933] holds none of them): right, wrong,
  # right, right. ECE = (0.05 + 0.85 + 0.3 + 0.38) / 4.
  probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.62, 0.38]])
  labels = np.array([0, 1, 1, 0])
  assert calibration.ece(probs, labels) == pytest.approx(0.395)
  bins = calibration.reliability_bins(probs, labels)
  assert len(bins) == calibration.NUM_BINS == 15
  assert [b['count'] for b in bins] == [0] * 9 + [1, 1, 0, 1, 0, 1]
  assert bins[14]['confidence'] == pytest.approx(0.95)
  assert bins[12]['accuracy'] == 0.0


def test_ece_averages_within_a_bin():
  # 0.95 and 0.94 share the top bin: accuracy 1/2, confidence 0.945.
  probs = np.array([[0.95, 0.05], [0.06, 0.94]])
  labels = np.array([0, 0])
  assert calibration.ece(probs, labels) == pytest.approx(0.445)
  assert calibration.ece(probs, labels, num_bins=1) == pytest.approx(0.445)
  # Perfect confidence and accuracy: no error.
  assert calibration.ece(np.eye(3), np.arange(3)) == 0.0


def test_nll_by_hand():
  assert calibration.nll(np.zeros((1, 2)), np.array([0])) == pytest.approx(
    math.log(2)
  )
  logits = np.array([[2 * math.log(3), 0.0], [0.0, 0.0]])
  labels = np.array([0, 1])
  # T = 2: p = (3/4, 1/4) and (1/2, 1/2).
  expected = -(math.log(0.75) + math.log(0.5)) / 2
  assert calibration.nll(logits, labels, 2.0) == pytest.approx(expected)
  probs = calibration.softmax(logits, 2.0)
  assert probs[0] == pytest.approx([0.75, 0.25])
  assert calibration.nll_from_probs(probs, labels) == pytest.approx(expected)


@pytest.mark.parametrize('true_temperature', [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4000, 6)) * 3
  probs = calibration.softmax(logits)
  # Labels drawn from softmax(logits): logits * T are miscalibrated by
  # exactly T, so the fit should find it.
  labels = (rng.random((len(probs), 1)) > probs.cumsum(-1)).sum(-1)
  fitted = calibration.fit_temperature(logits * true_temperature, labels)
  assert fitted == pytest.approx(true_temperature, rel=0.08)
  # Deterministic, and a minimum of the NLL.
  assert calibration.fit_temperature(logits * true_temperature, labels) == (
    fitted
  )
  scaled = logits * true_temperature
  for t in (fitted * 0.9, fitted * 1.1):
    assert calibration.nll(scaled, labels, fitted) < calibration.nll(
      scaled, labels, t
    )


def test_load_temperature(tmp_path):
  workdir = str(tmp_path)
  assert calibration.load_temperature(workdir) is None
  path = tmp_path / 'calibration.json'
  path.write_text(json.dumps({'temperature': 1.5, 'fitted_on': 'validation'}))
  assert calibration.load_temperature(workdir) == 1.5
  for text in ('{"temperature": ', '{"count": 3}', '{"temperature": -1}'):
    path.write_text(text)
    with pytest.raises(UserError, match='calibration.json'):
      calibration.load_temperature(workdir)


def test_report_has_calibration(trained_workdir):
  _, workdir, _ = trained_workdir
  with open(os.path.join(workdir, 'eval', 'report.json')) as f:
    report = json.load(f)
  calib = report['calibration']
  assert calib['num_bins'] == 15
  count = report['metrics']['count']
  assert sum(calib['reliability']['count']) == count
  assert sum(calib['calibrated']['reliability']['count']) == count
  # The report's numbers are those of predictions.npz.
  pred = np.load(os.path.join(workdir, 'eval', 'predictions.npz'))
  probs = calibration.softmax(pred['video_logits'])
  labels = pred['video_labels']
  assert calib['ece'] == pytest.approx(calibration.ece(probs, labels), abs=1e-6)
  assert calib['nll'] == pytest.approx(report['metrics']['loss'], abs=1e-5)

  # The temperature: fitted on validation, written for predict.
  with open(os.path.join(workdir, 'calibration.json')) as f:
    fit = json.load(f)
  assert fit['fitted_on'] == 'validation'
  assert fit['count'] > 0
  assert calibration.load_temperature(workdir) == fit['temperature']
  assert calib['temperature'] == fit['temperature']
  # It minimises the validation NLL, and T = 1 is one of the candidates.
  assert fit['nll_after'] <= fit['nll_before']
  assert 0 <= fit['ece_after'] <= 1

  _check_reliability_png(os.path.join(workdir, 'eval', 'reliability.png'))


def _check_reliability_png(path):
  from PIL import Image

  from hpr import figures

  image = Image.open(path)
  assert image.format == 'PNG' and image.size == figures.RELIABILITY_SIZE
  assert np.asarray(image.convert('L')).std() > 10  # Something is drawn.


def test_plots_draw_the_reliability_diagram(trained_workdir, tmp_path):
  from hpr.tools import plots

  paths = plots.plot_workdir(trained_workdir[1], out_dir=str(tmp_path))
  path = str(tmp_path / 'reliability.png')
  assert path in paths
  _check_reliability_png(path)
