"""The data-parallel step: 8 fake CPU devices equal 1 device."""

import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from hpr import metrics, models, parallel
from hpr.train_state import TrainState, jit_eval_step, jit_train_step
from tests import conftest


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


def test_one_process_loads_every_row_of_a_batch():
  assert parallel.process_rows(8) == (0, 8)


@pytest.mark.parametrize(
  ('count', 'batch_sizes', 'processes', 'expected'),
  [
    (4, (8, 8), 2, 4),  # 2 x 4 devices split a batch of 8.
    (8, (8,), 2, 4),  # 2 x 8 would not: 4 per process.
    (4, (8, 12), 2, 2),  # 12 = 2 x 2 x 3.
    (3, (8,), 3, 1),  # 3 processes never split 8: one device each.
  ],
)
def test_cpu_device_count_splits_global_batches_over_all_processes(
  count, batch_sizes, processes, expected
):
  assert parallel.cpu_device_count(count, batch_sizes, processes) == expected


def test_single_process_run_initializes_nothing(monkeypatch):
  for name in (
    'JAX_COORDINATOR_ADDRESS',
    'JAX_NUM_PROCESSES',
    'JAX_PROCESS_ID',
  ):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.delenv('SLURM_JOB_ID', raising=False)
  assert parallel.initialize() == 1
  # An explicit single process skips a detected launcher too.
  assert parallel.initialize(num_processes=1) == 1
  assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
  ('kwargs', 'env', 'message'),
  [
    ({'num_processes': 2, 'process_id': 2}, {}, 'process_id 2 is outside 0..1'),
    ({'num_processes': 0, 'process_id': 0}, {}, 'at least 1'),
    (
      {'coordinator_address': 'localhost', 'num_processes': 2, 'process_id': 0},
      {},
      'needs a port',
    ),
    ({}, {'JAX_NUM_PROCESSES': 'two'}, "JAX_NUM_PROCESSES='two'"),
    (
      {},
      {
        'JAX_COORDINATOR_ADDRESS': 'localhost:1',
        'JAX_NUM_PROCESSES': '2',
        'JAX_PROCESS_ID': '-1',
      },
      'process_id -1',
    ),
  ],
)
def test_bad_process_settings_are_one_line_config_errors(
  monkeypatch, kwargs, env, message
):
  from hpr.errors import ConfigError

  for name in (
    'JAX_COORDINATOR_ADDRESS',
    'JAX_NUM_PROCESSES',
    'JAX_PROCESS_ID',
  ):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ConfigError, match=re.escape(message)):
    parallel.initialize(timeout_s=1, **kwargs)
  assert not jax.distributed.is_initialized()


def _pipeline_config(data_dir):
  from tests.conftest import tiny_config

  config = tiny_config(data_dir)
  config.input.shuffle_buffer = 64
  return config


def test_processes_rows_make_up_the_single_process_train_batches(data_dir):
  """Two processes' rows of each global batch, side by side, are the batch
  a single process loads: same examples, order and augmentation."""
  from hpr import input_pipeline

  config = _pipeline_config(data_dir)
  builder = input_pipeline.get_builder(config.dataset)

  def batches(rows):
    return list(
      conftest.train_batches(config, builder, epoch=1, start_batch=1, rows=rows)
    )

  whole, first, second = batches((0, 8)), batches((0, 4)), batches((4, 8))
  # 36 examples: 4 global batches of 8, the first one skipped (a resume).
  assert len(whole) == len(first) == len(second) == 3
  for w, a, b in zip(whole, first, second, strict=True):
    assert a['video'].shape[0] == b['video'].shape[0] == 4
    for key in ('video', 'label'):
      np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), w[key])


def test_processes_rows_make_up_the_single_process_eval_batches(data_dir):
  """Evaluation: every example exactly once over the processes, in
  dataset order, padding where a process's rows run out."""
  from hpr import input_pipeline

  config = _pipeline_config(data_dir)
  builder = input_pipeline.get_builder(config.dataset)
  split = config.dataset.eval_split  # 12 examples: batches of 8 and 4.

  def batches(rows):
    return list(conftest.eval_batches(config, builder, split, rows=rows))

  whole, first, second = batches((0, 8)), batches((0, 4)), batches((4, 8))
  assert len(whole) == len(first) == len(second) == 2
  # The second global batch holds 4 examples, all in the first rows.
  assert first[1]['mask'].all() and not second[1]['mask'].any()
  for w, a, b in zip(whole, first, second, strict=True):
    for key in input_pipeline.EVAL_KEYS:
      np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), w[key])
  index = np.concatenate(
    [
      np.concatenate([a['index'][a['mask']], b['index'][b['mask']]])
      for a, b in zip(first, second, strict=True)
    ]
  )
  np.testing.assert_array_equal(index, np.arange(12))


def test_slurm_steps_of_several_tasks_are_detected(monkeypatch):
  slurm = {
    'SLURM_JOB_ID': '4242',
    'SLURM_STEP_NODELIST': 'node[001-002]',
    'SLURM_NTASKS': '2',
    'SLURM_PROCID': '1',
    'SLURM_LOCALID': '0',
  }
  for name, value in slurm.items():
    monkeypatch.setenv(name, value)
  assert parallel.cluster_detected() == 'SLURM'
  # --num_processes=1 keeps a run alone inside the allocation.
  assert parallel.initialize(num_processes=1) == 1
  assert not jax.distributed.is_initialized()
  monkeypatch.setenv('SLURM_NTASKS', '1')  # A single task: no peers.
  assert parallel.cluster_detected() is None
  monkeypatch.delenv('SLURM_STEP_NODELIST')  # Not inside srun.
  monkeypatch.setenv('SLURM_NTASKS', '2')
  assert parallel.cluster_detected() is None
