r"""One sitting: the peers, hpr, the peers again, and hpr's speed over theirs.

  python benchmarks/sitting.py --peers_python /tmp/peers/bin/python
  python benchmarks/sitting.py --peers_python /tmp/peers/bin/python --quick
  python benchmarks/sitting.py --table benchmarks/results/sitting_....json
  python benchmarks/sitting.py --recompute PEERS.json TRAIN_SPEED.json [PEERS.json]

hpr's training speed and its peers' (the notebook's ConvLSTM and LRCN in
tf_keras, PyTorch eager and torch.compile: benchmarks/peers/) are only
comparable when measured on the same machine under the same load, and
these VMs drift by more than 20% within the hour. So a sitting runs, one
process each and one after the other: every peer (`benchmarks/peers/run.py`
in the peers' environment, --peers_python), then hpr
(`benchmarks/train_speed.py` in this one), then every peer again. For each
cell (model and batch size) it reports hpr's training clips/s over the best
peer's, before and after: a range, whose low end is the claim.

Writes everything (each process's numbers, the cells, the machine, the
commit) to --out_dir/sitting_<UTC start>_<platform>.json, rewritten after
each process so an interrupted sitting keeps what it measured, and prints
the Markdown table for benchmarks/README.md. --quick (3 timed steps, for
smoke tests) writes to the system's temporary folder unless --out_dir says
otherwise. `--passes 1` runs the peers once, before hpr (on a dedicated
accelerator, where drift is small).

`--recompute` makes the table from saved files: a pass of peers (a list of
`peers/run.py` entries, or the older anchors' JSON in benchmarks/results,
whose entries for these frameworks are the same measurement), hpr's
`train_speed.py --json` and optionally the second pass.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from peers import common  # noqa: E402

PEERS = ('tf_keras', 'torch-eager', 'torch-compile')
LABELS = {
  'tf_keras': 'tf_keras',
  'torch-eager': 'PyTorch eager',
  'torch-compile': 'torch.compile',
}
MODEL_NAMES = {'convlstm': 'ConvLSTM', 'lrcn': 'LRCN'}
# Cores other processes may keep busy (mean over a peer's timed steps)
# before the table says the machine was not idle.
BUSY_CORES = 0.3
PROBE = """
import json, jax
d = jax.devices()
print(json.dumps({'platform': d[0].platform, 'device_kind': d[0].device_kind,
                  'device_count': len(d), 'jax': jax.__version__}))
"""


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The cells and the table (from saved numbers only: tests use these).
# ---------------------------------------------------------------------------


def _peer_speeds(entries: list[dict] | None, model: str, batch_size: int):
  """{framework: training clips/s} of one pass's successful entries."""
  speeds = {}
  for e in entries or ():
    if e.get('status', 'ok') != 'ok' or e.get('model') != model:
      continue
    timing = e.get('train', {}).get(str(batch_size))
    if timing:
      speeds[e['framework']] = batch_size / timing['median_s']
  return speeds


def _best(speeds: dict[str, float]) -> dict | None:
  if not speeds:
    return None
  framework = max(speeds, key=speeds.get)
  return {'framework': framework, 'clips_per_s': speeds[framework]}


def summarize(
  peers_before: list[dict],
  hpr: dict,
  peers_after: list[dict] | None = None,
) -> dict:
  """hpr over the best peer, per (model, batch size) that hpr measured.

  Args:
    peers_before: the entries `peers/run.py` printed in the first pass (or a
      {'framework', 'model', 'status': why} for one that failed).
    hpr: what `train_speed.py --json` wrote.
    peers_after: the second pass's entries, or None for one pass.

  Returns:
    {'cells': [...], 'all_at_least_1x': bool or None where a cell has no
    peer}. A cell's ratios are hpr's clips/s over the best peer's of each
    pass; `ratio_min` is the claim.
  """
  flops = common.analytic_flops()
  cells = []
  for r in hpr.get('results', []):
    model = r['model'].removeprefix('seed_')
    if model not in flops:
      continue
    b = r['batch_size']
    before = _peer_speeds(peers_before, model, b)
    after = _peer_speeds(peers_after, model, b)
    passes = [_best(before)] + (
      [_best(after)] if peers_after is not None else []
    )
    ratios = [r['clips_per_s'] / p['clips_per_s'] for p in passes if p]
    per_clip = flops[model]['train']
    cells.append(
      {
        'model': model,
        'batch_size': b,
        'hpr_clips_per_s': r['clips_per_s'],
        'hpr_step_ms_p10_p90': [r.get('step_ms_p10'), r.get('step_ms_p90')],
        'peers': {
          fw: [before.get(fw), after.get(fw)] for fw in {**before, **after}
        },
        'best_peer': passes,
        'ratios': ratios,
        'ratio_min': min(ratios) if ratios else None,
        'ratio_max': max(ratios) if ratios else None,
        'hpr_gflops_analytic': r['clips_per_s'] * per_clip / 1e9,
        'best_peer_gflops_analytic': [
          p['clips_per_s'] * per_clip / 1e9 if p else None for p in passes
        ],
      }
    )
  mins = [c['ratio_min'] for c in cells]
  return {
    'cells': cells,
    'all_at_least_1x': None
    if not cells or None in mins
    else all(m >= 1.0 for m in mins),
  }


