"""Logistic-regression yardsticks for a small video folder (issue 25).

  python -m experiments.small_video.baselines --root FOLDER \
      [--data_dir DIR] [--test_groups 19-25] [--out results.json]

Reads FOLDER through hpr's own preparation and group split
(dataset.video_folder, split 'groups', test_groups 19-25: the other groups,
train and validation together, train), samples 16 frames evenly over each
video, makes them grey and 32x32 (squeezed, as hpr's 'resize' crop does), and
fits a scikit-learn logistic regression on standardised features:

  diff: the 15 ordered differences of consecutive sampled frames, each
        average-pooled to an 8x8 grid of 4x4-pixel cells (960 features):
        knows frame order;
  diff_px8: as diff, pooled over 8x8-pixel cells (a 4x4 grid, 240
        features): the issue's "pooled 8x8" read as the window, not the grid;
  mean: the time-average of the 16 frames (1024 features): sees what is
        there, not what moves;
  absdiff: as diff, of the differences' magnitudes (motion energy, where
        and when something moves, not its sign): not in the issue, a
        stronger yardstick on folders whose contrasts vary in sign;
  flow: as diff, of the 15 normal-flow maps (x and y, hpr's 'rgb+flow'
        modality on the grey frames scaled to [-1, 1]; 1920 features): which
        way edges move, whatever their contrast. Not in the issue.

Prints and writes 8-way test accuracy and within-pair accuracy (pairs.py).
Deterministic: the same folder gives the same numbers.
"""

import argparse
import json
import os

import numpy as np

from experiments.small_video import pairs

NUM_FRAMES, SIZE = 16, 32
# Pooling grid (cells per side) of each difference-feature kind.
GRID = {'diff': 8, 'diff_px8': 4, 'absdiff': 8}
KINDS = ('diff', 'diff_px8', 'mean', 'absdiff', 'flow')


def load(root: str, data_dir: str, test_groups: tuple[int, ...]):
  """{split: (videos as grey (N, 16, 32, 32) float32, labels)}, names."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from hpr import input_pipeline
  from hpr.schema import get_config

  tf.config.set_visible_devices([], 'GPU')
  dataset = get_config().dataset
  dataset.name = 'video_folder'
  dataset.data_dir = data_dir
  dataset.video_folder.root = root
  dataset.video_folder.test_groups = test_groups
  builder = input_pipeline.get_builder(dataset)
  out = {}
  for split in ('train', 'validation', 'test'):
    videos, labels = [], []
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      videos.append(_grey_clip(ex['video']))
      labels.append(int(ex['label']))
    out[split] = np.stack(videos), np.array(labels)
  return out, builder.info.features['label'].names


def _grey_clip(video: np.ndarray) -> np.ndarray:
  from PIL import Image

  index = np.linspace(0, len(video) - 1, NUM_FRAMES).round().astype(int)
  frames = [
    Image.fromarray(video[i]).convert('L').resize((SIZE, SIZE), Image.BILINEAR)
    for i in index
  ]
  return np.stack([np.asarray(f, np.float32) / 255 for f in frames])


def features(clips: np.ndarray, kind: str) -> np.ndarray:
  """(N, 16, 32, 32) grey clips -> (N, F) features of `kind`."""
  n = len(clips)
  if kind in GRID:
    diffs = np.diff(clips, axis=1)  # (N, 15, 32, 32), in order.
    diffs = np.abs(diffs) if kind == 'absdiff' else diffs
    grid = GRID[kind]
    k = SIZE // grid  # Pixels per cell side.
    pooled = diffs.reshape(n, NUM_FRAMES - 1, grid, k, grid, k).mean((3, 5))
    return pooled.reshape(n, -1)
  if kind == 'mean':
    return clips.mean(1).reshape(n, -1)
  if kind == 'flow':
    from hpr import video_ops

    rgb = np.repeat(clips[..., None] * 2 - 1, 3, axis=-1)  # 'centered'.
    flow = video_ops.to_modality(rgb, 'rgb+flow')[:, 1:, ..., 3:]
    k = SIZE // 8
    pooled = flow.reshape(n, NUM_FRAMES - 1, 8, k, 8, k, 2).mean((3, 5))
    return pooled.reshape(n, -1)
  raise ValueError(f'unknown features {kind!r}')


def fit_and_score(data, names, kind: str) -> dict:
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  train_x = np.concatenate([data['train'][0], data['validation'][0]])
  train_y = np.concatenate([data['train'][1], data['validation'][1]])
  test_x, test_y = data['test']
  model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
  model.fit(features(train_x, kind), train_y)
  logits = model.decision_function(features(test_x, kind))
  out = pairs.scores(logits, test_y, names)
  out['train_count'] = len(train_y)
  return out


def _groups(text: str) -> tuple[int, ...]:
  first, _, last = text.partition('-')
  return tuple(range(int(first), int(last or first) + 1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--test_groups', default='19-25')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  data, names = load(args.root, args.data_dir, _groups(args.test_groups))
  results = {kind: fit_and_score(data, names, kind) for kind in KINDS}
  print(json.dumps(results, indent=2))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
