"""Importing Keras models: models built and saved here with tf_keras (Keras 2)
and Keras 3, in .h5 and .keras files, predict the same softmax in hpr;
unsupported models end with one line; an imported workdir evaluates and
fine-tunes."""

import json
import logging
import os
import subprocess
import sys

# Keras 3 reads its backend once, on import.
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hpr import config as config_lib  # noqa: E402
from hpr import evaluate, input_pipeline, models, train  # noqa: E402
from hpr.errors import UserError  # noqa: E402
from hpr.keras import importer as import_keras  # noqa: E402
from hpr.models import layers as hpr_layers  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

tf_keras = pytest.importorskip('tf_keras')
keras = pytest.importorskip('keras', minversion='3')
KERAS = {2: tf_keras, 3: keras}
TOLERANCE = 1e-5  # Max absolute difference of the softmax outputs.
MAX_DIFFS = {}  # Test id -> measured max difference, printed at the end.


# The notebook's two networks and variants. Each builder takes a Keras module
# and returns the layers after the input.
def convlstm_notebook(k, num_classes=4):
  layers = k.layers
  kwargs = dict(
    kernel_size=(3, 3),
    activation='tanh',
    data_format='channels_last',
    recurrent_dropout=0.2,
    return_sequences=True,
  )
  out = []
  for i, filters in enumerate((4, 8, 14, 16)):
    out.append(layers.ConvLSTM2D(filters=filters, **kwargs))
    out.append(
      layers.MaxPooling3D(
        pool_size=(1, 2, 2), padding='same', data_format='channels_last'
      )
    )
    if i < 3:
      out.append(layers.TimeDistributed(layers.Dropout(0.2)))
  return out + [
    layers.Flatten(),
    layers.Dense(num_classes, activation='softmax'),
  ]


def convlstm_same(k):
  """'same' padding, other filters, odd frame sizes for the 'same' pools,
  and 'hard_sigmoid' gates spelled out (Keras 3's differs from Keras 2's)."""
  layers = k.layers
  out = []
  for i, filters in enumerate((6, 10, 12)):
    out.append(
      layers.ConvLSTM2D(
        filters,
        (3, 3),
        padding='same',
        recurrent_activation='hard_sigmoid',
        return_sequences=True,
      )
    )
    out.append(layers.MaxPooling3D((1, 2, 2), padding='same'))
    if i < 2:
      out.append(layers.TimeDistributed(layers.Dropout(0.3)))
  return out + [layers.Flatten(), layers.Dense(4, activation='softmax')]


def convlstm_avgpool(k):
  """5x5 kernels, TimeDistributed pools, plain Dropout, a global average
  head and a linear Dense (logits)."""
  layers = k.layers
  return [
    layers.ConvLSTM2D(5, (5, 5), return_sequences=True),
    layers.TimeDistributed(layers.MaxPooling2D((2, 2), padding='same')),
    layers.Dropout(0.1),
    layers.ConvLSTM2D(7, (5, 5), return_sequences=True),
    layers.TimeDistributed(layers.MaxPooling2D((2, 2), padding='same')),
    layers.GlobalAveragePooling3D(),
    layers.Dense(3),
  ]


def lrcn_notebook(k):
  layers = k.layers
  td = layers.TimeDistributed
  out = []
  blocks = zip((16, 32, 64, 64), (4, 4, 2, 2), strict=True)
  for i, (filters, pool) in enumerate(blocks):
    out.append(
      td(layers.Conv2D(filters, (3, 3), padding='same', activation='relu'))
    )
    out.append(td(layers.MaxPooling2D((pool, pool))))
    if i < 3:
      out.append(td(layers.Dropout(0.25)))
  return out + [
    td(layers.Flatten()),
    layers.LSTM(32),
    layers.Dense(4, activation='softmax'),
  ]


def lrcn_variant(k):
  """Three 5x5 blocks, other widths and pools, LSTM(24)."""
  layers = k.layers
  td = layers.TimeDistributed
  out = []
  for i, filters in enumerate((8, 12, 16)):
    out.append(
      td(layers.Conv2D(filters, (5, 5), padding='same', activation='relu'))
    )
    out.append(td(layers.MaxPooling2D((2, 2))))
    if i < 2:
      out.append(td(layers.Dropout(0.1)))
  return out + [
    td(layers.Flatten()),
    layers.LSTM(24),
    layers.Dense(5, activation='softmax'),
  ]


