"""hpr.checkpoint: which orbax checkpoints are kept, also across a restart."""

import jax.numpy as jnp
import pytest

from hpr import checkpoint


@pytest.mark.parametrize('monitor, best, worse', [
  ('val_accuracy', 0.9, 0.1),
  ('val_loss', 0.1, 0.9),
])  # fmt: skip
def test_best_checkpoint_survives_a_restart(tmp_path, monitor, best, worse):
  def metrics_of(value):
    return {monitor: value}

  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=1, monitor=monitor)
  ckpts.save(1, {'w': jnp.ones(2)}, {'step': 1}, metrics_of(best))
  ckpts.save(2, {'w': jnp.ones(2)}, {'step': 2}, metrics_of(worse))
  ckpts.wait()
  ckpts.close()  # The run is interrupted here and resumed below.

  resumed = checkpoint.Checkpoints(str(tmp_path), keep=1, monitor=monitor)
  for step in (3, 4):
    resumed.save(step, {'w': jnp.ones(2)}, {'step': step}, metrics_of(worse))
  resumed.save(5, {'w': jnp.ones(2)}, {'step': 5})  # Mid-epoch: no metrics.
  resumed.wait()
  assert resumed.all_steps() == [1, 5]
  assert resumed.read_meta(1) == {'step': 1}
  resumed.close()
