r"""Seeds x folds as one command, over one decoded copy of the data.

  python -m hpr.tools.sweep --config configs/X.py --workdir DIR \
      --seeds 0,1,2 [--folds 1,2,3] [--config.key=value ...]

Trains and tests one run per (seed, fold) into DIR/seed{S}_fold{F}/ (or
DIR/seed{S}/ without --folds), in this process, one after the other, then
writes DIR/summary.json and prints a table of each test metric's mean ± std
(sample standard deviation over runs) and 95% t-interval.

Folds: with dataset.name = 'video_folder', split 'groups', fold F is the
leave-one-group-out fold (group F is the test split; test_groups is
cleared); split 'official', fold F is official split F (split_number). A
video folder is decoded once, whatever the folds (hpr.datasets.video_folder
keeps the decoded copy), so each further fold only writes its splits.
Other datasets take --seeds only. A finished run's directory is tested
again, an interrupted one resumes: rerunning the command completes a sweep.
"""

import json
import math
import os

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from hpr import config as config_lib
from hpr import launch  # Also defines the multi-process flags.
from hpr.cli import fail
from hpr.errors import ConfigError, UserError

# Two-sided 95% quantiles of Student's t, by degrees of freedom (1-30);
# beyond 30 the normal 1.96 is within 2%.
_T975 = (
  12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
  2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
  2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
# Test metrics summarised (hpr.metrics.classification_metrics).
METRICS = ('accuracy', 'mean_class_accuracy', 'top5', 'loss')


def t_quantile(dof: int) -> float:
  """Student's t 0.975 quantile with `dof` degrees of freedom."""
  if dof < 1:
    return math.nan
  return _T975[dof - 1] if dof <= len(_T975) else 1.96


def summarize(values: list[float]) -> dict:
  """{'n', 'mean', 'std', 'ci95': [low, high], 'values'}: std is the sample
  standard deviation (ddof 1) and the interval mean ± t * std / sqrt(n);
  both NaN (null in JSON) for a single run."""
  x = np.asarray(values, np.float64)
  n = len(x)
  mean = float(x.mean()) if n else math.nan
  std = float(x.std(ddof=1)) if n > 1 else math.nan
  half = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
  return {
    'n': n,
    'mean': mean,
    'std': std,
    'ci95': [mean - half, mean + half],
    'values': [float(v) for v in x],
  }


def apply_fold(config: ml_collections.ConfigDict, fold: int) -> None:
  """Sets `config`'s split to fold `fold` (see the module docstring).

  Raises:
    ConfigError: the dataset has no folds.
  """
  d = config.dataset
  if d.name != 'video_folder':
    raise ConfigError(
      f'--folds needs dataset.name=video_folder; {d.name} has fixed splits '
      '(sweep --seeds only)'
    )
  vf = d.video_folder
  if vf.split == 'groups':
    vf.test_groups = ()
    vf.fold = fold
  elif vf.split == 'official':
    if fold not in (1, 2, 3):
      raise ConfigError(f'--folds: official splits are 1, 2 and 3, not {fold}')
    vf.split_number = fold
  else:
    raise ConfigError(
      f"--folds needs dataset.video_folder.split 'groups' (leave-one-group-"
      f"out) or 'official' (split numbers), not {vf.split!r}"
    )


def run_name(seed: int, fold: int | None) -> str:
  return f'seed{seed}' if fold is None else f'seed{seed}_fold{fold}'


def sweep(
  config: ml_collections.ConfigDict,
  workdir: str,
  seeds: list[int],
  folds: list[int] | None = None,
) -> dict:
  """Runs every (seed, fold) and writes WORKDIR/summary.json.

  Returns:
    The summary: {'runs': [{'seed', 'fold', 'workdir', 'metrics',
    'protocol'}], 'metrics': {name: `summarize`}, 'seeds', 'folds'}.

  Raises:
    UserError: as `train.train_and_evaluate`; ConfigError for folds the
      dataset does not have.
  """
  # Late: keeps TensorFlow and JAX out of the tool's --help.
  from hpr import train

  if not seeds:
    raise ConfigError('--seeds: give at least one seed')
  plan = []
  for fold in folds or [None]:
    for seed in seeds:
      run = ml_collections.ConfigDict(config.to_dict())
      run.seed = seed
      if fold is not None:
        apply_fold(run, fold)
      config_lib.validate(run)
      plan.append((seed, fold, run))
  os.makedirs(workdir, exist_ok=True)
  runs = []
  for seed, fold, run in plan:
    run_dir = os.path.join(workdir, run_name(seed, fold))
    logging.info('sweep: %s', run_dir)
    test = train.train_and_evaluate(run, run_dir)
    with open(os.path.join(run_dir, 'eval', 'report.json')) as f:
      protocol = json.load(f)['protocol']
    runs.append(
      {
        'seed': seed,
        'fold': fold,
        'workdir': run_dir,
        'metrics': {k: float(test[k]) for k in METRICS},
        'protocol': protocol,
      }
    )
  summary = {
    'seeds': list(seeds),
    'folds': list(folds) if folds else None,
    'metrics': {k: summarize([r['metrics'][k] for r in runs]) for k in METRICS},
    'data_fingerprints': sorted(
      {str(r['protocol'].get('data_fingerprint')) for r in runs}
    ),
    'runs': runs,
  }
  text = json.dumps(_json_safe(summary), indent=2) + '\n'
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    f.write(text)
  return summary


def _json_safe(value):
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_json_safe(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def table(summary: dict) -> str:
  """The console table: one line per metric."""
  lines = [
    f'{len(summary["runs"])} runs: seeds {summary["seeds"]}'
    + (f', folds {summary["folds"]}' if summary['folds'] else ''),
    f'{"metric":<20} {"mean ± std":>18} {"95% interval":>20}',
  ]
  for name, s in summary['metrics'].items():
    spread = f'{s["mean"]:.4f} ± {s["std"]:.4f}'
    low, high = s['ci95']
    lines.append(f'{name:<20} {spread:>18} {f"[{low:.4f}, {high:.4f}]":>20}')
  return '\n'.join(lines)


def parse_ints(flag: str, text: str) -> list[int]:
  """'0,1,2' or '1-3' -> [0, 1, 2] / [1, 2, 3]."""
  out = []
  try:
    for part in filter(None, (p.strip() for p in text.split(','))):
      low, sep, high = part.partition('-')
      out += list(range(int(low), int(high) + 1)) if sep else [int(part)]
  except ValueError:
    raise ConfigError(
      f'--{flag}: expected integers like 0,1,2 or 1-3, got {text!r}'
    ) from None
  if len(set(out)) != len(out):
    raise ConfigError(f'--{flag}: {text!r} repeats a number')
  return out


def _define_flags():
  config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file; override keys with '
    '--config.key=value.', lock_config=True)  # fmt: skip
  flags.DEFINE_string('workdir', None, 'Directory of the sweep: one '
                      'seed{S}_fold{F} run directory each, summary.json.')  # fmt: skip
  flags.DEFINE_string('seeds', '0,1,2', 'Seeds, e.g. 0,1,2 or 0-4.')
  flags.DEFINE_string('folds', '', "Folds, e.g. 1,2,3: leave-one-group-out "
                      "folds ('groups') or official splits ('official'); "
                      "'' keeps the config's split.")  # fmt: skip
  return flags.FLAGS


def main(argv: list[str]) -> None:
  FLAGS = flags.FLAGS
  logging.get_absl_handler().addFilter(launch.QuietLibraries())
  try:
    if len(argv) > 1:
      raise ConfigError(f'unexpected arguments: {" ".join(argv[1:])}')
    if not FLAGS.workdir:
      raise ConfigError('--workdir is required')
    if FLAGS.config is None:
      raise ConfigError('--config is required')
    seeds = parse_ints('seeds', FLAGS.seeds)
    folds = parse_ints('folds', FLAGS.folds) or None
    launch.setup(FLAGS.config)
    summary = sweep(FLAGS.config, FLAGS.workdir, seeds, folds)
  except UserError as e:
    fail(e)
  print(table(summary))
  print(f'summary: {os.path.join(FLAGS.workdir, "summary.json")}')


def run() -> None:
  """`python -m hpr.tools.sweep`."""
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
