"""The hpr models: sizes, readouts, train/eval behaviour, build_model, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpr import models
from hpr.models import layers, recurrent

# Tiny variants of each model for (2, 4, 32, 32, 3) clips.
TINY_SHAPE = (4, 32, 32, 3)
TINY_KWARGS = {
  'convlstm': {'filters': (4, 4)},
  'lrcn': {'conv_features': (4, 8), 'pool_sizes': (2, 2), 'lstm_features': 8},
  'single_frame': {'conv_features': (4, 8), 'pool_sizes': (2, 2)},
}
NUM_CLASSES = 3


def _clips(seed: int = 0, batch: int = 2, shape=TINY_SHAPE) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(0.0, 1.0, (batch, *shape)), jnp.float32)


def _tiny(name: str, seed: int = 0, **overrides) -> nnx.Module:
  return models.build_model(
    name,
    {**TINY_KWARGS[name], **overrides},
    num_classes=NUM_CLASSES,
    input_shape=TINY_SHAPE,
    rngs=nnx.Rngs(seed),
  )


# --- Sizes and shapes -------------------------------------------------------


def test_convlstm_classifier_has_the_notebook_param_count():
  model = models.ConvLSTMClassifier(
    4, input_shape=(20, 64, 64, 3), rngs=nnx.Rngs(0)
  )
  assert models.count_params(model) == 44_524
  # 64 -> conv 62 -> pool 31 -> 29 -> 15 -> 13 -> 7 -> 5 -> 3: 20*3*3*16.
  assert model.dense.kernel.shape == (20 * 3 * 3 * 16, 4)
  model.eval()
  assert model(_clips(batch=1, shape=(20, 64, 64, 3))).shape == (1, 4)


def test_lrcn_has_the_notebook_param_count():
  model = models.LRCN(4, input_shape=(20, 64, 64, 3), rngs=nnx.Rngs(0))
  assert models.count_params(model) == 73_060
  model.eval()
  assert model(_clips(batch=1, shape=(20, 64, 64, 3))).shape == (1, 4)


def test_single_frame_param_count():
  # Same encoder as the LRCN (60,512) + Dense(64 -> 4) (260).
  model = models.SingleFrame(4, input_shape=(20, 64, 64, 3), rngs=nnx.Rngs(0))
  assert models.count_params(model) == 60_772


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_output_shape(name):
  model = _tiny(name)
  out = model(_clips())
  assert out.shape == (2, NUM_CLASSES)
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize('name', ['lrcn', 'single_frame'])
def test_clip_length_may_differ_from_input_shape(name):
  model = _tiny(name)
  model.eval()
  assert model(_clips(shape=(7, 32, 32, 3))).shape == (2, NUM_CLASSES)


# --- Readouts ---------------------------------------------------------------


def _softmax64(logits) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def test_lrcn_mean_readout_is_log_mean_softmax_over_steps():
  mean_model = _tiny('lrcn', readout='mean')
  mean_model.eval()
  x = _clips()
  # Independently, from the submodules: every step's LSTM output -> dense.
  feats = mean_model.encoder(x)
  seq = recurrent.run_lstm(mean_model.lstm.cell, feats, return_sequences=True)
  assert seq.shape == (2, TINY_SHAPE[0], 8)
  step_logits = mean_model.dense(seq)  # (B, T, K)
  expected = np.log(_softmax64(step_logits).mean(axis=1))
  got = mean_model(x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Still logits of a distribution: softmax(out) is the mean softmax.
  np.testing.assert_allclose(np.exp(expected).sum(-1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(
    jax.nn.logsumexp(got, axis=-1), 0.0, rtol=0, atol=1e-5
  )

  last_model = _tiny('lrcn', readout='last')
  nnx.update(last_model, nnx.state(mean_model, nnx.Param))
  last_model.eval()
  got_last = last_model(x)
  np.testing.assert_allclose(
    got_last, mean_model.dense(seq[:, -1]), rtol=1e-5, atol=1e-5
  )
  assert not np.allclose(got_last, got, atol=1e-3)


def test_lrcn_rejects_unknown_readout():
  with pytest.raises(ValueError, match='middle'):
    _tiny('lrcn', readout='middle')


def test_lrcn_avgpool_frame_features_are_the_spatial_mean():
  """frame_features='avgpool' averages the last block's map over space:
  with the same seed (same conv weights) its features are the flatten
  model's, reshaped to (positions, channels) and averaged."""
  flat, pooled = _tiny('lrcn'), _tiny('lrcn', frame_features='avgpool')
  flat.eval(), pooled.eval()
  x = _clips()
  want = flat.encode_frames(x)
  want = want.reshape(want.shape[:-1] + (-1, 8)).mean(-2)  # 8 channels.
  got = pooled.encode_frames(x)
  assert got.shape == (2, 4, 8) and pooled.encoder.out_features == 8
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert pooled(x).shape == (2, NUM_CLASSES)
  # Fewer LSTM inputs: 8 a frame instead of 8 x 8 x 8.
  assert flat.encoder.out_features == 512
  with pytest.raises(ValueError, match='frame_features'):
    _tiny('lrcn', frame_features='maxpool')


