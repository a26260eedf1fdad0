r"""Prediction speed (frames/s) of the default LRCN and ConvLSTM on a video.

  nice -n 19 python benchmarks/predict_speed.py [--seconds 20] [--repeats 3]

Generates a 320x240, 25 fps H.264 video of synthetic actions, then times
`hpr.tools.predict.predict_video` on it: whole-video prediction only, and
annotation (sliding window of input.num_frames frames at strides 1 and 5;
decode, resize, model, drawing and H.264 encoding of every frame). The
models are the configs/default.py networks with random weights (the speed
does not depend on the weights). Also prints each model's FLOPs per frame
(XLA's cost analysis) for the per-frame and the per-window part, and the
model's frames/s in the two stream modes, sliding window against stateful
(`--streams_only` prints only that table).

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
from hpr import video_io  # noqa: E402
from hpr.datasets import synthetic_render  # noqa: E402
from hpr.tools import predict, streaming  # noqa: E402
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
  center = config.normalization not in predict.PER_FRAME_NORMALIZATIONS
  # Centred windows: the whole model runs on every window.
  encode, classify = streaming.split(model, center)

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


def stream_speed(repeats: int, num_frames: int = 320) -> list[tuple]:
  """Frames/s of the model alone in both stream modes (hpr.tools.streaming;
  no decoding, resizing or drawing): normalized 64x64 frames through a
  `streaming.Timeline`, the sliding window at stride 1 against the stateful
  stream (no reset), for windows of 10 and 20 frames; pushed 16 frames at
  a time (a file) and one at a time (live input)."""
  rows = []
  frames = np.random.default_rng(0).uniform(-1, 1, (num_frames, 64, 64, 3))
  frames = frames.astype(np.float32)
  for name in ('lrcn', 'convlstm'):
    for window in (10, 20):
      config = config_lib.default_config()
      config.model.name = name
      config.input.num_frames = window
      model = build_model(config, len(synthetic_render.CLASS_NAMES))
      model.eval()
      stream = streaming.streaming_model(model)
      for mode in streaming.STREAM_MODES:
        speeds = []
        for chunk, n in ((predict.CHUNK, num_frames), (1, num_frames // 4)):

          def run(chunk=chunk, n=n, mode=mode, stream=stream, window=window):
            timeline = streaming.Timeline(stream, window, mode=mode)
            for i in range(0, n, chunk):
              timeline.push(stream.encode(frames[i : i + chunk]))

          speeds.append(n / timed(run, repeats))
        rows.append((name, window, mode, *speeds))
  return rows


def print_stream_speed(rows: list[tuple]) -> None:
  print('\n| model | window | stream | frames/s (16 at a time) | '
        'frames/s (1 at a time) | ms per frame (1 at a time) |')  # fmt: skip
  print('|---|---|---|---|---|---|')
  for name, window, mode, chunked, single in rows:
    print(
      f'| {name} | {window} | {mode} | {chunked:.0f} | {single:.0f} | '
      f'{1e3 / single:.2f} |'
    )


def export_speed(repeats: int, clips: int = 8) -> list[tuple]:
  """Per-clip latency of the exported artifacts on this CPU
  (hpr.tools.export), batch 1, for the default LRCN and ConvLSTM: the
  StableHLO artifact called through `jax.export` and the TFLite model in
  the interpreter (XNNPACK), beside JAX's own jit of the model's default
  'auto' path (hpr's CPU kernels) and of the reference path that the
  artifacts hold. Also the artifact's size and its
  largest probability difference from JAX's reference path on `clips`
  random clips."""
  x = np.random.default_rng(0).uniform(-1, 1, (clips, 20, 64, 64, 3))
  x = x.astype(np.float32)
  rows = []
  for name in ('lrcn', 'convlstm'):
    for what, size, call, expected in _export_runtimes(name, x):
      diff = max(
        float(np.abs(call(c[None]) - e).max())
        for c, e in zip(x, expected, strict=True)
      )

      def one_clip(call=call):
        for clip in x:
          call(clip[None])

      ms = 1e3 * timed(one_clip, repeats) / clips
      rows.append((name, what, size, ms, diff))
  return rows


def _export_runtimes(name: str, x: np.ndarray) -> list[tuple]:
  """[(runtime, artifact bytes, clip -> probabilities, JAX reference
  probabilities of x)] of the default `name` model."""
  from hpr.tools import export

  config = config_lib.default_config()
  config.model.name = name
  config.input.num_frames, config.input.image_size = x.shape[1:3]
  num_classes = len(synthetic_render.CLASS_NAMES)
  model = build_model(config, num_classes)
  model.eval()
  auto = nnx.jit(lambda m, v: jax.nn.softmax(m(v)))
  classify = export.functions(
    export.reference_model(model, config, num_classes), config
  )[:1]
  reference = jax.jit(lambda v: classify[0].fn(v)['probabilities'])
  expected = reference(x)
  blob = export.export_stablehlo(classify[0]).serialize()
  shlo = jax.jit(jax.export.deserialize(blob).call)
  tmp = tempfile.mkdtemp(prefix='hpr_export_bench_')
  export.save_savedmodel(classify, os.path.join(tmp, 'sm'), ('cpu',))
  flatbuffer = export.convert_tflite(os.path.join(tmp, 'sm'), classify)
  shutil.rmtree(tmp)
  tflite = export.tflite_runner(flatbuffer)
  expected = np.asarray(expected)
  return [
    ('JAX jit (auto)', None, lambda v: np.asarray(auto(model, v)), expected),
    ('JAX jit (reference)', None, lambda v: np.asarray(reference(v)),
     expected),
    ('StableHLO', len(blob),
     lambda v: np.asarray(shlo(v)['probabilities']), expected),
    ('TFLite', len(flatbuffer),
     lambda v: tflite('classify', v)['probabilities'], expected),
  ]  # fmt: skip


def print_export_speed(rows: list[tuple]) -> None:
  print('\n| model | runtime (CPU, batch 1) | artifact KiB | ms per clip | '
        'max abs prob. diff from JAX reference |')  # fmt: skip
  print('|---|---|---|---|---|')
  for name, what, size, ms, diff in rows:
    kib = '' if size is None else f'{size / 1024:.0f}'
    print(f'| {name} | {what} | {kib} | {ms:.2f} | {diff:.1e} |')


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
  parser.add_argument(
    '--exports_only',
    action='store_true',
    help='only the exported-artifact latency table (export_speed)',
  )
  parser.add_argument(
    '--streams_only',
    action='store_true',
    help='only the window against stateful stream table (stream_speed)',
  )
  args = parser.parse_args()
  load_before = os.getloadavg()[0]
  if args.exports_only:
    rows = export_speed(args.repeats)
    print(f'{cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__}; '
          f'best of {args.repeats} after a warm-up; 1-min load average '
          f'{load_before:.2f} before, {os.getloadavg()[0]:.2f} after')  # fmt: skip
    print_export_speed(rows)
    return
  if args.streams_only:
    rows = stream_speed(args.repeats)
    print(f'{cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__}; '
          f'best of {args.repeats} after a warm-up; 1-min load average '
          f'{load_before:.2f} before, {os.getloadavg()[0]:.2f} after')  # fmt: skip
    print_stream_speed(rows)
    return
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
  print_stream_speed(stream_speed(args.repeats))
  print_export_speed(export_speed(args.repeats))


if __name__ == '__main__':
  main()
