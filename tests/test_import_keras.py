"""Importing Keras models: models saved with tf_keras (Keras 2) and Keras 3,
in .h5 and .keras files, predict the same softmax in hpr; unsupported models
end with one line; an imported workdir evaluates and fine-tunes.

The model files and the Keras models' outputs are made by
tests/fixtures/make_keras_fixtures.py (which says how to make them again) and
committed, so these tests need no Keras."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from hpr import config as config_lib
from hpr import evaluate, input_pipeline, models, train
from hpr.errors import UserError
from hpr.keras import importer as import_keras
from hpr.models import layers as hpr_layers
from tests import conftest
from tests.conftest import tiny_config
from tests.fixtures import make_keras_fixtures as fixtures
from tests.fixtures.make_keras_fixtures import ARCHS, FORMATS, NOTEBOOK_SHAPE

TOLERANCE = 1e-5  # Max absolute difference of the softmax outputs.
MAX_DIFFS = {}  # Test id -> measured max difference, printed at the end.
NOTEBOOK_PARAMS = {'convlstm_notebook': 44_524, 'lrcn_notebook': 73_060}


@pytest.fixture(scope='session')
def keras_files(tmp_path_factory):
  """The folder of the committed Keras model files (extracted, checked)."""
  return fixtures.extract(tmp_path_factory.mktemp('keras_fixtures'))


def keras_softmax(ref):
  """The Keras model's softmax on its reference inputs."""
  y = ref['outputs']
  if ref['activation'] == 'linear':
    y = np.asarray(jax.nn.softmax(y))
  return y


def saved(root, version, name):
  """The `name` model saved by Keras `version`: (paths by format, inputs,
  Keras softmax, Keras parameter count)."""
  ref = fixtures.reference(root, version, name)
  assert ref['keras_version'].split('.')[0] == str(version)
  x = fixtures.clip_inputs(ref['input_shape'])
  assert fixtures.sha256(x.tobytes()) == ref['inputs_sha256']
  paths = {
    fmt: fixtures.model_file(root, version, name, fmt) for fmt in FORMATS
  }
  return paths, x, keras_softmax(ref), ref['count_params']


def hpr_softmax(path, x):
  module = import_keras.load_module(path)
  return np.asarray(jax.nn.softmax(module(x))), models.count_params(module)


def check_equal(request, root, version, name, fmt):
  paths, x, want, num_params = saved(root, version, name)
  got, hpr_params = hpr_softmax(paths[fmt], x)
  diff = float(np.abs(got - want).max())
  MAX_DIFFS[request.node.callspec.id] = diff
  assert got.shape == want.shape
  assert diff <= TOLERANCE
  assert hpr_params == num_params
  # Not a trivial comparison: far from uniform, different per clip.
  assert (want.max(-1) - want.min(-1)).min() > 0.2
  assert np.abs(want[0] - want[1]).max() > 0.01
  return paths[fmt]


@pytest.fixture(scope='module', autouse=True)
def report_max_diffs():
  yield
  if MAX_DIFFS:
    worst = max(MAX_DIFFS.values())
    lines = [f'  {k}: {v:.2e}' for k, v in sorted(MAX_DIFFS.items())]
    print(f'\nmax |softmax difference| (worst {worst:.2e}):', *lines, sep='\n')


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('version', [2, 3])
def test_predictions_match_keras(request, keras_files, version, arch, fmt):
  path = check_equal(request, keras_files, version, arch, fmt)
  imported = import_keras.read(path)
  assert imported.name == arch.split('_')[0]
  assert imported.image_size == ARCHS[arch][1][1]
  if arch == 'convlstm_same':
    # The file's 'hard_sigmoid' is taken as the Keras that saved it meant.
    want = {2: 'hard_sigmoid', 3: 'hard_sigmoid_keras3'}[version]
    assert imported.kwargs['recurrent_activation'] == want


