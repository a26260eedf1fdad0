"""experiments/small_video: the baselines' features and the pair scores, on
hand-made clips (the folder and the fits are the experiment's own run)."""

import numpy as np
import pytest

from experiments.small_video import baselines, pairs


def _moving_bar(step, light=True):
  """(16, 32, 32) grey clip in [0, 1]: a vertical bar moving `step` pixels
  a frame to the right (negative: left), light on dark or dark on light."""
  clip = np.full((16, 32, 32), 0.2 if light else 0.8, np.float32)
  for t in range(16):
    x = 8 + round(t * step)
    clip[t, 4:28, x : x + 4] = 0.8 if light else 0.2
  return clip


@pytest.mark.parametrize(
  'kind,width', [('diff', 960), ('diff_px8', 240), ('mean', 1024),
                 ('absdiff', 960), ('flow', 1920)],
)  # fmt: skip
def test_feature_sizes(kind, width):
  clips = np.stack([_moving_bar(1), _moving_bar(-1)])
  assert baselines.features(clips, kind).shape == (2, width)
  assert set(baselines.KINDS) >= {kind}


def test_flow_features_say_which_way_whatever_the_contrast():
  """The flow features' x half sums positive for a bar moving right and
  negative for one moving left, light or dark; the difference features'
  sign at the front edge flips with the contrast instead."""
  for light in (True, False):
    right = baselines.features(_moving_bar(1, light)[None], 'flow')
    left = baselines.features(_moving_bar(-1, light)[None], 'flow')
    x_right = right.reshape(15, 8, 8, 2)[..., 0].sum()
    x_left = left.reshape(15, 8, 8, 2)[..., 0].sum()
    assert x_right > 1.0 and x_left < -1.0
  still = baselines.features(_moving_bar(0)[None], 'flow')
  assert np.abs(still).max() == 0.0
  with pytest.raises(ValueError, match='unknown features'):
    baselines.features(_moving_bar(1)[None], 'hog')


def test_pair_scores_count_only_the_pairs_two_classes():
  names = ['SitDown', 'StandUp', 'ZoomIn', 'ZoomOut', 'RotateCW',
           'RotateCCW', 'Waving', 'JumpingJack']  # fmt: skip
  labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
  logits = np.full((8, 8), -5.0)
  # Every clip's top class is Waving (6), but within each pair the right one
  # of the two scores higher, except the RotateCCW clip.
  logits[:, 6] = 5.0
  logits[np.arange(8), labels] = 1.0
  logits[5, 4] = 2.0  # RotateCCW clip: RotateCW over RotateCCW.
  out = pairs.scores(logits, labels, names)
  assert out['accuracy'] == pytest.approx(1 / 8)  # Only the Waving clip.
  assert out['pair/SitDown/StandUp'] == 1.0
  assert out['pair/RotateCW/RotateCCW'] == 0.5
  assert out['within_pair'] == pytest.approx(5 / 6)
  assert out['count'] == 8
  summary = pairs.summary([out, {**out, 'accuracy': 3 / 8}])
  assert summary['accuracy']['mean'] == pytest.approx(0.25)
  assert summary['accuracy']['n'] == 2
