"""Prediction over a video as it plays: per-frame work once per frame.

Two modes (`--stream` in hpr.tools.predict):

window (exact; the default). A video is predicted window by window (the
last `window` frames, a new window every `stride` frames), each window
exactly as the model sees a clip. Running the model on every window would
run the per-frame CNN of LRCN and SingleFrame `window / stride` times on
each frame; instead each model is split in two by its own methods:

  encode_frames(frames)    (n, S, S, 3) -> (n, *F): the per-frame part, run
                           once per frame; its outputs are kept in a queue
                           of `window` frames;
  classify_encoded(cache)  (B, T, *F) -> (B, K) logits of windows;

with `classify_encoded(encode_frames(x)) == model(x)` (up to float
rounding). Cost per frame, at stride s and window T:

  lrcn          1 FrameCNN frame + T/s LSTM steps (+ a Dense every s frames)
  single_frame  1 FrameCNN frame + 1 Dense; a window is a log-mean-exp
  convlstm      1 first-layer input convolution + T/s steps of everything
                else: its state depends on where the window starts, so each
                window runs the recurrence again from zero

stateful (O(1) per frame; `StatefulStream`). The recurrent state is carried
from frame to frame (`initial_state`, `stream_step`, `stream_readout`), and
reset every N frames: one recurrent step per frame whatever the window. It
equals the window mode on the first window after each reset; between
resets the state has seen more than one window.

A model without these methods is run whole on every window. A new model
needs nothing here: its module defines the methods, and hpr.models.MODELS
names it. `benchmarks/predict_speed.py` measures both modes.
"""

import collections
import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


def _encode(model, frames: Array) -> Array:
  return model.encode_frames(frames)


def _classify(model, cache: Array) -> Array:
  return model.classify_encoded(cache)


def _identity_encode(model, frames: Array) -> Array:
  return frames


def _model_classify(model, frames: Array) -> Array:
  return model(frames)


def _centered_classify(model, frames: Array) -> Array:
  # frames: (B, T, S, S, 3) pixel / 64 -> minus each window's mean frame.
  return model(frames - jnp.mean(frames, axis=1, keepdims=True))


def split(model: nnx.Module, center_windows: bool = False):
  """(encode, classify) of `model`: its own `encode_frames` and
  `classify_encoded` (LRCN, SingleFrame, ConvLSTMClassifier), or the whole
  model on every window of frames for a model without them or for centred
  windows."""
  if center_windows:
    return _identity_encode, _centered_classify
  if hasattr(model, 'encode_frames') and hasattr(model, 'classify_encoded'):
    return _encode, _classify
  return _identity_encode, _model_classify


def _state_init(module, cache_t: Array, window: int):
  # cache_t: (1, *F) -> the zero state and a ring of `window` step outputs.
  state = module.initial_state(cache_t)
  out = jax.eval_shape(module.stream_step, state, cache_t)[1]
  return state, jnp.zeros((window,) + out.shape, out.dtype)


def _state_run(module, carry, caches: Array, resets: Array, live: Array):
  """Steps (state, ring) through n frames' cache (n, *F): resets (n,) says
  where the state restarts from zero, live (n,) which rows are frames (the
  rest is padding and changes nothing). Returns (carry, logits (n, K))."""
  zeros = module.initial_state(caches[:1])

  def body(carry, xs):
    state, ring = carry
    cache_t, reset, alive = xs
    state = jax.tree.map(lambda z, s: jnp.where(reset, z, s), zeros, state)
    new_state, out = module.stream_step(state, cache_t[None])
    new_ring = jnp.concatenate([ring[1:], out[None]], axis=0)
    # ring: (T, 1, *Y) -> (1, T, *Y)
    logits = module.stream_readout(jnp.swapaxes(new_ring, 0, 1))[0]
    keep = lambda new, old: jnp.where(alive, new, old)  # noqa: E731
    carry = jax.tree.map(keep, (new_state, new_ring), (state, ring))
    return carry, logits

  return jax.lax.scan(body, carry, (caches, resets, live))