@pytest.mark.parametrize(
  'version, fmt', [(2, 'h5'), (3, 'keras')], ids=['keras2-h5', 'keras3-keras']
)
@pytest.mark.parametrize('arch', ['convlstm_notebook', 'lrcn_notebook'])
def test_notebook_models_at_the_notebook_shape(
  request, keras_files, version, fmt, arch
):
  assert fixtures.NOTEBOOK_FILES[version] == fmt
  name = f'{arch}_notebook_shape'
  path = check_equal(request, keras_files, version, name, fmt)
  assert fixtures.reference(keras_files, version, name)['input_shape'] == (
    NOTEBOOK_SHAPE
  )
  assert (
    models.count_params(import_keras.load_module(path))
    == (NOTEBOOK_PARAMS[arch])
  )
  imported = import_keras.read(path)
  assert (imported.num_frames, imported.image_size) == (20, 64)
  if arch == 'convlstm_notebook':
    # Keras 2's ConvLSTM2D default gate is hard_sigmoid, Keras 3's sigmoid.
    want = {2: 'hard_sigmoid', 3: 'sigmoid'}[version]
    assert imported.kwargs['recurrent_activation'] == want
    assert imported.kwargs['filters'] == (4, 8, 14, 16)


def test_the_hard_sigmoid_version_matters(keras_files):
  """Reading a Keras 3 'hard_sigmoid' as Keras 2's would be visibly wrong,
  so the equality above depends on choosing the right one."""
  paths, x, want, _ = saved(keras_files, 3, 'convlstm_same')
  module = import_keras.load_module(paths['keras'])
  for convlstm in module.convlstms:
    convlstm.cell.recurrent_activation = hpr_layers.hard_sigmoid_keras2
  wrong = np.asarray(jax.nn.softmax(module(x)))
  assert np.abs(wrong - want).max() > 100 * TOLERANCE


def test_the_fixtures_are_the_keras_models(keras_files):
  """The committed files are what make_keras_fixtures.py says: each
  version's Keras saved them, at the shapes the tests name."""
  with open(fixtures.MANIFEST) as f:
    versions = json.load(f)['versions']
  assert versions['tf_keras'].split('.')[0] == '2'
  assert versions['keras'].split('.')[0] == '3'
  for version in (2, 3):
    for arch, (_, shape) in ARCHS.items():
      ref = fixtures.reference(keras_files, version, arch)
      want = versions['tf_keras' if version == 2 else 'keras']
      assert ref['keras_version'] == want
      assert ref['input_shape'] == shape
      for fmt in FORMATS:
        path = fixtures.model_file(keras_files, version, arch, fmt)
        assert import_keras.read(path).num_frames == shape[0]
  unsupported = sorted(os.listdir(keras_files / 'unsupported'))
  want = [f'{case}.keras' for case in UNSUPPORTED]
  assert unsupported == sorted(['batch_norm.h5', 'non_square.keras', *want])


# Models hpr cannot express (made by make_keras_fixtures.unsupported, Keras 3,
# (3, 16, 16, 3) clips) -> words the one-line error must contain.
UNSUPPORTED = {
  'batch_norm': ['BatchNormalization', 'supported layers: ConvLSTM2D'],
  'conv3d': ['Conv3D', 'supported layers'],
  'strides': ['ConvLSTM2D', 'strides=(2, 2)', 'strides=(1, 1)'],
  'dense_relu': ["activation='relu'", "activation='softmax'"],
  'no_pool': ['not followed by max pooling'],
  'kernel_sizes': ['kernel_size=(5, 5) differs', 'one kernel_size'],
  'last_return_sequences': ['return_sequences=False', 'return_sequences=True'],
  'lstm_hard_sigmoid': ["recurrent_activation='hard_sigmoid'", "'sigmoid'"],
  'lrcn_valid_conv': ["padding='valid'", "padding='same'"],
}


