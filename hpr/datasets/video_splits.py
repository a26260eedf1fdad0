"""Train / validation / test splits of a video folder, never leaky by accident.

Schemes (`dataset.video_folder.split`):
  'groups'      UCF-named videos (v_<Class>_gGG_cCC): test = `test_groups`,
                or leave-one-group-out fold k (test group k); validation is
                the last `val_groups` of the remaining groups.
  'official'    the dataset's own split files in `split_dir`, split number
                N: UCF101's trainlist0N.txt / testlist0N.txt, or HMDB51's
                <class>_test_splitN.txt (1 train, 2 test, 0 unused).
                Validation is carved from the training videos: by groups
                where names have them, else `val_fraction` per class.
  'stratified'  folders without groups: per class, `test_fraction` and
                `val_fraction` of the videos at random (seeded).
  'random_clips' the notebook's split: stratified at random over clips even
                though they have groups, so one actor and scene appear on
                both sides. Only with `allow_leaky_split=True`, and it warns.
Every split of grouped videos except 'random_clips' is checked: train,
validation and test share no group.
"""

import glob
import os
import random
import re
from collections.abc import Sequence

from absl import logging

from hpr.datasets.video_files import VideoFile
from hpr.errors import ConfigError, UserError

SCHEMES = ('groups', 'official', 'stratified', 'random_clips')
SPLITS = ('train', 'validation', 'test')


def assign(
  videos: Sequence[VideoFile],
  scheme: str,
  *,
  test_groups: Sequence[int] = (),
  fold: int = 1,
  val_groups: int = 1,
  split_dir: str = '',
  split_number: int = 1,
  test_fraction: float = 0.25,
  val_fraction: float = 0.1,
  seed: int = 0,
  allow_leaky_split: bool = False,
) -> tuple[dict[str, list[VideoFile]], dict]:
  """Splits `videos` by `scheme` (see the module docstring).

  Returns:
    ({'train': [...], 'validation': [...], 'test': [...]}, notes) where
    notes has 'unused' (videos no split file lists) and 'shared_groups'
    (groups on more than one side; only 'random_clips' has any).

  Raises:
    ConfigError: a bad scheme parameter (unknown group, leaky split without
      the flag). UserError: unreadable split files, an empty split, or
      groups shared between splits.
  """
  notes = {'unused': 0, 'shared_groups': []}
  grouped = bool(videos) and all(v.group for v in videos)
  if scheme == 'groups':
    if not grouped:
      missing = [v.relpath for v in videos if not v.group]
      raise UserError(
        f"split 'groups' needs UCF names v_<Class>_g<GG>_c<CC>; "
        f'{len(missing)} videos have none (e.g. {missing[0]}); use '
        "split='stratified'"
      )
    splits = _by_groups(videos, test_groups, fold, val_groups)
  elif scheme == 'official':
    train, test, notes['unused'] = _official(videos, split_dir, split_number)
    if grouped:
      groups = sorted({v.group for v in train})
      train, val = _carve_groups(train, groups, val_groups, 'official')
    else:
      train, val = _stratified(train, val_fraction, seed)
    splits = {'train': train, 'validation': val, 'test': test}
  elif scheme in ('stratified', 'random_clips'):
    if grouped and not (scheme == 'random_clips' and allow_leaky_split):
      raise ConfigError(
        f'dataset.video_folder.split: {scheme!r} would put clips of one '
        "group (actor and scene) in train and test; use split='groups', or "
        "split='random_clips' with allow_leaky_split=True to reproduce the "
        "notebook's leaky split"
      )
    if scheme == 'random_clips' and not allow_leaky_split:
      raise ConfigError(
        "dataset.video_folder.split: 'random_clips' needs "
        'dataset.video_folder.allow_leaky_split=True'
      )
    rest, test = _stratified(videos, test_fraction, seed)
    fraction = val_fraction / max(1e-9, 1 - test_fraction)
    train, val = _stratified(rest, fraction, seed + 1)
    splits = {'train': train, 'validation': val, 'test': test}
  else:
    raise ConfigError(
      f'dataset.video_folder.split: {scheme!r} is not one of '
      f'{", ".join(SCHEMES)}'
    )
  for name in SPLITS:
    if not splits[name]:
      raise UserError(
        f'split {name!r} of the video folder is empty (scheme {scheme!r}); '
        'give it more videos or groups'
      )
  if grouped:
    shared = shared_groups(splits)
    if shared and scheme != 'random_clips':
      raise UserError(
        f'leaky split: groups {shared} are in more than one of train, '
        'validation and test'
      )
    if shared:
      logging.warning(
        "split 'random_clips' is leaky: %d groups (actors and scenes) are in "
        'both training and test, so test accuracy overstates how the model '
        'does on new people',
        len(shared),
      )
    notes['shared_groups'] = shared
  return splits, notes


