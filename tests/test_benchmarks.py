"""The benchmarks time the notebook's models on the notebook's clips,
whatever hpr's defaults are; so do the peers (benchmarks/peers), which
benchmarks/sitting.py compares hpr with."""

import json
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'benchmarks'))
import sitting  # noqa: E402
from peers import common as peers_common  # noqa: E402
from train_speed import load_config  # noqa: E402
from train_speed import table as train_speed_table  # noqa: E402

from hpr.train_state import build_model  # noqa: E402


@pytest.mark.parametrize(
  'model, params', [('seed_convlstm', 44_524), ('seed_lrcn', 73_060)]
)
def test_seed_models_are_the_notebooks(model, params):
  config = load_config(model)
  assert (config.input.num_frames, config.input.image_size) == (20, 64)
  built = build_model(config, 4)
  count = sum(x.size for x in jax.tree.leaves(nnx.state(built, nnx.Param)))
  assert count == params


STEP_AB = os.path.join(
  os.path.dirname(__file__), '..', 'benchmarks', 'step_ab.py'
)

TINY_LRCN = """
from hpr import config as config_lib

def get_config():
  config = config_lib.default_config()
  config.model.name = 'lrcn'
  config.model.lrcn.conv_features = (4, 8)
  config.model.lrcn.pool_sizes = (2, 2)
  config.model.lrcn.lstm_features = 8
  config.input.num_frames, config.input.image_size = 4, 16
  return config
"""


def _step_ab(tmp_path, *args):
  config = tmp_path / 'tiny_lrcn.py'
  config.write_text(TINY_LRCN)
  return subprocess.run(
    [sys.executable, STEP_AB, '--model', str(config), *args],
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow
def test_step_ab_times_every_variant_in_turns(tmp_path):
  setup = tmp_path / 'setup.py'
  marker = tmp_path / 'setup_ran'
  setup.write_text(f'open({str(marker)!r}, "w").close()\n')
  out = tmp_path / 'ab.json'
  # The test session's 8 fake devices are inherited: a batch of 8.
  result = _step_ab(
    tmp_path,
    '--batch_size=8',
    '--rounds=2',
    '--per_round=1',
    '--warmup=1',
    '--variant=lstm 4:config.model.lrcn.lstm_features=4',
    f'--variant=setup:setup={setup}',
    f'--json={out}',
  )
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(out.read_text())
  names = [v['name'] for v in report['variants']]
  assert names == ['baseline', 'lstm 4', 'setup']
  assert report['variants'][1]['config'] == {'model.lrcn.lstm_features': 4}
  assert marker.exists()  # The setup file ran before its variant.
  for v in report['variants']:
    assert len(v['ratio_per_round']) == 2
    assert v['clips_per_s'] > 0
  assert report['variants'][0]['ratio_per_round'] == [1.0, 1.0]
  assert '| lstm 4 |' in result.stdout


@pytest.mark.parametrize(
  'variant, message',
  [
    ('x:config.model.lrcn.nope=1', "no config key 'model.lrcn.nope'"),
    ('x:config.training.batch_size=abc', 'training.batch_size: '),
    ('x', 'expected NAME:ITEM'),
    ('x:warp=9', 'is not config.KEY=, xla.OPTION= or setup='),
  ],
)
def test_step_ab_rejects_a_bad_variant_in_one_line(tmp_path, variant, message):
  result = _step_ab(tmp_path, f'--variant={variant}')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('step_ab: ') and message in last
  assert 'Traceback' not in result.stderr


# The peers (benchmarks/peers) and the sitting that compares hpr with them.

NOTEBOOK_PARAMS = {'convlstm': 44_524, 'lrcn': 73_060}
RESULTS = os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'results')


@pytest.mark.parametrize('model', ['convlstm', 'lrcn'])
def test_peer_keras_models_are_the_notebooks(model):
  tf_keras = pytest.importorskip('tf_keras')
  from peers import keras_models

  built = keras_models.build(tf_keras, model)
  assert built.count_params() == NOTEBOOK_PARAMS[model]
  assert built.output_shape == (None, 4)


@pytest.mark.parametrize('model', ['convlstm', 'lrcn'])
def test_peer_torch_models_are_the_notebooks(model):
  torch = pytest.importorskip('torch')
  from peers import torch_models

  net = torch_models.build(model)
  assert torch_models.trainable_params(net) == NOTEBOOK_PARAMS[model]
  clips, _, _ = peers_common.random_batch(2, channels_first=True)
  assert net(torch.from_numpy(clips)).shape == (2, 4)