# --- Temporal order ----------------------------------------------------------


def test_single_frame_ignores_frame_order():
  model = _tiny('single_frame')
  model.eval()
  x = _clips()
  perm = np.asarray([2, 0, 3, 1])  # No frame stays in place.
  np.testing.assert_allclose(model(x[:, perm]), model(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(model(x[:, ::-1]), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', ['lrcn', 'convlstm'])
def test_recurrent_models_depend_on_frame_order(name):
  model = _tiny(name)
  model.eval()
  x = _clips()
  diff = np.abs(np.asarray(model(x[:, ::-1])) - np.asarray(model(x)))
  assert diff.max() > 1e-4


# --- Train and eval modes ----------------------------------------------------


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_eval_mode_is_deterministic(name):
  model = _tiny(name)
  model.eval()
  x = _clips()
  np.testing.assert_array_equal(model(x), model(x))


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_train_mode_dropout_advances_rng(name):
  model = _tiny(name)  # build_model returns the model in train mode.
  x = _clips()
  first, second = model(x), model(x)
  assert not np.allclose(first, second)
  # Back in eval mode dropout is off again and calls agree.
  model.eval()
  np.testing.assert_array_equal(model(x), model(x))
  model.train()
  assert not np.allclose(model(x), model(x))


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_train_mode_is_reproducible_from_the_seed(name):
  x = _clips()
  np.testing.assert_array_equal(_tiny(name, seed=3)(x), _tiny(name, seed=3)(x))


def test_eval_differs_from_train():
  model = _tiny('convlstm')
  x = _clips()
  train_out = model(x)
  model.eval()
  assert not np.allclose(train_out, model(x))


# --- build_model -------------------------------------------------------------


def test_build_model_lrcn():
  model = models.build_model(
    'lrcn',
    {'lstm_features': 8},
    num_classes=3,
    input_shape=(4, 64, 64, 3),
    rngs=nnx.Rngs(0),
  )
  assert isinstance(model, models.LRCN)
  assert model.lstm.cell.features == 8
  assert model.dense.kernel.shape == (8, 3)
  # Returned in train mode.
  assert not model.encoder.dropouts[0].deterministic
  model.eval()
  assert model(_clips(shape=(4, 64, 64, 3))).shape == (2, 3)


def test_build_model_lrcn_with_frames_too_small_for_the_pools():
  # The default pools (4, 4, 2, 2) take 32 -> 8 -> 2 -> 1 -> 0.
  with pytest.raises(ValueError, match='too small'):
    models.build_model(
      'lrcn',
      {'lstm_features': 8},
      num_classes=3,
      input_shape=(4, 32, 32, 3),
      rngs=nnx.Rngs(0),
    )


def test_build_model_tuple_input_shape_from_a_list():
  model = models.build_model(
    'convlstm',
    {'filters': [4, 4]},
    num_classes=2,
    input_shape=[4, 32, 32, 3],
    rngs=nnx.Rngs(0),
  )
  assert isinstance(model, models.ConvLSTMClassifier)
  assert model(_clips()).shape == (2, 2)


def test_build_model_unknown_name():
  with pytest.raises(ValueError, match="'resnet3d'") as info:
    models.build_model(
      'resnet3d', {}, num_classes=3, input_shape=TINY_SHAPE, rngs=nnx.Rngs(0)
    )
  for name in models.MODELS:  # The message lists the valid names.
    assert name in str(info.value)


def test_build_model_unknown_kwarg():
  with pytest.raises(ValueError, match="'lstm_units'") as info:
    models.build_model(
      'lrcn',
      {'lstm_units': 8},
      num_classes=3,
      input_shape=TINY_SHAPE,
      rngs=nnx.Rngs(0),
    )
  assert 'lstm_features' in str(info.value)


@pytest.mark.parametrize(
  'key', ['num_classes', 'input_shape', 'impl', 'dtype', 'rngs']
)
def test_build_model_rejects_build_args_in_kwargs(key):
  with pytest.raises(ValueError, match=f"'{key}'"):
    models.build_model(
      'single_frame',
      {key: None},
      num_classes=3,
      input_shape=TINY_SHAPE,
      rngs=nnx.Rngs(0),
    )


# --- Activations -------------------------------------------------------------


X = np.linspace(-5.0, 5.0, 101)


def test_hard_sigmoid_is_keras2():
  fn = layers.get_activation('hard_sigmoid')
  np.testing.assert_allclose(
    fn(jnp.asarray(X)), np.clip(0.2 * X + 0.5, 0.0, 1.0), rtol=0, atol=1e-6
  )
  assert fn is layers.hard_sigmoid_keras2


def test_hard_sigmoid_keras3():
  fn = layers.get_activation('hard_sigmoid_keras3')
  np.testing.assert_allclose(
    fn(jnp.asarray(X)),
    np.minimum(np.maximum(X + 3.0, 0.0), 6.0) / 6.0,
    rtol=0,
    atol=1e-6,
  )
  assert fn is layers.hard_sigmoid_keras3


def test_the_two_hard_sigmoids_differ():
  k2 = layers.get_activation('hard_sigmoid')
  k3 = layers.get_activation('hard_sigmoid_keras3')
  points = jnp.asarray([-2.75, -1.0, 0.0, 1.0, 2.75])
  np.testing.assert_allclose(k2(points), [0.0, 0.3, 0.5, 0.7, 1.0], atol=1e-6)
  np.testing.assert_allclose(
    k3(points), [0.25 / 6, 2 / 6, 0.5, 4 / 6, 5.75 / 6], atol=1e-6
  )


def test_get_activation_names_and_callables():
  for name in ('linear', 'relu', 'sigmoid', 'tanh', 'softsign', 'elu', 'swish'):
    assert callable(layers.get_activation(name))
  np.testing.assert_allclose(
    layers.get_activation('sigmoid')(jnp.asarray(X)),
    1.0 / (1.0 + np.exp(-X)),
    atol=1e-6,
  )
  fn = jnp.sin
  assert layers.get_activation(fn) is fn
  with pytest.raises(ValueError, match='hard_swish'):
    layers.get_activation('hard_swish')


# --- jit and gradients -------------------------------------------------------


def _loss(model, x, y):
  log_p = jax.nn.log_softmax(model(x), axis=-1)
  return -jnp.take_along_axis(log_p, y[:, None], axis=-1).mean()


@nnx.jit
def _loss_and_grads(model, x, y):
  return nnx.value_and_grad(_loss)(model, x, y)


@nnx.jit
def _forward(model, x):
  return model(x)


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_jit_forward_and_finite_gradients(name):
  model = _tiny(name)
  x = _clips()
  y = jnp.asarray([0, 2])

  model.eval()
  np.testing.assert_allclose(_forward(model, x), model(x), rtol=1e-5, atol=1e-5)

  model.train()
  loss, grads = _loss_and_grads(model, x, y)
  assert np.isfinite(loss)
  params = nnx.state(model, nnx.Param)
  leaves = jax.tree.leaves(grads)
  assert len(leaves) == len(jax.tree.leaves(params))
  for g, p in zip(leaves, jax.tree.leaves(params), strict=True):
    assert g.shape == p.shape
    assert np.all(np.isfinite(g))
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0.0
  # Dropout inside jit also draws fresh masks from call to call.
  loss2, _ = _loss_and_grads(model, x, y)
  assert float(loss2) != float(loss)