def _range(values: list[float | None], fmt: str, unit: str = '') -> str:
  values = [v for v in values if v is not None]
  if not values:
    return 'n/a'
  lo, hi = min(values), max(values)
  if f'{lo:{fmt}}' == f'{hi:{fmt}}':
    return f'{lo:{fmt}}{unit}'
  return f'{lo:{fmt}}-{hi:{fmt}}{unit}'


def _passes(values: list[float | None]) -> str:
  return ' / '.join('-' if v is None else f'{v:.1f}' for v in values)


def markdown(sitting: dict) -> str:
  """The sitting's table for benchmarks/README.md."""
  cells = sitting['summary']['cells']
  two = any(len(c['best_peer']) == 2 for c in cells)
  best = 'best peer, before / after' if two else 'best peer'
  rows = [
    f'| model, batch | hpr clips/s | {best} (others) | **hpr / best peer** '
    '| hpr GFLOP/s, analytic | best peer GFLOP/s, analytic |',
    '|---|---|---|---|---|---|',
  ]
  for c in cells:
    named = [p for p in c['best_peer'] if p]
    if not named:
      peer = 'no peer ran'
    else:
      speeds = [p['clips_per_s'] if p else None for p in c['best_peer']]
      frameworks = {p['framework'] for p in named}
      if len(frameworks) == 1:
        peer = f'{LABELS.get(named[0]["framework"])} {_passes(speeds)}'
      else:
        peer = ' / '.join(
          '-'
          if p is None
          else f'{LABELS.get(p["framework"])} {p["clips_per_s"]:.1f}'
          for p in c['best_peer']
        )
      others = [
        f'{LABELS.get(fw, fw)} {_passes(v[: len(speeds)])}'
        for fw, v in sorted(c['peers'].items())
        if fw not in frameworks
      ]
      if others:
        peer += f' ({"; ".join(others)})'
    rows.append(
      f'| {MODEL_NAMES.get(c["model"], c["model"])}, {c["batch_size"]} '
      f'| {c["hpr_clips_per_s"]:.1f} | {peer} '
      f'| **{_range([c["ratio_min"], c["ratio_max"]], ".2f", "x")}** '
      f'| {c["hpr_gflops_analytic"]:.1f} '
      f'| {_range(c["best_peer_gflops_analytic"], ".1f")} |'
    )
  meta = sitting.get('meta', {})
  if 'started_utc' in meta:
    head = (
      f'Sitting {meta["started_utc"]} to {meta.get("finished_utc", "?")} UTC, '
      f'commit {meta.get("commit", "?")}, {meta.get("machine", "?")}'
    )
  else:
    head = 'From ' + ', '.join(os.path.basename(p) for p in meta['command'][1:])
    if sitting['hpr'].get('machine'):
      head += f'; hpr on {sitting["hpr"]["machine"]}'
  if meta.get('quick'):
    head += ' (QUICK: a smoke test, not a measurement)'
  verdict = sitting['summary']['all_at_least_1x']
  foot = (
    'hpr >= 1.0x the best peer in every cell: '
    + {True: 'yes', False: 'no', None: 'not every cell has a peer'}[verdict]
  )
  failed = [
    f'{e["framework"]}/{e["model"]} ({e.get("incomplete") or e["status"]})'
    for key in ('peers_before', 'peers_after')
    for e in sitting.get(key) or ()
    if e.get('status', 'ok') != 'ok' or e.get('incomplete')
  ]
  if failed:
    foot += ' (of the peers that ran). Failed or cut short: ' + ', '.join(
      failed
    )
  busy = [
    t.get('others_cores_mean', 0.0)
    for key in ('peers_before', 'peers_after')
    for e in sitting.get(key) or ()
    for t in e.get('train', {}).values()
  ]
  if busy and max(busy) > BUSY_CORES:
    foot += (
      f'. Other processes kept up to {max(busy):.1f} cores busy during the '
      "peers' timed steps: the machine was not idle"
    )
  return '\n'.join([head, '', *rows, '', foot])


# ---------------------------------------------------------------------------
# Running one.
# ---------------------------------------------------------------------------


