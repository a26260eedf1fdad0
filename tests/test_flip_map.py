"""Direction-aware flips: a dataset says what a horizontal flip does to its
labels (dataset.flip, dataset.flip_label_map, or a synthetic_actions
builder config's own flip_label_map), and the training pipeline's flipped
clips carry the mapped label.

The folder here holds real videos (PyAV) of a dot going round clockwise or
counter-clockwise, and one holding still; the direction is measured back
from the pipeline's pixels, so a flipped clockwise clip is seen to turn
counter-clockwise and to be labelled so.
"""

import logging
import math

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds

from hpr import config as config_lib
from hpr import input_pipeline
from hpr.errors import ConfigError, UserError
from tests import conftest
from tests.conftest import tiny_config

CLASSES = ('Clockwise', 'CounterClockwise', 'Still')
SIZE, FRAMES, STEP = 32, 12, 30.0  # Pixels, frames, degrees per frame.


def write_rotation(path, direction, phase):
  """A bright dot going round the frame's centre: direction +1 is clockwise
  on screen (y grows downwards), -1 counter-clockwise, 0 holds still."""
  with av.open(path, 'w') as container:
    stream = container.add_stream('mpeg4', rate=25)
    stream.width = stream.height = SIZE
    stream.pix_fmt = 'yuv420p'
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(FRAMES):
      angle = math.radians(phase + direction * STEP * i)
      cx = SIZE / 2 + 9 * math.cos(angle)
      cy = SIZE / 2 + 9 * math.sin(angle)
      dot = ((xx - cx) ** 2 + (yy - cy) ** 2) < 12
      frame = np.where(dot[..., None], 250, 20).astype(np.uint8)
      frame = np.repeat(frame, 3, axis=-1)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, 'rgb24')))
    container.mux(stream.encode(None))


def turning(clip):
  """+1 if the clip's bright dot goes round clockwise on screen, -1
  counter-clockwise, 0 if it stays: (T, H, W, C) floats."""
  grey = clip.mean(-1)
  weight = np.maximum(grey - grey.mean(axis=(1, 2), keepdims=True), 0)
  yy, xx = np.mgrid[: grey.shape[1], : grey.shape[2]]
  centre = (grey.shape[1] - 1) / 2
  total = weight.sum(axis=(1, 2))
  y = (weight * yy).sum(axis=(1, 2)) / total - centre
  x = (weight * xx).sum(axis=(1, 2)) / total - centre
  step = np.angle(np.exp(1j * np.diff(np.arctan2(y, x))))
  if np.abs(step).mean() < 0.1:
    return 0
  return int(np.sign(step.mean()))


@pytest.fixture(scope='module')
def rotation_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('rotations')
  for name, direction in zip(CLASSES, (1, -1, 0), strict=True):
    (root / name).mkdir()
    for group in range(1, 5):
      for clip in range(1, 3):
        path = root / name / f'v_{name}_g{group:02d}_c{clip:02d}.avi'
        write_rotation(str(path), direction, phase=40 * group + 70 * clip)
  return str(root)


def folder_config(root, data_dir, **dataset):
  config = tiny_config(data_dir)
  config.dataset.name = 'video_folder'
  vf = config.dataset.video_folder
  vf.root = root
  vf.short_side = SIZE
  vf.min_frames = 6
  vf.test_groups = (4,)
  vf.val_groups = 1
  vf.num_workers = 2
  config.dataset.update(dataset)
  config.input.num_frames = 6
  config.input.image_size = SIZE
  config.input.color_jitter = 0.0
  config.input.normalization = 'unit'
  config.training.batch_size = 4
  return config


@pytest.fixture(scope='module')
def folder_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def one_epoch(config):
  config_lib.validate(config)
  builder = input_pipeline.get_builder(config.dataset)
  batches = list(conftest.train_batches(config, builder, epoch=0))
  video = np.concatenate([b['video'] for b in batches])
  label = np.concatenate([b['label'] for b in batches])
  return video, label


