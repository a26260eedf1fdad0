"""The synthetic_actions builder: deterministic, group-wise splits, real
time-reversed pairs, frames stored as JPEG."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hpr.datasets import synthetic_actions, synthetic_render

TINY = 'synthetic_actions/tiny'


def _examples(data_dir, split):
  builder = tfds.builder(TINY, data_dir=data_dir)
  ds = builder.as_dataset(
    split=split, decoders={'video': tfds.decode.SkipDecoding()}
  )
  return {ex['video_id'].decode(): ex for ex in tfds.as_numpy(ds)}


def test_builder_is_deterministic(data_dir, tmp_path):
  # A second build in a fresh directory stores byte-identical clips.
  tfds.builder(TINY, data_dir=str(tmp_path)).download_and_prepare()
  for split in ('train', 'test'):
    first, second = _examples(data_dir, split), _examples(str(tmp_path), split)
    assert sorted(first) == sorted(second)
    for video_id, ex in first.items():
      assert list(ex['video']) == list(second[video_id]['video'])
      assert ex['label'] == second[video_id]['label']


def test_splits_are_by_group_and_disjoint(data_dir):
  builder = tfds.builder(TINY, data_dir=data_dir)
  config = builder.builder_config
  groups = {}
  for split in ('train', 'validation', 'test'):
    examples = _examples(data_dir, split)
    groups[split] = {int(ex['group']) for ex in examples.values()}
    num_classes = len(synthetic_render.CLASS_NAMES)
    expected = len(groups[split]) * num_classes * config.clips_per_group
    assert len(examples) == expected == builder.info.splits[split].num_examples
    for video_id, ex in examples.items():
      # UCF naming: v_<Class>_g<GG>_c<CC>, consistent with the fields.
      name = builder.info.features['label'].int2str(ex['label'])
      assert video_id == f'v_{name}_g{ex["group"]:02d}_c{ex["clip"]:02d}'
      assert ex['num_frames'] == len(ex['video']) == config.num_frames
      assert ex['video'][0][:2] == b'\xff\xd8'  # JPEG, not re-encoded PNG.
  assert not groups['train'] & groups['validation']
  assert not groups['train'] & groups['test']
  assert not groups['validation'] & groups['test']
  assert groups['train'] | groups['validation'] | groups['test'] == set(
    range(1, config.num_groups + 1)
  )


def test_default_split_groups():
  split = synthetic_actions.split_groups(25)
  assert split['train'] == list(range(1, 19))
  assert split['validation'] == list(range(19, 22))
  assert split['test'] == list(range(22, 26))
  with pytest.raises(ValueError, match='at least 3 groups'):
    synthetic_actions.split_groups(2)


def test_classes_include_the_notebook_and_reversed_pairs():
  names = synthetic_render.CLASS_NAMES
  for name in ('Lunges', 'JumpRope', 'JumpingJack', 'PushUps'):
    assert name in names
  assert len(synthetic_render.REVERSED) >= 2
  assert len(set(names)) == len(names) == 12


@pytest.mark.parametrize('pair', sorted(synthetic_render.REVERSED.items()))
def test_reversed_class_is_its_partner_backwards(pair):
  reverse, forward = pair
  kwargs = dict(seed=3, num_frames=10, image_size=32, frame_effects=False)
  a = synthetic_render.render_clip(forward, 2, 1, **kwargs)
  b = synthetic_render.render_clip(reverse, 2, 1, **kwargs)
  np.testing.assert_array_equal(a[::-1], b)
  # The motion is real: the frames are not all the same.
  assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 1.0
  # And the set of frames is the same, so only the order tells them apart.
  assert sorted(f.tobytes() for f in a) == sorted(f.tobytes() for f in b)


def test_render_clip_depends_only_on_its_keys():
  kwargs = dict(num_frames=6, image_size=32)
  first = synthetic_render.render_clip('Waving', 4, 2, **kwargs)
  synthetic_render.render_clip('Squats', 1, 1, **kwargs)  # Unrelated work.
  again = synthetic_render.render_clip('Waving', 4, 2, **kwargs)
  np.testing.assert_array_equal(first, again)
  assert first.shape == (6, 32, 32, 3) and first.dtype == np.uint8
  other_clip = synthetic_render.render_clip('Waving', 4, 3, **kwargs)
  other_seed = synthetic_render.render_clip('Waving', 4, 2, seed=1, **kwargs)
  assert not np.array_equal(first, other_clip)
  assert not np.array_equal(first, other_seed)


def test_group_shares_the_room_across_classes():
  # Clips of one group share the background, so the room cannot give the
  # class away; other groups have other rooms. (Per-clip lighting and
  # moving objects are off here, so only the figure differs.)
  steady = synthetic_render.Nuisance(lighting=0.0, distractors=0)

  def frame(name, group):
    clip = synthetic_render.render_clip(
      name, group, 1, num_frames=4, nuisance=steady, frame_effects=False
    )
    return clip[0].astype(float)

  same = np.median(np.abs(frame('Clapping', 5) - frame('PushUps', 5)))
  other = np.median(np.abs(frame('Clapping', 5) - frame('Clapping', 6)))
  assert same < 2 < 10 < other


def test_unknown_class():
  with pytest.raises(ValueError, match='unknown class'):
    synthetic_render.render_clip('Dancing', 1, 1)
