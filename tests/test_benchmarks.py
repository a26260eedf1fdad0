"""The benchmarks time the notebook's models on the notebook's clips,
whatever hpr's defaults are (the anchors in ../shared/bench use them too)."""

import json
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'benchmarks'))
from train_speed import load_config  # noqa: E402

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