def has_state(model: nnx.Module) -> bool:
  """Whether `model` can stream statefully (`StatefulStream`)."""
  return all(
    hasattr(model, name)
    for name in ('encode_frames', 'initial_state', 'stream_step')
  ) and hasattr(model, 'stream_readout')


@dataclasses.dataclass
class StreamingModel:
  """A model split into jitted `encode` and `classify` (see module doc).

  Attributes:
    encode: (n, S, S, 3) float32 -> (n, *F) per-frame cache.
    classify: (B, T, *F) -> (B, K) logits.
    classify_at: (cache (L, *F), idx int (B, T)) -> (B, K) logits of the
      windows cache[idx], gathered on the device: windows overlap, so
      stacking them on the host would copy each frame's cache T times.
    cache_shape: frame shape (S, S, 3) -> the shape and dtype of one
      frame's cache (jax.ShapeDtypeStruct), computed without running.
    name: the model class.
    module: the model (eval mode), for `StatefulStream`.
    stateful: whether the model can stream statefully (and the windows are
      not centred).
    state_init: (cache_t (1, *F), window) -> the zero (state, ring) of
      `StatefulStream`.
    state_run: (carry, caches, resets, live) -> (carry, logits): its steps
      (`_state_run`).
  """

  encode: Callable[[np.ndarray], np.ndarray]
  classify: Callable[[np.ndarray], np.ndarray]
  classify_at: Callable[[np.ndarray, np.ndarray], np.ndarray]
  cache_shape: Callable[[tuple], jax.ShapeDtypeStruct]
  name: str
  module: nnx.Module
  stateful: bool
  state_init: Callable | None = None
  state_run: Callable | None = None

  def __call__(self, clips: np.ndarray) -> np.ndarray:
    """Logits of whole clips: (B, T, S, S, 3) -> (B, K)."""
    b, t = clips.shape[:2]
    cache = self.encode(clips.reshape((b * t,) + clips.shape[2:]))
    return self.classify(cache.reshape((b, t) + cache.shape[1:]))

  def keep_frames(self, frame_shape: tuple) -> bool:
    """Whether a whole video is smaller kept as float32 frames than as
    cache (ConvLSTM's cache, 4F channels at full resolution, is larger
    than a frame); see `predict.predict_video`."""
    cache = self.cache_shape(tuple(frame_shape))
    return math.prod(cache.shape) > math.prod(frame_shape)


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
  model: nnx.Module,
  *,
  batch: int = 16,
  center_windows: bool = False,
  modality: str = 'rgb',
) -> StreamingModel:
  """Splits `model` (in eval mode) into per-frame and per-window parts.

  Args:
    model: an hpr model; its dropout is switched off here. Its
      `encode_frames` and `classify_encoded` methods are the split; a model
      without them runs whole on every window.
    batch: frames per `encode` call and windows per `classify` call are
      padded to multiples of this (fewer compilations).
    center_windows: subtract each window's mean frame before the model
      (input.normalization 'clip_centered'; frames come in as pixel / 64).
      A frame's input then depends on its window, so nothing per frame can
      be cached: every window runs the whole model.
    modality: input.modality. Other than 'rgb', the model's input is made
      from each window's frames on the host (`hpr.video_ops.to_modality`:
      a window's first frame has a zero difference, so a frame's input
      depends on its window) and every window runs the whole model.

  Returns:
    The `StreamingModel`.
  """
  model.eval()
  on_host = modality != 'rgb'
  if on_host:
    # Late: keeps TensorFlow out of the predict tool's --help.
    from hpr import video_ops

    video_ops.modality_channels(modality)  # Refuses an unknown one.
    encode, classify = _identity_encode, _model_classify
  else:
    encode, classify = split(model, center_windows)
  graphdef, state = nnx.split(model)

  def model_input(windows):
    # Host windows (B, T, S, S, 3) -> the model's (B, T, S, S, C).
    if center_windows:
      windows = windows - windows.mean(axis=1, keepdims=True)
    return video_ops.to_modality(windows, modality)

  def bind(fn):
    return jax.jit(lambda state, *x: fn(nnx.merge(graphdef, state), *x))

  jit_encode, jit_classify = bind(encode), bind(classify)
  jit_classify_at = bind(lambda model, cache, idx: classify(model, cache[idx]))

  def encode_fn(frames):
    return np.asarray(jit_encode(state, _pad(frames, batch)))[: len(frames)]

  def classify_fn(windows):
    if on_host:
      windows = model_input(windows)
    logits = jit_classify(state, _pad(windows, batch))
    return np.asarray(logits)[: len(windows)]

  def classify_at_fn(cache, idx):
    if on_host:  # Windows stacked on the host, for to_modality.
      return classify_fn(cache[idx])
    logits = jit_classify_at(state, _pad(cache, batch), _pad(idx, batch))
    return np.asarray(logits)[: len(idx)]

  def cache_shape(frame_shape):
    frame = jax.ShapeDtypeStruct((1, *frame_shape), jnp.float32)
    out = jax.eval_shape(jit_encode, state, frame)
    return jax.ShapeDtypeStruct(out.shape[1:], out.dtype)

  stateful = has_state(model) and not center_windows and not on_host
  state_fns = {}
  if stateful:
    jit_init = jax.jit(
      lambda state, cache_t, window: _state_init(
        nnx.merge(graphdef, state), cache_t, window
      ),
      static_argnums=2,
    )
    jit_run = bind(_state_run)
    state_fns = {
      'state_init': lambda cache_t, window: jit_init(state, cache_t, window),
      'state_run': lambda *args: jit_run(state, *args),
    }

  return StreamingModel(
    encode=encode_fn,
    classify=classify_fn,
    classify_at=classify_at_fn,
    cache_shape=cache_shape,
    name=type(model).__name__,
    module=model,
    stateful=stateful,
    **state_fns,
  )


