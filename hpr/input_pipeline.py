"""TFDS video datasets -> clip batches (host NumPy) with tf.data.

Frames stay JPEG-encoded until a clip's frames are chosen; only those are
decoded. Training batches are shuffled per epoch from (seed, epoch), so the
position in the stream is just (epoch, batch) and a resumed run sees exactly
the batches an uninterrupted one would. Evaluation batches are padded to a
full batch and carry a `mask`, so every example counts exactly once.

In a multi-process run every process reads the same stream of (still
encoded) examples and decodes only its rows of each global batch
(`parallel.process_rows`), so the global batches, their order and the
augmentation are those of a single-process run, whatever the process count.
"""

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

import hpr.datasets  # Registers hpr's builders with TFDS.
from hpr import parallel, video_ops
from hpr.datasets import synthetic_actions, video_files, video_folder
from hpr.errors import UserError

# Keys a batch carries to the devices; others stay on the host.
DEVICE_KEYS = ('video', 'label', 'mask')
# Evaluation batches also carry each example's position in its split.
EVAL_KEYS = (*DEVICE_KEYS, 'index')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of hpr needs to know about a prepared dataset."""

  name: str
  class_names: tuple[str, ...]
  num_examples: dict[str, int]  # Split (as configured) -> examples.

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How a clip is made from a stored video, as plain values (the config's
  input.* for training or for evaluation: `clip_spec`)."""

  num_frames: int
  image_size: int
  # video_ops.frame_indices: 'uniform', 'strided' or 'segments'.
  sampling: str = 'uniform'
  frame_stride: int = 2
  # 'resize', 'center', 'random_resized' or 'scale_jitter' (_crop_op).
  crop: str = 'resize'
  crop_area: tuple[float, float] = (0.4, 1.0)
  crop_aspect: tuple[float, float] = (0.75, 1.333)
  scale_jitter: tuple[float, float] = (1.0, 1.33)
  # What a horizontal flip makes of each label (`flip_labels`); None: no
  # random flips.
  flip_labels: tuple[int, ...] | None = None
  color_jitter: float = 0.0
  normalization: str = 'centered'
  modality: str = 'rgb'
  # How much smaller the stored JPEG frames may be decoded (`jpeg_ratio`).
  jpeg_ratio: int = 0


def clip_spec(
  config: ml_collections.ConfigDict,
  *,
  training: bool,
  flip_labels: tuple[int, ...] | None = None,
) -> ClipSpec:
  """The clips of `config` for training or for evaluation. `flip_labels`
  (training only; `flip_labels()`) turns on input.random_flip's flips."""
  i = config.input
  return ClipSpec(
    num_frames=i.num_frames,
    image_size=i.image_size,
    sampling=i.train_sampling if training else i.eval_sampling,
    frame_stride=i.frame_stride,
    crop=i.train_crop if training else i.eval_crop,
    crop_area=tuple(i.crop_area),
    crop_aspect=tuple(i.crop_aspect),
    scale_jitter=tuple(i.scale_jitter),
    flip_labels=flip_labels if training and i.random_flip else None,
    color_jitter=i.color_jitter if training else 0.0,
    normalization=i.normalization,
    modality=i.modality,
    jpeg_ratio=jpeg_ratio(config, training=training),
  )


def _is_hpr_builder(name: str) -> bool:
  return name.split('/')[0].split(':')[0] in hpr.datasets.BUILDERS


