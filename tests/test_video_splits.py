"""Splits of video folders: official files, groups, stratified, leaky."""

import logging

import pytest

from hpr.datasets.video_files import VideoFile, parse_ucf_name
from hpr.datasets.video_splits import assign, shared_groups
from hpr.errors import ConfigError, UserError


def ucf_videos(classes=('ApplyEyeMakeup', 'HandstandPushups'), groups=8):
  """UCF101-named videos: 2 clips per class and group. HandstandPushups
  files are named HandStandPushups, as in UCF101."""
  videos = []
  for label, name in enumerate(classes):
    stem = 'HandStandPushups' if name == 'HandstandPushups' else name
    for g in range(1, groups + 1):
      for c in (1, 2):
        filename = f'v_{stem}_g{g:02d}_c{c:02d}.avi'
        videos.append(
          VideoFile(
            f'/d/{name}/{filename}',
            f'{name}/{filename}',
            label,
            name,
            *parse_ucf_name(filename),
          )
        )
  return videos


def hmdb_videos():
  videos = []
  for label, name in enumerate(('brush_hair', 'cartwheel')):
    for i in range(10):
      filename = f'{name}_clip_{i}.avi'
      videos.append(
        VideoFile(f'/d/{name}/{filename}', f'{name}/{filename}', label, name)
      )
  return videos


def groups_of(videos):
  return sorted({v.group for v in videos})


def test_ucf101_official_lists(tmp_path):
  videos = ucf_videos()
  train_lines, test_lines = [], []
  for i, v in enumerate(videos):
    # The official files: '<Class>/<file> <label 1-based>' in trainlist,
    # '<Class>/<file>' in testlist; testlist01 holds groups 1-7. UCF101's
    # lists spell the class folder HandstandPushups, the files
    # HandStandPushups (matching ignores case); one file is listed nowhere.
    if v.group <= 3:
      test_lines.append(v.relpath.replace('Handstand', 'HandStand'))
    elif i != len(videos) - 1:
      train_lines.append(f'{v.relpath} {v.label + 1}')
  (tmp_path / 'classInd.txt').write_text(
    '1 ApplyEyeMakeup\n2 HandstandPushups\n'
  )
  (tmp_path / 'trainlist01.txt').write_text('\r\n'.join(train_lines) + '\r\n')
  (tmp_path / 'testlist01.txt').write_text('\n'.join(test_lines) + '\n')
  splits, notes = assign(
    videos, 'official', split_dir=str(tmp_path), split_number=1, val_groups=2
  )
  assert groups_of(splits['test']) == [1, 2, 3]
  assert groups_of(splits['validation']) == [7, 8]
  assert groups_of(splits['train']) == [4, 5, 6]
  assert len(splits['test']) == 2 * 3 * 2
  assert notes['unused'] == 1
  assert len(splits['train']) + len(splits['validation']) == 2 * 5 * 2 - 1
  assert shared_groups(splits) == []


def test_hmdb51_official_lists(tmp_path):
  videos = hmdb_videos()
  for name in ('brush_hair', 'cartwheel'):
    # 1 = train, 2 = test, 0 = unused; the official files end lines with
    # a space.
    lines = [
      f'{name}_clip_{i}.avi {[1, 1, 1, 1, 1, 1, 1, 2, 2, 0][i]} '
      for i in range(10)
    ]
    (tmp_path / f'{name}_test_split2.txt').write_text('\n'.join(lines) + '\n')
  (tmp_path / 'brush_hair_test_split1.txt').write_text('ignored.avi 1\n')
  splits, notes = assign(
    videos,
    'official',
    split_dir=str(tmp_path),
    split_number=2,
    val_fraction=0.3,
  )
  test = {v.relpath for v in splits['test']}
  assert test == {
    f'{n}/{n}_clip_{i}.avi' for n in ('brush_hair', 'cartwheel') for i in (7, 8)
  }
  assert notes['unused'] == 2
  # Validation: 2 of each class's 7 training videos, at random.
  assert len(splits['validation']) == 4 and len(splits['train']) == 10
  for v in splits['validation']:
    assert int(v.relpath.split('_clip_')[1][0]) < 7


def test_official_without_files_is_an_error(tmp_path):
  with pytest.raises(UserError, match='neither UCF101'):
    assign(ucf_videos(), 'official', split_dir=str(tmp_path))
  with pytest.raises(UserError, match='split_dir: no such folder: /no/such'):
    assign(ucf_videos(), 'official', split_dir='/no/such')
  with pytest.raises(UserError, match="'official' needs .*split_dir"):
    assign(ucf_videos(), 'official')


