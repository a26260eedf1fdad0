r"""The notebook's figures, as PNG files: training curves, the confusion
matrix and reliability diagram of the test split and a gallery of labelled
first frames.

  python -m hpr.tools.plots --workdir W        # -> W/plots/{loss,accuracy,
                                         #    confusion,reliability,
                                         #    gallery}.png
  python -m hpr.tools.plots --dataset synthetic_actions/default --out DIR
                                         # -> DIR/gallery.png

`python -m hpr.main` calls `plot_workdir` at the end of training. Image sizes are fixed (see the
`*_size` functions), so figures of different runs line up.
"""

import argparse
import json
import math
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import matplotlib  # noqa: E402

matplotlib.use('Agg')  # Files only: no display needed, none opened.

import matplotlib.ticker  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from hpr import cli  # noqa: E402
from hpr.config import lists_to_tuples  # noqa: E402
from hpr.errors import UserError  # noqa: E402
from hpr.figures import (  # noqa: E402
  figure,
  plot_confusion,
  plot_reliability,
  save,
)

CURVE_SIZE = (640, 480)  # Pixels (width, height).
GALLERY_CELL = (200, 220)  # Pixels per gallery image, title included.
GALLERY_COLUMNS = 5
# The notebook's gallery shows 20 classes.
GALLERY_CLASSES = 20


def gallery_size(num_images: int) -> tuple[int, int]:
  """Pixel size of a gallery of `num_images` labelled frames."""
  columns = min(GALLERY_COLUMNS, num_images)
  rows = math.ceil(num_images / columns)
  return columns * GALLERY_CELL[0], rows * GALLERY_CELL[1]


def epoch_records(records: list[dict]) -> list[dict]:
  """The per-epoch records of metrics.jsonl (those with validation scores)."""
  return [r for r in records if 'val_loss' in r and 'epoch' in r]


def plot_curves(records: list[dict], out_dir: str) -> list[str]:
  """The notebook's two figures: training vs validation loss and accuracy.

  Args:
    records: the records of a workdir's metrics.jsonl.
    out_dir: where loss.png and accuracy.png go.

  Returns:
    The paths written.

  Raises:
    UserError: no epoch has finished yet.
  """
  epochs = epoch_records(records)
  if not epochs:
    raise UserError('metrics.jsonl has no finished epoch to plot yet')
  x = [r['epoch'] for r in epochs]
  paths = []
  for name, title in (
    ('loss', 'Total Loss vs Total Validation Loss'),
    ('accuracy', 'Total Accuracy vs Total Validation Accuracy'),
  ):
    fig = figure(CURVE_SIZE)
    ax = fig.add_subplot()
    ax.plot(x, [r[f'train_{name}'] for r in epochs], 'b', label=name)
    ax.plot(x, [r[f'val_{name}'] for r in epochs], 'r', label=f'val_{name}')
    ax.set_title(title)
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(save(fig, os.path.join(out_dir, f'{name}.png')))
  return paths


def first_frames(
  builder,
  split: str,
  max_classes: int = GALLERY_CLASSES,
  max_examples: int = 2000,
) -> list[tuple[str, np.ndarray]]:
  """The first frame of one video of each class met first in `split`.

  Reads `split` in file order until `max_classes` classes (or all) are met,
  or `max_examples` videos were read: a few dozen reads, not a pass over a
  large dataset.

  Args:
    builder: a prepared TFDS video builder ('video' and 'label' features).
    split: the split to read.
    max_classes: at most this many classes (the notebook shows 20).
    max_examples: stop after this many videos.

  Returns:
    [(class name, uint8 (H, W, 3))], in label order.
  """
  # Late: keeps TFDS and TensorFlow out of the tool's --help.
  import tensorflow_datasets as tfds

  tf = cli.tensorflow_on_cpu()
  names = builder.info.features['label'].names
  wanted = min(max_classes, len(names))
  found = {}
  ds = builder.as_dataset(
    split=split, decoders={'video': tfds.decode.SkipDecoding()}
  )
  for ex in ds.take(max_examples):
    label = int(ex['label'])
    if label not in found:
      found[label] = tf.io.decode_image(
        ex['video'][0], channels=3, expand_animations=False
      ).numpy()
      if len(found) == wanted:
        break
  return [(names[k], found[k]) for k in sorted(found)]


def plot_gallery(frames: list[tuple[str, np.ndarray]], path: str) -> str:
  """A grid of frames titled with their class (the notebook's gallery)."""
  if not frames:
    raise UserError('no frames to draw in the gallery')
  columns = min(GALLERY_COLUMNS, len(frames))
  rows = math.ceil(len(frames) / columns)
  fig = figure(gallery_size(len(frames)))
  for i, (name, frame) in enumerate(frames):
    ax = fig.add_subplot(rows, columns, i + 1)
    ax.imshow(frame)
    ax.set_title(name, fontsize=10)
    ax.axis('off')
  return save(fig, path)


