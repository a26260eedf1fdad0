"""Sliding-window prediction that does per-frame work once per frame.

A video is predicted window by window (the last `window` frames, a new
window every `stride` frames). Running the model on every window would run
the per-frame CNN of LRCN and SingleFrame `window / stride` times on each
frame; instead each model is split in two:

  encode(frames)   (n, S, S, 3) -> (n, *F): the per-frame part, run once per
                   frame; its outputs are kept in a queue of `window` frames;
  classify(cache)  (B, T, *F) -> (B, K) logits of windows of cached frames;

with `classify(encode(x)) == model(x)` (up to float rounding). Cost per
frame, at stride s and window T:

  lrcn          1 FrameCNN frame + T/s LSTM steps (+ a Dense every s frames)
  single_frame  1 FrameCNN frame + 1 Dense; a window is a log-mean-exp
  convlstm      1 first-layer input convolution + T/s steps of everything
                else: its state depends on where the window starts, so each
                window runs the recurrence again from zero

`benchmarks/predict_speed.py` measures them in FLOPs and frames per second.
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpr.models import LRCN, ConvLSTMClassifier, SingleFrame, layers

Array = jax.Array


def _lrcn_encode(model: LRCN, frames: Array) -> Array:
  # frames: (n, S, S, 3) -> features: (n, D)
  return model.encoder(frames)


def _lrcn_classify(model: LRCN, features: Array) -> Array:
  # features: (B, T, D) -> logits: (B, K); LRCN.__call__ after the encoder.
  logits = model.dense(model.lstm(features))
  if model.readout == 'mean':
    logits = layers.log_mean_softmax(logits, axis=1)
  return logits


def _single_frame_encode(model: SingleFrame, frames: Array) -> Array:
  # frames: (n, S, S, 3) -> per-frame log-probabilities: (n, K)
  return jax.nn.log_softmax(model.dense(model.encoder(frames)), axis=-1)


def _single_frame_classify(model: SingleFrame, log_probs: Array) -> Array:
  # log_probs: (B, T, K) -> log(mean softmax): (B, K)
  del model
  return jax.nn.logsumexp(log_probs, axis=1) - jnp.log(log_probs.shape[1])


def _convlstm_encode(model: ConvLSTMClassifier, frames: Array) -> Array:
  # frames: (n, S, S, 3) -> first layer's input projection: (n, H', W', 4F)
  return model.input_projection(frames)


def _convlstm_classify(model: ConvLSTMClassifier, gates: Array) -> Array:
  # gates: (B, T, H', W', 4F) -> logits: (B, K)
  return model.from_input_projection(gates)


def _identity_encode(model, frames: Array) -> Array:
  return frames


def _model_classify(model, frames: Array) -> Array:
  return model(frames)


def _centered_classify(model, frames: Array) -> Array:
  # frames: (B, T, S, S, 3) pixel / 64 -> minus each window's mean frame.
  return model(frames - jnp.mean(frames, axis=1, keepdims=True))


# Model class -> (encode, classify, keep frames for the whole-video clip).
# A model not listed here is run on every window of frames.
_SPLITS = {
  LRCN: (_lrcn_encode, _lrcn_classify, False),
  SingleFrame: (_single_frame_encode, _single_frame_classify, False),
  # Its cache (4F channels at full resolution) is larger than a frame, so
  # whole videos are kept as frames.
  ConvLSTMClassifier: (_convlstm_encode, _convlstm_classify, True),
}


@dataclasses.dataclass
class StreamingModel:
  """A model split into jitted `encode` and `classify` (see module doc).

  Attributes:
    encode: (n, S, S, 3) float32 -> (n, *F) per-frame cache.
    classify: (B, T, *F) -> (B, K) logits.
    classify_at: (cache (L, *F), idx int (B, T)) -> (B, K) logits of the
      windows cache[idx], gathered on the device: windows overlap, so
      stacking them on the host would copy each frame's cache T times.
    keep_frames: whether a whole video is better kept as frames than as
      cache (memory); see `predict.predict_video`.
    name: the model class.
  """

  encode: Callable[[np.ndarray], np.ndarray]
  classify: Callable[[np.ndarray], np.ndarray]
  classify_at: Callable[[np.ndarray, np.ndarray], np.ndarray]
  keep_frames: bool
  name: str

  def __call__(self, clips: np.ndarray) -> np.ndarray:
    """Logits of whole clips: (B, T, S, S, 3) -> (B, K)."""
    b, t = clips.shape[:2]
    cache = self.encode(clips.reshape((b * t,) + clips.shape[2:]))
    return self.classify(cache.reshape((b, t) + cache.shape[1:]))


def _pad(x: np.ndarray, multiple: int) -> np.ndarray:
  """Pads the leading axis with zeros to a power of two up to `multiple`,
  then to a multiple of `multiple`: jit compiles once per size class, not
  once per length, and a few windows are not padded to many."""
  n = x.shape[0]
  if n <= multiple:
    size = 1 << max(0, n - 1).bit_length()
  else:
    size = math.ceil(n / multiple) * multiple
  if size == n:
    return x
  return np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])


def streaming_model(
  model: nnx.Module, *, batch: int = 16, center_windows: bool = False
) -> StreamingModel:
  """Splits `model` (in eval mode) into per-frame and per-window parts.

  Args:
    model: an hpr model; its dropout is switched off here.
    batch: frames per `encode` call and windows per `classify` call are
      padded to multiples of this (fewer compilations).
    center_windows: subtract each window's mean frame before the model
      (input.normalization 'clip_centered'; frames come in as pixel / 64).
      A frame's input then depends on its window, so nothing per frame can
      be cached: every window runs the whole model.

  Returns:
    The `StreamingModel`.
  """
  model.eval()
  encode, classify, keep_frames = _SPLITS.get(
    type(model), (_identity_encode, _model_classify, True)
  )
  if center_windows:
    encode, classify, keep_frames = (
      _identity_encode,
      _centered_classify,
      True,
    )
  graphdef, state = nnx.split(model)

  def bind(fn):
    return jax.jit(lambda state, *x: fn(nnx.merge(graphdef, state), *x))

  jit_encode, jit_classify = bind(encode), bind(classify)
  jit_classify_at = bind(lambda model, cache, idx: classify(model, cache[idx]))

  def encode_fn(frames):
    return np.asarray(jit_encode(state, _pad(frames, batch)))[: len(frames)]

  def classify_fn(windows):
    logits = jit_classify(state, _pad(windows, batch))
    return np.asarray(logits)[: len(windows)]

  def classify_at_fn(cache, idx):
    logits = jit_classify_at(state, _pad(cache, batch), _pad(idx, batch))
    return np.asarray(logits)[: len(idx)]

  return StreamingModel(
    encode=encode_fn,
    classify=classify_fn,
    classify_at=classify_at_fn,
    keep_frames=keep_frames,
    name=type(model).__name__,
  )


def window_ends(
  num_frames: int, window: int, stride: int, frame_step: int = 1
) -> np.ndarray:
  """Frames at which a window ends: the first full one, then every stride.

  A window ending at frame e holds frames e - (window - 1) * frame_step,
  ..., e - frame_step, e.
  """
  first = (window - 1) * frame_step
  return np.arange(first, num_frames, stride)


class WindowQueue:
  """The cache of the last frames: enough for one window.

  Frames are pushed in chunks; `indices(ends)` says where in `cache` the
  windows ending at absolute frame numbers `ends` are.
  """

  def __init__(self, window: int, frame_step: int = 1):
    self.window, self.frame_step = window, frame_step
    self.span = (window - 1) * frame_step + 1
    self.cache = None
    self.start = 0  # Absolute frame number of self.cache[0].

  @property
  def end(self) -> int:
    """Frames pushed so far."""
    return self.start + (0 if self.cache is None else len(self.cache))

  def push(self, cache: np.ndarray) -> None:
    """Appends (n, *F) per-frame cache, keeping what later windows need."""
    if self.cache is None:
      self.cache = cache
    else:
      self.cache = np.concatenate([self.cache, cache])
    # Keep what the windows ending in this chunk need (`windows` is called
    # before the next push): its frames and the span - 1 before them.
    drop = max(0, len(self.cache) - (self.span - 1 + len(cache)))
    self.cache = self.cache[drop:]
    self.start += drop

  def indices(self, ends: np.ndarray) -> np.ndarray:
    """int32 (len(ends), window): rows of `cache` of the windows ending at
    absolute frames `ends`."""
    offsets = np.arange(-(self.window - 1), 1) * self.frame_step
    idx = np.asarray(ends)[:, None] + offsets[None, :] - self.start
    if idx.size and (idx.min() < 0 or idx.max() >= len(self.cache)):
      raise ValueError('window outside the queue')
    return idx.astype(np.int32)

  def padded_indices(self) -> np.ndarray:
    """int32 (1, window): the one window of a video shorter than a window:
    its frames, then its last frame repeated (as the input pipeline treats
    short videos)."""
    n = len(self.cache)
    idx = np.minimum(np.arange(self.window) * self.frame_step, n - 1)
    return idx[None].astype(np.int32)

  def windows(self, ends: np.ndarray) -> np.ndarray:
    """(len(ends), window, *F): the windows ending at `ends`, stacked."""
    return self.cache[self.indices(ends)]
