"""The data-parallel step: 8 fake CPU devices equal 1 device."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from hpr import metrics, models, parallel
from hpr.train_state import TrainState, jit_eval_step, jit_train_step


def _state(mesh, name):
  kwargs = {
    'lrcn': {'conv_features': (4, 8), 'pool_sizes': (2, 2), 'lstm_features': 8},
    'convlstm': {'filters': (3, 4)},
  }[name]
  model = models.MODELS[name](
    num_classes=5, input_shape=(4, 16, 16, 3), rngs=nnx.Rngs(0), **kwargs
  )
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  return TrainState.create(model, optimizer, metrics.train_metrics(), mesh)


def _batch():
  rng = np.random.default_rng(0)
  return {
    'video': rng.random((8, 4, 16, 16, 3), np.float32),
    'label': rng.integers(0, 5, 8).astype(np.int32),
  }


def test_eight_fake_devices_are_present():
  assert jax.device_count() == 8


@pytest.mark.parametrize('name', ['lrcn', 'convlstm'])
def test_sharded_step_equals_single_device_step(name):
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    ts = _state(mesh, name)
    step = jit_train_step(ts, mesh, seed=0, label_smoothing=0.1)
    state = ts.state
    for i in range(2):  # Two steps: dropout keys differ per step.
      state, loss = step(state, parallel.shard_batch(_batch(), mesh), i)
    ts.state = state
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(state['model']))
    sharding = jax.tree.leaves(state['model'])[0].sharding
    assert sharding.is_fully_replicated
    assert len(sharding.device_set) == len(devices)
    results.append((params, float(loss), ts.metrics().compute()))
  (p1, l1, m1), (p8, l8, m8) = results
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8
  )
  np.testing.assert_allclose(float(m1['accuracy']), float(m8['accuracy']))
  # The step really trained: parameters moved from their initial values.
  p0 = nnx.to_pure_dict(_state(parallel.make_mesh(), name).state['model'])
  moved = jax.tree.leaves(
    jax.tree.map(lambda a, b: np.abs(a - b).max(), p1, p0)
  )
  assert max(moved) > 1e-4


def test_eval_step_output_is_sharded_over_the_batch():
  mesh = parallel.make_mesh()
  ts = _state(mesh, 'lrcn')
  logits = jit_eval_step(ts, mesh)(
    ts.state, parallel.shard_batch(_batch(), mesh)
  )
  assert logits.shape == (8, 5)
  assert len(logits.sharding.device_set) == 8
  assert not logits.sharding.is_fully_replicated