def plot_workdir(
  workdir: str,
  *,
  builder=None,
  split: str | None = None,
  out_dir: str | None = None,
) -> list[str]:
  """Every figure a workdir has the data for; returns the paths written.

  Curves need metrics.jsonl, the confusion matrix eval/report.json (and
  the reliability diagram a report with its calibration), the
  gallery a dataset: `builder` (and `split`) if given, else the training
  split of the workdir's config.json.
  """
  # Late: keeps JAX and Flax (hpr.metrics') out of the tool's --help.
  from hpr import metrics

  out_dir = out_dir or os.path.join(workdir, 'plots')
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  jsonl = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(jsonl):
    paths += plot_curves(metrics.read_jsonl(jsonl), out_dir)
  report_path = os.path.join(workdir, 'eval', 'report.json')
  if os.path.exists(report_path):
    with open(report_path) as f:
      report = json.load(f)
    protocol = report['protocol']
    paths.append(
      plot_confusion(
        report['metrics']['confusion'],
        report['class_names'],
        os.path.join(out_dir, 'confusion.png'),
        f'{protocol["dataset"]} {protocol["split"]}, step '
        f'{protocol["checkpoint_step"]}',
      )
    )
    if 'calibration' in report:  # Reports before issue 26 have none.
      paths.append(
        plot_reliability(
          report['calibration'],
          os.path.join(out_dir, 'reliability.png'),
          f'{protocol["split"]}, step {protocol["checkpoint_step"]}',
        )
      )
  config_path = os.path.join(workdir, 'config.json')
  if builder is None and os.path.exists(config_path):
    with open(config_path) as f:
      dataset = json.load(f)['dataset']
    builder = _builder(
      dataset['name'], dataset['data_dir'], dataset.get('video_folder')
    )
    split = split or dataset['train_split']
  if builder is not None:
    split = split or next(iter(builder.info.splits))
    frames = first_frames(builder, split)
    paths.append(plot_gallery(frames, os.path.join(out_dir, 'gallery.png')))
  return paths


def _builder(name: str, data_dir: str, video_folder: dict | None = None):
  # Late: keeps TensorFlow and JAX out of the tool's --help.
  from hpr import input_pipeline

  dataset = ml_collections.ConfigDict({'name': name, 'data_dir': data_dir})
  if video_folder is not None:
    dataset.video_folder = ml_collections.ConfigDict(
      lists_to_tuples(video_folder)
    )
  try:
    return input_pipeline.get_builder(dataset)
  except UserError:
    raise
  except Exception as e:  # TFDS raises several kinds of not-found errors.
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise UserError(f'cannot open dataset {name!r}: {first}') from None


def _parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
    prog='python -m hpr.tools.plots',
    description='Training curves, confusion matrix and a gallery of '
    'labelled first frames, as PNG files.',
  )
  parser.add_argument(
    '--workdir', help='a training workdir; figures go to WORKDIR/plots'
  )
  parser.add_argument(
    '--dataset',
    help='draw the gallery from this TFDS dataset (e.g. '
    'synthetic_actions/default) instead of a workdir',
  )
  parser.add_argument(
    '--data_dir', default='', help='TFDS data_dir of --dataset'
  )
  parser.add_argument(
    '--split', default='train', help='split of --dataset for the gallery'
  )
  parser.add_argument('--out', help='output directory (default WORKDIR/plots)')
  return parser


def main(argv: list[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  args = _parser().parse_args(argv)
  if not args.workdir and not args.dataset:
    raise UserError('give --workdir, or --dataset with --out')
  if args.dataset:
    out = args.out or (args.workdir and os.path.join(args.workdir, 'plots'))
    if not out:
      raise UserError('--dataset without --workdir needs --out DIR')
    builder = _builder(args.dataset, args.data_dir)
    if args.split not in builder.info.splits:
      raise UserError(
        f'dataset {args.dataset} has no split {args.split!r} (available: '
        f'{", ".join(builder.info.splits)})'
      )
    os.makedirs(out, exist_ok=True)
    frames = first_frames(builder, args.split)
    paths = [plot_gallery(frames, os.path.join(out, 'gallery.png'))]
  else:
    if not os.path.isdir(args.workdir):
      raise UserError(f'no such workdir: {args.workdir}')
    if not os.path.exists(os.path.join(args.workdir, 'metrics.jsonl')):
      raise UserError(
        f'{args.workdir} has no metrics.jsonl: is it a training workdir?'
      )
    paths = plot_workdir(args.workdir, out_dir=args.out)
    if not os.path.exists(os.path.join(args.workdir, 'eval', 'report.json')):
      print(
        'no eval/report.json: run `python -m hpr.main --mode=evaluate` for '
        'the confusion matrix',
        file=sys.stderr,
      )
  for path in paths:
    print(path)


def run() -> None:
  """The command line, with user errors as one line."""
  cli.run(main)


if __name__ == '__main__':
  run()