@pytest.mark.parametrize('model', ['convlstm', 'lrcn'])
def test_peer_torch_models_compute_the_keras_models(model):
  """With Keras' weights, PyTorch's network is Keras' (where both are
  installed: the peers' environment plus pytest)."""
  torch = pytest.importorskip('torch')
  tf_keras = pytest.importorskip('tf_keras')
  from peers import keras_models, torch_models

  keras_net = keras_models.build(tf_keras, model)
  kwargs = {'gate': 'hard_sigmoid'} if model == 'convlstm' else {}
  net = torch_models.build(model, **kwargs).eval()
  torch_models.from_keras(net, keras_net)
  clips, _, _ = peers_common.random_batch(2)
  expected = keras_net.predict_on_batch(clips)
  channels_first = torch.from_numpy(clips.transpose(0, 1, 4, 2, 3).copy())
  with torch.no_grad():
    got = torch.softmax(net(channels_first), -1).numpy()
  assert abs(got - expected).max() < 1e-5


def test_peer_flops_are_the_anchors_count():
  flops = peers_common.analytic_flops()
  # GFLOP per clip, forward + backward: the figures benchmarks/README.md
  # has quoted since sitting A.
  assert round(flops['convlstm']['train'] / 1e9, 3) == 1.024
  assert round(flops['lrcn']['train'] / 1e9, 3) == 0.338
  assert flops['lrcn']['forward'] < flops['lrcn']['train']


