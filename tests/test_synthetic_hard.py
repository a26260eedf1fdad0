"""synthetic_actions/small_video (synthetic_hard): the harder folder of issue
25, its time-reversed pairs, its variety of sizes, rates and codecs, and its
export as a UCF-style folder of real video files."""

import collections
import os
import re

import av
import numpy as np
import pytest
from PIL import Image

from hpr.datasets import synthetic_actions
from hpr.datasets import synthetic_hard as sh


@pytest.mark.parametrize('reverse', sorted(sh.REVERSED))
def test_a_reversed_class_is_its_partner_backwards(reverse):
  forward = sh.REVERSED[reverse]
  a, spec_a = sh.render_clip(forward, 2, 1, frame_effects=False)
  b, spec_b = sh.render_clip(reverse, 2, 1, frame_effects=False)
  assert spec_a == spec_b
  np.testing.assert_array_equal(b, a[::-1])
  assert np.abs(np.diff(a.astype(np.int16), axis=0)).mean() > 0.1  # It moves.


def test_clips_are_deterministic_and_depend_on_the_seed():
  a, _ = sh.render_clip('Waving', 4, 2, seed=3)
  b, _ = sh.render_clip('Waving', 4, 2, seed=3)
  c, _ = sh.render_clip('Waving', 4, 2, seed=4)
  np.testing.assert_array_equal(a, b)
  assert a.shape != c.shape or np.abs(a.astype(int) - c).mean() > 5


def test_shake_and_noise_break_exact_reversal():
  a, _ = sh.render_clip('ZoomIn', 1, 1)
  b, _ = sh.render_clip('ZoomOut', 1, 1)
  assert not np.array_equal(b, a[::-1])
  # But they are the same scene: far closer than two other classes.
  assert np.abs(b.astype(int) - a[::-1]).mean() < 12


def test_rolling_clockwise_turns_the_picture_clockwise():
  canvas = np.zeros((100, 100, 3), np.uint8)
  canvas[48:52, 80:84] = 255  # A marker right of the centre.
  image = Image.fromarray(canvas)
  turned = np.asarray(
    sh._look(image, (50, 50), 1.0, np.radians(90), (100, 100))
  )
  y, x = np.argwhere(turned[..., 0] > 128).mean(0)
  # Clockwise on screen (y points down): right of the centre goes below it.
  assert y > 70 and abs(x - 50) < 5


def test_the_full_config_has_the_issue_properties():
  config = synthetic_actions.SyntheticActions.builder_configs['small_video']
  assert config.renderer == 'synthetic_hard'
  specs = [
    sh.clip_spec(name, group, clip, config.seed)
    for group in range(1, config.num_groups + 1)
    for name in sh.CLASS_NAMES
    for clip in range(1, config.clips_per_group + 1)
  ]
  assert len(specs) == 400 and config.num_groups == 25
  assert len(sh.CLASS_NAMES) == 8 and len(sh.REVERSED) == 3
  assert {(s.width, s.height) for s in specs} == set(sh.SIZES)
  assert {s.fps for s in specs} == set(sh.RATES)
  assert {s.codec for s in specs} == {'mpeg4', 'libx264'}
  assert min(s.num_frames for s in specs) >= 24
  assert set(sh.FLIP_LABEL_MAP) == {'RotateCW', 'RotateCCW'}


@pytest.mark.slow
def test_the_folder_exports_with_its_sizes_rates_and_codecs(tmp_path):
  import tensorflow_datasets as tfds

  from hpr.tools import export_synthetic

  config = synthetic_actions.SyntheticActionsConfig(
    name='small_video_test',
    num_groups=3,
    clips_per_group=1,
    renderer='synthetic_hard',
    seed=1,
  )
  builder = tfds.builder(
    'synthetic_actions', config=config, data_dir=str(tmp_path / 'tfds')
  )
  builder.download_and_prepare()
  out = tmp_path / 'folder'
  paths = export_synthetic.export_builder(builder, str(out))
  assert sorted(os.listdir(out)) == sorted(sh.CLASS_NAMES)
  assert len(paths) == 3 * 8
  found = collections.Counter()
  for path in paths:
    name = os.path.basename(path)
    match = re.fullmatch(r'v_(\w+)_g(\d\d)_c(\d\d)(\.\w+)', name)
    assert match, name
    class_name, group, clip, ext = match.groups()
    assert os.path.basename(os.path.dirname(path)) == class_name
    spec = sh.clip_spec(class_name, int(group), int(clip), seed=1)
    assert ext == spec.extension
    with av.open(path) as container:
      stream = container.streams.video[0]
      frames = sum(1 for _ in container.decode(stream))
      codec = stream.codec_context.name
      size = (stream.codec_context.width, stream.codec_context.height)
      fps = float(stream.average_rate)
    assert codec == {'mpeg4': 'mpeg4', 'libx264': 'h264'}[spec.codec]
    assert size == (spec.width, spec.height)
    assert fps == pytest.approx(spec.fps, rel=1e-3)
    assert frames == spec.num_frames
    found[codec] += 1
  assert set(found) == {'mpeg4', 'h264'}
