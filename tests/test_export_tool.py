"""hpr.tools.export: every format loads in its own runtime and gives JAX's
probabilities on real test clips; bad arguments and unknown layers are one
line; a failed export leaves nothing behind."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from hpr import workdir as workdir_lib
from hpr.errors import UserError
from hpr.tools import export
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(__file__))
CLIPS = 3


@pytest.fixture(scope='module')
def convlstm_workdir(data_dir, tmp_path_factory):
  """A tiny ConvLSTM trained for one epoch (a few steps)."""
  from hpr import train

  workdir = str(tmp_path_factory.mktemp('convlstm'))
  config = tiny_config(data_dir, 'convlstm')
  config.training.num_epochs = 1
  train.train_and_evaluate(config, workdir)
  return workdir


def _jax_probabilities(workdir, clips):
  """The trained model's probabilities in JAX, on its own (auto) path."""
  model, _, _ = workdir_lib.load_trained(workdir)
  return np.asarray(jax.nn.softmax(nnx.jit(lambda m, x: m(x))(model, clips)))


def _clips(workdir):
  return export.test_clips(workdir_lib.load_config(workdir), CLIPS)


def _no_leftovers(out):
  parent, name = os.path.split(out)
  return [f for f in os.listdir(parent) if f.startswith(f'.{name}.')]


def test_stablehlo_deserializes_and_matches_jax(trained_workdir, tmp_path):
  _, workdir, _ = trained_workdir
  out = str(tmp_path / 'shlo')
  manifest = export.export(workdir, 'stablehlo', out, num_check=CLIPS)
  assert manifest['check']['max_abs_prob_diff'] <= 1e-5
  assert manifest['check']['clips'] == CLIPS
  with open(os.path.join(out, 'manifest.json')) as f:
    assert json.load(f) == json.loads(json.dumps(manifest))
  assert manifest['class_names'] == workdir_lib.read_class_names(workdir)
  assert manifest['input']['shape'] == [None, 6, 32, 32, 3]
  assert manifest['platforms'] == ['cpu', 'cuda', 'tpu']
  assert sorted(os.listdir(out)) == [
    'classify.stablehlo',
    'encode.stablehlo',
    'head.stablehlo',
    'manifest.json',
  ]
  assert not _no_leftovers(out)

  clips = _clips(workdir)
  expected = _jax_probabilities(workdir, clips)
  with open(os.path.join(out, 'classify.stablehlo'), 'rb') as f:
    classify = jax.export.deserialize(bytearray(f.read()))
  assert classify.platforms == ('cpu', 'cuda', 'tpu')
  got = np.asarray(classify.call(clips)['probabilities'])
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
  # Any batch size; and encode -> head is the whole model.
  loaded = export.load_stablehlo(out)
  one = np.asarray(loaded['classify'].call(clips[:1])['probabilities'])
  np.testing.assert_allclose(one, expected[:1], atol=1e-5, rtol=0)
  b, t = clips.shape[:2]
  features = loaded['encode'].call(clips.reshape((b * t,) + clips.shape[2:]))
  features = np.asarray(features['features']).reshape((b, t, -1))
  split = np.asarray(loaded['head'].call(features)['probabilities'])
  np.testing.assert_allclose(split, expected, atol=1e-5, rtol=0)
  # The reference path: no call of hpr's CPU kernels in the module.
  assert 'hpr_conv' not in classify.mlir_module()


@pytest.mark.slow
def test_a_failed_check_leaves_no_directory(
  trained_workdir, tmp_path, monkeypatch
):
  _, workdir, _ = trained_workdir
  out = str(tmp_path / 'failed')
  monkeypatch.setitem(export.TOLERANCE, 'stablehlo', -1.0)
  with pytest.raises(UserError, match='export check failed') as info:
    export.export(workdir, 'stablehlo', out, num_check=1)
  assert '\n' not in str(info.value)
  assert not os.path.exists(out) and not _no_leftovers(out)


def test_bad_arguments_are_user_errors(trained_workdir, tmp_path):
  _, workdir, _ = trained_workdir
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  full = tmp_path / 'full'
  full.mkdir()
  (full / 'something').write_text('x')
  for args, message in (
    (['--out', str(a_file)], 'is a file'),
    (['--out', str(full)], 'exists and is not empty'),
    (['--out', str(a_file / 'sub')], 'cannot create'),
    (['--out', str(tmp_path / 'o'), '--step', '999'], 'no checkpoint for'),
    (['--out', str(tmp_path / 'o'), '--check', '-1'], '--check'),
  ):
    with pytest.raises(UserError, match=message) as info:
      export.main(['--workdir', workdir, '--format', 'stablehlo', *args])
    assert '\n' not in str(info.value)
  assert not os.path.exists(tmp_path / 'o')
  with pytest.raises(UserError, match='no such workdir'):
    export.main(
      ['--workdir', str(tmp_path / 'nothing'), '--format', 'tflite']
      + ['--out', str(tmp_path / 'o')]
    )


