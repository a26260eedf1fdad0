r"""Which of two set-ups trains faster here: hpr's train step in several
variants, timed in turns in one process.

  python benchmarks/step_ab.py --variant 'no ynn:xla.xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INVALID'
  python benchmarks/step_ab.py --model seed_convlstm --variant 'hidden 8:config.model.convlstm.filters=(4, 8, 14, 8)'
  python benchmarks/step_ab.py --variant 'my change:setup=/tmp/patch.py' --json /tmp/ab.json

On a shared VM the speed of the same code drifts by more than ±20% within
the hour (benchmarks/README.md, sitting G), so runs of `train_speed.py` one
after the other cannot tell changes of 5-15% apart. Here the baseline
(variant 0: the model and config as they are) and every `--variant` are
compiled in one process, then each round runs `--per_round` steps of each
variant in turn (order reversed every other round), so drift reaches all of
them alike. Reported per variant: the median step time and clips/s over
all rounds, and its time relative to the baseline in each round, with the
median of those ratios and in how many rounds it was faster.

A variant is `NAME:ITEM;ITEM;...`, each item one of
  config.KEY=VALUE  a config override (VALUE a Python literal), as
                    `--config.KEY=VALUE` on `python -m hpr.main`;
  xla.OPTION=VALUE  an XLA compiler option for this variant's compile
                    (DebugOptions names; enums by their names);
  setup=FILE.py     Python run before the variant is built and traced, to
                    try a code change (e.g. a module constant or a function
                    replaced). Setups stay in effect for later variants.

The process runs with hpr's glibc malloc settings, as `python -m hpr.main`
does (HPR_MALLOC_TUNING=0: glibc's defaults). The clips are random
(float32), on the devices `python -m hpr.main` would
use for the baseline's config. Models: 'seed_convlstm', 'seed_lrcn' (the
notebook's networks, as in train_speed.py) or a config file.
"""

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_speed import load_config  # noqa: E402


class VariantError(ValueError):
  """A --variant that does not parse or does not apply."""


def parse_variant(text: str) -> dict:
  """'NAME:ITEM;ITEM' -> {'name', 'config': {key: value}, 'xla': {option:
  value}, 'setup': [paths]}."""
  name, sep, items = text.partition(':')
  if not sep or not name.strip():
    raise VariantError(f"--variant '{text}': expected NAME:ITEM;ITEM;...")
  variant = {'name': name.strip(), 'config': {}, 'xla': {}, 'setup': []}
  for item in filter(None, (i.strip() for i in items.split(';'))):
    key, eq, value = item.partition('=')
    key, value = key.strip(), value.strip()
    if not eq or not value:
      raise VariantError(f"--variant '{name}': item '{item}' is not KEY=VALUE")
    if key == 'setup':
      if not os.path.isfile(value):
        raise VariantError(f"--variant '{name}': no setup file '{value}'")
      variant['setup'].append(value)
    elif key.startswith('config.'):
      try:
        variant['config'][key[len('config.') :]] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        variant['config'][key[len('config.') :]] = value  # A bare string.
    elif key.startswith('xla.'):
      variant['xla'][key[len('xla.') :]] = _xla_value(value)
    else:
      raise VariantError(
        f"--variant '{name}': item '{item}' is not config.KEY=, xla.OPTION= "
        'or setup='
      )
  return variant


def _xla_value(value: str):
  lowered = value.lower()
  if lowered in ('true', 'false'):
    return lowered == 'true'
  try:
    return int(value)
  except ValueError:
    return value


