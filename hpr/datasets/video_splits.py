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
Every split is checked, whatever the other files are called: train,
validation and test share no group (videos without a UCF name have none).
A split that puts one group on two sides is refused, unless
`allow_leaky_split=True`, which warns with the count of (class, group)
pairs it shares.
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
    notes has 'unused' (videos no split file lists), 'shared_groups'
    (groups on more than one side) and 'shared_pairs' (how many (class,
    group) pairs have clips on more than one side); only a split allowed
    by `allow_leaky_split` has any.

  Raises:
    ConfigError: a bad scheme parameter (unknown group, leaky split without
      the flag). UserError: unreadable split files, an empty split, or
      groups shared between splits.
  """
  notes = {'unused': 0, 'shared_groups': [], 'shared_pairs': 0}
  grouped = bool(videos) and all(v.group for v in videos)
  if scheme == 'groups':
    if not grouped:
      missing = [v.relpath for v in videos if not v.group]
      if len(missing) == len(videos):
        advice = "use split='stratified'"
      else:
        # 'stratified' would split the grouped videos clip by clip.
        advice = (
          'rename them v_<Class>_g<GG>_c<CC> or move them out of the folder'
        )
      raise UserError(
        f"split 'groups' needs UCF names v_<Class>_g<GG>_c<CC>; "
        f'{len(missing)} of the {len(videos)} videos have none (e.g. '
        f'{missing[0]}); {advice}'
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
    if grouped and not allow_leaky_split:
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
  # Whatever the scheme and however the other files are named: a group
  # (actor and scene) on two sides is a leak.
  shared = shared_groups(splits)
  if shared:
    pairs = shared_pairs(splits)
    if not allow_leaky_split:
      raise UserError(
        f'leaky split {scheme!r}: {_leak(pairs, shared)} in more than one of '
        'train, validation and test; ' + _leak_advice(videos, scheme)
      )
    logging.warning(
      'split %r is leaky (allow_leaky_split=True): %s in more than one of '
      'train, validation and test (%d pairs in both training and test), so '
      'test accuracy overstates how the model does on new people',
      scheme,
      _leak(pairs, shared),
      len(shared_pairs({'train': splits['train'], 'test': splits['test']})),
    )
    notes['shared_groups'] = shared
    notes['shared_pairs'] = len(pairs)
  return splits, notes


def _leak(pairs: list[tuple[str, int]], groups: list[int]) -> str:
  """'5 (class, group) pairs (e.g. Jump g03) of 3 groups have clips'."""
  if not pairs:  # Only the group numbers meet, in different classes.
    return f'{len(groups)} groups (e.g. g{groups[0]:02d}) have clips'
  example = f'{pairs[0][0]} g{pairs[0][1]:02d}'
  return (
    f'{len(pairs)} (class, group) pairs (e.g. {example}) of {len(groups)} '
    'groups have clips'
  )


def _leak_advice(videos: Sequence[VideoFile], scheme: str) -> str:
  ungrouped = [v.relpath for v in videos if not v.group]
  if scheme in ('stratified', 'random_clips') and ungrouped:
    return (
      f'{len(ungrouped)} of the {len(videos)} videos have no UCF group (e.g. '
      f"{ungrouped[0]}): rename or move them and use split='groups', or set "
      'dataset.video_folder.allow_leaky_split=True to accept the leak'
    )
  fix = (
    'correct the split files' if scheme == 'official' else "use split='groups'"
  )
  return (
    f'{fix}, or set dataset.video_folder.allow_leaky_split=True to accept '
    'the leak'
  )


def shared_groups(splits: dict[str, Sequence[VideoFile]]) -> list[int]:
  """Groups found in more than one split (0, 'no group', is ignored)."""
  seen = {name: {v.group for v in vs} - {0} for name, vs in splits.items()}
  names = list(seen)
  shared = set()
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      shared |= seen[a] & seen[b]
  return sorted(shared)


def shared_pairs(
  splits: dict[str, Sequence[VideoFile]],
) -> list[tuple[str, int]]:
  """(class name, group) pairs with clips in more than one split, sorted
  (videos without a group are ignored)."""
  sides = {}
  for name, vs in splits.items():
    for v in vs:
      if v.group:
        sides.setdefault((v.class_name, v.group), set()).add(name)
  return sorted(pair for pair, names in sides.items() if len(names) > 1)


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
