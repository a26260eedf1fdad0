"""Leak study: the seed notebook's random clip-level split against the group
split, same videos, model, seeds and budget.

  nice -n 10 python -m experiments.leak_study.run [--out /tmp/hpr/leak_study]

1. Renders a small synthetic_actions config (8 groups x 4 clips x 12 classes
   = 384 clips, 24 frames of 64x64) and writes it out as a UCF-style folder
   of MPEG-4 .avi files (hpr.tools.export_synthetic.export_builder).
2. For each seed and model, trains on that folder twice (dataset.name =
   'video_folder'): `split = 'random_clips'` (per class 25% test, 12.5%
   validation, drawn with the seed, as the notebook's train_test_split does)
   and `split = 'groups'` (two whole groups in test, one in validation,
   another pair for each seed). Both give 96 test, 48 validation and 240
   training clips, and the same budget: 40 epochs (no early stopping), the
   checkpoint with the best validation accuracy tested.
3. Writes results.json (per run: accuracy, per-video correctness, how many
   test videos share a (class, group) with a training video) and leak.png,
   and prints the table: accuracies, their difference per seed and a
   bootstrap 95% interval of the mean difference (resampling seeds and, in
   each run, test videos).
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SPLITS = ('random_clips', 'groups')
NUM_GROUPS = 8
CLIPS_PER_GROUP = 4
BOOTSTRAP = 10_000


def make_folder(out: str) -> str:
  """Renders the study's synthetic_actions config and exports it."""
  import tensorflow_datasets as tfds

  from hpr.datasets import synthetic_actions
  from hpr.tools import export_synthetic

  folder = os.path.join(out, 'videos')
  if os.path.isdir(folder):
    return folder
  config = dataclasses.replace(
    synthetic_actions.SyntheticActions.builder_configs['default'],
    name='leak_study',
    num_frames=24,
    num_groups=NUM_GROUPS,
    clips_per_group=CLIPS_PER_GROUP,
  )
  builder = tfds.builder(
    'synthetic_actions', config=config, data_dir=os.path.join(out, 'tfds')
  )
  builder.download_and_prepare()
  tmp = folder + '.tmp'
  export_synthetic.export_builder(builder, tmp)
  os.rename(tmp, folder)
  return folder


def study_config(
  folder: str, out: str, model: str, split: str, seed: int, epochs: int
):
  """The run's config: everything but the split is the same in both arms."""
  from hpr import config as config_lib

  config = config_lib.default_config()
  config.seed = seed
  config.dataset.name = 'video_folder'
  config.dataset.data_dir = os.path.join(out, 'tfds')
  vf = config.dataset.video_folder
  vf.root = folder
  vf.short_side = 32
  vf.split = split
  vf.seed = seed
  if split == 'random_clips':
    vf.test_fraction = 0.25
    vf.val_fraction = 0.125
    vf.allow_leaky_split = True
  else:
    vf.test_groups = (2 * seed % NUM_GROUPS + 1, 2 * seed % NUM_GROUPS + 2)
    vf.val_groups = 1
  config.input.num_frames = 8
  config.input.image_size = 32
  config.model.name = model
  # Small enough to learn in the budget on 2 CPU cores (~3 s an epoch).
  config.model.lrcn.conv_features = (8, 16)
  config.model.lrcn.pool_sizes = (2, 2)
  config.model.lrcn.lstm_features = 32
  config.model.convlstm.filters = (4, 8)
  config.input.color_jitter = 0.0
  config.optimizer.learning_rate = 4e-3
  config.training.batch_size = 16
  config.training.num_epochs = epochs
  config.training.patience = 0  # The same number of steps in both arms.
  config.training.log_every_steps = 50
  config.eval.batch_size = 24
  config.jax_cache_dir = ''
  return config


def leaked(builder, test_ids: list[str]) -> int:
  """Test videos whose (class, group) also has a training video."""
  from hpr import evaluate

  def key(video_id):
    match = re.match(r'v_(.+)_g(\d+)_c\d+', os.path.basename(video_id))
    return match.groups() if match else video_id

  train = {key(v) for v in evaluate.video_ids(builder, 'train')}
  return sum(key(v) in train for v in test_ids)


def run_one(
  folder: str, out: str, model: str, split: str, seed: int, epochs: int
) -> dict:
  from hpr import input_pipeline, train

  config = study_config(folder, out, model, split, seed, epochs)
  workdir = os.path.join(out, 'runs', f'{model}_{split}_seed{seed}')
  start = time.time()
  scores = train.train_and_evaluate(config, workdir)
  seconds = time.time() - start
  pred = np.load(os.path.join(workdir, 'eval', 'predictions.npz'))
  correct = pred['video_logits'].argmax(-1) == pred['video_labels']
  ids = [str(v) for v in pred['video_ids']]
  builder = input_pipeline.get_builder(config.dataset)
  with open(os.path.join(workdir, 'eval', 'report.json')) as f:
    report = json.load(f)
  return {
    'model': model,
    'split': split,
    'seed': seed,
    'accuracy': scores['accuracy'],
    'count': int(len(correct)),
    'leaked_test_videos': leaked(builder, ids),
    'test_groups': sorted(
      {int(re.search(r'_g(\d+)_', v).group(1)) for v in ids}
    ),
    'reversed_accuracy': report['order_probe']['reversed']['accuracy'],
    'ece': report['calibration']['ece'],
    'seconds': round(seconds, 1),
    # One character per test video, in predictions.npz's order.
    'correct': ''.join('1' if c else '0' for c in correct),
  }