def get_builder(dataset: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder, preparing hpr's own datasets once.

  hpr's builders (synthetic_actions, video_folder) generate their data
  locally; any other TFDS dataset must already be prepared in data_dir, since
  hpr never downloads.

  Raises:
    UserError: the dataset is not prepared and hpr cannot prepare it.
  """
  data_dir = os.path.expanduser(dataset.data_dir) if dataset.data_dir else None
  if dataset.name == 'video_folder':
    if 'video_folder' not in dataset:
      raise UserError(
        'video_folder needs its dataset.video_folder settings: open it '
        "through a config or a workdir's config.json"
      )

    config = video_folder.config_from(dataset.video_folder)
    builder = tfds.builder(dataset.name, config=config, data_dir=data_dir)
    if not builder.is_prepared():
      # A wrong root fails here, before TFDS makes a directory for it.
      video_files.list_classes(config.root)
  else:
    builder = tfds.builder(dataset.name, data_dir=data_dir)
  if not builder.is_prepared():
    if not _is_hpr_builder(dataset.name):
      raise UserError(
        f'dataset {dataset.name} is not prepared in {builder.data_dir} and '
        'hpr does not download datasets; prepare it with TFDS first'
      )
    if jax.process_index() == 0:
      builder.download_and_prepare()
    _sync('dataset prepared')
    if jax.process_index() != 0:  # Read what process 0 prepared.
      return get_builder(dataset)
  return builder


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def get_dataset_info(
  config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
) -> DatasetInfo:
  """Class names and split sizes of the configured splits."""
  splits = {}
  for split in (
    config.dataset.train_split,
    config.dataset.eval_split,
    config.dataset.test_split,
  ):
    try:
      splits[split] = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
      raise UserError(
        f'dataset {config.dataset.name} has no split {split!r} '
        f'(available: {", ".join(builder.info.splits)})'
      ) from e
  return DatasetInfo(
    name=config.dataset.name,
    class_names=tuple(builder.info.features['label'].names),
    num_examples=splits,
  )


def flip_labels(
  config: ml_collections.ConfigDict,
  class_names: tuple[str, ...],
  builder: tfds.core.DatasetBuilder | None = None,
) -> tuple[int, ...] | None:
  """What a horizontal flip makes of each label, as dataset.flip and
  dataset.flip_label_map say (the dataset's own declaration is its builder
  config's `flip_label_map`, where it has one).

  Returns:
    (K,) ints: a flipped clip of class i has label result[i]; None: clips
    of this dataset must not be flipped.

  Raises:
    UserError: the map names a class the dataset does not have.
  """
  d = config.dataset
  if d.flip == 'forbidden':
    return None
  where = 'dataset.flip_label_map'
  if d.flip_label_map:
    mapping = {}
    for a, b in d.flip_label_map:
      mapping[a], mapping[b] = b, a
  elif d.flip == 'dataset' and builder is not None:
    declared = getattr(builder.builder_config, 'flip_label_map', {})
    if declared is None:
      return None
    mapping = dict(declared)
    where = f"{builder.name}'s flip_label_map"
  else:
    mapping = {}
  index = {name: i for i, name in enumerate(class_names)}
  for name in (*mapping, *mapping.values()):
    if name not in index:
      raise UserError(
        f'{where}: {d.name} has no class {name!r}; its classes are '
        f'{", ".join(class_names)}'
      )
  return tuple(index[mapping.get(name, name)] for name in class_names)


def describe_flips(
  config: ml_collections.ConfigDict,
  class_names: tuple[str, ...],
  builder: tfds.core.DatasetBuilder | None = None,
) -> str:
  """One line on what training's flips do, for the log; warns (absl) when
  input.random_flip is on but the dataset forbids flips."""
  if not config.input.random_flip:
    return 'no horizontal flips (input.random_flip is off)'
  labels = flip_labels(config, class_names, builder)
  if labels is None:
    logging.warning(
      'input.random_flip is on, but %s forbids horizontal flips '
      '(dataset.flip or its builder config): training without flips; set '
      'input.random_flip=False to say so',
      config.dataset.name,
    )
    return 'no horizontal flips (the dataset forbids them)'
  changed = [
    f'{class_names[i]} -> {class_names[j]}'
    for i, j in enumerate(labels)
    if i != j
  ]
  return 'horizontal flips; a flip changes ' + (
    ', '.join(changed) if changed else 'no label'
  )


def split_size(
  config: ml_collections.ConfigDict,
  builder: tfds.core.DatasetBuilder,
  split: str,
) -> dict:
  """{'split', 'clips', 'groups'}: a split's examples and the sorted groups
  (actors and scenes, UCF's gGG) they come from, where the dataset records
  them (video_folder's metadata, synthetic_actions' split_groups; None
  elsewhere or for a sliced split such as 'train[:80%]')."""
  clips = builder.info.splits[split].num_examples
  groups = None
  recorded = (builder.info.metadata or {}).get('split_groups')
  if recorded is not None:
    groups = recorded.get(split)
  elif builder.name == 'synthetic_actions':
    num_groups = builder.builder_config.num_groups
    groups = synthetic_actions.split_groups(num_groups).get(split)
  if groups is not None:
    groups = sorted(int(g) for g in groups if int(g) > 0) or None
  return {'split': split, 'clips': int(clips), 'groups': groups}


def data_protocol(
  config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
) -> dict:
  """What tells two runs' data apart, for the evaluation report's
  protocol: the split scheme, fold, split number and test groups, the seed,
  the validation split's size, the quarantined count and fingerprints of
  the prepared data.

  'data_fingerprint' is, for a video folder, a sha256 of the stored videos
  (video_id, label, group, JPEG bytes, frames), the same for every fold of
  one decoded folder, with 'split_fingerprint' of the (split, video_id)
  assignment; for other datasets a sha256 of the builder's name, config,
  version and split sizes.
  """
  d = config.dataset
  metadata = builder.info.metadata or {}
  out = {
    'split_scheme': 'dataset',  # The dataset's own splits.
    'fold': None,
    'split_number': None,
    'test_groups': split_size(config, builder, d.test_split)['groups'],
    'seed': int(config.seed),
    'validation': split_size(config, builder, d.eval_split),
    'num_quarantined': metadata.get('num_quarantined'),
    'data_fingerprint': metadata.get('fingerprint'),
    'split_fingerprint': metadata.get('split_fingerprint'),
  }
  if d.name == 'video_folder':
    vf = d.video_folder
    out['split_scheme'] = vf.split
    if vf.split == 'groups' and not vf.test_groups:
      out['fold'] = int(vf.fold)
    if vf.split == 'official':
      out['split_number'] = int(vf.split_number)
    if vf.split in ('stratified', 'random_clips'):
      out['split_seed'] = int(vf.seed)
  elif builder.name == 'synthetic_actions':
    out['split_scheme'] = 'groups'
  if out['data_fingerprint'] is None:
    text = json.dumps(
      {
        'name': builder.name,
        'config': builder.builder_config.name if builder.builder_config else '',
        'version': str(builder.version),
        'splits': {
          name: [info.num_examples, info.num_bytes]
          for name, info in sorted(builder.info.splits.items())
        },
      },
      sort_keys=True,
    )
    out['data_fingerprint'] = hashlib.sha256(text.encode()).hexdigest()[:16]
  return out


def preprocess_ops(
  spec: ClipSpec,
  *,
  training: bool,
  num_views: int = 1,
  num_crops: int = 1,
) -> list[video_ops.Op]:
  """The preprocessing of one example, as a list of ops.

  `training` draws the frames' offset, the crop and the augmentation at
  random (from the example's seed). `num_views` temporal views
  (features['view']) and `num_crops` spatial ones (features['crop']) are
  evaluation's multi-view test. The clip ends as `spec.modality` asks
  (`video_ops.modality`): C = 3 channels, 6 for 'rgb+diff'.
  """
  ops = [
    video_ops.sample_frames(
      spec.num_frames,
      spec.sampling,
      stride=spec.frame_stride,
      training=training,
      num_views=num_views,
    ),
    video_ops.decode_frames(spec.jpeg_ratio),
    _crop_op(spec, training=training, num_crops=num_crops),
  ]
  if training and spec.flip_labels is not None:
    ops.append(video_ops.random_flip(spec.flip_labels))
  if training and spec.color_jitter:
    ops.append(video_ops.color_jitter(spec.color_jitter))
  ops.append(video_ops.normalize(spec.normalization))
  if spec.modality != 'rgb':
    ops.append(video_ops.modality(spec.modality))
  return ops


def jpeg_ratio(config: ml_collections.ConfigDict, *, training: bool) -> int:
  """How much smaller `decode_frames` may decode a video_folder's JPEG
  frames (1, 2, 4 or 8) and still give the crops at least image_size
  pixels; 0 (detect the format, full size) for other datasets."""
  if config.dataset.name != 'video_folder':
    return 0
  i = config.input
  mode = i.train_crop if training else i.eval_crop
  needed = i.image_size
  if training and mode == 'random_resized':
    needed /= math.sqrt(i.crop_area[0])
  elif training and mode == 'scale_jitter':
    needed *= i.scale_jitter[1]
  stored = config.dataset.video_folder.short_side
  ratio = 1
  while ratio < 8 and stored / (2 * ratio) >= needed:
    ratio *= 2
  return ratio


def _crop_op(spec: ClipSpec, *, training: bool, num_crops: int):
  size = spec.image_size
  if not training and num_crops > 1:
    return video_ops.center_crop(size, num_crops)
  if spec.crop == 'random_resized':
    return video_ops.random_resized_crop(size, spec.crop_area, spec.crop_aspect)
  if spec.crop == 'scale_jitter':
    return video_ops.scale_jitter(size, spec.scale_jitter)
  if spec.crop == 'center':
    return video_ops.center_crop(size)
  return video_ops.resize(size)


class _KeepEncoded(tfds.decode.SkipDecoding):
  """SkipDecoding that hands a video's encoded frames over in one piece.

  TFDS's own maps an identity over the frames one by one (`tf.map_fn`),
  which cost about 1 ms per 80-frame video: a third of a clip's
  preprocessing.
  """

  def decode_batch_example(self, serialized_example):
    return serialized_example


def _read(builder, split: str, shuffle_seed: int | None) -> tf.data.Dataset:
  read_config = tfds.ReadConfig(
    shuffle_seed=shuffle_seed, add_tfds_id=False, try_autocache=False
  )
  ds = builder.as_dataset(
    split=split,
    decoders={'video': _KeepEncoded()},
    shuffle_files=shuffle_seed is not None,
    read_config=read_config,
  )
  return ds.map(
    lambda ex: {'video': ex['video'], 'label': tf.cast(ex['label'], tf.int32)}
  )


def _with_seeds(ds: tf.data.Dataset, seed: int, salt: int) -> tf.data.Dataset:
  """Adds a per-example stateless seed derived from (seed, salt, position)."""
  base = tf.constant([seed, salt], tf.int64)

  def add(index, ex):
    return {**ex, 'seed': tf.random.experimental.stateless_fold_in(base, index)}

  return ds.enumerate().map(add)


def _rows(ds: tf.data.Dataset, batch_size: int, rows: tuple[int, int]):
  """Keeps the elements at rows [start, stop) of every `batch_size` in a
  row: this process's part of each global batch."""
  start, stop = rows
  if (start, stop) == (0, batch_size):
    return ds

  def mine(i, _):
    row = i % batch_size
    return (row >= start) & (row < stop)

  return ds.enumerate().filter(mine).map(lambda _, ex: ex)


def train_batches(
  builder: tfds.core.DatasetBuilder,
  split: str,
  spec: ClipSpec,
  *,
  batch_size: int,
  seed: int,
  epoch: int,
  shuffle_buffer: int = 512,
  start_batch: int = 0,
  rows: tuple[int, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's training batches of one epoch, from `start_batch` on.

  Args:
    builder, split: the examples.
    spec: how each clip is made (`clip_spec(config, training=True, ...)`).
    batch_size: the global batch size.
    seed, epoch: the shuffle and the augmentation are drawn from both.
    shuffle_buffer: encoded videos held for shuffling.
    start_batch: skip the epoch's first batches (a resumed epoch).
    rows: [start, stop) of each global batch to load (default: this
      process's, `parallel.process_rows`).

  Yields:
    {'video': float32 (b, T, S, S, C), 'label': int32 (b,)}: this process's
    rows of each global batch (b = batch_size in a single-process run); the
    last partial global batch is dropped.
  """
  rows = rows or parallel.process_rows(batch_size)
  num_batches = builder.info.splits[split].num_examples // batch_size
  epoch_seed = seed * 100_003 + epoch
  ds = _with_seeds(_read(builder, split, epoch_seed), seed, epoch)
  ds = ds.shuffle(
    shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
  )
  # Whole global batches only, or the processes would disagree on the count.
  ds = ds.take(num_batches * batch_size).skip(start_batch * batch_size)
  ds = _rows(ds, batch_size, rows)
  ds = ds.map(
    video_ops.compose(preprocess_ops(spec, training=True)),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.map(lambda ex: {'video': ex['video'], 'label': ex['label']})
  ds = ds.batch(rows[1] - rows[0], drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  yield from ds.with_options(_options()).as_numpy_iterator()


def _options() -> tf.data.Options:
  options = tf.data.Options()
  # Parallelism comes from the parallel map over clips; ops that also split
  # one clip over threads only add overhead.
  options.threading.max_intra_op_parallelism = 1
  return options


def steps_per_epoch(builder, split: str, batch_size: int) -> int:
  """Training steps in one epoch (the last partial batch is dropped)."""
  return builder.info.splits[split].num_examples // batch_size


def num_eval_batches(
  builder, split: str, batch_size: int, num_views: int = 1
) -> int:
  """Global batches of `batch_size` clips that `split` fills (the last one
  padded); every process yields that many."""
  clips = builder.info.splits[split].num_examples * num_views
  return max(1, math.ceil(clips / batch_size))


def eval_batches(
  builder: tfds.core.DatasetBuilder,
  split: str,
  spec: ClipSpec,
  *,
  batch_size: int,
  seed: int = 0,
  num_views: int = 1,
  num_crops: int = 1,
  rows: tuple[int, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's evaluation batches of `split`, padded and masked.

  Each is this process's rows (or `rows` [start, stop)) of a global batch
  of `batch_size` clips in dataset order (the whole batch in a
  single-process run), so gathering them gives the single-process order.
  Every process yields the same number of batches (padding-only ones where
  its rows run out), as a multi-process step needs. `spec` is evaluation's
  (`clip_spec(config, training=False)`); `seed` seeds only ops that draw
  at random. With `num_views` x `num_crops` > 1, each example gives that
  many clips in a row (temporal views, see `video_ops.frame_indices`, each
  in `num_crops` spatial crops, see `video_ops.center_crop`), all with the
  example's `index`.

  Yields:
    {'video': float32 (b, T, S, S, C), 'label': int32 (b,),
     'index': int32 (b,) position of the example in `split`,
     'mask': bool (b,)}: mask is False for padding.
  """
  rows = rows or parallel.process_rows(batch_size)
  local = rows[1] - rows[0]
  ds = _with_seeds(_read(builder, split, None), seed, -1)
  ds = ds.enumerate().map(lambda i, ex: {**ex, 'index': tf.cast(i, tf.int32)})
  clips = num_views * num_crops
  if clips > 1:
    ds = ds.flat_map(
      lambda ex: tf.data.Dataset.range(clips).map(
        lambda v: {
          **ex,
          'view': tf.cast(v // num_crops, tf.int32),
          'crop': tf.cast(v % num_crops, tf.int32),
        }
      )
    )
  ds = _rows(ds, batch_size, rows)
  ds = ds.map(
    video_ops.compose(
      preprocess_ops(
        spec, training=False, num_views=num_views, num_crops=num_crops
      )
    ),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.map(lambda ex: {k: ex[k] for k in ('video', 'label', 'index')})
  ds = ds.batch(local).prefetch(tf.data.AUTOTUNE).with_options(_options())
  total = num_eval_batches(builder, split, batch_size, clips)
  shape = (
    local,
    spec.num_frames,
    spec.image_size,
    spec.image_size,
    video_ops.modality_channels(spec.modality),
  )
  produced = 0
  for batch in ds.as_numpy_iterator():
    yield pad_batch(batch, local)
    produced += 1
  for _ in range(total - produced):
    yield {
      'video': np.zeros(shape, np.float32),
      'label': np.zeros((local,), np.int32),
      'index': np.zeros((local,), np.int32),
      'mask': np.zeros((local,), bool),
    }


def pad_batch(
  batch: dict[str, np.ndarray], batch_size: int
) -> dict[str, np.ndarray]:
  """Pads every array to `batch_size` rows and adds the boolean `mask`."""
  n = len(batch['label'])
  out = {'mask': np.arange(batch_size) < n}
  for key, value in batch.items():
    pad = [(0, batch_size - n)] + [(0, 0)] * (value.ndim - 1)
    out[key] = np.pad(value, pad)
  return out
