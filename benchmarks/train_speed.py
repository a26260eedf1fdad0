r"""Training-step speed of hpr's models on this machine.

  python benchmarks/train_speed.py                      # seed models, b 4, 32
  python benchmarks/train_speed.py --extras=off         # clips/s only
  python benchmarks/train_speed.py --models configs/default.py --batch_sizes 8
  python benchmarks/train_speed.py --json /tmp/train_speed.json

For each model and batch size, in a process of its own (so peak memory and
thread pools are its own), on random clips (float32, 20x64x64x3 unless the
config says otherwise), on the devices `python -m hpr.main` would use (on a
CPU, `config.cpu_devices` of them; on a GPU or TPU host, its accelerators,
at batch 32 and 256 unless --batch_sizes says otherwise; the JSON records
the platform, device kind and count):

- training: hpr's jitted train step (forward, backward, Adam, metrics, the
  one `hpr.train` runs), the median and spread (10th-90th percentile) of
  `--steps` steps after `--warmup` steps, as clips/s and ms per step;
- inference: the jitted eval step at `--infer_batch`, clips/s;
- compilation: seconds to trace + compile the train step with an empty
  persistent compilation cache, and again in a fresh process with the cache
  filled by the first (what a second run of a config pays), plus that
  process's start-up to the end of its first step;
- FLOPs: XLA's cost analysis of the train step compiled with every time
  loop unrolled (XLA counts a loop body once) and the compiled kernels
  replaced by hpr.kernels' XLA formulations (XLA cannot count inside the
  custom calls of `native_block`), times the devices (it
  costs one device's part), the achieved
  GFLOP/s and its
  fraction of this machine's float32 matmul peak (a 4096x4096 matmul in JAX,
  measured here);
- peak host memory of the process (ru_maxrss), and its minor page faults
  per timed step.

`--extras=off` leaves out the FLOPs and the cached-compile process (the
training and inference clips/s only, for a short sitting).

The workers run with hpr's glibc malloc settings, as `python -m hpr.main`
does (`hpr.malloc_tuning`); `--malloc_tuning=off` measures glibc's
defaults.

Models: 'seed_convlstm' and 'seed_lrcn' are the Keras notebook's networks
(4 classes, 44,524 and 73,060 parameters: the peers' models in
benchmarks/peers/, which benchmarks/sitting.py times beside these), or the path of a config file (its model, input
size and --num_classes).

Prints a Markdown table for benchmarks/README.md and, with --json, writes
every number.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

T_START = time.perf_counter()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SEED_MODELS = {
  # The notebook's networks; hpr's defaults for these classes are exactly them.
  'seed_convlstm': {'name': 'convlstm', 'kwargs': {}},
  'seed_lrcn': {
    'name': 'lrcn',
    'kwargs': {
      'conv_features': (16, 32, 64, 64),
      'pool_sizes': (4, 4, 2, 2),
      'lstm_features': 32,
    },
  },
}


def load_config(model: str):
  """The config a benchmark entry trains: a seed model or a config file."""
  from hpr import config as config_lib

  if model in SEED_MODELS:
    config = config_lib.default_config()
    seed = SEED_MODELS[model]
    config.model.name = seed['name']
    for key, value in seed['kwargs'].items():
      config.model[seed['name']][key] = value
    config.optimizer.schedule = 'constant'  # The notebook's Adam.
    config.optimizer.learning_rate = 1e-3
    # The notebook's clips (and the anchors'), whatever the default's are.
    config.input.num_frames, config.input.image_size = 20, 64
  else:
    config = config_lib.load_config_file(model)
  return config


def _time(fn, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def _percentile(values: list[float], q: float) -> float:
  values = sorted(values)
  return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def worker(args) -> dict:
  """One (model, batch size) entry; returns its numbers."""
  import jax
  import numpy as np
  from flax import nnx

  from hpr import cli, malloc_tuning, parallel
  from hpr.kernels import native_block, native_convlstm
  from hpr.train_state import (
    build_model,
    create_train_state,
    jit_eval_step,
    jit_train_step,
  )

  config = load_config(args.model)
  batch_size = args.batch_size
  config.training.batch_size = batch_size
  # The devices `python -m hpr.main` would run this config on.
  parallel.configure_cpu_devices(
    config.cpu_devices, (batch_size, args.infer_batch)
  )
  cli.enable_compilation_cache(args.cache_dir)
  mesh = parallel.make_mesh()
  num_classes = args.num_classes
  clip_shape = (
    config.input.num_frames,
    config.input.image_size,
    config.input.image_size,
    3,
  )
  rng = np.random.default_rng(batch_size)

  def make_batch(size):
    return parallel.shard_batch(
      {
        'video': rng.random((size, *clip_shape), dtype=np.float32),
        'label': rng.integers(0, num_classes, size).astype(np.int32),
      },
      mesh,
    )

  model = build_model(config, num_classes)
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  ts = create_train_state(config, num_classes, mesh, 100, model=model)
  step = jit_train_step(ts, mesh, seed=0, label_smoothing=0.0)
  batch = make_batch(batch_size)
  out = {
    'model': args.model,
    'batch_size': batch_size,
    'params': int(params),
    'devices': jax.device_count(),
    'platform': jax.devices()[0].platform,
    'device_kind': jax.devices()[0].device_kind,
  }

  t0 = time.perf_counter()
  compiled = step.lower(ts.state, batch, 0).compile()
  out['compile_s'] = time.perf_counter() - t0
  state = ts.state

  def run_step(i):
    nonlocal state
    state, loss = compiled(state, batch, i)
    jax.block_until_ready((state, loss))

  run_step(0)
  out['startup_to_first_step_s'] = time.perf_counter() - T_START
  if args.steps == 0:  # Start-up only (the warm-cache run).
    return out
  counter = iter(range(1, 10**9))
  _time(lambda: run_step(next(counter)), args.warmup)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  times = _time(lambda: run_step(next(counter)), args.steps)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  median = statistics.median(times)
  out.update(
    malloc_tuning=malloc_tuning.describe(),
    page_faults_per_step=faults / len(times),
    step_ms=1e3 * median,
    step_ms_p10=1e3 * _percentile(times, 0.1),
    step_ms_p90=1e3 * _percentile(times, 0.9),
    clips_per_s=batch_size / median,
    steps_timed=len(times),
  )

  eval_step = jit_eval_step(ts, mesh)
  eval_batch = make_batch(args.infer_batch)
  jax.block_until_ready(eval_step(state, eval_batch))
  infer = _time(lambda: jax.block_until_ready(eval_step(state, eval_batch)), 10)
  out['infer_clips_per_s'] = args.infer_batch / statistics.median(infer)
  out['peak_rss_mib'] = (
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  )
  if not args.extras:
    return out

  # FLOPs: the same step with every time loop unrolled (XLA counts a loop
  # body once).
  unrolled = build_model(config, num_classes)
  for _, module in nnx.iter_graph(unrolled):
    if hasattr(module, 'unroll'):
      module.unroll = True
  uts = create_train_state(config, num_classes, mesh, 100, model=unrolled)
  ustep = jit_train_step(uts, mesh, seed=0, label_smoothing=0.0)
  # XLA's cost analysis cannot see into custom calls: the LRCN's native
  # first block and the ConvLSTM's native layers are counted as the XLA ops
  # they replace.
  with (
    mock.patch.object(native_block, 'supports', lambda *a: False),
    mock.patch.object(native_convlstm, 'supports', lambda *a: False),
  ):
    cost = ustep.lower(uts.state, batch, 0).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  # The cost of one device's part of the sharded step.
  out['gflop_per_step'] = float(cost['flops']) * jax.device_count() / 1e9
  out['gflops'] = out['gflop_per_step'] / median
  return out


def peak_worker() -> dict:
  """JAX's float32 matmul throughput here: the machine's practical peak."""
  import jax
  import jax.numpy as jnp

  n = 4096
  a = jax.random.uniform(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.uniform(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times = _time(lambda: matmul(a, b).block_until_ready(), 8)
  device = jax.devices()[0]
  return {
    'matmul_gflops': 2 * n**3 / min(times) / 1e9,
    'platform': device.platform,
    'device_kind': device.device_kind,
    'device_count': jax.device_count(),
    'jax': jax.__version__,
  }


def measure(model: str, batch_size: int, steps: int, num_classes: int = 4):
  """One entry's numbers (the worker below, in a process of its own), for
  other benchmarks that report a step beside their own figures."""
  return _spawn([
    '--worker',
    f'--model={model}',
    f'--batch_size={batch_size}',
    f'--steps={steps}',
    '--warmup=3',
    '--infer_batch=32',
    f'--num_classes={num_classes}',
  ])  # fmt: skip


def _spawn(argv: list[str], malloc: bool = True) -> dict:
  from hpr import malloc_tuning

  env = dict(os.environ)
  if not malloc:
    env[malloc_tuning.DISABLE_VARIABLE] = '0'
  env = malloc_tuning.environ(env)
  result = subprocess.run(
    [sys.executable, os.path.abspath(__file__), *argv],
    capture_output=True,
    text=True,
    check=False,
    env=env,
  )
  if result.returncode != 0:
    raise SystemExit(f'worker {argv} failed:\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def machine(peak: dict) -> str:
  """The host's CPUs and the devices the peak worker saw."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [ln.split(':', 1)[1].strip() for ln in f if 'model name' in ln]
    cpu = f'{len(names)} x {names[0]}' if names else cpu
  except OSError:
    pass
  return (
    f'{cpu}; jax {peak["jax"]}; {peak["device_count"]} x '
    f'{peak["device_kind"]} ({peak["platform"]})'
  )