@pytest.mark.parametrize('case', list(UNSUPPORTED))
def test_unsupported_models_fail_in_one_line(keras_files, case):
  path = str(keras_files / 'unsupported' / f'{case}.keras')
  assert os.path.isfile(path)
  with pytest.raises(UserError) as e:
    import_keras.read(path)
  message = str(e.value)
  assert '\n' not in message
  for word in UNSUPPORTED[case]:
    assert word in message


def test_non_square_frames(keras_files):
  path = str(keras_files / 'unsupported' / 'non_square.keras')
  with pytest.raises(UserError, match='8x10; hpr supports square'):
    import_keras.read(path)


def test_weights_only_file(keras_files):
  path = fixtures.model_file(keras_files, 2, 'convlstm_avgpool', 'weights.h5')
  with pytest.raises(UserError, match='weights only, no architecture'):
    import_keras.read(path)


def test_not_a_model_file(tmp_path):
  path = tmp_path / 'model.h5'
  path.write_text('hello')
  with pytest.raises(UserError, match='neither a Keras .h5'):
    import_keras.read(str(path))


def test_cli_fails_with_one_line(tmp_path, keras_files):
  path = str(tmp_path / 'model.h5')
  shutil.copy(keras_files / 'unsupported' / 'batch_norm.h5', path)
  result = subprocess.run(
    [sys.executable, '-m', 'hpr.keras.importer', path, '--class_names', 'a,b']
    + ['--workdir', str(tmp_path / 'w')],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('hpr: error: ')
  assert 'BatchNormalization' in lines[0]
  assert not (tmp_path / 'w').exists()


@pytest.fixture
def absl_verbosity():
  """Restores absl's verbosity, which the CLI's main() lowers."""
  from absl import logging as absl_logging

  before = absl_logging.get_verbosity()
  yield absl_logging
  absl_logging.set_verbosity(before)


def test_cli_bad_arguments(capsys):
  with pytest.raises(SystemExit) as e:
    import_keras.main(['model.h5', '--workdir', 'w'])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and '--class_names' in err[0]


def test_class_names_must_match_the_outputs(tmp_path, keras_files):
  paths, *_ = saved(keras_files, 3, 'convlstm_avgpool')
  with pytest.raises(UserError, match='predicts 3 classes, but 2 class'):
    import_keras.import_model(paths['keras'], str(tmp_path), ['a', 'b'])


def tiny_keras_model(root, version, directory) -> str:
  """A copy in `directory` of the 12-class ConvLSTM for the tiny synthetic
  dataset (6x32x32 clips) that Keras `version` saved."""
  fmt = fixtures.TINY12_FILES[version]
  path = os.path.join(directory, f'keras{version}.{fmt}')
  shutil.copy(fixtures.model_file(root, version, 'tiny12', fmt), path)
  return path


def test_cli_writes_a_workdir(tmp_path, keras_files, capsys, absl_verbosity):
  path = tiny_keras_model(keras_files, 2, tmp_path)
  workdir = str(tmp_path / 'workdir')
  names = [f'class{i}' for i in range(12)]
  import_keras.main(
    [path, '--class_names', ','.join(names), '--workdir', workdir]
    + ['--dataset', 'synthetic_actions/tiny']
  )
  assert 'imported convlstm (12 classes' in capsys.readouterr().out
  with open(os.path.join(workdir, 'class_names.json')) as f:
    assert json.load(f) == names
  with open(os.path.join(workdir, 'config.json')) as f:
    written = json.load(f)
  # config.py gives config.json's config, for `hpr.main --config W/config.py`.
  config = config_lib.load_config_file(os.path.join(workdir, 'config.py'))
  assert json.loads(config.to_json()) == written
  assert config.model.name == 'convlstm'
  assert config.model.convlstm.filters == (4, 4)
  assert config.model.convlstm.recurrent_activation == 'hard_sigmoid'
  assert config.dataset.name == 'synthetic_actions/tiny'
  assert (config.input.num_frames, config.input.image_size) == (6, 32)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['0']
  with pytest.raises(SystemExit) as e:  # Never over an existing run.
    import_keras.main(
      [path, '--class_names', ','.join(names)] + ['--workdir', workdir]
    )
  assert e.value.code == 1
  assert 'already holds a run' in capsys.readouterr().err


@pytest.mark.slow
def test_imported_workdir_evaluates_and_fine_tunes(
  data_dir, tmp_path, keras_files, caplog, absl_verbosity
):
  """The workdir's model is the Keras model (on the Keras outputs stored
  with it); evaluation and hpr.tools.predict give what the model read
  straight from the file (which test_predictions_match_keras holds to
  Keras's outputs) gives on the same test clips and video."""
  path = tiny_keras_model(keras_files, 3, tmp_path)
  workdir = str(tmp_path / 'workdir')
  base = tiny_config(data_dir)
  names = [f'class{i}' for i in range(12)]
  config = import_keras.import_model(path, workdir, names, base=base)
  assert config.model.convlstm.filters == (4, 4)
  assert config.model.convlstm.recurrent_activation == 'sigmoid'

  from hpr import video_io
  from hpr.datasets import synthetic_render
  from hpr.tools import predict

  # The workdir's checkpoint and config give Keras's softmax.
  ref = fixtures.reference(keras_files, 3, 'tiny12')
  x = fixtures.clip_inputs(ref['input_shape'])
  predictor = predict.load_predictor(workdir)
  got = np.asarray(jax.nn.softmax(predictor.module(x)))
  np.testing.assert_allclose(got, keras_softmax(ref), rtol=0, atol=TOLERANCE)
  assert np.abs(ref['outputs'][0] - ref['outputs'][1]).max() > 0.01

  # Evaluation gives the file's model's loss and accuracy on the test clips.
  model = import_keras.load_module(path)

  def file_softmax(clips):
    return np.asarray(jax.nn.softmax(model(clips)))

  result = evaluate.evaluate(config, workdir)
  builder = input_pipeline.get_builder(config.dataset)
  probs, labels = [], []
  for batch in conftest.eval_batches(
    config, builder, config.dataset.test_split
  ):
    mask = batch['mask'].astype(bool)
    probs.append(file_softmax(batch['video'][mask]))
    labels.append(batch['label'][mask])
  probs, labels = np.concatenate(probs), np.concatenate(labels)
  assert result['count'] == len(labels) == 12
  keras_loss = -np.log(probs[np.arange(len(labels)), labels]).mean()
  assert result['loss'] == pytest.approx(keras_loss, rel=1e-5)
  assert result['accuracy'] == (probs.argmax(-1) == labels).mean()

  # hpr.tools.predict on a video file gives its softmax on the same clip.
  frames = synthetic_render.render_clip('Waving', 9, 1, num_frames=15)
  video = str(tmp_path / 'wave.mp4')
  video_io.write_video(video, list(frames), 25.0)
  got = predict.predict_video(predictor, video, top_k=12)
  decoded, _ = video_io.read_video(video)
  clip = predictor.preprocess(decoded[predictor.clip_indices(len(decoded))])
  want = file_softmax(clip[None])[0]
  by_class = {t['class']: t['confidence'] for t in got['top_k']}
  np.testing.assert_allclose(
    [by_class[n] for n in names], want, rtol=0, atol=1e-5
  )

  # Fine-tuning resumes from the imported checkpoint (step 0).
  config.training.num_epochs = 1
  absl_verbosity.set_verbosity(absl_verbosity.INFO)
  with caplog.at_level(logging.INFO):
    tuned = train.train_and_evaluate(config, workdir)
  assert 'Resumed from step 0' in caplog.text
  assert np.isfinite(tuned['loss']) and tuned['count'] == 12
  checkpoints = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert max(int(s) for s in checkpoints) == 4  # 36 train clips // batch 8.