ARCHS = {
  # name: (builder, small input shape)
  'convlstm_notebook': (convlstm_notebook, (6, 32, 32, 3)),
  'convlstm_same': (convlstm_same, (5, 30, 30, 3)),
  'convlstm_avgpool': (convlstm_avgpool, (4, 24, 24, 3)),
  'lrcn_notebook': (lrcn_notebook, (6, 64, 64, 3)),
  'lrcn_variant': (lrcn_variant, (6, 36, 36, 3)),
}
FORMATS = ('h5', 'keras')
NOTEBOOK_SHAPE = (20, 64, 64, 3)
NOTEBOOK_PARAMS = {'convlstm_notebook': 44_524, 'lrcn_notebook': 73_060}


def build(version, layers_fn, shape, seed=0):
  """A Keras model with random weights that give confident predictions."""
  k = KERAS[version]
  k.utils.set_random_seed(seed)
  layers = layers_fn(k)
  if version == 2:  # As the notebook: input_shape on the first layer.
    first = layers[0]
    config = first.get_config()
    config['input_shape'] = shape
    layers[0] = type(first).from_config(config)
    model = k.Sequential(layers)
  else:
    model = k.Sequential([k.Input(shape), *layers])
  rng = np.random.default_rng(seed)
  weights = model.get_weights()
  # Non-zero biases (Keras initialises them to 0 or 1) and a sharper Dense.
  weights = [
    w + rng.normal(0, 0.1, w.shape) if w.ndim == 1 else 1.5 * w for w in weights
  ]
  weights[-2] = weights[-2] * 8
  model.set_weights([w.astype(np.float32) for w in weights])
  return model


def keras_softmax(model, x):
  y = np.asarray(model(x, training=False))
  if model.layers[-1].get_config()['activation'] == 'linear':
    y = np.asarray(jax.nn.softmax(y))
  return y


def save(model, directory, version, fmt):
  path = os.path.join(directory, f'keras{version}.{fmt}')
  model.save(path)
  return path


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """(version, arch, shape) -> (paths by format, inputs, Keras softmax,
  Keras parameter count); each model is built and saved once."""
  cache = {}

  def get(version, arch, shape):
    key = (version, arch, shape)
    if key not in cache:
      directory = str(tmp_path_factory.mktemp(f'k{version}_{arch}'))
      model = build(version, ARCHS[arch][0], shape)
      x = np.random.default_rng(1).uniform(size=(2, *shape))
      x[1] = x[1] ** 4  # A dark, sparse clip: a different prediction.
      x = x.astype(np.float32)
      paths = {fmt: save(model, directory, version, fmt) for fmt in FORMATS}
      cache[key] = (paths, x, keras_softmax(model, x), model.count_params())
    return cache[key]

  return get


def hpr_softmax(path, x):
  module = import_keras.load_module(path)
  return np.asarray(jax.nn.softmax(module(x))), models.count_params(module)


def check_equal(request, saved, version, arch, shape, fmt):
  paths, x, want, num_params = saved(version, arch, shape)
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
def test_predictions_match_keras(request, saved, version, arch, fmt):
  path = check_equal(request, saved, version, arch, ARCHS[arch][1], fmt)
  imported = import_keras.read(path)
  assert imported.name == arch.split('_')[0]
  if arch == 'convlstm_same':
    # The file's 'hard_sigmoid' is taken as the Keras that saved it meant.
    want = {2: 'hard_sigmoid', 3: 'hard_sigmoid_keras3'}[version]
    assert imported.kwargs['recurrent_activation'] == want


@pytest.mark.parametrize(
  'version, fmt', [(2, 'h5'), (3, 'keras')], ids=['keras2-h5', 'keras3-keras']
)
@pytest.mark.parametrize('arch', ['convlstm_notebook', 'lrcn_notebook'])
def test_notebook_models_at_the_notebook_shape(
  request, saved, version, fmt, arch
):
  path = check_equal(request, saved, version, arch, NOTEBOOK_SHAPE, fmt)
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


def test_the_hard_sigmoid_version_matters(saved):
  """Reading a Keras 3 'hard_sigmoid' as Keras 2's would be visibly wrong,
  so the equality above depends on choosing the right one."""
  paths, x, want, _ = saved(3, 'convlstm_same', ARCHS['convlstm_same'][1])
  module = import_keras.load_module(paths['keras'])
  for convlstm in module.convlstms:
    convlstm.cell.recurrent_activation = hpr_layers.hard_sigmoid_keras2
  wrong = np.asarray(jax.nn.softmax(module(x)))
  assert np.abs(wrong - want).max() > 100 * TOLERANCE


