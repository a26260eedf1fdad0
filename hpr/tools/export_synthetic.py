"""Writes synthetic_actions out as a UCF-style folder of real video files.

  python -m hpr.tools.export_synthetic --out /tmp/synthetic_ucf \
      [--dataset synthetic_actions/tiny] [--width 320 --height 240] [--seed N]

gives OUT/<Class>/v_<Class>_g<GG>_c<CC>.avi (MPEG-4 part 2 in AVI, like
UCF's files), every split of the dataset, so that the whole real-video path
(`dataset.name = 'video_folder'`, group-wise splits, quarantine) can be tried
without downloading UCF. The dataset is prepared first if it is not.

`--dataset synthetic_actions/small_video` (issue 25's harder folder) stores
each clip's own size, rate and codec, and its files are written with them:
MPEG-4 in .avi and H.264 in .mp4, 160x120 to 320x240, 15 to 30 fps. `--seed`
renders the config with another seed (prepared as `<config>_seed<N>`), so
that anyone can make a folder no one tuned on.
"""

import dataclasses
import os

import ml_collections
import numpy as np
import tqdm
from PIL import Image

from hpr import cli, video_io
from hpr.errors import UserError


def export(
  out: str,
  dataset: str = 'synthetic_actions/tiny',
  *,
  data_dir: str = '',
  seed: int | None = None,
  **options,
) -> list[str]:
  """Writes every video of `dataset` under `out`; returns the paths.

  Args:
    out: the folder to create the class folders in.
    dataset: a prepared or preparable synthetic_actions config.
    data_dir: TFDS data_dir ('' for TFDS's default).
    seed: render the config with this seed instead of its own.
    **options: `export_builder`'s (width, height, codec, extension, limit).
  """
  # Late: keeps TensorFlow out of the tool's --help.
  from hpr import input_pipeline

  if not dataset.startswith('synthetic_actions'):
    raise UserError(f'--dataset must be a synthetic_actions config: {dataset}')
  if seed is None:
    builder = input_pipeline.get_builder(
      ml_collections.ConfigDict({'name': dataset, 'data_dir': data_dir})
    )
  else:
    builder = _seeded_builder(dataset, seed, data_dir)
  return export_builder(builder, out, **options)


def _seeded_builder(dataset: str, seed: int, data_dir: str):
  """The prepared builder of `dataset`'s config rendered with `seed`."""
  # Late: keeps TensorFlow out of the tool's --help.
  import tensorflow_datasets as tfds

  from hpr.datasets import synthetic_actions

  name = dataset.partition('/')[2] or 'default'
  configs = synthetic_actions.SyntheticActions.builder_configs
  if name not in configs:
    raise UserError(
      f'no synthetic_actions config {name!r}; valid: {sorted(configs)}'
    )
  config = dataclasses.replace(
    configs[name], name=f'{name}_seed{seed}', seed=seed
  )
  builder = tfds.builder(
    'synthetic_actions',
    config=config,
    data_dir=os.path.expanduser(data_dir) if data_dir else None,
  )
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder


def export_builder(
  builder,
  out: str,
  *,
  width: int = 0,
  height: int = 0,
  codec: str = 'mpeg4',
  extension: str = '.avi',
  limit: int = 0,
) -> list[str]:
  """Writes every video of a prepared synthetic_actions builder (any
  config) under `out`, with a progress bar; returns the paths.

  Args:
    builder: the prepared builder.
    out: the folder to create the class folders in.
    width, height: frame size of the files; 0 keeps the dataset's.
    codec: PyAV codec name, for datasets that do not store one per clip.
    extension: the files' extension (picks the container), likewise.
    limit: write at most this many videos (0: all).
  """
  # Late: keeps TensorFlow out of the tool's --help.
  import tensorflow_datasets as tfds

  names = builder.info.features['label'].names
  splits = builder.info.splits
  total = sum(splits[split].num_examples for split in splits)
  total = min(total, limit) if limit else total
  paths = []
  with tqdm.tqdm(total=total, unit='video', desc='exporting') as progress:
    for split in splits:
      for ex in tfds.as_numpy(builder.as_dataset(split=split)):
        if len(paths) == total:
          return paths
        class_name = names[ex['label']]
        folder = os.path.join(out, class_name)
        os.makedirs(folder, exist_ok=True)
        # synthetic_actions/small_video stores each clip's codec.
        clip_codec = ex['codec'].decode() if 'codec' in ex else codec
        clip_extension = (
          ex['extension'].decode() if 'codec' in ex else extension
        )
        path = os.path.join(folder, ex['video_id'].decode() + clip_extension)
        video_io.write_file(
          path,
          _resized(ex['video'], width, height),
          float(ex['fps']),
          clip_codec,
        )
        paths.append(path)
        progress.update()
  return paths


def _resized(video: np.ndarray, width: int, height: int):
  for frame in video:
    if width and height and frame.shape[:2] != (height, width):
      frame = np.asarray(
        Image.fromarray(frame).resize((width, height), Image.BILINEAR)
      )
    yield frame


def main(argv: list[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  parser = cli.ArgumentParser(
    prog='python -m hpr.tools.export_synthetic',
    description='Write synthetic_actions as OUT/<Class>/v_<Class>_gGG_cCC.avi',
  )
  parser.add_argument('--out', required=True, help='folder to write into')
  parser.add_argument('--dataset', default='synthetic_actions/tiny')
  parser.add_argument('--data_dir', default='', help='TFDS data_dir')
  parser.add_argument('--width', type=int, default=0, help='0: as stored')
  parser.add_argument('--height', type=int, default=0, help='0: as stored')
  parser.add_argument('--codec', default='mpeg4', help='PyAV codec name')
  parser.add_argument('--ext', default='.avi', help='container extension')
  parser.add_argument('--limit', type=int, default=0, help='0: all videos')
  parser.add_argument(
    '--seed',
    type=int,
    default=None,
    help="render with this seed (default: the config's)",
  )
  args = parser.parse_args(argv)
  if (
    (args.width % 2)
    or (args.height % 2)
    or bool(args.width) != bool(args.height)
  ):
    raise UserError('--width and --height must be given together, and even')
  cli.tensorflow_on_cpu()
  paths = export(
    args.out,
    args.dataset,
    data_dir=args.data_dir,
    seed=args.seed,
    width=args.width,
    height=args.height,
    codec=args.codec,
    extension=args.ext,
    limit=args.limit,
  )
  print(f'wrote {len(paths)} videos to {args.out}')


def run() -> None:
  """The command line, with user errors as one line."""
  cli.run(main)


if __name__ == '__main__':
  run()