def bootstrap(runs: list[dict], model: str, seeds: list[int]) -> dict:
  """Mean over seeds of accuracy(random_clips) - accuracy(groups), and its
  bootstrap 95% interval: each replicate draws the seeds with replacement
  and, within each drawn seed's two runs, the test videos with replacement
  (paired by seed: same seed, same model, same budget)."""
  by = {(r['split'], r['seed']): np.array([c == '1' for c in r['correct']])
        for r in runs if r['model'] == model}  # fmt: skip
  diffs = np.array([by['random_clips', s].mean() - by['groups', s].mean()
                    for s in seeds])  # fmt: skip
  rng = np.random.default_rng(0)
  replicates = np.empty(BOOTSTRAP)
  for b in range(BOOTSTRAP):
    total = 0.0
    for s in rng.choice(seeds, size=len(seeds)):
      a, g = by['random_clips', s], by['groups', s]
      total += (
        a[rng.integers(0, len(a), len(a))].mean()
        - g[rng.integers(0, len(g), len(g))].mean()
      )
    replicates[b] = total / len(seeds)
  low, high = np.percentile(replicates, [2.5, 97.5])
  return {
    'model': model,
    'per_seed_difference': diffs.tolist(),
    'mean_difference': float(diffs.mean()),
    'ci95': [float(low), float(high)],
    'replicates': BOOTSTRAP,
  }


def plot(runs: list[dict], summaries: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  models = [s['model'] for s in summaries]
  fig, axes = plt.subplots(
    1, len(models), figsize=(4 * len(models), 3.2), dpi=80, squeeze=False
  )
  for ax, summary in zip(axes[0], summaries, strict=True):
    model = summary['model']
    for x, split in enumerate(SPLITS):
      accs = [r['accuracy'] for r in runs
              if r['model'] == model and r['split'] == split]  # fmt: skip
      ax.plot([x] * len(accs), accs, 'o', color='gray', alpha=0.6)
      ax.bar(x, np.mean(accs), width=0.5, alpha=0.4)
    seeds = sorted({r['seed'] for r in runs if r['model'] == model})
    for s in seeds:
      pair = [next(r['accuracy'] for r in runs if r['model'] == model
                   and r['split'] == split and r['seed'] == s)
              for split in SPLITS]  # fmt: skip
      ax.plot([0, 1], pair, '-', color='gray', alpha=0.4)
    low, high = summary['ci95']
    ax.set_xticks([0, 1], ['random clips\n(notebook)', 'groups'])
    ax.set_ylim(0, 1)
    ax.set_ylabel('test accuracy')
    ax.set_title(
      f'{model}: difference {summary["mean_difference"]:+.3f}\n'
      f'95% CI [{low:+.3f}, {high:+.3f}]',
      fontsize=9,
    )
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def table(runs: list[dict], summaries: list[dict]) -> str:
  lines = [
    '| model | seed | random clips | leaked | groups | leaked | difference |',
    '|---|---|---|---|---|---|---|',
  ]
  for summary in summaries:
    model = summary['model']
    seeds = sorted({r['seed'] for r in runs if r['model'] == model})
    for s, d in zip(seeds, summary['per_seed_difference'], strict=True):
      r, g = (next(x for x in runs if x['model'] == model
                   and x['split'] == split and x['seed'] == s)
              for split in SPLITS)  # fmt: skip
      lines.append(
        f'| {model} | {s} | {r["accuracy"]:.3f} | '
        f'{r["leaked_test_videos"]}/{r["count"]} | {g["accuracy"]:.3f} | '
        f'{g["leaked_test_videos"]}/{g["count"]} | {d:+.3f} |'
      )
    low, high = summary['ci95']
    lines.append(
      f'| {model} | mean | | | | | {summary["mean_difference"]:+.3f} '
      f'[{low:+.3f}, {high:+.3f}] |'
    )
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='/tmp/hpr/leak_study')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--models', nargs='+', default=['lrcn'])
  parser.add_argument('--epochs', type=int, default=40)
  parser.add_argument(
    '--results', default=HERE, help='where results.json and leak.png go'
  )
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf

  from hpr import parallel, workdir

  tf.config.set_visible_devices([], 'GPU')  # TF only reads the data.
  start = time.time()
  folder = make_folder(args.out)
  config = study_config(folder, args.out, 'lrcn', 'groups', 0, args.epochs)
  parallel.configure_cpu_devices(
    config.cpu_devices, (config.training.batch_size, config.eval.batch_size), 1
  )
  runs = [
    run_one(folder, args.out, model, split, seed, args.epochs)
    for model in args.models
    for seed in args.seeds
    for split in SPLITS
  ]
  summaries = [bootstrap(runs, m, args.seeds) for m in args.models]
  results = {
    'command': ' '.join(
      ['python -m experiments.leak_study.run', *sys.argv[1:]]
    ),
    'commit': workdir.source_commit(),
    'machine': _machine(),
    'budget': {
      'epochs': args.epochs,
      'num_frames': 8,
      'image_size': 32,
      'batch_size': 16,
      'videos': NUM_GROUPS * CLIPS_PER_GROUP * 12,
    },
    'seconds': round(time.time() - start, 1),
    'summaries': summaries,
    'runs': runs,
  }
  os.makedirs(args.results, exist_ok=True)
  with open(os.path.join(args.results, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  plot(runs, summaries, os.path.join(args.results, 'leak.png'))
  print(table(runs, summaries))
  print(f'total {results["seconds"]:.0f} s')


def _machine() -> str:
  try:
    cpu = subprocess.run(
      ['nproc'], capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    cpu = '?'
  return f'{cpu}-core CPU ({os.uname().machine})'


if __name__ == '__main__':
  main()