def _unsupported(k):
  """Models hpr cannot express -> words the one-line error must contain."""
  layers = k.layers
  td = layers.TimeDistributed
  pool = layers.MaxPooling3D((1, 2, 2), padding='same')
  head = [layers.Flatten(), layers.Dense(2, activation='softmax')]
  return {
    'batch_norm': (
      [layers.ConvLSTM2D(2, 3, return_sequences=True), pool]
      + [layers.BatchNormalization()]
      + head,
      ['BatchNormalization', 'supported layers: ConvLSTM2D'],
    ),
    'conv3d': (
      [layers.Conv3D(2, 3)] + head,
      ['Conv3D', 'supported layers'],
    ),
    'strides': (
      [layers.ConvLSTM2D(2, 3, strides=2, return_sequences=True), pool] + head,
      ['ConvLSTM2D', 'strides=(2, 2)', 'strides=(1, 1)'],
    ),
    'dense_relu': (
      [layers.ConvLSTM2D(2, 3, return_sequences=True), pool]
      + [layers.Flatten(), layers.Dense(2, activation='relu')],
      ["activation='relu'", "activation='softmax'"],
    ),
    'no_pool': (
      [layers.ConvLSTM2D(2, 3, return_sequences=True)] + head,
      ['not followed by max pooling'],
    ),
    'kernel_sizes': (
      [
        layers.ConvLSTM2D(2, 3, return_sequences=True),
        pool,
        layers.ConvLSTM2D(2, 5, return_sequences=True),
        layers.MaxPooling3D((1, 2, 2), padding='same'),
      ]
      + head,
      ['kernel_size=(5, 5) differs', 'one kernel_size'],
    ),
    'last_return_sequences': (
      [layers.ConvLSTM2D(2, 3, return_sequences=False)] + head,
      ['return_sequences=False', 'return_sequences=True'],
    ),
    'lstm_hard_sigmoid': (
      [
        td(layers.Conv2D(2, 3, padding='same', activation='relu')),
        td(layers.MaxPooling2D(2)),
        td(layers.Flatten()),
        layers.LSTM(3, recurrent_activation='hard_sigmoid'),
        layers.Dense(2, activation='softmax'),
      ],
      ["recurrent_activation='hard_sigmoid'", "'sigmoid'"],
    ),
    'lrcn_valid_conv': (
      [
        td(layers.Conv2D(2, 3, activation='relu')),
        td(layers.MaxPooling2D(2)),
        td(layers.Flatten()),
        layers.LSTM(3),
        layers.Dense(2, activation='softmax'),
      ],
      ["padding='valid'", "padding='same'"],
    ),
  }


@pytest.mark.parametrize(
  'case',
  [
    'batch_norm',
    'conv3d',
    'strides',
    'dense_relu',
    'no_pool',
    'kernel_sizes',
    'last_return_sequences',
    'lstm_hard_sigmoid',
    'lrcn_valid_conv',
  ],
)
def test_unsupported_models_fail_in_one_line(tmp_path, case):
  layers, words = _unsupported(keras)[case]
  model = keras.Sequential([keras.Input((3, 16, 16, 3)), *layers])
  path = str(tmp_path / 'model.keras')
  model.save(path)
  with pytest.raises(UserError) as e:
    import_keras.read(path)
  message = str(e.value)
  assert '\n' not in message
  for word in words:
    assert word in message


def test_non_square_frames(tmp_path):
  model = keras.Sequential(
    [keras.Input((3, 8, 10, 3)), *convlstm_avgpool(keras)[:3]]
    + [keras.layers.GlobalAveragePooling3D(), keras.layers.Dense(2)]
  )
  path = str(tmp_path / 'model.keras')
  model.save(path)
  with pytest.raises(UserError, match='8x10; hpr supports square'):
    import_keras.read(path)


def test_weights_only_file(tmp_path):
  model = build(2, convlstm_avgpool, ARCHS['convlstm_avgpool'][1])
  path = str(tmp_path / 'model.weights.h5')
  model.save_weights(path)
  with pytest.raises(UserError, match='weights only, no architecture'):
    import_keras.read(path)


