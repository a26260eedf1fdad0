"""Pure TensorFlow ops on clips, composed into the input pipeline.

Every op is a factory returning `fn(features) -> features`, where `features`
is a dict holding at least:
  'video': encoded frames tf.string (N,) before `decode_frames`, then the
           clip, uint8 or float32 (T, H, W, 3);
  'seed':  int32 (2,) stateless seed of this example (random ops only).
Random ops are stateless (`tf.random.stateless_*` keyed by the example's seed
and the op's own salt), so a clip's augmentation depends only on the seed,
never on tf.data's parallelism or on where a resumed run starts.
"""

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from hpr.schema import MODALITY_CHANNELS

Features = dict[str, tf.Tensor]
Op = Callable[[Features], Features]

# Salts that give each random op its own stream from the example's seed.
_SAMPLE_SALT, _FLIP_SALT, _COLOR_SALT, _CROP_SALT = 1, 2, 3, 4


def _op_seed(features: Features, salt: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(features['seed'], salt)


def frame_indices(
  num_video_frames: tf.Tensor,
  num_frames: int,
  method: str,
  *,
  stride: int = 1,
  seed: tf.Tensor | None = None,
  view: tf.Tensor | int = 0,
  num_views: int = 1,
) -> tf.Tensor:
  """Chooses which frames of a video form the clip.

  Args:
    num_video_frames: scalar int, frames in the video (N).
    num_frames: clip length (T).
    method: 'uniform' (evenly spaced over the whole video: frame
      floor(i * N / T), the notebook's choice when N is a multiple of T),
      'strided' (T frames `stride` apart from an offset) or 'segments' (one
      frame from each of T equal segments, TSN).
    stride: frame step for 'strided'.
    seed: stateless seed; None means evaluation: 'strided' takes the centred
      clip and 'segments' the middle of each segment.
    view: in evaluation, which of `num_views` temporal views (multi-clip
      testing): views shift 'uniform' by view / num_views of a step,
      spread 'strided' clips evenly from the first to the last possible
      offset, and take 'segments' frames at (view + 0.5) / num_views of each
      segment. View 0 of 1 is the single evaluation clip above.
    num_views: number of temporal views (evaluation only).

  Returns:
    int32 (T,) indices in [0, N). Videos shorter than the clip repeat their
    last frame.
  """
  n = tf.cast(num_video_frames, tf.int32)
  steps = tf.range(num_frames, dtype=tf.int32)
  if seed is not None:
    view, num_views = 0, 1  # Views are an evaluation notion.
  view = tf.cast(view, tf.int32)
  if method == 'uniform':
    idx = (steps * num_views + view) * n // (num_frames * num_views)
  elif method == 'strided':
    span = (num_frames - 1) * stride + 1
    room = tf.maximum(n - span, 0)
    if seed is None and num_views == 1:
      offset = room // 2
    elif seed is None:
      offset = view * room // (num_views - 1)
    else:
      offset = tf.random.stateless_uniform(
        [], seed, minval=0, maxval=room + 1, dtype=tf.int32
      )
    idx = offset + steps * stride
  elif method == 'segments':
    seg = tf.cast(n, tf.float32) / num_frames
    if seed is None:
      pos = tf.fill([num_frames], (tf.cast(view, tf.float32) + 0.5) / num_views)
    else:
      pos = tf.random.stateless_uniform([num_frames], seed)
    idx = tf.cast((tf.cast(steps, tf.float32) + pos) * seg, tf.int32)
  else:
    raise ValueError(f'unknown sampling method {method!r}')
  return tf.clip_by_value(idx, 0, tf.maximum(n - 1, 0))


def sample_frames(
  num_frames: int,
  method: str,
  *,
  stride: int = 1,
  training: bool,
  num_views: int = 1,
) -> Op:
  """Keeps the encoded frames of one clip: 'video' (N,) -> (T,) strings.

  In evaluation with `num_views` > 1, `features['view']` (int32 scalar)
  says which temporal view to take.
  """

  def fn(features: Features) -> Features:
    seed = _op_seed(features, _SAMPLE_SALT) if training else None
    view = features['view'] if num_views > 1 and not training else 0
    idx = frame_indices(
      tf.shape(features['video'])[0],
      num_frames,
      method,
      stride=stride,
      seed=seed,
      view=view,
      num_views=num_views,
    )
    return {**features, 'video': tf.gather(features['video'], idx)}

  return fn


def decode_frames(jpeg_ratio: int = 0) -> Op:
  """Decodes JPEG/PNG frames: 'video' (T,) strings -> uint8 (T, H, W, 3).

  Args:
    jpeg_ratio: 0 detects the format. 1, 2, 4 or 8: the frames are JPEG;
      decode them with the fast integer IDCT, scaled down by this factor in
      the DCT domain (several times cheaper than decoding at full size and
      resizing).
  """

  def decode(s):
    if jpeg_ratio:
      return tf.io.decode_jpeg(
        s, channels=3, ratio=jpeg_ratio, dct_method='INTEGER_FAST'
      )
    return tf.io.decode_image(s, channels=3, expand_animations=False)

  def fn(features: Features) -> Features:
    frames = tf.map_fn(
      decode,
      features['video'],
      fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    return {**features, 'video': frames}

  return fn


def resize_frames(video: tf.Tensor, size: int) -> tf.Tensor:
  """Frames (T, H, W, 3) -> float32 (T, size, size, 3).

  The filter depends on the scale, for speed: frames already size x size
  are just cast; frames at most twice the size in each dimension are
  resized bilinearly (its two taps per output pixel already reach every
  source pixel); larger ones are averaged over the area each output pixel
  covers (a box filter, antialiased like TF's antialiased bilinear but
  about 3x cheaper: 0.8 against 2.7 ms for a 20-frame 171x128 clip on one
  core).
  """
  shape = tf.shape(video)
  height, width = shape[1], shape[2]

  def same():
    return tf.cast(video, tf.float32)

  def bilinear():
    return tf.image.resize(video, [size, size], method='bilinear')

  def area():
    return tf.image.resize(video, [size, size], method='area')

  out = tf.cond(
    tf.logical_and(tf.equal(height, size), tf.equal(width, size)),
    same,
    lambda: tf.cond(tf.maximum(height, width) <= 2 * size, bilinear, area),
  )
  return tf.ensure_shape(out, [None, size, size, 3])


def resize(size: int) -> Op:
  """Resizes every frame (`resize_frames`): (T, H, W, 3) -> float32 (T,
  size, size, 3)."""

  def fn(features: Features) -> Features:
    return {**features, 'video': resize_frames(features['video'], size)}

  return fn


def _crop_resize(video, top, left, height, width, size: int) -> tf.Tensor:
  """The same window of every frame, resized: float32 (T, size, size, 3)."""
  window = video[:, top : top + height, left : left + width]
  return resize_frames(window, size)


def _square(video: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  shape = tf.shape(video)
  return shape[1], shape[2], tf.minimum(shape[1], shape[2])


def random_resized_crop(
  size: int,
  area: tuple[float, float] = (0.4, 1.0),
  aspect: tuple[float, float] = (0.75, 4 / 3),
) -> Op:
  """A random box, the same for the whole clip, resized to size x size.

  The box covers a fraction in `area` of the frame and has a width/height
  ratio in `aspect` (Inception-style); (T, H, W, 3) -> float32 (T, size,
  size, 3).
  """

  def fn(features: Features) -> Features:
    video = features['video']
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(video)[1:],
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=_op_seed(features, _CROP_SALT),
      min_object_covered=0.0,
      aspect_ratio_range=aspect,
      area_range=area,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
    )
    video = _crop_resize(video, begin[0], begin[1], box[0], box[1], size)
    return {**features, 'video': video}

  return fn


def scale_jitter(size: int, scale: tuple[float, float] = (1.0, 1.33)) -> Op:
  """Scale jitter: a random square of 1/s of the short side (s uniform in
  `scale`; the same for the whole clip) at a random place, resized to
  size x size; as scaling the short side to s * size and cropping size x
  size, with one resize. (T, H, W, 3) -> float32 (T, size, size, 3)."""

  def fn(features: Features) -> Features:
    video = features['video']
    height, width, short = _square(video)
    u = tf.random.stateless_uniform([3], _op_seed(features, _CROP_SALT))
    s = scale[0] + (scale[1] - scale[0]) * u[0]
    side = tf.maximum(1, tf.cast(tf.cast(short, tf.float32) / s, tf.int32))
    top = tf.cast(u[1] * tf.cast(height - side + 1, tf.float32), tf.int32)
    left = tf.cast(u[2] * tf.cast(width - side + 1, tf.float32), tf.int32)
    top, left = tf.minimum(top, height - side), tf.minimum(left, width - side)
    video = _crop_resize(video, top, left, side, side, size)
    return {**features, 'video': video}

  return fn


def center_crop(size: int, num_crops: int = 1) -> Op:
  """Squares of the short side, resized to size x size.

  With `num_crops` 1, the central square. With 3 (multi-crop testing),
  `features['crop']` (int32 scalar, 0..2) picks the square at the start,
  the middle or the end of the long side (left, centre, right for
  landscape frames). (T, H, W, 3) -> float32 (T, size, size, 3).
  """
  if num_crops not in (1, 3):
    raise ValueError(f'num_crops must be 1 or 3, got {num_crops}')

  def fn(features: Features) -> Features:
    video = features['video']
    height, width, short = _square(video)
    where = features['crop'] if num_crops == 3 else 1
    top = (height - short) * where // 2
    left = (width - short) * where // 2
    video = _crop_resize(video, top, left, short, short, size)
    return {**features, 'video': video}

  return fn


def random_flip(label_map: Sequence[int] | None = None) -> Op:
  """Mirrors the whole clip left-right with probability 1/2.

  Args:
    label_map: what a flip makes of each label: a flipped clip of class i
      gets label label_map[i] (e.g. clockwise <-> counter-clockwise). None
      or () keeps the labels.
  """
  table = tf.constant(label_map, tf.int32) if label_map else None

  def fn(features: Features) -> Features:
    coin = tf.random.stateless_uniform([], _op_seed(features, _FLIP_SALT))
    flip = coin < 0.5
    video = features['video']
    video = tf.cond(flip, lambda: tf.reverse(video, axis=[2]), lambda: video)
    out = {**features, 'video': video}
    if table is not None:
      label = features['label']
      flipped = tf.cast(tf.gather(table, label), label.dtype)
      out['label'] = tf.where(flip, flipped, label)
    return out

  return fn


def color_jitter(strength: float) -> Op:
  """Random per-clip colour change (the same for every frame).

  Rotates the hue by up to +-strength/2 of the colour circle, scales the
  saturation and the contrast by up to 1 +- strength, and shifts the
  brightness by up to +-strength/4 of the range. Frames are float in
  [0, 255] before and after (as `resize` leaves them).
  """

  def fn(features: Features) -> Features:
    u = tf.random.stateless_uniform(
      [4], _op_seed(features, _COLOR_SALT), -1.0, 1.0
    )
    video = features['video'] / 255.0
    video = tf.image.adjust_hue(video, 0.5 * strength * u[0])
    video = tf.image.adjust_saturation(video, 1.0 + strength * u[1])
    mean = tf.reduce_mean(video, axis=[-3, -2, -1], keepdims=True)
    video = (video - mean) * (1.0 + strength * u[2]) + mean
    video = video + 0.25 * strength * u[3]
    return {**features, 'video': tf.clip_by_value(video, 0.0, 1.0) * 255.0}

  return fn


NORMALIZATIONS = ('unit', 'centered', 'clip_centered')


def normalize(mode: str) -> Op:
  """Pixel values to float32.

  'unit': pixel / 255, in [0, 1] (the notebook). 'centered': [-1, 1].
  'clip_centered': (pixel - the clip's mean frame) / 64: what does not move
  (the room, the static clutter) becomes 0 and moving limbs stand out; the
  mean is over the clip's sampled frames, so frame order does not change it.
  """
  if mode not in NORMALIZATIONS:
    raise ValueError(
      f'unknown normalization {mode!r}; valid: {", ".join(NORMALIZATIONS)}'
    )

  def fn(features: Features) -> Features:
    video = tf.cast(features['video'], tf.float32)
    if mode == 'clip_centered':
      video = (video - tf.reduce_mean(video, axis=-4, keepdims=True)) / 64.0
    else:
      video = video / 255.0
      if mode == 'centered':
        video = video * 2.0 - 1.0
    return {**features, 'video': video}

  return fn


MODALITIES = tuple(MODALITY_CHANNELS)


def modality_channels(modality: str) -> int:
  """Channels of a model's input frames for `modality` (config
  input.modality): 3 for 'rgb' and 'diff', 6 for 'rgb+diff', 5 for
  'rgb+flow'."""
  if modality not in MODALITY_CHANNELS:
    raise ValueError(
      f'unknown modality {modality!r}; valid: {", ".join(MODALITIES)}'
    )
  return MODALITY_CHANNELS[modality]


# Normal flow's regulariser: |gradient|^2 + FLOW_EPS in the denominator, in
# the normalized frames' units, so that flat, noisy places give ~0 flow.
FLOW_EPS = 0.01


def to_modality(frames: np.ndarray, modality: str) -> np.ndarray:
  """Normalized float frames [..., T, H, W, C] -> the model's input.

  'rgb': the frames themselves. 'diff': differences of consecutive frames
  (TSN's RGB difference), frame t minus frame t-1, with a zero difference
  in front so that the clip keeps its T steps (a static clip is all zeros).
  'rgb+diff': both stacked on the channel axis, rgb first: [..., T, H, W,
  2C]. 'rgb+flow': the frames and 2 channels (x, y) of normal flow, the
  brightness-constancy estimate of motion along the grey image's gradient,
  -I_t grad(I) / (|grad(I)|^2 + FLOW_EPS), with I_t the grey difference
  from frame t-1 and grad(I) the central differences of the mean of frames
  t-1 and t (edges repeated); a zero flow in front, as for 'diff'. Unlike a
  difference, its sign says which way an edge moved whether it is light on
  dark or dark on light. The NumPy twin of the input pipeline's `modality`
  op (the tools use it on the frames they normalized themselves); both give
  the same numbers.
  """
  modality_channels(modality)  # Refuses an unknown modality.
  frames = np.asarray(frames, np.float32)
  if modality == 'rgb':
    return frames
  if frames.ndim < 4:
    raise ValueError(f'frames must be [..., T, H, W, C], got {frames.shape}')
  if modality == 'rgb+flow':
    return np.concatenate([frames, _normal_flow(frames)], axis=-1)
  diff = np.diff(frames, axis=-4)
  zero = np.zeros_like(frames[..., :1, :, :, :])
  diff = np.concatenate([zero, diff], axis=-4)
  if modality == 'diff':
    return diff
  return np.concatenate([frames, diff], axis=-1)


def _normal_flow(frames: np.ndarray) -> np.ndarray:
  """[..., T, H, W, C] -> [..., T, H, W, 2] (x, y); see `to_modality`."""
  grey = frames.mean(-1, dtype=np.float32)
  before = np.concatenate([grey[..., :1, :, :], grey[..., :-1, :, :]], -3)
  dt = grey - before  # Zero at t = 0.
  mid = (grey + before) * np.float32(0.5)
  pad = [(0, 0)] * (mid.ndim - 2) + [(1, 1), (1, 1)]
  mid = np.pad(mid, pad, mode='edge')
  dx = (mid[..., 1:-1, 2:] - mid[..., 1:-1, :-2]) * np.float32(0.5)
  dy = (mid[..., 2:, 1:-1] - mid[..., :-2, 1:-1]) * np.float32(0.5)
  scale = -dt / (dx * dx + dy * dy + np.float32(FLOW_EPS))
  return np.stack([scale * dx, scale * dy], -1).astype(np.float32)


def reorder_frames(
  inputs: np.ndarray, order: np.ndarray, modality: str
) -> np.ndarray:
  """Model inputs (B, T, H, W, C), `to_modality`'s, of clips whose frames
  are put in `order` (B, T): as if the frames had been reordered before
  `to_modality` (evaluation's frame-order probe). Reordering 'diff' inputs
  themselves would not give the differences of the reordered frames; they
  are recovered, up to each clip's first frame (which differences do not
  see), by a cumulative sum, and 'rgb+diff' and 'rgb+flow' from their rgb
  channels.
  """
  rows = np.arange(len(inputs))[:, None]
  if modality == 'rgb':
    return inputs[rows, order]
  if modality == 'diff':
    frames = np.cumsum(inputs, axis=1)
  else:  # 'rgb+diff', 'rgb+flow': the rgb channels come first.
    frames = inputs[..., :3]
  return to_modality(frames[rows, order], modality)


def modality(mode: str) -> Op:
  """The model's input from the normalized clip: `to_modality` in
  TensorFlow. 'video' float32 (T, H, W, 3) -> (T, H, W, C), C = 3, 5 or 6."""
  modality_channels(mode)  # Refuses an unknown modality.

  def fn(features: Features) -> Features:
    video = features['video']
    if mode == 'rgb':
      return features
    if mode == 'rgb+flow':
      flow = _tf_normal_flow(video)
      return {**features, 'video': tf.concat([video, flow], axis=-1)}
    diff = video[1:] - video[:-1]
    diff = tf.concat([tf.zeros_like(video[:1]), diff], axis=0)
    if mode == 'rgb+diff':
      diff = tf.concat([video, diff], axis=-1)
    return {**features, 'video': diff}

  return fn


def _tf_normal_flow(video: tf.Tensor) -> tf.Tensor:
  """(T, H, W, C) -> (T, H, W, 2): `_normal_flow` in TensorFlow."""
  grey = tf.reduce_mean(video, axis=-1)
  before = tf.concat([grey[:1], grey[:-1]], axis=0)
  dt = grey - before
  # SYMMETRIC padding by one repeats the edge, as NumPy's 'edge'.
  mid = tf.pad((grey + before) * 0.5, [[0, 0], [1, 1], [1, 1]], 'SYMMETRIC')
  dx = (mid[:, 1:-1, 2:] - mid[:, 1:-1, :-2]) * 0.5
  dy = (mid[:, 2:, 1:-1] - mid[:, :-2, 1:-1]) * 0.5
  scale = -dt / (dx * dx + dy * dy + FLOW_EPS)
  return tf.stack([scale * dx, scale * dy], axis=-1)


def compose(ops: Sequence[Op]) -> Op:
  """Applies `ops` in order."""

  def fn(features: Features) -> Features:
    for op in ops:
      features = op(features)
    return features

  return fn