def test_an_unknown_layer_is_named(trained_workdir):
  _, workdir, _ = trained_workdir
  model, _, _ = workdir_lib.load_trained(workdir)
  export.check_layers(model)  # hpr's own layers pass.
  model.norm = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
  with pytest.raises(
    UserError, match=r'cannot export layer norm \(BatchNorm\)'
  ):
    export.check_layers(model)


@pytest.mark.slow
def test_cli_errors_are_one_line(trained_workdir, tmp_path):
  _, workdir, _ = trained_workdir
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  for args, code, message in (
    (['--workdir', workdir, '--out', str(a_file)], 1, 'is a file'),
    (['--workdir', str(tmp_path / 'no'), '--out', str(tmp_path / 'o')], 1,
     'no such workdir'),
    (['--workdir', workdir, '--out', str(tmp_path / 'o'), '--format=onnx'], 2,
     'invalid choice'),
  ):  # fmt: skip
    if '--format=onnx' not in args:
      args = [*args, '--format', 'stablehlo']
    run = subprocess.run(
      [sys.executable, '-m', 'hpr.tools.export', *args],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=300,
    )
    assert run.returncode == code, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith('hpr: error:') and message in last, run.stderr
    assert 'Traceback' not in run.stderr and not run.stdout
  assert not os.path.exists(tmp_path / 'o')


def _savedmodel_probabilities(path, clips):
  loaded = tf.saved_model.load(path)
  serve = loaded.signatures['serving_default']
  return serve, serve(video=tf.constant(clips))['probabilities'].numpy()


@pytest.mark.slow
def test_savedmodel_loads_in_tensorflow_and_matches(trained_workdir, tmp_path):
  _, workdir, _ = trained_workdir
  out = str(tmp_path / 'sm')
  manifest = export.export(workdir, 'savedmodel', out, num_check=CLIPS)
  assert manifest['check']['max_abs_prob_diff'] <= 1e-5
  clips = _clips(workdir)
  expected = _jax_probabilities(workdir, clips)
  serve, got = _savedmodel_probabilities(os.path.join(out, 'savedmodel'), clips)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  assert set(serve.structured_outputs) == {'logits', 'probabilities'}
  loaded = tf.saved_model.load(os.path.join(out, 'savedmodel'))
  assert set(loaded.signatures) == {'serving_default', 'encode', 'head'}
  b, t = clips.shape[:2]
  frames = tf.constant(clips.reshape((b * t,) + clips.shape[2:]))
  features = loaded.signatures['encode'](frames=frames)['features']
  head = loaded.signatures['head'](features=tf.reshape(features, (b, t, -1)))
  np.testing.assert_allclose(
    head['probabilities'].numpy(), expected, atol=1e-5, rtol=0
  )


def _tflite_probabilities(path, clips, signature='serving_default'):
  interpreter = tf.lite.Interpreter(model_path=path)  # XNNPACK on.
  runner = interpreter.get_signature_runner(signature)
  return np.stack(
    [runner(video=clip[None])['probabilities'][0] for clip in clips]
  )


@pytest.mark.slow
def test_tflite_runs_in_the_interpreter_and_matches(trained_workdir, tmp_path):
  _, workdir, _ = trained_workdir
  out = str(tmp_path / 'tflite')
  manifest = export.export(workdir, 'tflite', out, num_check=CLIPS)
  assert manifest['check']['max_abs_prob_diff'] <= export.TOLERANCE['tflite']
  assert sorted(os.listdir(out)) == ['manifest.json', 'model.tflite']
  clips = _clips(workdir)
  got = _tflite_probabilities(os.path.join(out, 'model.tflite'), clips)
  expected = _jax_probabilities(workdir, clips)
  np.testing.assert_allclose(
    got, expected, atol=export.TOLERANCE['tflite'], rtol=0
  )
  interpreter = tf.lite.Interpreter(os.path.join(out, 'model.tflite'))
  assert set(interpreter.get_signature_list()) == {
    'serving_default',
    'encode',
    'head',
  }


@pytest.mark.slow
def test_convlstm_exports_to_every_format(convlstm_workdir, tmp_path):
  clips = _clips(convlstm_workdir)
  expected = _jax_probabilities(convlstm_workdir, clips)
  for fmt in export.FORMATS:
    out = str(tmp_path / fmt)
    manifest = export.export(convlstm_workdir, fmt, out, num_check=CLIPS)
    assert manifest['model'] == 'convlstm'
    assert list(manifest['functions']) == ['classify']
    assert manifest['check']['max_abs_prob_diff'] <= export.TOLERANCE[fmt]
  classify = export.load_stablehlo(str(tmp_path / 'stablehlo'))['classify']
  got = np.asarray(classify.call(clips)['probabilities'])
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  _, got = _savedmodel_probabilities(
    str(tmp_path / 'savedmodel' / 'savedmodel'), clips
  )
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  got = _tflite_probabilities(str(tmp_path / 'tflite' / 'model.tflite'), clips)
  np.testing.assert_allclose(
    got, expected, atol=export.TOLERANCE['tflite'], rtol=0
  )
