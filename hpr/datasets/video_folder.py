"""video_folder: a folder of class folders of videos (UCF50, UCF101, HMDB51...).

Prepared once into TFDS's data_dir with PyAV in parallel worker processes:
every usable video becomes one example with its frames JPEG-encoded at
`short_side`; files that cannot be used are quarantined (listed with their
reason in `quarantine.json` beside the prepared data, counted in the dataset
info's metadata), never fatal.

Splits are stored, not derived at load time: the train, validation and test
splits are TFDS splits of the prepared data, so split sizes, the even
per-process sharding, split slicing ('train[:10%]') and file shuffling work
as for any TFDS dataset. Each combination of preparation and split
parameters is its own builder config, named by the folder and a hash of the
parameters (`config_from`), so a changed root, class subset, short side or
split prepares into a new directory and an unchanged one starts at once.

Decoding is done once per folder and decoding parameters, whatever the
split: every decoded video is kept in the decoded copy,
DATA_DIR/video_folder_decoded/<folder>_<hash of root, classes, short_side,
max_frames, min_frames, short_video>/ (`decoded_dir`), and a split-only
change (another fold, split number or test groups) writes its splits from
there without decoding a video again (only the JPEG bytes are copied). An
interrupted preparation also keeps what it decoded.
"""

import dataclasses
import glob
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import re
from concurrent import futures

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging

from hpr import rundirs
from hpr.datasets import video_files, video_splits
from hpr.errors import UserError

_DESCRIPTION = """\
Videos from a folder of class folders (ROOT/<Class>/<video>), as UCF50,
UCF101 and HMDB51 unpack. Frames are decoded with PyAV, scaled to a short
side and stored as JPEG. UCF names v_<Class>_g<GG>_c<CC> give the group
(actor and scene) and clip. Unusable files are listed in quarantine.json.
"""


@dataclasses.dataclass(eq=False, kw_only=True)
class VideoFolderConfig(tfds.core.BuilderConfig):
  """What to prepare from which folder; see `dataset.video_folder` in
  hpr/schema.py for each field. `num_workers` does not change the data
  and is left out of the name."""

  root: str = ''
  classes: tuple[str, ...] = ()
  short_side: int = 128
  max_frames: int = 0
  min_frames: int = 20
  short_video: str = 'loop'
  split: str = 'groups'
  test_groups: tuple[int, ...] = ()
  fold: int = 1
  val_groups: int = 1
  split_dir: str = ''
  split_number: int = 1
  test_fraction: float = 0.25
  val_fraction: float = 0.1
  seed: int = 0
  allow_leaky_split: bool = False
  num_workers: int = 0

  def params(self) -> dict:
    """The parameters that decide the prepared data."""
    params = {
      f.name: getattr(self, f.name)
      for f in dataclasses.fields(VideoFolderConfig)
      if f.name != 'num_workers'
    }
    if self.split == 'official':
      # Edited split files prepare again.
      params['split_files'] = _digest_files(self.split_dir)
    return params


def config_from(vf) -> VideoFolderConfig:
  """The builder config of a `dataset.video_folder` ConfigDict.

  Its name is `<folder name>_<hash of the parameters>`, e.g. `ucf50_1a2b3c4d5e`.
  """
  root = os.path.abspath(os.path.expanduser(vf.root)) if vf.root else ''
  split_dir = vf.split_dir and os.path.abspath(os.path.expanduser(vf.split_dir))
  config = VideoFolderConfig(
    name='unnamed',
    root=root,
    classes=tuple(vf.classes),
    short_side=vf.short_side,
    max_frames=vf.max_frames,
    min_frames=vf.min_frames,
    short_video=vf.short_video,
    split=vf.split,
    test_groups=tuple(vf.test_groups),
    fold=vf.fold,
    val_groups=vf.val_groups,
    split_dir=split_dir,
    split_number=vf.split_number,
    test_fraction=vf.test_fraction,
    val_fraction=vf.val_fraction,
    seed=vf.seed,
    allow_leaky_split=vf.allow_leaky_split,
    num_workers=vf.num_workers,
  )
  text = json.dumps(config.params(), sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:10]
  slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(root).lower()).strip('_')
  config.name = f'{slug or "videos"}_{digest}'
  config.description = f'{root}: {text}'
  return config


