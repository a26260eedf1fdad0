r"""Prediction speed (frames/s) of the default LRCN and ConvLSTM on a video.

  nice -n 19 python benchmarks/predict_speed.py [--seconds 20] [--repeats 3]

Generates a 320x240, 25 fps H.264 video of synthetic actions, then times
`hpr.tools.predict.predict_video` on it: whole-video prediction only, and
annotation (sliding window of input.num_frames frames at strides 1 and 5;
decode, resize, model, drawing and H.264 encoding of every frame). The
models are the configs/default.py networks with random weights (the speed
does not depend on the weights). Also prints each model's FLOPs per frame
(XLA's cost analysis) for the per-frame and the per-window part.

Prints a Markdown table for benchmarks/README.md.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from PIL import Image  # noqa: E402

from hpr import config as config_lib  # noqa: E402
from hpr.datasets import synthetic_render  # noqa: E402
from hpr.tools import predict, streaming, video_io  # noqa: E402
from hpr.train_state import build_model  # noqa: E402

SIZE = (320, 240)
FPS = 25.0


def make_video(path: str, seconds: float) -> int:
  """Synthetic actions, one after another, upscaled to 320x240."""
  frames_per_clip = 50
  clips = max(1, round(seconds * FPS / frames_per_clip))
  names = synthetic_render.CLASS_NAMES
  with video_io.VideoWriter(path, FPS) as writer:
    for i in range(clips):
      clip = synthetic_render.render_clip(
        names[i % len(names)], 1, i, num_frames=frames_per_clip, image_size=96
      )
      for frame in clip:
        writer.write(np.asarray(Image.fromarray(frame).resize(SIZE)))
  return clips * frames_per_clip


def make_predictor(name: str) -> predict.Predictor:
  config = config_lib.default_config()
  config.model.name = name
  names = list(synthetic_render.CLASS_NAMES)
  model = build_model(config, len(names))
  model.eval()
  return predict.make_predictor(config, names, 0, model)


def flops(predictor: predict.Predictor) -> tuple[float, float]:
  """XLA's FLOPs of encoding one frame and classifying one window."""
  model = predictor.module
  config = predictor.config.input
  graphdef, state = nnx.split(model)
  size, t = config.image_size, config.num_frames
  if config.normalization in predict.PER_FRAME_NORMALIZATIONS:
    encode, classify, _ = streaming._SPLITS[type(model)]
  else:  # Windows are centred: the whole model runs on every window.
    encode, classify = streaming._identity_encode, streaming._centered_classify

  def cost(fn, x):
    jitted = jax.jit(lambda s, x: fn(nnx.merge(graphdef, s), x))
    analysis = jitted.lower(state, x).compile().cost_analysis()
    if isinstance(analysis, list):
      analysis = analysis[0]
    return float(analysis.get('flops', float('nan')))

  frame = np.zeros((16, size, size, 3), np.float32)
  per_frame = cost(encode, frame) / 16
  cache = np.asarray(predictor.model.encode(frame))
  windows = np.zeros((16, t) + cache.shape[1:], np.float32)
  per_window = cost(classify, windows) / 16
  return per_frame, per_window


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def timed(fn, repeats: int) -> float:
  """Best wall time of `repeats` calls after one warm-up (compilation)."""
  fn()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seconds', type=float, default=20.0)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  load_before = os.getloadavg()[0]
  tmp = tempfile.mkdtemp(prefix='hpr_bench_')
  video = os.path.join(tmp, 'video.mp4')
  n = make_video(video, args.seconds)
  out = os.path.join(tmp, 'annotated.mp4')

  def decode_only():
    with video_io.VideoReader(video) as reader:
      for _ in reader:
        pass

  rows = [('decode only (PyAV)', '', n / timed(decode_only, args.repeats))]
  details = []
  for name in ('lrcn', 'convlstm'):
    predictor = make_predictor(name)
    per_frame, per_window = flops(predictor)
    details.append((name, per_frame, per_window))
    whole = timed(
      lambda p=predictor: predict.predict_video(p, video), args.repeats
    )
    rows.append((f'{name}: whole-video top-5', '', n / whole))
    for stride in (1, 5):
      seconds = timed(
        lambda p=predictor, s=stride: predict.predict_video(
          p, video, annotate=out, stride=s
        ),
        args.repeats,
      )
      rows.append((f'{name}: --annotate', f'{stride}', n / seconds))

  print(f'{n} frames, {SIZE[0]}x{SIZE[1]}, {FPS:g} fps H.264; '
        f'{cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__}; best '
        f'of {args.repeats} after a warm-up; 1-min load average '
        f'{load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n')  # fmt: skip
  print('| what | stride | frames/s | x real time |')
  print('|---|---|---|---|')
  for what, stride, fps in rows:
    print(f'| {what} | {stride} | {fps:.0f} | {fps / FPS:.1f} |')
  shutil.rmtree(tmp)
  print('\n| model | MFLOP per frame (encode) | MFLOP per window (classify) |')
  print('|---|---|---|')
  for name, per_frame, per_window in details:
    print(f'| {name} | {per_frame / 1e6:.2f} | {per_window / 1e6:.2f} |')


if __name__ == '__main__':
  main()