class StatefulStream:
  """Stateful streaming: the model's recurrent state carried frame to frame.

  Each frame's cache (`StreamingModel.encode`) goes through one
  `stream_step` of the model (the LSTM step of the LRCN, one step of every
  ConvLSTM layer), whose output joins a ring of the last `window` step
  outputs; `stream_readout` of the ring gives the frame's logits (the LRCN
  with readout 'last' reads only the newest, the ConvLSTM's 'flatten' head
  all of them). The cost per frame does not grow with the window: one
  encode, one recurrent step and one readout, against window / stride
  recurrent steps for the sliding window.

  The state starts from zero at frame 0 and is reset to zero every
  `reset_every` frames (0: never). A prediction counts once the ring
  holds only outputs since the last reset (`window` frames after it); at
  that frame it equals the sliding window over those frames (the same
  computation, up to float rounding); later frames carry the state past
  one window, which the model never saw in training.
  """

  def __init__(self, model: StreamingModel, window: int, reset_every: int = 0):
    if not model.stateful:
      raise ValueError(f'{model.name} cannot stream statefully')
    if reset_every and reset_every < window:
      raise ValueError(
        f'reset_every ({reset_every}) must be 0 or at least the window '
        f'({window})'
      )
    self.window, self.reset_every = window, reset_every
    self.count = 0  # Frames pushed.
    self.reset_at = 0  # The last reset.
    self._carry = None
    self._model = model

  def push(self, cache: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps through n frames' cache (n, *F).

    Returns:
      logits float32 (n, K) and `valid` bool (n,): whether the frame's
      prediction counts (the ring holds only outputs since the last reset).
    """
    n = len(cache)
    if self._carry is None:
      self._carry = self._model.state_init(cache[:1], self.window)
    frames = self.count + np.arange(n)
    if self.reset_every:
      resets = frames % self.reset_every == 0
    else:
      resets = frames == 0
    since = np.maximum.accumulate(np.where(resets, frames, self.reset_at))
    valid = frames - since >= self.window - 1
    # Padded to a power of two (fewer compilations); padding is not live.
    size = 1 << max(0, n - 1).bit_length()
    live = np.arange(size) < n
    self._carry, logits = self._model.state_run(
      self._carry,
      _pad(cache, size),
      _pad(resets, size),
      live,
    )
    self.count += n
    self.reset_at = int(since[-1])
    return np.asarray(logits)[:n], valid

  def window_start(self, frame: int) -> int:
    """The first frame the state at `frame` has seen (its last reset)."""
    if not self.reset_every:
      return 0
    return frame - frame % self.reset_every


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


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


STREAM_MODES = ('window', 'stateful')


class Timeline:
  """Per-frame predictions of a video as its frames arrive, in either mode.

  `push` takes each chunk's cache and says, frame by frame, where a new
  prediction lands: (probs, start, end), the probabilities (the moving
  average of the last `smooth` predictions) and the frames they come from
  (window mode: the window; stateful: the last reset to the frame).
  """

  def __init__(
    self,
    model: StreamingModel,
    window: int,
    *,
    stride: int = 1,
    frame_step: int = 1,
    mode: str = 'window',
    reset_every: int = 0,
    smooth: int = 1,
    temperature: float | None = None,
  ):
    if mode not in STREAM_MODES:
      raise ValueError(f'unknown stream mode {mode!r}')
    self.model, self.mode = model, mode
    self.window, self.stride, self.frame_step = window, stride, frame_step
    self.temperature = temperature or 1.0
    # Windows are still kept in stateful mode: a video shorter than one
    # window is predicted from its padded window (`finish`).
    self.queue = WindowQueue(window, frame_step)
    self.state = (
      StatefulStream(model, window, reset_every) if mode == 'stateful' else None
    )
    self.recent = collections.deque(maxlen=smooth)
    self.count = 0  # Frames pushed.
    self.predicted = False

  def _smoothed(self, logits: np.ndarray) -> np.ndarray:
    self.recent.append(softmax(logits / self.temperature))
    return np.mean(self.recent, axis=0)

  def push(self, cache: np.ndarray) -> list:
    """Takes n frames' cache (n, *F); returns n items, (probs, start, end)
    where a prediction lands on that frame, else None."""
    n, count = len(cache), self.count
    self.queue.push(cache)
    out = [None] * n
    if self.state is not None:
      logits, valid = self.state.push(cache)
      for i in np.flatnonzero(valid):
        end = count + int(i)
        start = self.state.window_start(end)
        out[i] = (self._smoothed(logits[i]), start, end)
    else:
      ends = window_ends(count + n, self.window, self.stride, self.frame_step)
      ends = ends[ends >= count]
      if len(ends):
        logits = self.model.classify_at(
          self.queue.cache, self.queue.indices(ends)
        )
        for end, row in zip(ends, logits, strict=True):
          start = int(end) - self.queue.span + 1
          out[int(end) - count] = (self._smoothed(row), start, int(end))
    self.count += n
    self.predicted = self.predicted or any(x is not None for x in out)
    return out

  def finish(self):
    """(probs, 0, last frame) of a video shorter than one window (its
    frames, then the last repeated, as the input pipeline pads), or None
    where a prediction already landed or nothing was pushed."""
    if self.predicted or not self.count:
      return None
    logits = self.model.classify_at(
      self.queue.cache, self.queue.padded_indices()
    )
    return self._smoothed(logits[0]), 0, self.count - 1

  def describe(self) -> dict:
    """What the JSON output records about the mode."""
    info = {'mode': self.mode, 'window': self.window}
    if self.state is not None:
      info['reset_every'] = self.state.reset_every
    else:
      info.update(stride=self.stride, frame_step=self.frame_step)
    info['smooth'] = self.recent.maxlen
    return info