def _digest_files(folder: str) -> str:
  if not folder or not os.path.isdir(folder):
    return ''
  digest = hashlib.sha256()
  for path in sorted(glob.glob(os.path.join(folder, '*.txt'))):
    digest.update(os.path.basename(path).encode())
    with open(path, 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()[:16]


# The parameters that decide a video's decoded frames (the decoded copy's
# key); the split parameters are not among them.
DECODE_PARAMS = (
  'root',
  'classes',
  'short_side',
  'max_frames',
  'min_frames',
  'short_video',
)
_DECODED = {'decoded': 0, 'reused': 0}  # This process's counts.


def decode_counts() -> dict[str, int]:
  """Videos this process has decoded, and taken from a decoded copy
  instead, in all preparations so far."""
  return dict(_DECODED)


def decoded_dir(data_dir_root: str, config: VideoFolderConfig) -> str:
  """The decoded copy of `config`'s folder under a TFDS data_dir."""
  params = {k: getattr(config, k) for k in DECODE_PARAMS}
  params['classes'] = list(params['classes'])
  text = json.dumps(params, sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:10]
  slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(config.root).lower())
  name = f'{slug.strip("_") or "videos"}_{digest}'
  return os.path.join(os.fspath(data_dir_root), 'video_folder_decoded', name)


