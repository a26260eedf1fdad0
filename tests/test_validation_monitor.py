"""Validation that is not noise: the validation size is logged with a
warning below training.min_val_clips, and training.monitor_smoothing makes
early stopping and the best checkpoint follow the trend, not one lucky
epoch."""

import logging

import pytest

from hpr import input_pipeline, train
from tests.conftest import tiny_config

# val_accuracy per epoch: a rising trend with one lucky epoch (the third),
# as a 32-clip validation split gives, then a plateau.
NOISY = [
  0.30, 0.35, 0.62, 0.40, 0.45, 0.48, 0.50, 0.55, 0.58, 0.60, 0.63, 0.64,
  0.66, 0.60, 0.58, 0.59, 0.57, 0.58, 0.56,
]  # fmt: skip


def run(values, smoothing, patience=3, monitor='val_accuracy', saved=None):
  """(epoch it stops at or None, best epoch), epochs counted from 1; the
  step of epoch e is e here."""
  stopper = train._EarlyStopping(monitor, patience, saved, smoothing)
  for epoch, value in enumerate(values, start=1):
    if stopper.update(value, epoch):
      return epoch, stopper.best_step
  return None, stopper.best_step


def test_raw_monitor_stops_at_the_lucky_epoch():
  stop, best = run(NOISY, smoothing=1)
  assert (stop, best) == (6, 3)


def test_smoothed_monitor_stops_later_at_the_trend():
  stop, best = run(NOISY, smoothing=3)
  raw_stop, raw_best = run(NOISY, smoothing=1)
  assert stop is not None and stop > raw_stop
  assert best > raw_best
  # The best window is the end of the rise (0.63, 0.64, 0.66), not epoch 3.
  assert best == 13
  assert stop == 16


def test_smoothing_one_is_the_notebooks_early_stopping():
  values = [0.5, 0.4, 0.6, 0.6, 0.55]
  assert run(values, 1, patience=2) == (5, 3)  # Ties keep the first best.
  losses = [1.0, 0.8, 0.9, 0.7, 0.75, 0.72]
  assert run(losses, 1, patience=2, monitor='val_loss') == (6, 4)


def test_smoothed_state_survives_a_resume():
  stopper = train._EarlyStopping('val_accuracy', 3, None, 3)
  for epoch, value in enumerate(NOISY[:8], start=1):
    stopper.update(value, epoch)
  saved = stopper.state()
  assert saved['history'] == NOISY[5:8]
  resumed = train._EarlyStopping('val_accuracy', 3, saved, 3)
  for epoch, value in enumerate(NOISY[8:], start=9):
    if resumed.update(value, epoch):
      break
  assert (epoch, resumed.best_step) == run(NOISY, smoothing=3)


def test_smoothed_value_is_the_mean_of_the_window():
  stopper = train._EarlyStopping('val_loss', 0, None, 2)
  assert stopper.smoothed(1.0) == 1.0
  stopper.update(1.0, 1)
  assert stopper.smoothed(0.5) == pytest.approx(0.75)
  stopper.update(0.5, 2)
  assert stopper.smoothed(0.0) == pytest.approx(0.25)
  assert not stopper.update(3.0, 3)  # Patience 0 never stops.


def test_a_tiny_validation_split_warns_with_what_to_do(data_dir, caplog):
  config = tiny_config(data_dir)
  builder = input_pipeline.get_builder(config.dataset)
  with caplog.at_level(logging.INFO):
    size = train.check_validation_size(config, builder)
  # synthetic_actions/tiny: group 4 of 5, one clip of each of 12 classes.
  assert size == {'split': 'validation', 'clips': 12, 'groups': [4]}
  assert '12 clips from 1 groups' in caplog.text
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  message = warnings[0].getMessage()
  assert '\n' not in message
  assert 'training.min_val_clips 100' in message
  assert 'training.monitor_smoothing' in message

  caplog.clear()
  config.training.min_val_clips = 12
  with caplog.at_level(logging.INFO):
    train.check_validation_size(config, builder)
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]
  assert 'validation (validation): 12 clips' in caplog.text
