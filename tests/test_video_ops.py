"""Each preprocessing op, eagerly and inside tf.data (they can differ)."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hpr import video_ops


def _encoded_video(n: int, size: int = 16) -> tf.Tensor:
  frames = []
  for i in range(n):
    img = np.full((size, size, 3), i * 10 % 256, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='PNG')  # Lossless: exact values.
    frames.append(buf.getvalue())
  return tf.constant(frames)


def _run(op, features, in_dataset: bool):
  if not in_dataset:
    return op(features)
  ds = tf.data.Dataset.from_tensors(features).map(op)
  return next(iter(ds))


@pytest.mark.parametrize('in_dataset', [False, True])
def test_uniform_indices_are_evenly_spaced_over_the_whole_video(in_dataset):
  fn = lambda n: video_ops.frame_indices(n, 4, 'uniform')  # noqa: E731
  got = _run(fn, tf.constant(40), in_dataset)
  np.testing.assert_array_equal(got, [0, 10, 20, 30])
  np.testing.assert_array_equal(
    _run(fn, tf.constant(42), in_dataset), [0, 10, 21, 31]
  )


@pytest.mark.parametrize('method', ['uniform', 'strided', 'segments'])
def test_short_video_repeats_last_frame(method):
  idx = video_ops.frame_indices(
    3, 6, method, stride=2, seed=tf.constant([1, 2])
  )
  assert idx.shape == (6,)
  assert int(tf.reduce_max(idx)) <= 2 and int(tf.reduce_min(idx)) >= 0


def test_strided_eval_is_centred_and_train_is_seeded():
  idx = video_ops.frame_indices(20, 4, 'strided', stride=2)
  np.testing.assert_array_equal(idx, [6, 8, 10, 12])
  a = video_ops.frame_indices(
    100, 4, 'strided', stride=3, seed=tf.constant([1, 1])
  )
  b = video_ops.frame_indices(
    100, 4, 'strided', stride=3, seed=tf.constant([1, 1])
  )
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(np.diff(a.numpy()), [3, 3, 3])
  starts = {
    int(
      video_ops.frame_indices(
        100, 4, 'strided', stride=3, seed=tf.constant([s, 0])
      )[0]
    )
    for s in range(20)
  }
  assert len(starts) > 5


def test_segments_take_one_frame_per_segment():
  idx = video_ops.frame_indices(40, 4, 'segments').numpy()
  np.testing.assert_array_equal(idx, [5, 15, 25, 35])
  idx = video_ops.frame_indices(40, 4, 'segments', seed=tf.constant([3, 4]))
  for i, v in enumerate(idx.numpy()):
    assert 10 * i <= v < 10 * (i + 1)


@pytest.mark.parametrize('in_dataset', [False, True])
def test_sample_decode_resize_normalize(in_dataset):
  features = {'video': _encoded_video(10), 'seed': tf.constant([0, 0])}
  op = video_ops.compose(
    [
      video_ops.sample_frames(5, 'uniform', training=False),
      video_ops.decode_frames(),
      video_ops.resize(8),
      video_ops.normalize('unit'),
    ]
  )
  out = _run(op, features, in_dataset)['video'].numpy()
  assert out.shape == (5, 8, 8, 3) and out.dtype == np.float32
  # Frames 0, 2, 4, 6, 8 have constant value 20 * k.
  np.testing.assert_allclose(
    out[:, 0, 0, 0], np.arange(5) * 20 / 255, atol=1e-6
  )


@pytest.mark.parametrize('in_dataset', [False, True])
def test_random_flip_mirrors_whole_clip_and_depends_on_seed(in_dataset):
  video = tf.reshape(tf.range(2 * 2 * 3 * 3, dtype=tf.float32), (2, 2, 3, 3))
  flipped = 0
  for s in range(16):
    out = _run(
      video_ops.random_flip(),
      {'video': video, 'seed': tf.constant([s, 7])},
      in_dataset,
    )
    out = out['video'].numpy()
    if np.array_equal(out, video.numpy()[:, :, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, video.numpy())
  assert 0 < flipped < 16


def test_normalize_centered_range():
  out = video_ops.normalize('centered')(
    {'video': tf.constant([0, 255], tf.uint8)}
  )['video'].numpy()
  np.testing.assert_allclose(out, [-1.0, 1.0])


def test_normalize_clip_centered_removes_the_static_background():
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (6, 4, 4, 3)).astype(np.uint8)
  video[:, :2] = 90  # A static region.
  out = video_ops.normalize('clip_centered')({'video': tf.constant(video)})
  out = out['video'].numpy()
  np.testing.assert_allclose(out[:, :2], 0.0, atol=1e-6)
  expected = (video - video.astype(np.float64).mean(0)) / 64
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # The mean ignores frame order: reversing the clip reverses the output.
  rev = video_ops.normalize('clip_centered')(
    {'video': tf.constant(video[::-1])}
  )
  np.testing.assert_allclose(rev['video'].numpy(), out[::-1], atol=1e-6)


@pytest.mark.parametrize('in_dataset', [False, True])
def test_color_jitter_is_per_clip_and_seeded(in_dataset):
  rng = np.random.default_rng(1)
  video = rng.uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
  video[1] = video[0]  # Two equal frames stay equal: one change per clip.
  features = {'video': tf.constant(video), 'seed': tf.constant([4, 2])}
  op = video_ops.color_jitter(0.5)
  out = np.asarray(_run(op, features, in_dataset)['video'])
  again = np.asarray(_run(op, features, in_dataset)['video'])
  np.testing.assert_array_equal(out, again)
  np.testing.assert_allclose(out[0], out[1], atol=1e-4)
  assert out.min() >= 0.0 and out.max() <= 255.0
  assert np.abs(out - video).mean() > 1.0
  other = _run(op, {**features, 'seed': tf.constant([5, 2])}, in_dataset)
  other = np.asarray(other['video'])
  assert not np.allclose(out, other)


@pytest.mark.parametrize('in_dataset', [False, True])
def test_color_jitter_turns_colours_but_keeps_grey_grey(in_dataset):
  # Hue and saturation leave a grey clip grey (contrast and brightness may
  # still change its level); colours change in their proportions.
  grey = np.full((2, 4, 4, 3), 120.0, np.float32)
  colour = np.tile(np.float32([200.0, 60.0, 30.0]), (2, 4, 4, 1))
  op = video_ops.color_jitter(0.5)
  for s in range(4):
    seed = tf.constant([s, 3])
    out = _run(op, {'video': tf.constant(grey), 'seed': seed}, in_dataset)
    out = out['video'].numpy()
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-3)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-3)
    out = _run(op, {'video': tf.constant(colour), 'seed': seed}, in_dataset)
    ratio = out['video'].numpy()[0, 0, 0] / colour[0, 0, 0]
    assert np.ptp(ratio) > 0.05  # Not just a brightness or contrast change.
  still = _run(
    video_ops.color_jitter(0.0),
    {'video': tf.constant(colour), 'seed': tf.constant([0, 3])},
    in_dataset,
  )
  np.testing.assert_allclose(still['video'].numpy(), colour, atol=1e-3)


@pytest.mark.parametrize('in_dataset', [False, True])
@pytest.mark.parametrize(
  'shape, method',
  [
    ((12, 12), None),
    ((20, 16), 'bilinear'),
    ((40, 30), 'area'),
    ((12, 30), 'area'),
  ],
)
def test_resize_frames_filters_by_scale(in_dataset, shape, method):
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (2, *shape, 3)).astype(np.uint8)
  out = _run(video_ops.resize(12), {'video': tf.constant(video)}, in_dataset)
  out = out['video'].numpy()
  assert out.shape == (2, 12, 12, 3) and out.dtype == np.float32
  if method is None:  # Already the size: unchanged.
    np.testing.assert_array_equal(out, video)
    return
  expected = tf.image.resize(video, [12, 12], method=method).numpy()
  np.testing.assert_allclose(out, expected, atol=1e-3)
  other = 'area' if method == 'bilinear' else 'bilinear'
  other = tf.image.resize(video, [12, 12], method=other).numpy()
  assert np.abs(out - other).max() > 1.0


def _jpeg_video(n: int, width: int, height: int) -> tuple[np.ndarray, list]:
  """Smooth frames (so JPEG keeps them close) and their JPEG bytes."""
  y, x = np.mgrid[0:height, 0:width]
  frames, encoded = [], []
  for i in range(n):
    frame = np.stack(
      [x * 255 // width, y * 255 // height, np.full_like(x, 40 * i)], -1
    ).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format='JPEG', quality=95)
    frames.append(frame)
    encoded.append(buf.getvalue())
  return np.stack(frames), encoded


@pytest.mark.parametrize('in_dataset', [False, True])
@pytest.mark.parametrize('ratio', [1, 2, 4])
def test_decode_frames_scales_jpeg_in_the_dct_domain(in_dataset, ratio):
  frames, encoded = _jpeg_video(3, 64, 48)
  op = video_ops.decode_frames(ratio)
  out = _run(op, {'video': tf.constant(encoded)}, in_dataset)['video']
  out = out.numpy()
  assert out.shape == (3, 48 // ratio, 64 // ratio, 3)
  assert out.dtype == np.uint8
  # Close to the frames averaged over ratio x ratio blocks.
  blocks = frames.reshape(3, 48 // ratio, ratio, 64 // ratio, ratio, 3)
  expected = blocks.astype(np.float32).mean(axis=(2, 4))
  assert np.abs(out - expected).mean() < 3.0


def _position_video(t=2, h=12, w=20):
  """Pixel value = column index (channel 0) and row index (channel 1)."""
  cols = np.broadcast_to(np.arange(w, dtype=np.float32), (t, h, w))
  rows = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (t, h, w))
  return np.stack([cols, rows, np.zeros_like(cols)], -1)


@pytest.mark.parametrize('in_dataset', [False, True])
def test_center_crop_takes_the_middle_square(in_dataset):
  video = _position_video()
  out = _run(
    video_ops.center_crop(12), {'video': tf.constant(video)}, in_dataset
  )
  out = out['video'].numpy()
  assert out.shape == (2, 12, 12, 3) and out.dtype == np.float32
  # Columns 4..15 of 20: the centre.
  np.testing.assert_allclose(out[0, 0, :, 0], np.arange(4, 16), atol=1e-4)
  np.testing.assert_allclose(out[0, :, 0, 1], np.arange(12), atol=1e-4)


@pytest.mark.parametrize('in_dataset', [False, True])
def test_three_crops_span_the_long_side(in_dataset):
  video = tf.constant(_position_video())
  firsts = []
  for crop in range(3):
    features = {'video': video, 'crop': tf.constant(crop, tf.int32)}
    out = _run(video_ops.center_crop(12, num_crops=3), features, in_dataset)
    firsts.append(float(out['video'][0, 0, 0, 0]))
  assert firsts == pytest.approx([0.0, 4.0, 8.0], abs=1e-4)


@pytest.mark.parametrize('in_dataset', [False, True])
def test_random_resized_crop_is_one_box_per_clip_and_seeded(in_dataset):
  video = _position_video(t=3, h=40, w=60)
  op = video_ops.random_resized_crop(16, area=(0.2, 0.5))
  boxes = set()
  for s in range(6):
    features = {'video': tf.constant(video), 'seed': tf.constant([s, 1])}
    out = _run(op, features, in_dataset)['video'].numpy()
    again = _run(op, features, in_dataset)['video'].numpy()
    np.testing.assert_array_equal(out, again)
    assert out.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(out[0], out[2])  # Same box every frame.
    left, right = out[0, 0, 0, 0], out[0, 0, -1, 0]
    top, bottom = out[0, 0, 0, 1], out[0, -1, 0, 1]
    # At most half the area: the box is smaller than the frame.
    assert (right - left + 1) * (bottom - top + 1) < 0.6 * 60 * 40
    boxes.add((round(float(left)), round(float(top))))
  assert len(boxes) > 1


@pytest.mark.parametrize('in_dataset', [False, True])
def test_scale_jitter_crops_a_random_square_of_the_short_side(in_dataset):
  video = _position_video(t=2, h=30, w=50)
  op = video_ops.scale_jitter(10, scale=(1.5, 1.5))
  lefts = set()
  for s in range(8):
    features = {'video': tf.constant(video), 'seed': tf.constant([s, 9])}
    out = _run(op, features, in_dataset)['video'].numpy()
    assert out.shape == (2, 10, 10, 3)
    # A square of 30 / 1.5 = 20 pixels: values span about 19 in both axes.
    assert 17 < out[0, 0, -1, 0] - out[0, 0, 0, 0] < 20
    assert 17 < out[0, -1, 0, 1] - out[0, 0, 0, 1] < 20
    lefts.add(round(float(out[0, 0, 0, 0])))
  assert len(lefts) > 1