def _num(r: dict, key: str, fmt: str, scale: float = 1.0) -> str:
  """r[key] formatted, or '-' where it was not measured (--extras=off)."""
  value = r.get(key)
  return '-' if value is None else f'{value * scale:{fmt}}'


def table(results: list[dict], peak: float) -> str:
  rows = [
    '| model | batch | devices | train clips/s | step ms (p10-p90) | GFLOP/step | '
    'GFLOP/s | % of peak | infer clips/s | compile s (cold / cached) | '
    'start-up s (cached) | peak RSS MiB |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in results:
    rows.append(
      f'| {r["model"]} | {r["batch_size"]} | {r["devices"]} | '
      f'{r["clips_per_s"]:.1f} | '
      f'{r["step_ms"]:.1f} ({r["step_ms_p10"]:.1f}-{r["step_ms_p90"]:.1f}) | '
      f'{_num(r, "gflop_per_step", ".2f")} | {_num(r, "gflops", ".1f")} | '
      f'{_num(r, "gflops", ".1f", 100 / peak)} | '
      f'{r["infer_clips_per_s"]:.1f} | '
      f'{r["compile_s"]:.1f} / {_num(r, "compile_cached_s", ".1f")}'
      f' | {_num(r, "startup_cached_s", ".1f")} | '
      f'{r["peak_rss_mib"]:.0f} |'
    )
  return '\n'.join(rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--models',
    default='seed_convlstm,seed_lrcn',
    help='comma-separated: seed_convlstm, seed_lrcn or config file paths',
  )
  parser.add_argument(
    '--batch_sizes', help='default 4,32 on a CPU, 32,256 on an accelerator'
  )
  parser.add_argument('--steps', type=int, default=20, help='timed steps')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--infer_batch', type=int, default=32)
  parser.add_argument(
    '--num_classes', type=int, default=4, help='classes (4: the notebook)'
  )
  parser.add_argument('--json', help='also write the numbers here')
  parser.add_argument(
    '--malloc_tuning',
    choices=('on', 'off'),
    default='on',
    help="run the workers with hpr's glibc malloc settings, as "
    '`python -m hpr.main` runs (hpr.malloc_tuning), or with the defaults',
  )
  parser.add_argument(
    '--extras',
    choices=('on', 'off'),
    default='on',
    help='off: training and inference clips/s only, without the FLOP count '
    'and the cached-compile process (a short sitting on a lent accelerator)',
  )
  # Internal: run one entry and print its JSON.
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--peak', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--model', help=argparse.SUPPRESS)
  parser.add_argument('--batch_size', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--cache_dir', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.extras = args.extras == 'on'
  if args.peak:
    print(json.dumps(peak_worker()))
    return
  if args.worker:
    print(json.dumps(worker(args)))
    return

  peak_info = _spawn(['--peak'])
  peak = peak_info['matmul_gflops']
  print(f'float32 matmul peak: {peak:.1f} GFLOP/s', file=sys.stderr)
  if args.batch_sizes is None:
    cpu = peak_info['platform'] == 'cpu'
    args.batch_sizes = '4,32' if cpu else '32,256'
  common = [
    f'--steps={args.steps}',
    f'--warmup={args.warmup}',
    f'--infer_batch={args.infer_batch}',
    f'--num_classes={args.num_classes}',
    f'--extras={"on" if args.extras else "off"}',
  ]
  results = []
  for model in args.models.split(','):
    for batch_size in (int(b) for b in args.batch_sizes.split(',')):
      with tempfile.TemporaryDirectory() as cache:
        entry = [
          '--worker',
          f'--model={model}',
          f'--batch_size={batch_size}',
          f'--cache_dir={cache}',
        ]
        malloc = args.malloc_tuning == 'on'
        r = _spawn(entry + common, malloc)
        if args.extras:
          cached = _spawn(entry + [*common, '--steps=0'], malloc)
          r['compile_cached_s'] = cached['compile_s']
          r['startup_cached_s'] = cached['startup_to_first_step_s']
      print(
        f'{model} b{batch_size}: {r["clips_per_s"]:.1f} clips/s, '
        f'{r["step_ms"]:.1f} ms/step',
        file=sys.stderr,
      )
      results.append(r)
  print(f'Machine: {machine(peak_info)}; matmul peak {peak:.1f} GFLOP/s\n')
  print(table(results, peak))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(
        {
          'peak_gflops': peak,
          'platform': peak_info['platform'],
          'device_kind': peak_info['device_kind'],
          'device_count': peak_info['device_count'],
          'jax': peak_info['jax'],
          'machine': machine(peak_info),
          'results': results,
        },
        f,
        indent=2,
      )


if __name__ == '__main__':
  main()
