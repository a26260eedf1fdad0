"""What every peer shares: the notebook's shapes, the FLOP count, timing.

No framework is imported here (only the standard library and numpy), so
`benchmarks/sitting.py` can use the FLOP count from hpr's environment and
the peers' runner from theirs.
"""

import os
import statistics
import time

import numpy as np

# The Keras notebook's clips and classes: (T, H, W, C), 4 classes.
FRAMES, SIZE, CHANNELS, CLASSES = 20, 64, 3, 4
MODELS = ('convlstm', 'lrcn')
# Parameters of the notebook's models (Keras' count; the PyTorch versions
# count their trainable parameters).
PARAMS = {'convlstm': 44_524, 'lrcn': 73_060}
# The notebook's layers: ConvLSTM filters; LRCN conv features and pools.
CONVLSTM_FILTERS = (4, 8, 14, 16)
LRCN_BLOCKS = ((16, 4), (32, 4), (64, 2), (64, 2))
LRCN_LSTM = 32


def analytic_flops() -> dict[str, dict[str, float]]:
  """FLOPs per clip of the dense networks, the same for every framework.

  Convolutions and matmuls only (a multiply-add is 2 FLOPs; the gates'
  elementwise work is not counted), the model-FLOPs convention of MFU.
  Training counts the forward pass, every weight gradient and every input
  gradient but the first layer's (nothing needs the clip's gradient).

  Returns:
    {'convlstm' | 'lrcn': {'forward': FLOPs, 'train': FLOPs}} per clip.
  """
  # ConvLSTM: the input conv VALID, the recurrent conv SAME, 4 gates, then
  # a 'same' 2x2 pool; a Dense layer on the flattened last output.
  size, cin, macs, first = SIZE, CHANNELS, 0, None
  for f in CONVLSTM_FILTERS:
    out = size - 2
    input_conv = out * out * 4 * f * 9 * cin * FRAMES
    first = input_conv if first is None else first
    macs += input_conv + out * out * 4 * f * 9 * f * FRAMES
    size, cin = (out + 1) // 2, f
  macs += size * size * cin * FRAMES * CLASSES
  flops = {'convlstm': (macs, first)}
  # LRCN: 3x3 SAME convs and pools per frame, LSTM(32), Dense.
  size, cin, macs, first = SIZE, CHANNELS, 0, None
  for cout, pool in LRCN_BLOCKS:
    conv = size * size * cout * 9 * cin * FRAMES
    first = conv if first is None else first
    macs += conv
    size, cin = size // pool, cout
  feature = size * size * cin
  macs += FRAMES * 4 * LRCN_LSTM * (feature + LRCN_LSTM)
  macs += LRCN_LSTM * CLASSES
  flops['lrcn'] = (macs, first)
  return {
    name: {'forward': 2.0 * m, 'train': 2.0 * (3 * m - first)}
    for name, (m, first) in flops.items()
  }


def random_batch(batch_size: int, channels_first: bool = False, seed=0):
  """Random clips in [0, 1) and labels: (B, T, H, W, C) or (B, T, C, H, W)
  float32 clips, int labels (B,) and their one-hot float32 (B, classes)."""
  rng = np.random.default_rng(seed + batch_size)
  clips = rng.random((batch_size, FRAMES, SIZE, SIZE, CHANNELS), np.float32)
  if channels_first:
    clips = np.ascontiguousarray(clips.transpose(0, 1, 4, 2, 3))
  labels = rng.integers(0, CLASSES, batch_size)
  return clips, labels, np.eye(CLASSES, dtype=np.float32)[labels]


def _busy_seconds() -> tuple[float, float] | None:
  """(CPU seconds all processes were busy, this process's CPU seconds), or
  None where /proc/stat is not there."""
  try:
    with open('/proc/stat') as f:
      ticks = [int(v) for v in f.readline().split()[1:]]
  except OSError:
    return None
  # user nice system irq softirq
  busy = sum(ticks[i] for i in (0, 1, 2, 5, 6)) / os.sysconf('SC_CLK_TCK')
  own = os.times()
  return busy, own.user + own.system


def _percentile(values: list[float], q: float) -> float:
  values = sorted(values)
  return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def time_steps(step, warmup: int, steps: int) -> dict:
  """Times `step()` (which must wait for its result) like hpr's
  benchmarks/train_speed.py: median and 10th-90th percentile of `steps`
  calls after `warmup` more. The first call is timed on its own (it
  compiles, for the frameworks that do). Also the cores other processes
  kept busy meanwhile (from /proc/stat; 10 ms ticks), to tell a quiet
  machine from a shared one."""
  t0 = time.perf_counter()
  step()
  first = time.perf_counter() - t0
  for _ in range(warmup):
    step()
  times, foreign = [], 0.0
  for _ in range(steps):
    before = _busy_seconds()
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
    after = _busy_seconds()
    if before and after:
      foreign += max(0.0, (after[0] - before[0]) - (after[1] - before[1]))
  return {
    'first_step_s': first,
    'median_s': statistics.median(times),
    'p10_s': _percentile(times, 0.1),
    'p90_s': _percentile(times, 0.9),
    'steps_timed': steps,
    'warmup': warmup,
    'times_s': times,
    'others_cores_mean': foreign / sum(times),
  }