def shared_groups(splits: dict[str, Sequence[VideoFile]]) -> list[int]:
  """Groups found in more than one split (0, 'no group', is ignored)."""
  seen = {name: {v.group for v in vs} - {0} for name, vs in splits.items()}
  names = list(seen)
  shared = set()
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      shared |= seen[a] & seen[b]
  return sorted(shared)


def _by_groups(videos, test_groups, fold, val_groups):
  groups = sorted({v.group for v in videos})
  if test_groups:
    test = set(test_groups)
    key = 'test_groups'
  else:
    test = {fold}
    key = 'fold'
  unknown = sorted(test - set(groups))
  if unknown:
    raise ConfigError(
      f'dataset.video_folder.{key}: no videos of group(s) {unknown}; the '
      f'folder has groups {groups[0]}..{groups[-1]}'
    )
  rest = [g for g in groups if g not in test]
  train, val = _carve_groups(
    [v for v in videos if v.group not in test], rest, val_groups, 'groups'
  )
  return {
    'train': train,
    'validation': val,
    'test': [v for v in videos if v.group in test],
  }


def _carve_groups(videos, groups, val_groups, scheme):
  """The last `val_groups` of `groups` become validation."""
  if val_groups >= len(groups):
    raise ConfigError(
      f'dataset.video_folder.val_groups: {val_groups} of the {len(groups)} '
      f'training groups of split {scheme!r} leave none to train on'
    )
  val = set(groups[len(groups) - val_groups :])
  return (
    [v for v in videos if v.group not in val],
    [v for v in videos if v.group in val],
  )


def _stratified(videos, fraction, seed):
  """Per class, round(fraction * n) videos at random go to the second list."""
  rng = random.Random(seed)
  first, second = [], []
  by_class = {}
  for v in videos:
    by_class.setdefault(v.label, []).append(v)
  for label in sorted(by_class):
    items = list(by_class[label])
    rng.shuffle(items)
    n = round(fraction * len(items))
    if fraction > 0 and len(items) > 1:
      n = min(max(n, 1), len(items) - 1)
    second += items[:n]
    first += items[n:]
  return sorted(first, key=_key), sorted(second, key=_key)


def _key(v: VideoFile) -> str:
  return v.relpath


def _official(videos, split_dir, number):
  """(train, test, unused count) from UCF101 or HMDB51 split files."""
  if not split_dir:
    raise UserError(
      "split 'official' needs dataset.video_folder.split_dir, the folder of "
      'the split files (UCF101 trainlist01.txt..., HMDB51 *_test_split1.txt)'
    )
  if not os.path.isdir(split_dir):
    raise UserError(
      f'dataset.video_folder.split_dir: no such folder: {split_dir}'
    )
  ucf_train = os.path.join(split_dir, f'trainlist{number:02d}.txt')
  ucf_test = os.path.join(split_dir, f'testlist{number:02d}.txt')
  hmdb = sorted(glob.glob(os.path.join(split_dir, f'*_test_split{number}.txt')))
  if os.path.exists(ucf_train) and os.path.exists(ucf_test):
    sides = {}
    for side, path in (('train', ucf_train), ('test', ucf_test)):
      for entry in _lines(path):
        sides[entry.split()[0].replace('\\', '/').lower()] = side
  elif hmdb:
    sides = parse_hmdb(hmdb)
  else:
    raise UserError(
      f'{split_dir} has neither UCF101 trainlist{number:02d}.txt and '
      f'testlist{number:02d}.txt nor HMDB51 *_test_split{number}.txt files'
    )
  by_name = {key.rpartition('/')[2]: side for key, side in sides.items()}
  train, test, unused = [], [], 0
  for v in videos:
    side = sides.get(v.relpath.lower()) or by_name.get(
      os.path.basename(v.relpath).lower()
    )
    if side == 'train':
      train.append(v)
    elif side == 'test':
      test.append(v)
    else:
      unused += 1
  listed = len(sides)
  if not train and not test:
    raise UserError(
      f'none of the {len(videos)} videos is named in the {listed} entries of '
      f'the split files in {split_dir}'
    )
  return train, test, unused


def parse_hmdb(paths: Sequence[str]) -> dict[str, str]:
  """HMDB51 split files `<class>_test_splitN.txt`, lines `<video> <0|1|2>`:
  {'<class>/<video>' lowercased: 'train' | 'test'}; 0 (unused) is left out."""
  sides = {}
  for path in paths:
    name = re.sub(r'_test_split\d+\.txt$', '', os.path.basename(path))
    for entry in _lines(path):
      parts = entry.split()
      if len(parts) != 2 or parts[1] not in ('0', '1', '2'):
        raise UserError(f'{path}: cannot read line {entry!r}')
      if parts[1] != '0':
        side = 'train' if parts[1] == '1' else 'test'
        sides[f'{name}/{parts[0]}'.lower()] = side
  return sides


def _lines(path: str) -> list[str]:
  with open(path, encoding='utf-8', errors='replace') as f:
    return [line.strip() for line in f if line.strip()]
