"""The benchmarks time the notebook's models on the notebook's clips,
whatever hpr's defaults are (the anchors in ../shared/bench use them too)."""

import os
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
