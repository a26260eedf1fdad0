"""The public API (docs/api.md): what `import hpr` loads, the page's
examples, ConvLSTMCell under nnx.RNN, and load_trained."""

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hpr
from hpr import input_pipeline
from hpr import workdir as workdir_lib
from hpr.tools import predict
from tests import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_PAGE = os.path.join(ROOT, 'docs', 'api.md')
HEAVY = ('tensorflow', 'av', 'matplotlib')


def test_import_hpr_and_models_load_no_tensorflow_av_or_matplotlib():
  code = textwrap.dedent(f"""
    import sys
    import jax
    from flax import nnx
    import hpr, hpr.models
    clip = jax.numpy.ones((1, 4, 16, 16, 3))
    for model in (
      hpr.LRCN(3, input_shape=(4, 16, 16, 3), conv_features=(4,),
               pool_sizes=(2,), lstm_features=4, rngs=nnx.Rngs(0)),
      hpr.ConvLSTMClassifier(3, input_shape=(4, 16, 16, 3), filters=(4,),
                             rngs=nnx.Rngs(0)),
      hpr.models.SingleFrame(3, input_shape=(4, 16, 16, 3),
                             conv_features=(4,), pool_sizes=(2,),
                             rngs=nnx.Rngs(0)),
    ):
      assert model(clip).shape == (1, 3)
    assert hpr.FrameCNN is hpr.models.FrameCNN
    print(sorted(m for m in {HEAVY!r} if m in sys.modules))
  """)
  env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'XLA_FLAGS': ''}
  out = subprocess.run(
    [sys.executable, '-c', code],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().splitlines()[-1] == '[]'


def test_all_names_resolve_to_their_modules():
  assert set(hpr.__all__) == set(hpr._LAZY)
  for name in hpr.__all__:
    assert getattr(hpr, name) is getattr(
      __import__(hpr._LAZY[name], fromlist=[name]), name
    )
  assert hpr.load_trained is workdir_lib.load_trained
  assert hpr.train_batches is input_pipeline.train_batches
  assert 'load_trained' in dir(hpr)
  with pytest.raises(AttributeError, match='no attribute'):
    hpr.no_such_name  # noqa: B018


def _runnable_blocks(text: str) -> list[str]:
  return re.findall(r'<!-- runnable -->\n```python\n(.*?)```', text, re.S)


def _run_blocks(blocks: list[str], what: str) -> dict:
  namespace = {'__name__': '__api_page__'}
  for i, block in enumerate(blocks):
    try:
      exec(
        compile(block, f'docs/api.md {what} block {i + 1}', 'exec'), namespace
      )
    except Exception as e:
      raise AssertionError(f'docs/api.md {what} block {i + 1}: {e}') from e
  return namespace


def _page_parts() -> tuple[str, str]:
  # Models (and nnx.RNN) | the pipeline and training: separate namespaces.
  text = open(API_PAGE).read()
  models, data = text.split('## The clip pipeline')
  return models, data


@pytest.mark.slow
def test_api_page_model_examples_run():
  blocks = _runnable_blocks(_page_parts()[0])
  assert len(blocks) == 3  # Models, a training step, nnx.RNN.
  ns = _run_blocks(blocks, 'models')
  assert isinstance(ns['lrcn'], hpr.LRCN)
  assert ns['hs'].shape == (2, 6, 32, 32, 8)


@pytest.mark.slow
def test_api_page_data_examples_run(tmp_path, monkeypatch):
  blocks = _runnable_blocks(_page_parts()[1])
  assert len(blocks) == 2  # The pipeline; train and load_trained.
  import tempfile

  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  ns = _run_blocks(blocks, 'data')
  assert ns['total'] == ns['info'].num_examples['test']
  assert isinstance(ns['model'], hpr.LRCN)
  assert ns['config'].model.name == 'lrcn'
  assert ns['class_names'] == list(ns['info'].class_names)
  assert os.path.isdir(os.path.join(ns['workdir'], 'checkpoints'))


def test_convlstm_cell_under_nnx_rnn_equals_the_layer():
  x = jax.random.normal(jax.random.key(1), (2, 5, 9, 8, 3))
  for padding, strides in (('same', (1, 1)), ('valid', (1, 1))):
    layer = hpr.ConvLSTM(
      3,
      4,
      (3, 3),
      padding=padding,
      strides=strides,
      impl='reference',
      rngs=nnx.Rngs(0),
    )
    cell = hpr.ConvLSTMCell(
      3, 4, (3, 3), padding=padding, strides=strides, rngs=nnx.Rngs(0)
    )
    # Same seed, same parameters.
    np.testing.assert_array_equal(cell.kernel[...], layer.cell.kernel[...])
    expected = layer(x)
    for unroll in (1, True):
      rnn = nnx.RNN(cell, unroll=unroll, return_carry=True)
      (c, h), hs = rnn(x)
      assert hs.shape == expected.shape
      np.testing.assert_allclose(hs, expected, atol=1e-5, rtol=1e-5)
      np.testing.assert_allclose(h, expected[:, -1], atol=1e-5, rtol=1e-5)
    # The cell stepped by hand: the same again.
    carry = cell.initialize_carry(x[:, 0].shape)
    for t in range(x.shape[1]):
      carry, h_t = cell(carry, x[:, t])
      np.testing.assert_allclose(h_t, expected[:, t], atol=1e-5, rtol=1e-5)


def test_load_trained_equals_the_predictor(trained_workdir, data_dir):
  config, workdir, _ = trained_workdir
  model, loaded_config, class_names = hpr.load_trained(workdir)
  predictor = predict.load_predictor(workdir)
  assert isinstance(model, hpr.LRCN)
  assert class_names == predictor.class_names
  assert class_names == workdir_lib.read_class_names(workdir)
  assert loaded_config.to_dict() == predictor.config.to_dict()
  assert loaded_config.model.lrcn.conv_features == (4, 8)
  assert loaded_config.input.num_frames == config.input.num_frames
  builder = input_pipeline.get_builder(loaded_config.dataset)
  batch = next(
    conftest.eval_batches(loaded_config, builder, 'test', rows=(0, 8))
  )
  logits = np.asarray(model(jnp.asarray(batch['video'])))
  expected = np.asarray(predictor.module(jnp.asarray(batch['video'])))
  np.testing.assert_array_equal(logits, expected)
  # Restored, not freshly initialised: the seed's model differs.
  from hpr.train_state import build_model

  fresh = build_model(loaded_config, len(class_names))
  fresh.eval()
  assert not np.allclose(np.asarray(fresh(jnp.asarray(batch['video']))), logits)
  # An explicit step, and a missing one as a one-line UserError.
  steps = sorted(
    int(d)
    for d in os.listdir(os.path.join(workdir, 'checkpoints'))
    if d.isdigit()
  )
  _, _, names = hpr.load_trained(workdir, step=steps[0])
  assert names == class_names
  with pytest.raises(hpr.UserError, match='no checkpoint for step'):
    hpr.load_trained(workdir, step=10**6)
  with pytest.raises(hpr.UserError, match='no such workdir'):
    hpr.load_trained(os.path.join(workdir, 'missing'))