def load_peers(path: str) -> list[dict]:
  """A saved pass of peers: a list of `peers/run.py` entries, or an
  anchors' JSON (../shared/bench/anchors.py, before the peers came into
  the repository), whose entries for the same frameworks convert."""
  with open(path) as f:
    saved = json.load(f)
  if isinstance(saved, list):
    return saved
  entries = []
  for e in saved.get('entries', ()):
    if e.get('framework') not in PEERS:
      continue
    entry = {'framework': e['framework'], 'model': e['model']}
    entry['status'] = e.get('status', 'ok')
    entry.update(e.get('result') or {})
    entries.append(entry)
  return entries


def recompute(paths: list[str]) -> dict:
  """A sitting from saved files: peers before, hpr, (peers after)."""
  with open(paths[1]) as f:
    hpr = json.load(f)
  before = load_peers(paths[0])
  after = load_peers(paths[2]) if len(paths) > 2 else None
  return {
    'meta': {'command': ['--recompute', *paths], 'machine': hpr.get('machine')},
    'peers_before': before,
    'hpr': hpr,
    'peers_after': after,
    'summary': summarize(before, hpr, after),
  }


def _utc() -> str:
  return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%S')


def _run(cmd: list[str], timeout: float, live: bool = False):
  """Runs one process; returns ('ok', its last stdout line) or (why, '').
  Its stderr goes to ours if `live`, else only its last line on failure."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  with tempfile.TemporaryFile('w+') as err:
    try:
      p = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=None if live else err,
        text=True, timeout=timeout, env=env, check=False,
      )  # fmt: skip
    except subprocess.TimeoutExpired:
      return f'timed out after {timeout:.0f} s', ''
    err.seek(0)
    lines = [ln for ln in err.read().splitlines() if ln.strip()]
  if p.returncode != 0 or not p.stdout.strip():
    last = lines[-1][:300] if lines else ''
    return f'failed (exit {p.returncode}) {last}'.strip(), ''
  return 'ok', p.stdout.strip().splitlines()[-1]


def _machine() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      names = [ln.split(':', 1)[1].strip() for ln in f if 'model name' in ln]
    return f'{len(names)} x {names[0]}' if names else ''
  except OSError:
    return ''


def _commit() -> str:
  try:
    return subprocess.run(
      ['git', 'describe', '--always', '--dirty', '--abbrev=7'],
      cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def platform_label(probe: dict) -> str:
  """'cpu2' on a 2-core CPU (as the results' names have it), else the
  platform and the device kind: 'gpu_NVIDIA-H100-80GB-HBM3'."""
  if probe.get('platform') == 'cpu':
    return f'cpu{os.cpu_count()}'
  kind = re.sub(r'[^A-Za-z0-9.]+', '-', probe.get('device_kind', '')).strip('-')
  return f'{probe.get("platform", "unknown")}_{kind}'


def peer_pass(args, name: str) -> Iterator[list[dict]]:
  """Runs every peer once; yields the entries so far after each."""
  entries = []
  for framework in args.peers:
    for model in args.models:
      cmd = [
        args.peers_python,
        os.path.join(HERE, 'peers', 'run.py'),
        f'--framework={framework}',
        f'--model={model}',
        f'--batch_sizes={",".join(map(str, args.batch_sizes))}',
        f'--steps={args.steps}',
        f'--warmup={args.warmup}',
        f'--device={args.device}',
      ]
      log(f'[{name}] {framework}/{model} ...')
      t0 = time.perf_counter()
      load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
      with tempfile.TemporaryDirectory() as tmp:
        partial = os.path.join(tmp, 'peer.json')
        status, line = _run([*cmd, f'--json={partial}'], args.timeout)
        entry = {'framework': framework, 'model': model, 'status': status}
        if status != 'ok' and os.path.exists(partial):
          # The batch sizes it finished before it failed or ran out of time.
          with open(partial) as f:
            entry.update(json.load(f), status='ok', incomplete=status)
      if status == 'ok':
        entry.update(json.loads(line))
      if entry['status'] == 'ok':
        speeds = ', '.join(
          f'b{b} {t["clips_per_s"]:.1f}' for b, t in entry['train'].items()
        )
        log(f'  {speeds} clips/s ({time.perf_counter() - t0:.0f} s)')
      else:
        log(f'  {status}')
      entry['loadavg_1min_before'] = load
      entries.append(entry)
      yield entries


def hpr_pass(args) -> dict:
  if args.hpr_json:
    log(f'[hpr] from {args.hpr_json}')
    with open(args.hpr_json) as f:
      return json.load(f)
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'train_speed.json')
    cmd = [
      sys.executable,
      os.path.join(HERE, 'train_speed.py'),
      f'--models={",".join("seed_" + m for m in args.models)}',
      f'--batch_sizes={",".join(map(str, args.batch_sizes))}',
      f'--steps={args.steps}',
      f'--warmup={args.warmup}',
      f'--json={out}',
      *args.train_speed_args,
    ]
    log('[hpr] ' + ' '.join(cmd[1:]))
    status, _ = _run(cmd, 4 * args.timeout, live=True)
    if status != 'ok' or not os.path.exists(out):
      raise SystemExit(f'sitting: hpr train_speed.py {status}')
    with open(out) as f:
      return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--peers_python',
    dest='peers_python',
    default=sys.executable,
    help="the peers' environment's Python (benchmarks/peers/requirements.txt)",
  )
  parser.add_argument('--peers', default=','.join(PEERS))
  parser.add_argument('--models', default=','.join(common.MODELS))
  parser.add_argument('--batch_sizes', default='4,32')
  parser.add_argument('--steps', type=int, default=20, help='timed steps')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--passes', type=int, default=2, choices=(1, 2))
  parser.add_argument(
    '--device', default='auto', help="the peers' --device (auto, cpu, cuda)"
  )
  parser.add_argument(
    '--timeout', type=float, default=1800, help='seconds per peer process'
  )
  parser.add_argument(
    '--train_speed_args',
    default='',
    help='more arguments for train_speed.py, space-separated',
  )
  parser.add_argument(
    '--hpr_json',
    help='take hpr from this train_speed.py --json instead of running it '
    '(measured just before, as benchmarks/gpu_sitting.sh does)',
  )
  parser.add_argument('--out_dir', help='default benchmarks/results')
  parser.add_argument('--quick', action='store_true', help='a smoke test')
  parser.add_argument('--table', help='print the table of a saved sitting')
  parser.add_argument(
    '--recompute',
    nargs='+',
    metavar='JSON',
    help='the table of saved files: PEERS_BEFORE TRAIN_SPEED [PEERS_AFTER]',
  )
  args = parser.parse_args()
  if args.table:
    with open(args.table) as f:
      print(markdown(json.load(f)))
    return
  if args.recompute:
    if len(args.recompute) not in (2, 3):
      parser.error('--recompute takes PEERS_BEFORE TRAIN_SPEED [PEERS_AFTER]')
    print(markdown(recompute(args.recompute)))
    return
  args.peers = [p for p in args.peers.split(',') if p]
  unknown = set(args.peers) - set(PEERS)
  if unknown:
    parser.error(f'unknown peers {sorted(unknown)}; expected some of {PEERS}')
  args.models = [m for m in args.models.split(',') if m]
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  args.train_speed_args = args.train_speed_args.split()
  if args.quick:
    args.steps, args.warmup = 3, 1
    if not any(a.startswith('--extras') for a in args.train_speed_args):
      args.train_speed_args.append('--extras=off')
  out_dir = args.out_dir or (
    tempfile.gettempdir() if args.quick else os.path.join(HERE, 'results')
  )
  os.makedirs(out_dir, exist_ok=True)

  status, line = _run([sys.executable, '-c', PROBE], 300)
  if status != 'ok':
    raise SystemExit(f'sitting: JAX does not start here: {status}')
  probe = json.loads(line)
  started = _utc()
  stamp = started[:16].replace(':', '')
  suffix = '_quick' if args.quick else ''
  path = os.path.join(
    out_dir, f'sitting_{stamp}_{platform_label(probe)}{suffix}.json'
  )
  sitting = {
    'meta': {
      'started_utc': started,
      'commit': _commit(),
      'machine': _machine()
      + (
        ''  # hpr splits a CPU into config.cpu_devices: train_speed says.
        if probe['platform'] == 'cpu'
        else f'; {probe["device_count"]} x {probe["device_kind"]}'
      )
      + f'; jax {probe["jax"]} ({probe["platform"]})',
      'probe': probe,
      'cpus': os.cpu_count(),
      'quick': args.quick,
      'steps': args.steps,
      'warmup': args.warmup,
      'peers_python': args.peers_python,
      'command': sys.argv,
    },
    'peers_before': [],
    'hpr': None,
    'peers_after': None,
  }

  def save():
    with open(path, 'w') as f:
      json.dump(sitting, f, indent=1)

  log(f'sitting: writing {path}')
  for entries in peer_pass(args, 'peers, before'):
    sitting['peers_before'] = list(entries)
    save()
  sitting['hpr'] = hpr_pass(args)
  save()
  if args.passes == 2:
    for entries in peer_pass(args, 'peers, after'):
      sitting['peers_after'] = list(entries)
      save()
  sitting['meta']['finished_utc'] = _utc()
  sitting['summary'] = summarize(
    sitting['peers_before'], sitting['hpr'], sitting['peers_after']
  )
  save()
  print(markdown(sitting))
  print(f'\nwrote {path}')


if __name__ == '__main__':
  main()