def test_a_flipped_clockwise_clip_trains_as_counter_clockwise(
  rotation_root, folder_data_dir
):
  pairs = (('Clockwise', 'CounterClockwise'),)
  flipped_video, flipped_label = one_epoch(
    folder_config(rotation_root, folder_data_dir, flip_label_map=pairs)
  )
  plain = folder_config(rotation_root, folder_data_dir)
  plain.input.random_flip = False
  video, label = one_epoch(plain)
  assert len(label) == 12  # 3 classes x 2 training groups x 2 clips.
  seen = {'flipped': set(), 'kept': set()}
  for i in range(len(label)):
    # The same clip in the same place: flips change nothing else.
    was_flipped = not np.array_equal(flipped_video[i], video[i])
    if was_flipped:
      np.testing.assert_array_equal(flipped_video[i], video[i][:, :, ::-1])
    name = CLASSES[label[i]]
    seen['flipped' if was_flipped else 'kept'].add(name)
    # Every clip, flipped or not, turns the way its label says.
    want = {'Clockwise': 1, 'CounterClockwise': -1, 'Still': 0}
    assert turning(flipped_video[i]) == want[CLASSES[flipped_label[i]]]
    assert turning(video[i]) == want[name]
    if was_flipped and name != 'Still':
      assert flipped_label[i] != label[i]
    else:
      assert flipped_label[i] == label[i]
  # The test saw flipped and unflipped rotations of both directions.
  assert {'Clockwise', 'CounterClockwise'} <= seen['flipped']
  assert seen['kept'] & {'Clockwise', 'CounterClockwise'}


def test_without_a_map_a_flip_keeps_the_label(rotation_root, folder_data_dir):
  """The old behaviour, and what issue 25 found wrong: the flipped
  clockwise clip turns counter-clockwise but keeps its label."""
  video, label = one_epoch(folder_config(rotation_root, folder_data_dir))
  wrong = [
    i
    for i in range(len(label))
    if CLASSES[label[i]] == 'Clockwise' and turning(video[i]) == -1
  ]
  assert wrong


def test_forbidden_flips_train_unflipped_with_a_warning(
  rotation_root, folder_data_dir, caplog
):
  config = folder_config(rotation_root, folder_data_dir, flip='forbidden')
  assert config.input.random_flip
  video, label = one_epoch(config)
  plain = folder_config(rotation_root, folder_data_dir)
  plain.input.random_flip = False
  np.testing.assert_array_equal(video, one_epoch(plain)[0])
  builder = input_pipeline.get_builder(config.dataset)
  with caplog.at_level(logging.WARNING):
    line = input_pipeline.describe_flips(config, CLASSES, builder)
  assert 'no horizontal flips' in line
  assert 'forbids horizontal flips' in caplog.text
  assert 'input.random_flip=False' in caplog.text


def test_synthetic_actions_declares_its_flips(tmp_path):
  config = tiny_config(str(tmp_path))
  for name, swapped in (
    ('synthetic_actions/small_video', {'RotateCW': 'RotateCCW'}),
    ('synthetic_actions/tiny', {}),
  ):
    config.dataset.name = name
    builder = tfds.builder(name, data_dir=str(tmp_path))  # Not prepared.
    names = tuple(builder.info.features['label'].names)
    labels = input_pipeline.flip_labels(config, names, builder)
    changed = {names[i]: names[j] for i, j in enumerate(labels) if i != j}
    want = {**swapped, **{b: a for a, b in swapped.items()}}
    assert changed == want
    text = input_pipeline.describe_flips(config, names, builder)
    assert ('RotateCW -> RotateCCW' in text) == bool(swapped)
    # The config's own keys replace the declaration.
    config.dataset.flip = 'allowed'
    assert input_pipeline.flip_labels(config, names, builder) == tuple(
      range(len(names))
    )
    config.dataset.flip = 'forbidden'
    assert input_pipeline.flip_labels(config, names, builder) is None
    config.dataset.flip = 'dataset'


def test_a_map_naming_an_unknown_class_is_one_line(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset.flip_label_map = (('Clockwise', 'Anticlockwise'),)
  with pytest.raises(UserError, match="no class 'Anticlockwise'") as e:
    input_pipeline.flip_labels(config, CLASSES)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize(
  'value,message',
  [
    (('Clockwise', 'CounterClockwise'), 'expected pairs of class names'),
    ((('A', 'B'), ('B', 'C')), "class 'B' is named more than once"),
    ((('A', 'A'),), "class 'A' is named more than once"),
    ((('A', 'B', 'C'),), 'expected pairs'),
  ],
)
def test_bad_maps_are_config_errors(tmp_path, value, message):
  config = tiny_config(str(tmp_path))
  config.dataset.flip_label_map = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def test_good_map_validates(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset.flip_label_map = (('A', 'B'), ('C', 'D'))
  config_lib.validate(config)
  config.dataset.flip = 'nope'
  with pytest.raises(ConfigError, match='dataset.flip'):
    config_lib.validate(config)
