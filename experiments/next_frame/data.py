"""Moving-glyph sequences: Moving MNIST (Srivastava et al., 2015; the data of
Shi et al., 2015) with digits drawn locally, so nothing is downloaded.

Each sequence shows `num_glyphs` digits, drawn with PIL's built-in bitmap
font and scaled up with bilinear interpolation (soft edges like MNIST's),
moving at a constant speed in a random direction and bouncing off the
borders. Overlapping digits combine by maximum, as in Moving MNIST. Values
are float32 in [0, 1]; frames are (T, H, W, 1).

The baselines and metrics of the study live here too, so that they are
computed by the same code for the model and for the baselines.
"""

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@functools.cache
def glyphs(scale: int = 3) -> np.ndarray:
  """The ten digits, (10, 7 * scale, 6 * scale) float32 in [0, 1].

  PIL's bitmap font draws each digit in a 7-row by at most 6-column box; the
  box is cut out and scaled by `scale` with bilinear interpolation.
  """
  font = ImageFont.load_default_imagefont()
  out = []
  for digit in '0123456789':
    image = Image.new('L', (16, 16))
    ImageDraw.Draw(image).text((2, 0), digit, fill=255, font=font)
    box = image.crop((2, 2, 8, 9))  # (left, top, right, bottom): 6 x 7 px
    box = box.resize((6 * scale, 7 * scale), Image.Resampling.BILINEAR)
    out.append(np.asarray(box, np.float32) / 255.0)
  return np.stack(out)


def moving_glyphs(
  rng: np.random.Generator,
  num_sequences: int,
  *,
  num_frames: int = 20,
  size: int = 64,
  num_glyphs: int = 2,
  scale: int = 3,
  speed: tuple[float, float] = (2.0, 4.0),
) -> np.ndarray:
  """Bouncing-digit sequences: (N, num_frames, size, size, 1) float32.

  Args:
    rng: the only source of randomness (same seed, same sequences).
    num_sequences: N.
    num_frames: frames per sequence.
    size: frame height and width in pixels.
    num_glyphs: digits per sequence (each drawn uniformly from 0-9).
    scale: digit scale; a digit is (7 * scale, 6 * scale) pixels.
    speed: range of the speed in pixels per frame (uniform).

  Returns:
    The sequences, values in [0, 1].
  """
  digits = glyphs(scale)
  gh, gw = digits.shape[1:]
  if gh > size or gw > size:
    raise ValueError(f'digits of {gh}x{gw} pixels do not fit {size}x{size}')
  limit = np.array([size - gh, size - gw], np.float64)
  out = np.zeros((num_sequences, num_frames, size, size), np.float32)
  for n in range(num_sequences):
    for _ in range(num_glyphs):
      glyph = digits[rng.integers(10)]
      pos = rng.uniform(0.0, 1.0, 2) * limit
      angle = rng.uniform(0.0, 2 * np.pi)
      vel = rng.uniform(*speed) * np.array([np.sin(angle), np.cos(angle)])
      for t in range(num_frames):
        y, x = np.rint(pos).astype(int)
        patch = out[n, t, y : y + gh, x : x + gw]
        np.maximum(patch, glyph, out=patch)
        pos = pos + vel
        # Bounce: reflect the position into [0, limit], flip the velocity.
        for axis in range(2):
          if pos[axis] < 0:
            pos[axis], vel[axis] = -pos[axis], -vel[axis]
          elif pos[axis] > limit[axis]:
            pos[axis] = 2 * limit[axis] - pos[axis]
            vel[axis] = -vel[axis]
        # Only reached when a step is longer than the free space.
        pos = np.clip(pos, 0.0, limit)
  return out[..., None]


def split(sequences: np.ndarray, num_inputs: int = 10):
  """(N, T, ...) -> inputs (N, num_inputs, ...), targets (N, T - n, ...)."""
  return sequences[:, :num_inputs], sequences[:, num_inputs:]


def copy_last_frame(inputs: np.ndarray, num_future: int) -> np.ndarray:
  """Baseline: every future frame is the last input frame."""
  last = inputs[:, -1:]
  return np.repeat(last, num_future, axis=1)


def mean_frame(inputs: np.ndarray, num_future: int) -> np.ndarray:
  """Baseline: every future frame is the pixel-wise mean of the inputs."""
  mean = inputs.mean(axis=1, keepdims=True)
  return np.repeat(mean, num_future, axis=1)


def per_frame_mse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Mean squared error per future frame, averaged over pixels and
  sequences: (N, T, H, W, C) x 2 -> (T,)."""
  err = (np.asarray(pred, np.float64) - target) ** 2
  return err.mean(axis=(0, 2, 3, 4))


def per_frame_bce(
  prob: np.ndarray, target: np.ndarray, eps: float = 1e-7
) -> np.ndarray:
  """Binary cross-entropy (nats per pixel) per future frame, the
  probabilities clipped to [eps, 1 - eps]: (N, T, H, W, C) x 2 -> (T,).

  The targets are soft (digit edges are grey), so even a perfect prediction
  has a BCE above zero: the targets' own entropy (`per_frame_bce(target,
  target)`).
  """
  p = np.clip(np.asarray(prob, np.float64), eps, 1 - eps)
  bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
  return bce.mean(axis=(0, 2, 3, 4))