def test_official_lists_that_leak_a_group_are_refused(tmp_path):
  videos = ucf_videos(groups=4)
  train = [f'{v.relpath} 1' for v in videos if v.clip == 1]
  test = [v.relpath for v in videos if v.clip == 2]
  (tmp_path / 'trainlist01.txt').write_text('\n'.join(train))
  (tmp_path / 'testlist01.txt').write_text('\n'.join(test))
  with pytest.raises(UserError, match='leaky split'):
    assign(videos, 'official', split_dir=str(tmp_path), val_groups=1)


def test_groups_with_test_groups_and_validation_from_training_groups():
  splits, _ = assign(
    ucf_videos(groups=10), 'groups', test_groups=(1, 2), val_groups=3
  )
  assert groups_of(splits['test']) == [1, 2]
  assert groups_of(splits['validation']) == [8, 9, 10]
  assert groups_of(splits['train']) == [3, 4, 5, 6, 7]


def test_leave_one_group_out_fold():
  splits, _ = assign(ucf_videos(groups=6), 'groups', fold=4, val_groups=1)
  assert groups_of(splits['test']) == [4]
  assert groups_of(splits['validation']) == [6]
  assert groups_of(splits['train']) == [1, 2, 3, 5]


def test_groups_need_ucf_names():
  with pytest.raises(UserError, match='needs UCF names'):
    assign(hmdb_videos(), 'groups')


def test_too_many_validation_groups():
  with pytest.raises(ConfigError, match='val_groups'):
    assign(ucf_videos(groups=3), 'groups', fold=1, val_groups=2)


def test_stratified_is_per_class_seeded_and_disjoint():
  videos = hmdb_videos()
  a, _ = assign(
    videos, 'stratified', test_fraction=0.2, val_fraction=0.1, seed=3
  )
  b, _ = assign(
    videos, 'stratified', test_fraction=0.2, val_fraction=0.1, seed=3
  )
  c, _ = assign(
    videos, 'stratified', test_fraction=0.2, val_fraction=0.1, seed=4
  )
  assert a == b and a != c
  for label in (0, 1):
    assert sum(v.label == label for v in a['test']) == 2
    assert sum(v.label == label for v in a['validation']) == 1
  paths = [v.path for split in a.values() for v in split]
  assert sorted(paths) == sorted(v.path for v in videos)


def test_random_clips_of_grouped_videos_needs_the_flag():
  with pytest.raises(ConfigError, match='allow_leaky_split'):
    assign(ucf_videos(), 'random_clips')
  with pytest.raises(ConfigError, match="split='groups'"):
    assign(ucf_videos(), 'stratified')


def test_random_clips_with_the_flag_warns_naming_the_leak(caplog):
  with caplog.at_level(logging.WARNING):
    splits, notes = assign(ucf_videos(), 'random_clips', allow_leaky_split=True)
  assert notes['shared_groups']
  assert shared_groups(splits) == notes['shared_groups']
  text = caplog.text
  assert 'leaky' in text and 'both training and test' in text


def mixed_videos():
  """UCF-named videos (2 clips per class and group) plus one file of each
  class without a group: the leak check must not depend on the others."""
  videos = ucf_videos(groups=4)
  for label, name in enumerate(('ApplyEyeMakeup', 'HandstandPushups')):
    filename = f'{name}_extra.avi'
    videos.append(
      VideoFile(f'/d/{name}/{filename}', f'{name}/{filename}', label, name)
    )
  return videos


def test_stratified_split_of_grouped_videos_is_refused_with_one_ungrouped():
  with pytest.raises(UserError) as e:
    assign(mixed_videos(), 'stratified', test_fraction=0.3, val_fraction=0.2)
  message = str(e.value)
  assert 'leaky split' in message and '(class, group) pairs' in message
  assert 'ApplyEyeMakeup/ApplyEyeMakeup_extra.avi' in message
  assert 'allow_leaky_split' in message and '\n' not in message


def test_leaky_split_with_the_flag_warns_with_the_count_of_pairs(caplog):
  videos = mixed_videos()
  with caplog.at_level(logging.WARNING):
    splits, notes = assign(
      videos,
      'stratified',
      test_fraction=0.3,
      val_fraction=0.2,
      allow_leaky_split=True,
    )
  pairs = {}
  for name, split in splits.items():
    for v in split:
      if v.group:
        pairs.setdefault((v.class_name, v.group), set()).add(name)
  leaked = sum(len(sides) > 1 for sides in pairs.values())
  assert leaked > 0 and notes['shared_pairs'] == leaked
  assert f'{leaked} (class, group) pairs' in caplog.text
  assert notes['shared_groups'] == shared_groups(splits)


def test_groups_split_of_a_mixed_folder_does_not_recommend_stratified():
  with pytest.raises(UserError) as e:
    assign(mixed_videos(), 'groups')
  message = str(e.value)
  assert '2 of the 18 videos have none' in message
  assert 'stratified' not in message and 'rename' in message
  # Without any group, 'stratified' is the split to use.
  with pytest.raises(UserError, match="use split='stratified'"):
    assign(hmdb_videos(), 'groups')
