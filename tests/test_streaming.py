"""Stateful streaming: the recurrent state carried frame to frame equals the
sliding window on the first window after each reset."""

import numpy as np
import pytest
from flax import nnx

from hpr import models
from hpr.tools import streaming

SMALL = {
  'lrcn': {'conv_features': (4, 8), 'pool_sizes': (2, 2), 'lstm_features': 8},
  'single_frame': {'conv_features': (4, 8), 'pool_sizes': (2, 2)},
  'convlstm': {'filters': (4, 4)},
}


_STREAMS = {}  # One streaming model (and its compilations) per model.


def _model(name: str, **kwargs) -> nnx.Module:
  model = models.build_model(
    name,
    {**SMALL[name], **kwargs},
    num_classes=5,
    input_shape=(6, 32, 32, 3),
    rngs=nnx.Rngs(0),
  )
  model.eval()
  return model


def _stateful(model, frames, window, reset_every, chunks):
  stream = _STREAMS.setdefault(
    id(model), streaming.streaming_model(model, batch=4)
  )
  state = streaming.StatefulStream(stream, window, reset_every)
  logits, valid, start = [], [], 0
  for size in chunks:
    part = frames[start : start + size]
    out, ok = state.push(stream.encode(part))
    logits.append(out)
    valid.append(ok)
    start += size
  assert start == len(frames)
  return state, np.concatenate(logits), np.concatenate(valid)


@pytest.mark.parametrize(
  'name,kwargs',
  [
    ('lrcn', {}),
    ('lrcn', {'readout': 'mean'}),
    ('convlstm', {}),
    ('convlstm', {'head': 'avgpool'}),
    ('single_frame', {}),
  ],
)
def test_stateful_equals_the_window_after_each_reset(name, kwargs):
  model = _model(name, **kwargs)
  for reset_every in (0, 8):
    _check_stateful(model, name, kwargs, reset_every)


def _check_stateful(model, name, kwargs, reset_every):
  window = 6
  frames = np.random.default_rng(0).random((19, 32, 32, 3), np.float32)
  # Uneven chunks: the last is padded (padding must not move the state).
  state, logits, valid = _stateful(
    model, frames, window, reset_every, (4, 7, 3, 5)
  )
  assert logits.shape == (19, 5)
  resets = [0] if not reset_every else list(range(0, 19, reset_every))
  expected_valid = np.zeros(19, bool)
  for r in resets:
    expected_valid[r + window - 1 : (r + reset_every or 19)] = True
  np.testing.assert_array_equal(valid, expected_valid)
  # Tolerance: float32 rounding of the same computation in another order
  # (the window runs the compiled CPU kernels, the stateful step the
  # reference math): logits within 1e-5 absolute and relative.
  for r in resets:
    end = r + window - 1
    if end < 19:
      whole = model(frames[None, r : end + 1])[0]
      np.testing.assert_allclose(logits[end], whole, atol=1e-5, rtol=1e-5)
      assert state.window_start(end) == r
  if name == 'lrcn' and not kwargs:
    # Readout 'last' reads only the state: any frame equals the model on
    # every frame since the last reset.
    for end in np.flatnonzero(valid):
      r = state.window_start(end)
      whole = model(frames[None, r : end + 1])[0]
      np.testing.assert_allclose(logits[end], whole, atol=1e-5, rtol=1e-5)
  if reset_every == 0 and name != 'single_frame':
    # Past the first window the carried state differs from a fresh window.
    last = model(frames[None, -window:])[0]
    assert np.abs(logits[-1] - last).max() > 1e-4


def test_stateful_refuses_a_reset_shorter_than_the_window():
  stream = streaming.streaming_model(_model('lrcn'))
  with pytest.raises(ValueError, match='at least the window'):
    streaming.StatefulStream(stream, 6, 3)


def test_every_registered_model_streams_through_its_own_methods():
  # One registry: each model of hpr.models.MODELS defines its split and its
  # stateful step; streaming keeps no list of its own.
  assert not hasattr(streaming, '_SPLITS')
  for name in models.MODELS:
    model = _model(name)
    assert streaming.split(model) == (streaming._encode, streaming._classify)
    assert streaming.streaming_model(model).stateful
  assert not streaming.streaming_model(
    _model('lrcn'), center_windows=True
  ).stateful