def apply_overrides(config, overrides: dict, variant: str) -> None:
  """Sets each dotted config key; an unknown key is a VariantError."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      if part not in node:
        raise VariantError(f"--variant '{variant}': no config key '{key}'")
      node = node[part]
    if leaf not in node:
      raise VariantError(f"--variant '{variant}': no config key '{key}'")
    try:
      node[leaf] = value
    except TypeError as e:  # ml_collections keeps each field's type.
      raise VariantError(f"--variant '{variant}': {key}: {e}") from e


def run(args) -> dict:
  import jax
  import numpy as np

  from hpr import malloc_tuning, parallel
  from hpr.train_state import build_model, create_train_state, jit_train_step

  variants = [{'name': 'baseline', 'config': {}, 'xla': {}, 'setup': []}]
  variants += [parse_variant(v) for v in args.variant]
  for variant in variants:  # Bad keys fail before anything compiles.
    apply_overrides(load_config(args.model), variant['config'], variant['name'])
  base = load_config(args.model)
  base.training.batch_size = args.batch_size
  parallel.configure_cpu_devices(base.cpu_devices, (args.batch_size,))
  mesh = parallel.make_mesh()
  clip_shape = (
    base.input.num_frames,
    base.input.image_size,
    base.input.image_size,
    3,
  )
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch(
    {
      'video': rng.random((args.batch_size, *clip_shape), dtype=np.float32),
      'label': rng.integers(0, args.num_classes, args.batch_size).astype(
        np.int32
      ),
    },
    mesh,
  )

  runs = []
  for variant in variants:
    for path in variant['setup']:
      with open(path) as f:
        exec(compile(f.read(), path, 'exec'), {'__name__': '__setup__'})
    config = load_config(args.model)
    config.training.batch_size = args.batch_size
    apply_overrides(config, variant['config'], variant['name'])
    if tuple((config.input.num_frames, config.input.image_size)) != tuple(
      clip_shape[:2]
    ):
      raise VariantError(
        f"--variant '{variant['name']}': the clip size must stay the "
        "baseline's (it would time other work)"
      )
    ts = create_train_state(
      config,
      args.num_classes,
      mesh,
      100,
      model=build_model(config, args.num_classes),
    )
    step = jit_train_step(ts, mesh, seed=0, label_smoothing=0.0)
    t0 = time.perf_counter()
    try:
      compiled = step.lower(ts.state, batch, 0).compile(
        compiler_options=variant['xla'] or None
      )
    except jax.errors.JaxRuntimeError as e:
      if not variant['xla']:
        raise
      message = str(e).strip().splitlines()[0]
      raise VariantError(
        f"--variant '{variant['name']}': XLA rejects its options: {message}"
      ) from e
    print(
      f"compiled '{variant['name']}' in {time.perf_counter() - t0:.1f} s",
      file=sys.stderr,
      flush=True,
    )
    runs.append({'compiled': compiled, 'state': ts.state, 'times': []})

  def steps(r, n, first):
    state = r['state']
    times = []
    for i in range(n):
      t0 = time.perf_counter()
      state, loss = r['compiled'](state, batch, first + i)
      jax.block_until_ready((state, loss))
      times.append(time.perf_counter() - t0)
    r['state'] = state
    return times

  for r in runs:
    steps(r, args.warmup, 0)
  ratios = [[] for _ in runs]
  for k in range(args.rounds):
    order = range(len(runs)) if k % 2 == 0 else reversed(range(len(runs)))
    medians = {}
    for v in order:
      t = steps(runs[v], args.per_round, args.warmup + k * args.per_round)
      runs[v]['times'] += t
      medians[v] = statistics.median(t)
    for v in range(len(runs)):
      ratios[v].append(medians[v] / medians[0])
    print(
      f'round {k + 1}/{args.rounds}: '
      + ', '.join(f'{1e3 * medians[v]:.1f}' for v in range(len(runs)))
      + ' ms',
      file=sys.stderr,
      flush=True,
    )

  out = {
    'model': args.model,
    'batch_size': args.batch_size,
    'devices': jax.device_count(),
    'rounds': args.rounds,
    'steps_per_round': args.per_round,
    'machine': platform.processor() or platform.machine(),
    'cpus': os.cpu_count(),
    'malloc_tuning': malloc_tuning.describe(),
    'date': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    'variants': [],
  }
  for variant, r, ratio in zip(variants, runs, ratios, strict=True):
    median = statistics.median(r['times'])
    out['variants'].append(
      {
        'name': variant['name'],
        'config': variant['config'],
        'xla': variant['xla'],
        'setup': variant['setup'],
        'step_ms': 1e3 * median,
        'clips_per_s': args.batch_size / median,
        'ratio_per_round': ratio,
        'median_ratio': statistics.median(ratio),
        'rounds_faster': sum(x < 1 for x in ratio),
      }
    )
  return out


def table(out: dict) -> str:
  lines = [
    f'{out["model"]}, batch {out["batch_size"]}, {out["devices"]} devices, '
    f'{out["rounds"]} rounds of {out["steps_per_round"]} steps',
    '',
    '| variant | step ms | clips/s | time / baseline (median of rounds) '
    '| rounds faster |',
    '|---|---|---|---|---|',
  ]
  for v in out['variants']:
    lines.append(
      f'| {v["name"]} | {v["step_ms"]:.1f} | {v["clips_per_s"]:.1f} | '
      f'{v["median_ratio"]:.3f} | {v["rounds_faster"]} / {out["rounds"]} |'
    )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--model', default='seed_lrcn', help='seed_convlstm, seed_lrcn or a config'
  )
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--num_classes', type=int, default=4)
  parser.add_argument(
    '--variant',
    action='append',
    default=[],
    help='NAME:ITEM;ITEM... (see above); repeat for more variants',
  )
  parser.add_argument(
    '--rounds', type=int, default=8, help='rounds of turns (default 8)'
  )
  parser.add_argument(
    '--per_round',
    type=int,
    default=2,
    help='steps of each variant per round (default 2)',
  )
  parser.add_argument(
    '--warmup', type=int, default=3, help='untimed steps of each (default 3)'
  )
  parser.add_argument('--json', help='also write every number here')
  args = parser.parse_args()
  if not args.variant:
    parser.error('give at least one --variant to compare with the baseline')
  if args.rounds < 1 or args.per_round < 1 or args.warmup < 0:
    parser.error('--rounds and --per_round must be >= 1, --warmup >= 0')
  try:  # A variant that does not parse fails before anything starts.
    for variant in args.variant:
      parse_variant(variant)
  except VariantError as e:
    sys.exit(f'step_ab: {e}')
  from hpr import malloc_tuning
  from hpr.errors import ConfigError

  malloc_tuning.reexec()  # As `python -m hpr.main` runs (HPR_MALLOC_TUNING).
  try:
    out = run(args)
  except (VariantError, ConfigError) as e:
    sys.exit(f'step_ab: {e}')
  print(table(out))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