def test_not_a_model_file(tmp_path):
  path = tmp_path / 'model.h5'
  path.write_text('hello')
  with pytest.raises(UserError, match='neither a Keras .h5'):
    import_keras.read(str(path))


def test_cli_fails_with_one_line(tmp_path):
  layers, _ = _unsupported(keras)['batch_norm']
  model = keras.Sequential([keras.Input((3, 16, 16, 3)), *layers])
  path = str(tmp_path / 'model.h5')
  model.save(path)
  result = subprocess.run(
    [sys.executable, '-m', 'hpr.keras.importer', path, '--class-names', 'a,b']
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
  assert len(err) == 1 and '--class-names' in err[0]


def test_class_names_must_match_the_outputs(tmp_path, saved):
  paths, *_ = saved(3, 'convlstm_avgpool', ARCHS['convlstm_avgpool'][1])
  with pytest.raises(UserError, match='predicts 3 classes, but 2 class'):
    import_keras.import_model(paths['keras'], str(tmp_path), ['a', 'b'])


def _tiny_keras_model(version):
  """A 12-class ConvLSTM for the tiny synthetic dataset (6x32x32 clips)."""

  def layers_fn(k):
    layers = k.layers
    return [
      layers.ConvLSTM2D(
        4, (3, 3), recurrent_dropout=0.2, return_sequences=True
      ),
      layers.MaxPooling3D((1, 2, 2), padding='same'),
      layers.TimeDistributed(layers.Dropout(0.2)),
      layers.ConvLSTM2D(
        4, (3, 3), recurrent_dropout=0.2, return_sequences=True
      ),
      layers.MaxPooling3D((1, 2, 2), padding='same'),
      layers.Flatten(),
      layers.Dense(12, activation='softmax'),
    ]

  return build(version, layers_fn, (6, 32, 32, 3))


def test_cli_writes_a_workdir(tmp_path, capsys, absl_verbosity):
  path = save(_tiny_keras_model(2), str(tmp_path), 2, 'h5')
  workdir = str(tmp_path / 'workdir')
  names = [f'class{i}' for i in range(12)]
  import_keras.main(
    [path, '--class-names', ','.join(names), '--workdir', workdir]
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
      [path, '--class-names', ','.join(names)] + ['--workdir', workdir]
    )
  assert e.value.code == 1
  assert 'already holds a run' in capsys.readouterr().err


def test_imported_workdir_evaluates_and_fine_tunes(
  data_dir, tmp_path, caplog, absl_verbosity
):
  model = _tiny_keras_model(3)
  path = save(model, str(tmp_path), 3, 'keras')
  workdir = str(tmp_path / 'workdir')
  base = tiny_config(data_dir)
  names = [f'class{i}' for i in range(12)]
  config = import_keras.import_model(path, workdir, names, base=base)
  assert config.model.convlstm.filters == (4, 4)
  assert config.model.convlstm.recurrent_activation == 'sigmoid'

  # Evaluation gives Keras's loss and accuracy on the same test clips.
  result = evaluate.evaluate(config, workdir)
  builder = input_pipeline.get_builder(config.dataset)
  probs, labels = [], []
  for batch in input_pipeline.eval_batches(
    config, builder, config.dataset.test_split
  ):
    mask = batch['mask'].astype(bool)
    probs.append(keras_softmax(model, batch['video'][mask]))
    labels.append(batch['label'][mask])
  probs, labels = np.concatenate(probs), np.concatenate(labels)
  assert result['count'] == len(labels) == 12
  keras_loss = -np.log(probs[np.arange(len(labels)), labels]).mean()
  assert result['loss'] == pytest.approx(keras_loss, rel=1e-5)
  assert result['accuracy'] == (probs.argmax(-1) == labels).mean()

  # hpr.tools.predict on a video file gives Keras's softmax on the same clip.
  from hpr.datasets import synthetic_render
  from hpr.tools import predict, video_io

  frames = synthetic_render.render_clip('Waving', 9, 1, num_frames=15)
  video = str(tmp_path / 'wave.mp4')
  video_io.write_video(video, list(frames), 25.0)
  predictor = predict.load_predictor(workdir)
  got = predict.predict_video(predictor, video, top_k=12)
  decoded, _ = video_io.read_video(video)
  clip = predictor.preprocess(decoded[predictor.clip_indices(len(decoded))])
  want = keras_softmax(model, clip[None])[0]
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
