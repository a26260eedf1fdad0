"""The models with impl='auto' compute what they compute with 'reference',
in train mode (dropout and recurrent dropout on, the same masks) and under
autodiff (every parameter's gradient), on one device and on a batch sharded
over 8; the first ConvLSTM layer's video gets no gradient either way."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpr import models, parallel

CLIP = (8, 6, 16, 16, 3)  # B, T, H, W, C.
SMALL = {
  # Blocks on 16x16 (native), 4x4 (native, 16 channels in) frames.
  'lrcn': dict(conv_features=(16, 32), pool_sizes=(4, 2), lstm_features=8),
  # Blocks that no compiled kernel takes: conv_block's op on 16x16, conv_sum
  # on 8x8 and 4x4, patches on 2x2.
  'lrcn_xla': dict(
    conv_features=(4, 8, 8, 8), pool_sizes=(2, 2, 2, 2), lstm_features=8
  ),
  'single_frame': dict(conv_features=(16, 8), pool_sizes=(4, 2)),
  # Layers 1-2 native, 3 (8 + 14 channels) the time-major loop (patches);
  # then conv_sum (4 + 6) in the second model.
  'convlstm': dict(filters=(4, 8, 14), padding='same', recurrent_dropout=0.3),
  'convlstm_xla': dict(
    filters=(4, 6), recurrent_activation='sigmoid', recurrent_dropout=0.3
  ),
}


def build(kind, impl):
  name = kind.removesuffix('_xla')
  return models.build_model(
    name,
    dict(SMALL[kind], dropout=0.5),
    num_classes=4,
    input_shape=CLIP[1:],
    impl=impl,
    rngs=nnx.Rngs(0),
  )


def clip():
  return jax.random.uniform(jax.random.key(7), CLIP)


@nnx.jit
def loss_and_grads(model, x):
  def loss(model):
    return jnp.sum(jnp.sin(model(x)))

  return nnx.value_and_grad(loss)(model)


def assert_close_tree(a, b, rtol=1e-5):
  paths_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree.leaves(b)
  assert len(paths_a) == len(leaves_b)
  for (path, x), y in zip(paths_a, leaves_b, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    scale = max(np.abs(y).max(), 1e-12)
    assert np.abs(x - y).max() / scale < rtol, jax.tree_util.keystr(path)


@pytest.mark.parametrize(
  'kind, devices',
  [
    ('lrcn', 1),
    ('lrcn', 8),
    ('lrcn_xla', 1),
    ('single_frame', 8),
    ('convlstm', 1),
    ('convlstm', 8),
    ('convlstm_xla', 1),
  ],
)
def test_auto_matches_reference_in_train_mode(kind, devices):
  x = clip()
  if devices == 8:
    x = jax.device_put(x, parallel.batch_sharding(parallel.make_mesh()))
  auto, ref = build(kind, 'auto'), build(kind, 'reference')
  loss, grads = loss_and_grads(auto, x)
  ref_loss, ref_grads = loss_and_grads(ref, clip())
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert_close_tree(grads, ref_grads)
  # Both drew the same keys from every stream, and dropout was on.
  counts = [
    [int(c) for c in jax.tree.leaves(nnx.state(m, nnx.RngCount))]
    for m in (auto, ref)
  ]
  assert counts[0] == counts[1] and any(counts[0])
  eval_loss = jnp.sum(jnp.sin(nnx.view(ref, deterministic=True)(clip())))
  assert float(ref_loss) != float(eval_loss)


@pytest.mark.parametrize('kind', ['lrcn', 'convlstm'])
def test_the_step_holds_the_cpu_kernels_only_with_auto(kind):
  x = jax.ShapeDtypeStruct(CLIP, jnp.float32)
  hlo = {}
  for impl in ('auto', 'reference'):
    model = build(kind, impl)
    model.eval()  # No dropout: the closed-over rng state stays as it is.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, x, graphdef=graphdef, rest=rest):
      return jnp.sum(nnx.merge(graphdef, params, rest)(x))

    hlo[impl] = jax.jit(jax.grad(loss)).lower(params, x).as_text()
  assert 'hpr_conv' in hlo['auto']
  assert 'hpr_conv' not in hlo['reference']


def test_impl_is_checked_when_the_model_is_built():
  with pytest.raises(ValueError, match='impl must be one of'):
    build('lrcn', 'fast')
