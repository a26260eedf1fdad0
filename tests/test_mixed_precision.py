"""model.dtype = 'bfloat16': the models compute in bfloat16 (the convs,
the recurrences and the logits' matmul) from float32 parameters and return
float32 logits, so the loss, softmax and metrics are float32; a bf16 run
trains, saves float32 checkpoints, resumes and evaluates like any other."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx
from jax.extend import core as jax_core

from hpr import checkpoint, models, train

SMALL = {
  'lrcn': dict(conv_features=(16, 32), pool_sizes=(4, 2), lstm_features=8),
  'single_frame': dict(conv_features=(16, 8), pool_sizes=(4, 2)),
  'convlstm': dict(filters=(4, 8), padding='same'),
}
CLIP = (2, 4, 16, 16, 3)


def build(name, dtype, impl='auto'):
  return models.build_model(
    name,
    SMALL[name],
    num_classes=3,
    input_shape=CLIP[1:],
    impl=impl,
    dtype=dtype,
    rngs=nnx.Rngs(0),
  )


def dot_and_conv_dtypes(jaxpr) -> set:
  """The operand dtypes of every matmul and convolution, nested jaxprs
  (scans, remat, platform_dependent's branches) included."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
      found |= {str(v.aval.dtype) for v in eqn.invars}
  for sub in jax_core.subjaxprs(jaxpr):
    found |= dot_and_conv_dtypes(sub)
  return found


@pytest.mark.parametrize('name', list(SMALL))
def test_bfloat16_computes_in_bfloat16_from_float32_params(name):
  model, f32 = build(name, 'bfloat16'), build(name, 'float32')
  model.eval(), f32.eval()  # No dropout, whose rng state the jaxpr would own.
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
  x = jax.random.uniform(jax.random.key(0), CLIP)
  closed = jax.make_jaxpr(lambda x: model(x))(x)
  assert dot_and_conv_dtypes(closed.jaxpr) == {'bfloat16'}
  (logits,) = closed.out_avals
  assert logits.dtype == jnp.float32 and logits.shape == (2, 3)
  # float32 computes in float32, and bf16 stays close to it.
  closed = jax.make_jaxpr(lambda x: f32(x))(x)
  assert dot_and_conv_dtypes(closed.jaxpr) == {'float32'}
  np.testing.assert_allclose(model(x), f32(x), atol=0.1)


def test_an_unknown_dtype_is_refused():
  with pytest.raises(ValueError, match="dtype must be 'float32' or"):
    build('lrcn', 'float16')


@pytest.mark.slow
@pytest.mark.parametrize('name', ['lrcn', 'convlstm'])
def test_a_bfloat16_run_saves_float32_resumes_and_evaluates(
  data_dir, tmp_path, name
):
  config = tiny_config(data_dir, name)
  config.model.dtype = 'bfloat16'
  config.training.num_epochs = 1
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(config, workdir)
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'))
  saved = ckpts.saved_tree(ckpts.latest_step())
  ckpts.close()
  dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(saved)}
  assert 'bfloat16' not in dtypes and 'float32' in dtypes
  config.training.num_epochs = 2  # Resumes from the first epoch.
  result = train.train_and_evaluate(config, workdir)
  for r in (first, result):
    assert np.isfinite(r['loss']) and 0.0 <= r['accuracy'] <= 1.0