def test_sitting_recomputes_sitting_p_from_its_saved_results():
  files = [
    'anchors_2026-12-03T1333_cpu2.json',
    'train_speed_2026-12-03T1346_cpu2.json',
    'anchors_2026-12-03T1352_cpu2.json',
  ]
  result = subprocess.run(
    [sys.executable, sitting.__file__, '--recompute']
    + [os.path.join(RESULTS, f) for f in files],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  # The ratios benchmarks/README.md published for sitting P.
  for row in (
    '| ConvLSTM, 4 | 39.7 | torch.compile 25.9 / 24.3 '
    '(PyTorch eager 20.3 / 21.8) | **1.53-1.64x** |',
    '| ConvLSTM, 32 | 45.1 | PyTorch eager 31.9 / 36.6 '
    '(torch.compile 26.9 / 29.4) | **1.23-1.42x** |',
    '| LRCN, 4 | 256.5 | tf_keras 111.6 / 112.4 | **2.28-2.30x** |',
    '| LRCN, 32 | 326.1 | tf_keras 203.3 / 170.0 | **1.60-1.92x** |',
  ):
    assert row in result.stdout
  assert 'hpr >= 1.0x the best peer in every cell: yes' in result.stdout


def _peer(framework, model, **clips_per_s):
  """A `peers/run.py` entry with these clips/s per batch ('b4': 10.0)."""
  train = {
    k[1:]: {'median_s': int(k[1:]) / v, 'clips_per_s': v}
    for k, v in clips_per_s.items()
  }
  return {
    'framework': framework,
    'model': model,
    'status': 'ok',
    'train': train,
  }


def _hpr(model, batch_size, clips_per_s):
  return {
    'model': f'seed_{model}',
    'batch_size': batch_size,
    'clips_per_s': clips_per_s,
    'step_ms_p10': 1.0,
    'step_ms_p90': 2.0,
  }


def test_sitting_takes_the_best_peer_of_each_pass(tmp_path):
  failed = {'framework': 'torch-compile', 'model': 'lrcn'}
  before = [
    _peer('tf_keras', 'lrcn', b4=10.0, b32=40.0),
    _peer('torch-eager', 'lrcn', b4=8.0, b32=50.0),
    {**failed, 'status': 'timed out after 60 s'},
  ]
  after = [
    _peer('tf_keras', 'lrcn', b4=12.5, b32=40.0),
    _peer('torch-eager', 'lrcn', b4=20.0, b32=45.0),
    _peer('torch-compile', 'lrcn', b4=1.0, b32=1.0),
  ]
  after[0]['train']['32']['others_cores_mean'] = 1.25
  hpr = {'results': [_hpr('lrcn', 4, 25.0), _hpr('lrcn', 32, 45.0)]}
  summary = sitting.summarize(before, hpr, after)
  b4, b32 = summary['cells']
  assert [p['framework'] for p in b4['best_peer']] == [
    'tf_keras',
    'torch-eager',
  ]
  assert (b4['ratio_min'], b4['ratio_max']) == (1.25, 2.5)
  assert b32['best_peer'][0] == {'framework': 'torch-eager', 'clips_per_s': 50}
  assert (b32['ratio_min'], b32['ratio_max']) == (0.9, 1.0)
  assert b32['peers']['torch-compile'] == [None, 1.0]
  assert summary['all_at_least_1x'] is False

  saved = tmp_path / 'sitting.json'
  saved.write_text(
    json.dumps(
      {
        'meta': {'started_utc': 'S', 'finished_utc': 'F', 'commit': 'abc'},
        'peers_before': before,
        'hpr': hpr,
        'peers_after': after,
        'summary': summary,
      }
    )
  )
  result = subprocess.run(
    [sys.executable, sitting.__file__, '--table', str(saved)],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == sitting.markdown(
    json.loads(saved.read_text())
  )
  lines = result.stdout.splitlines()
  assert lines[0].startswith('Sitting S to F UTC, commit abc')
  assert (
    '| LRCN, 4 | 25.0 | tf_keras 10.0 / PyTorch eager 20.0 '
    '(torch.compile - / 1.0) | **1.25-2.50x** |'
  ) in result.stdout
  assert '| LRCN, 32 | 45.0 | PyTorch eager 50.0 / 45.0' in result.stdout
  assert '**0.90-1.00x**' in result.stdout
  assert 'every cell: no (of the peers that ran)' in result.stdout
  assert 'torch-compile/lrcn (timed out after 60 s)' in result.stdout
  assert 'kept up to 1.2 cores busy' in result.stdout


def test_sitting_one_pass_and_a_cell_without_peers():
  hpr = {'results': [_hpr('convlstm', 32, 30.0), _hpr('lrcn', 32, 300.0)]}
  summary = sitting.summarize([_peer('torch-eager', 'lrcn', b32=150.0)], hpr)
  convlstm, lrcn = summary['cells']
  assert convlstm['ratio_min'] is None and convlstm['best_peer'] == [None]
  assert lrcn['ratios'] == [2.0]
  assert summary['all_at_least_1x'] is None
  table = sitting.markdown({'meta': {'command': ['x', 'a.json']}, 'hpr': hpr,
                            'summary': summary})  # fmt: skip
  assert '| ConvLSTM, 32 | 30.0 | no peer ran | **n/a** |' in table
  assert '| LRCN, 32 | 300.0 | PyTorch eager 150.0 | **2.00x** |' in table
  assert 'best peer, before / after' not in table
  assert 'busy' not in table


def test_sitting_names_results_by_platform():
  assert sitting.platform_label({'platform': 'cpu'}) == f'cpu{os.cpu_count()}'
  gpu = {'platform': 'gpu', 'device_kind': 'NVIDIA H100 80GB HBM3'}
  assert sitting.platform_label(gpu) == 'gpu_NVIDIA-H100-80GB-HBM3'


def test_train_speed_table_without_the_extras():
  """`--extras=off` (a short sitting on an accelerator) leaves out the
  FLOPs and the cached compile: the table shows '-' there."""
  entry = {
    'model': 'seed_lrcn',
    'batch_size': 256,
    'devices': 1,
    'clips_per_s': 5000.0,
    'step_ms': 51.2,
    'step_ms_p10': 50.0,
    'step_ms_p90': 53.0,
    'infer_clips_per_s': 20000.0,
    'compile_s': 3.0,
    'peak_rss_mib': 2048.0,
  }
  row = train_speed_table([entry], 1000.0).splitlines()[-1]
  assert row == (
    '| seed_lrcn | 256 | 1 | 5000.0 | 51.2 (50.0-53.0) | - | - | - | '
    '20000.0 | 3.0 / - | - | 2048 |'
  )


def test_the_train_step_imports_without_tensorflow():
  """benchmarks/train_speed.py's worker needs no TensorFlow (nor clu's
  writers, which import it): GPU images such as the lent one have JAX and
  PyTorch but no TensorFlow."""
  code = (
    'import sys\n'
    "sys.modules['tensorflow'] = sys.modules['clu'] = None\n"
    'from hpr import cli, malloc_tuning, parallel, train_state\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]