class _DecodedCopy:
  """Decoded videos on disk, one `encode_video` result per source file:
  <key>.json (all but the frames, and their sizes) and <key>.jpg (the JPEG
  frames end to end). The key is the file's path, size and modification
  time, so an edited video decodes again."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(path, exist_ok=True)

  def _key(self, source: str) -> str:
    st = os.stat(source)
    text = f'{os.path.abspath(source)}\0{st.st_size}\0{st.st_mtime_ns}'
    return hashlib.sha256(text.encode()).hexdigest()[:24]

  def load(self, source: str) -> dict | None:
    try:
      base = os.path.join(self.path, self._key(source))
      with open(base + '.json') as f:
        result = json.load(f)
      sizes = result.pop('frame_sizes', None)
      if sizes is not None:
        with open(base + '.jpg', 'rb') as f:
          data = f.read()
        if len(data) != sum(sizes):
          return None
        ends = np.cumsum([0, *sizes])
        result['frames'] = [
          data[a:b] for a, b in zip(ends[:-1], ends[1:], strict=True)
        ]
    except (OSError, ValueError):
      return None
    result['path'] = source
    return result

  def store(self, result: dict) -> None:
    try:
      base = os.path.join(self.path, self._key(result['path']))
    except OSError:
      return  # The source is gone; nothing to key it by.
    meta = {k: v for k, v in result.items() if k not in ('frames', 'path')}
    if 'frames' in result:
      meta['frame_sizes'] = [len(f) for f in result['frames']]
      _write(base + '.jpg', b''.join(result['frames']))
    # The JSON last: its presence says the entry is whole.
    _write(base + '.json', json.dumps(meta).encode())


def _write(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def fingerprint(rows) -> str:
  """sha256 (16 hex digits) of the sorted rows (tuples of str and int)."""
  text = json.dumps(sorted(list(map(list, rows))))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """Videos in class folders, prepared with PyAV (no download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's, except that a preparation that fails (a leaky split, a class
    without a usable video) leaves no empty dataset folders behind."""
    downloads = os.path.join(os.fspath(self.data_dir_root), 'downloads')
    with rundirs.removed_on_failure(
      self.data_dir,
      os.path.join(downloads, 'extracted'),
      os.path.join(downloads, 'manual'),
    ):
      return super().download_and_prepare(*args, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    try:
      names = list(config.classes) or video_files.list_classes(config.root)
      label = tfds.features.ClassLabel(names=names)
    except UserError:
      # The videos are gone; a prepared dataset still reads its names.
      label = tfds.features.ClassLabel()
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          'video': tfds.features.Video(
            shape=(None, None, None, 3), encoding_format='jpeg'
          ),
          'label': label,
          'class_name': tfds.features.Text(),
          'group': np.int32,  # UCF's gGG; 0 when the name has none.
          'clip': np.int32,  # UCF's cCC; 0 when the name has none.
          'video_id': tfds.features.Text(),  # <Class>/<file name>.
          'path': tfds.features.Text(),  # The source file.
          'fps': np.float32,  # Of the stored frames.
          'width': np.int32,  # Of the source, upright.
          'height': np.int32,
          'source_frames': np.int32,  # Decoded from the source.
          'num_frames': np.int32,  # Stored (capped or padded).
        }
      ),
      supervised_keys=('video', 'label'),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    names, videos, skipped = video_files.scan(c.root, c.classes)
    splits, notes = video_splits.assign(
      videos,
      c.split,
      test_groups=c.test_groups,
      fold=c.fold,
      val_groups=c.val_groups,
      split_dir=c.split_dir,
      split_number=c.split_number,
      test_fraction=c.test_fraction,
      val_fraction=c.val_fraction,
      seed=c.seed,
      allow_leaky_split=c.allow_leaky_split,
    )
    self._run = _Preparation(c, names, videos, skipped, notes, len(splits))
    self._run.decoded = _DecodedCopy(decoded_dir(self.data_dir_root, c))
    self._run.split_groups = {
      name: sorted({v.group for v in split_videos})
      for name, split_videos in splits.items()
    }
    return {
      name: self._generate_examples(name, split_videos)
      for name, split_videos in splits.items()
    }

  def _generate_examples(self, split: str, videos):
    run = self._run
    count = 0
    try:
      by_path = {v.path: v for v in videos}
      for result in run.encode(split, list(by_path)):
        video = by_path[result['path']]
        example = run.record(video, result)
        if example is not None:
          run.assigned.append((split, video.relpath))
          count += 1
          yield video.relpath, example
    finally:
      run.done += 1
    if not count:
      run.finish(self.data_dir, self.info.metadata, check=False)
      raise UserError(
        f'split {split!r} has no usable video: all {len(videos)} were '
        'quarantined or dropped (see the warnings above)'
      )
    if run.done == run.num_splits:
      run.finish(self.data_dir, self.info.metadata)


class _Preparation:
  """One preparation run: the worker pool, counts and the quarantine."""

  def __init__(self, config, names, videos, skipped, notes, num_splits):
    self.options = video_files.EncodeOptions(
      short_side=config.short_side,
      max_frames=config.max_frames,
      min_frames=config.min_frames,
      short_video=config.short_video,
    )
    self.workers = config.num_workers or os.cpu_count() or 1
    self.names, self.notes = names, notes
    self.num_videos = len(videos)
    self.num_files = len(videos) + len(skipped)
    self.quarantine = list(skipped)
    self.short, self.dropped = [], []
    self.used = dict.fromkeys(names, 0)
    self.num_splits, self.done = num_splits, 0
    self.split_groups = {}
    self.decoded = None  # The _DecodedCopy, if any.
    self.decoded_now = self.reused = 0
    self.rows = []  # (video_id, label, group, bytes, frames) stored.
    self.assigned = []  # (split, video_id) stored.
    self._pool = None

  def encode(self, split: str, paths: list[str]):
    """Yields `video_files.encode_video` results: first those the decoded
    copy holds, then the others from worker processes, in the order they
    finish (each kept in the decoded copy)."""
    todo = []
    for path in paths:
      result = self.decoded.load(path) if self.decoded else None
      if result is None:
        todo.append(path)
      else:
        _DECODED['reused'] += 1
        self.reused += 1
        yield result
    for result in self._decode(split, todo):
      _DECODED['decoded'] += 1
      self.decoded_now += 1
      if self.decoded:
        self.decoded.store(result)
      yield result

  def _decode(self, split: str, paths: list[str]):
    tasks = [(p, self.options) for p in paths]
    bar = tqdm.tqdm(total=len(tasks), desc=f'decoding {split}', unit='video')
    if self.workers == 1:
      results = map(video_files.encode_video, tasks)
    else:
      if self._pool is None:
        # spawn: the parent has TensorFlow's threads, which fork would copy.
        # An executor, not a Pool: a worker that dies raises an error
        # instead of hanging the preparation.
        self._pool = futures.ProcessPoolExecutor(
          min(self.workers, max(1, self.num_videos)),
          mp_context=multiprocessing.get_context('spawn'),
        )
      results = _bounded_map(self._pool, tasks, 4 * self.workers)
    for result in results:
      bar.update()
      yield result
    bar.close()

  def record(self, video, result) -> dict | None:
    """The example of one encoded video; None for a quarantined one."""
    status = result['status']
    if status == 'bad':
      self.quarantine.append({'path': video.path, 'reason': result['reason']})
      return None
    if status == 'dropped':
      self.dropped.append(video.path)
      return None
    if status == 'short':
      self.short.append(video.path)
    self.used[video.class_name] += 1
    self.rows.append(
      (
        video.relpath,
        video.label,
        video.group,
        sum(len(f) for f in result['frames']),
        len(result['frames']),
      )
    )
    return {
      # Already JPEG: TFDS stores file objects' bytes as they are.
      'video': [io.BytesIO(f) for f in result['frames']],
      'label': video.label,
      'class_name': video.class_name,
      'group': video.group,
      'clip': video.clip,
      'video_id': video.relpath,
      'path': video.path,
      'fps': result['fps'],
      'width': result['width'],
      'height': result['height'],
      'source_frames': result['source_frames'],
      'num_frames': len(result['frames']),
    }

  def finish(self, data_dir: str, metadata, check: bool = True) -> None:
    """Writes quarantine.json and the counts, logs the summary; with
    `check`, fails if a class has no usable video."""
    if self._pool is not None:
      self._pool.shutdown()
    self.quarantine.sort(key=lambda q: q['path'])
    with open(os.path.join(data_dir, 'quarantine.json'), 'w') as f:
      json.dump(self.quarantine, f, indent=1)
    metadata.update(
      {
        'num_files': self.num_files,
        'num_quarantined': len(self.quarantine),
        'num_short': len(self.short),
        'num_dropped_short': len(self.dropped),
        'short_video_policy': self.options.short_video,
        'min_frames': self.options.min_frames,
        'num_unused': self.notes['unused'],
        'shared_groups': self.notes['shared_groups'],
        'num_shared_pairs': self.notes['shared_pairs'],
        # Split -> the groups its videos come from (0: no group in the name).
        'split_groups': self.split_groups,
        # Of the stored videos (video_id, label, group, JPEG bytes, frames):
        # the same for every split of the same decoded folder.
        'fingerprint': fingerprint(self.rows),
        # Of the split assignment (split, video_id).
        'split_fingerprint': fingerprint(self.assigned),
        'decoded_dir': self.decoded.path if self.decoded else '',
        'num_decoded': self.decoded_now,
        'num_reused': self.reused,
      }
    )
    for q in self.quarantine:
      logging.warning('quarantined %s: %s', q['path'], q['reason'])
    logging.info(
      'video_folder: decoded %d videos, %d taken from the decoded copy %s',
      self.decoded_now,
      self.reused,
      self.decoded.path if self.decoded else '(none)',
    )
    logging.info(
      'video_folder: %d videos used, %d quarantined (quarantine.json), '
      '%d shorter than %d frames (%s), %d not in the split files',
      sum(self.used.values()),
      len(self.quarantine),
      len(self.short) + len(self.dropped),
      self.options.min_frames,
      self.options.short_video,
      self.notes['unused'],
    )
    empty = [name for name, n in self.used.items() if not n]
    if check and empty:
      raise UserError(
        f'no usable video in class {", ".join(empty)}: every file failed '
        'or was dropped as too short (see the warnings above)'
      )


def _bounded_map(pool, tasks, window: int):
  """`encode_video` over `tasks` with at most `window` in flight (so that
  finished videos do not pile up in memory), in the order they finish."""
  tasks = iter(tasks)
  pending = {
    pool.submit(video_files.encode_video, t)
    for _, t in zip(range(window), tasks, strict=False)
  }
  while pending:
    done, pending = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
    for future in done:
      yield future.result()
      for task in itertools.islice(tasks, 1):
        pending.add(pool.submit(video_files.encode_video, task))


def quarantine(builder: tfds.core.DatasetBuilder) -> list[dict[str, str]]:
  """The quarantine list of a prepared video_folder dataset."""
  with open(os.path.join(builder.data_dir, 'quarantine.json')) as f:
    return json.load(f)
