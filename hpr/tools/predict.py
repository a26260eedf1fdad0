r"""Predict the action in video files with a trained workdir's model.

  python -m hpr.tools.predict --workdir W video.mp4 [more.avi ...] [--json] \
      [--views T,S] [--calibrated] [--strict]
  python -m hpr.tools.predict --workdir W video.mp4 --annotate out.mp4 \
      [--stream window|stateful] [--reset_every N] [--smooth K] \
      [--window 20] [--stride 1] [--frame_step 1]
  python -m hpr.tools.predict --workdir W --source {-,/dev/video0,URL} \
      [--annotate out.mp4] [--drop oldest|none] [--queue_size 32]

For each video: the top-k classes with their confidence, the softmax
averaged over T temporal clips x S spatial crops sampled as the test split
is (hpr.evaluate's multi-view test; by default the workdir's
eval.num_test_clips x eval.num_test_crops; `--views 1,1` is the notebook's
predict_single_action). `--calibrated` divides the logits by the
temperature evaluation fitted (WORKDIR/calibration.json) first.

`--annotate` also writes a copy of the video with a per-frame prediction
and its confidence drawn on every frame, and a CSV timeline with one row
per frame (the notebook's predict_on_video). `--stream window` (the
default) predicts exact sliding windows of the last `window` frames;
`--stream stateful` carries the recurrent state from frame to frame (O(1)
per frame, reset every `--reset_every` frames); see hpr/tools/streaming.py
for both. Frames before the first prediction show the first one.

`--source` classifies live input (a camera, a stream URL, or a container on
stdin) as it arrives; see hpr/tools/live.py.

Each frame is decoded once and goes through the per-frame part of the model
once per crop.

A file that decodes fewer frames than its container declares (cut short by
an interrupted copy or download) is predicted from the frames that decode,
with a warning that says how many; `--strict` refuses it instead.
"""

import argparse
import dataclasses
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

from hpr import cli, rundirs, video_io  # noqa: E402
from hpr.errors import UserError  # noqa: E402
from hpr.tools import annotate as annotate_lib  # noqa: E402
from hpr.tools import live as live_lib  # noqa: E402
from hpr.tools import streaming  # noqa: E402

# Frames decoded, preprocessed and encoded together.
CHUNK = 16
# input.normalization modes that treat every frame alone, so that a frame
# is preprocessed once, whatever window it is part of. 'clip_centered'
# subtracts each window's mean frame inside the streaming model instead.
PER_FRAME_NORMALIZATIONS = ('unit', 'centered')


@dataclasses.dataclass
class Predictor:
  """A workdir's model, ready for video files."""

  config: object  # ml_collections.ConfigDict
  class_names: list[str]
  step: int
  model: object  # streaming.StreamingModel
  module: object  # The nnx model itself.
  # Logits are divided by it before the softmax (`--calibrated`); None: 1.
  temperature: float | None = None

  def preprocess(self, frames: np.ndarray, crop: int | None = None):
    """uint8 (n, H, W, 3) -> float32 (n, S, S, 3), as the eval pipeline.

    crop None: input.eval_crop (the whole frame resized, or its central
    square); 0, 1 or 2: the square at the start, middle or end of the long
    side (eval.num_test_crops = 3, `video_ops.center_crop`).
    """
    from hpr import video_ops

    tf = cli.tensorflow_on_cpu()
    i = self.config.input
    features = {'video': tf.convert_to_tensor(frames)}
    if crop is not None:
      features['crop'] = tf.constant(crop, tf.int32)
      features = video_ops.center_crop(i.image_size, 3)(features)
    elif i.eval_crop == 'center':
      features = video_ops.center_crop(i.image_size)(features)
    else:
      features = video_ops.resize(i.image_size)(features)
    if i.normalization not in PER_FRAME_NORMALIZATIONS:
      # 'clip_centered': pixel / 64 here; the streaming model subtracts each
      # window's mean frame (see streaming.streaming_model).
      return (features['video'] / 64.0).numpy()
    return video_ops.normalize(i.normalization)(features)['video'].numpy()

  def clip_indices(
    self, num_frames: int, view: int = 0, num_views: int = 1
  ) -> np.ndarray:
    """The frames of temporal view `view` of `num_views` of the
    whole-video clip (input.eval_sampling; view 0 of 1 is the single
    evaluation clip)."""
    from hpr import video_ops

    i = self.config.input
    return video_ops.frame_indices(
      num_frames,
      i.num_frames,
      i.eval_sampling,
      stride=i.frame_stride,
      view=view,
      num_views=num_views,
    ).numpy()

  def default_views(self) -> tuple[int, int]:
    """The workdir's test protocol: (eval.num_test_clips, num_test_crops)."""
    e = self.config.eval
    return int(e.num_test_clips), int(e.num_test_crops)

  def calibration(self) -> dict:
    return {
      'calibrated': self.temperature is not None,
      'temperature': self.temperature,
    }


def load_predictor(
  workdir: str, step: int | None = None, *, calibrated: bool = False
) -> Predictor:
  """Rebuilds the model of `workdir` from its config.json and restores its
  best checkpoint (or `step`), as `hpr.workdir.load_trained` does.

  Args:
    workdir: a training workdir.
    step: checkpoint step; None: the best.
    calibrated: divide logits by the temperature that evaluation fitted
      (WORKDIR/calibration.json, `hpr.calibration.load_temperature`).

  Raises:
    UserError: not a workdir, no checkpoints, a checkpoint that does not
      fit the config, or `calibrated` without a calibration.json.
  """
  from hpr import workdir as workdir_lib

  temperature = _temperature(workdir) if calibrated else None
  model, config, class_names, step = workdir_lib.load_trained_step(
    workdir, step
  )
  predictor = make_predictor(config, class_names, step, model)
  predictor.temperature = temperature
  return predictor


def _temperature(workdir: str) -> float:
  from hpr import calibration

  temperature = calibration.load_temperature(workdir)
  if temperature is None:
    raise UserError(
      f'--calibrated: {workdir} has no {calibration.CALIBRATION_FILE}; '
      'evaluate it first (python -m hpr.main --mode=evaluate '
      f'--config {os.path.join(workdir, "config.py")} --workdir {workdir})'
    )
  return temperature


def make_predictor(config, class_names: list[str], step: int, model):
  """A `Predictor` for `model` (restored or not), streamed as the config's
  input.normalization allows."""
  center = config.input.normalization not in PER_FRAME_NORMALIZATIONS
  modality = config.input.get('modality', 'rgb')
  return Predictor(
    config,
    class_names,
    step,
    streaming.streaming_model(model, center_windows=center, modality=modality),
    model,
  )


softmax = streaming.softmax


def make_timeline(
  predictor: Predictor,
  *,
  window: int | None = None,
  stride: int = 1,
  frame_step: int = 1,
  stream: str = 'window',
  reset_every: int = 0,
  smooth: int = 1,
) -> streaming.Timeline:
  """The per-frame predictions of `predict_video` and `hpr.tools.live`.

  Raises:
    UserError: a stateful stream the model or the flags do not allow.
  """
  window = window or predictor.config.input.num_frames
  if stream == 'stateful':
    model = predictor.model
    if not model.stateful:
      i = predictor.config.input
      if i.normalization not in PER_FRAME_NORMALIZATIONS:
        why = 'its windows are centred (input.normalization clip_centered)'
      elif i.get('modality', 'rgb') != 'rgb':
        why = f"input.modality '{i.modality}' takes differences in a window"
      else:
        why = 'it has no stream_step'
      raise UserError(f'--stream stateful: {model.name} cannot ({why})')
    if stride != 1 or frame_step != 1:
      raise UserError(
        '--stride and --frame_step are for --stream window; stateful '
        'streaming predicts every frame'
      )
    if reset_every and reset_every < window:
      raise UserError(
        f'--reset_every must be 0 (never) or at least the window ({window}), '
        f'got {reset_every}'
      )
  return streaming.Timeline(
    predictor.model,
    window,
    stride=stride,
    frame_step=frame_step,
    mode=stream,
    reset_every=reset_every,
    smooth=smooth,
    temperature=predictor.temperature,
  )


def predict_video(
  predictor: Predictor,
  path: str,
  *,
  top_k: int = 5,
  annotate: str | None = None,
  window: int | None = None,
  stride: int = 1,
  frame_step: int = 1,
  short_video: str = 'pad',
  strict: bool = False,
  views: tuple[int, int] | None = None,
  stream: str = 'window',
  reset_every: int = 0,
  smooth: int = 1,
) -> dict:
  """Predicts one video file; optionally writes the annotated copy.

  Args:
    predictor: from `load_predictor`.
    path: the video file.
    top_k: classes to report.
    annotate: path of the annotated MP4 (its timeline goes beside it, .csv),
      or None.
    window: frames per sliding window (default input.num_frames).
    stride: frames between window ends.
    frame_step: step between a window's frames (2 spans twice the time).
    short_video: a video shorter than the clip or window: 'pad' repeats its
      last frame (as the input pipeline does), 'error' refuses it.
    strict: refuse a file that decodes fewer frames than its container
      declares, instead of predicting from those frames with a warning.
    views: (temporal clips, spatial crops) of the whole-video prediction,
      whose softmax is averaged as hpr.evaluate averages a test video's
      views; None: the workdir's eval.num_test_clips x num_test_crops.
    stream: the annotation's mode, 'window' (exact sliding windows) or
      'stateful' (the recurrent state carried frame to frame;
      hpr.tools.streaming).
    reset_every: stateful mode: reset the state every N frames (0: never).
    smooth: the annotation shows the mean probabilities of the last
      `smooth` predictions.

  Returns:
    {'video', 'num_frames' (decoded and used), 'declared_frames' (what the
     container says; None where it does not say), 'fps', 'width', 'height',
     'views': {'clips', 'crops'}, 'calibrated', 'temperature',
     'top_k': [{'class', 'confidence'}], 'probabilities', 'warnings' (one
     line each)} (+ 'annotated', 'timeline', 'stream' with `annotate`).

  Raises:
    UserError: an unreadable file, a short video with short_video='error',
      or a truncated one with `strict`.
  """
  model = predictor.model
  num_frames = predictor.config.input.num_frames
  clips, crops = views or predictor.default_views()
  _check_views(clips, crops)
  timeline = None
  if annotate:
    timeline = make_timeline(
      predictor,
      window=window,
      stride=stride,
      frame_step=frame_step,
      stream=stream,
      reset_every=reset_every,
      smooth=smooth,
    )
  # Per crop (None: input.eval_crop), each frame's cache or frame.
  kept = {c: [] for c in ([None] if crops == 1 else range(3))}
  keep_frames, current, count = None, None, 0
  annotator = None
  with video_io.VideoReader(path) as reader:
    if annotate:
      csv_path = os.path.splitext(annotate)[0] + '.csv'
      annotator = annotate_lib.Annotator(
        annotate, csv_path, reader.fps, predictor.class_names
      )
    try:
      for raw in reader.chunks(CHUNK):
        x = predictor.preprocess(raw) if annotate or crops == 1 else None
        if keep_frames is None:
          shape = (x if x is not None else predictor.preprocess(raw[:1]))[0]
          keep_frames = model.keep_frames(shape.shape)
        encode = x is not None and (annotate or not keep_frames)
        cache = model.encode(x) if encode else None
        for crop, frames in kept.items():
          if crop is None:
            frames.append(x if keep_frames else cache)
          else:
            xc = predictor.preprocess(raw, crop)
            frames.append(xc if keep_frames else model.encode(xc))
        if annotator:
          news = timeline.push(cache)
          for i, frame in enumerate(raw):
            current = news[i] or current
            annotator.add(count + i, frame, current)
        count += len(raw)
      declared = reader.declared_frames or None
      warnings = []
      if declared and count < declared:
        message = (
          f'{path}: only {count} of the {declared} frames its container '
          'declares decode (the file looks truncated)'
        )
        if strict:
          raise UserError(f'{message}; refused by --strict')
        warnings.append(f'{message}; predicted from those {count} frames')
      needed = max(num_frames, timeline.queue.span) if annotate else num_frames
      if count < needed and short_video == 'error':
        raise UserError(
          f'{path} has {count} frames, fewer than the {needed} a clip needs '
          '(--short_video=pad repeats its last frame instead)'
        )
      if annotator and current is None:  # Shorter than one window.
        annotator.flush(timeline.finish())
    except BaseException:
      if annotator:
        annotator.close(failed=True)
      raise
    if annotator:
      annotator.close()
    probs = _whole_video(predictor, kept, count, clips, keep_frames)
    order = np.argsort(-probs, kind='stable')[: min(top_k, len(probs))]
    result = {
      'video': path,
      'num_frames': count,
      'declared_frames': declared,
      'fps': reader.fps,
      'width': reader.width,
      'height': reader.height,
      'views': {'clips': clips, 'crops': crops},
      **predictor.calibration(),
      'top_k': [
        {'class': predictor.class_names[k], 'confidence': float(probs[k])}
        for k in order
      ],
      'probabilities': {
        name: float(p)
        for name, p in zip(predictor.class_names, probs, strict=True)
      },
      'warnings': warnings,
    }
  if annotate:
    result['annotated'], result['timeline'] = annotate, csv_path
    result['stream'] = timeline.describe()
  return result


def _whole_video(predictor, kept, count, clips, keep_frames) -> np.ndarray:
  """The mean softmax over the views: `clips` temporal views of each kept
  crop, the logits divided by the temperature first (hpr.evaluate's
  video-level average, calibrated as evaluation calibrates)."""
  model = predictor.model
  logits = []
  for frames in kept.values():
    frames = np.concatenate(frames)
    idx = np.stack(
      [predictor.clip_indices(count, v, clips) for v in range(clips)]
    )
    batch = frames[idx]  # (clips, T, ...)
    logits.append(model(batch) if keep_frames else model.classify(batch))
  logits = np.concatenate(logits).astype(np.float64)
  probs = softmax(logits / (predictor.temperature or 1.0))
  return probs.mean(axis=0)


def _check_views(clips: int, crops: int) -> None:
  if clips < 1:
    raise UserError(f'--views: temporal clips must be at least 1, got {clips}')
  if crops not in (1, 3):
    raise UserError(f'--views: spatial crops must be 1 or 3, got {crops}')


def _outputs(videos: list[str], annotate: str | None) -> list[str | None]:
  """Where each video's annotated copy goes."""
  if not annotate:
    return [None] * len(videos)
  if annotate.lower().endswith('.mp4') and not os.path.isdir(annotate):
    if len(videos) > 1:
      raise UserError(
        f'--annotate {annotate} is one file, but {len(videos)} videos were '
        'given: pass a directory'
      )
    outputs = [annotate]
    annotate_lib.check_writable(os.path.dirname(os.path.abspath(annotate)))
  else:
    annotate_lib.check_writable(annotate, create=True)
    stems = [os.path.splitext(os.path.basename(v))[0] for v in videos]
    if len(set(stems)) < len(stems):
      raise UserError(
        'videos with the same file name would overwrite each other'
      )
    outputs = [os.path.join(annotate, f'{s}.annotated.mp4') for s in stems]
  for video, out in zip(videos, outputs, strict=True):
    if os.path.exists(video) and os.path.realpath(video) == os.path.realpath(
      out
    ):
      raise UserError(f'--annotate would overwrite the input {video}')
  return outputs


def _views(text: str) -> tuple[int, int]:
  try:
    clips, crops = (int(x) for x in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(
      f'{text!r} is not T,S (temporal clips, spatial crops), e.g. 1,1'
    ) from None
  return clips, crops


def _parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
    prog='python -m hpr.tools.predict',
    description='Top-k actions of video files with a trained workdir; '
    'optionally an annotated copy with a sliding-window prediction; or '
    'live input (--source) classified frame by frame.',
  )
  parser.add_argument('videos', nargs='*', metavar='VIDEO')
  parser.add_argument('--workdir', required=True, help='a training workdir')
  parser.add_argument(
    '--step', type=int, help='checkpoint step (default: the best)'
  )
  parser.add_argument('--top_k', type=int, default=5, help='classes shown')
  parser.add_argument('--json', action='store_true', help='print JSON')
  parser.add_argument(
    '--views',
    type=_views,
    metavar='T,S',
    help='whole-video prediction: T temporal clips x S spatial crops (1 or '
    "3), softmax averaged (default: the workdir's eval.num_test_clips, "
    'eval.num_test_crops; 1,1 is one clip)',
  )
  parser.add_argument(
    '--calibrated',
    action='store_true',
    help='divide the logits by the temperature evaluation fitted '
    '(WORKDIR/calibration.json)',
  )
  parser.add_argument(
    '--annotate',
    metavar='OUT',
    help='write the annotated video to OUT.mp4 and its per-frame timeline '
    'to OUT.csv; with several videos OUT is a directory',
  )
  parser.add_argument(
    '--stream',
    choices=streaming.STREAM_MODES,
    default='window',
    help='per-frame predictions (--annotate, --source): exact sliding '
    'windows, or the recurrent state carried frame to frame (O(1) per '
    'frame; equal to the window on the first window after each reset)',
  )
  parser.add_argument(
    '--reset_every',
    type=int,
    default=0,
    metavar='N',
    help='--stream stateful: reset the state every N frames (0: never; '
    'else at least the window)',
  )
  parser.add_argument(
    '--smooth',
    type=int,
    default=1,
    metavar='K',
    help="show the moving average of the last K predictions' "
    'probabilities (1: none)',
  )
  parser.add_argument(
    '--window', type=int, help='frames per window (default input.num_frames)'
  )
  parser.add_argument(
    '--stride', type=int, default=1, help='frames between windows'
  )
  parser.add_argument(
    '--frame_step',
    type=int,
    default=1,
    help='step between the frames of a window',
  )
  parser.add_argument(
    '--short_video',
    choices=('pad', 'error'),
    default='pad',
    help='videos shorter than a clip/window: repeat the last frame (as '
    'training does) or refuse them',
  )
  parser.add_argument(
    '--strict',
    action='store_true',
    help='refuse a video that decodes fewer frames than its container '
    'declares (a truncated file) instead of warning',
  )
  live = parser.add_argument_group('live input (hpr.tools.live)')
  live.add_argument(
    '--source',
    metavar='SRC',
    help="classify frames as they arrive from SRC: '-' (a container on "
    'stdin, e.g. mpegts), a camera (/dev/video0) or a stream URL; one JSON '
    'line per frame, then a summary line',
  )
  live.add_argument(
    '--source_format',
    metavar='FMT',
    help='FFmpeg input format of --source (v4l2, mpegts, avfoundation, '
    '...; default: probed, v4l2 for /dev/video*)',
  )
  live.add_argument(
    '--queue_size', type=int, default=32, help='frames waiting at most'
  )
  live.add_argument(
    '--drop',
    choices=live_lib.DROP_POLICIES,
    default='oldest',
    help='a full queue drops its oldest frame (latency stays bounded) or '
    'makes the reader wait (none: every frame is classified)',
  )
  return parser


def _print_table(results: list[dict], predictor: Predictor) -> None:
  name = predictor.config.model.name
  for r in results:
    frames = f'{r["num_frames"]} frames'
    if r['declared_frames'] and r['num_frames'] < r['declared_frames']:
      frames += f' (of {r["declared_frames"]} declared)'
    views = f'{r["views"]["clips"]}x{r["views"]["crops"]} views'
    if r['calibrated']:
      views += f', calibrated T={r["temperature"]:.3g}'
    print(
      f'{r["video"]}: {frames}, {r["width"]}x{r["height"]}, '
      f'{r["fps"]:.2f} fps ({name}, checkpoint {predictor.step}, {views})'
    )
    for rank, p in enumerate(r['top_k'], start=1):
      print(f'  {rank}. {p["class"]:<24} {p["confidence"]:7.2%}')
    if 'annotated' in r:
      print(
        f'  annotated: {r["annotated"]} (timeline {r["timeline"]}, '
        f'{r["stream"]["mode"]} stream)'
      )


def _stream_args(args) -> dict:
  return {
    'window': args.window,
    'stride': args.stride,
    'frame_step': args.frame_step,
    'stream': args.stream,
    'reset_every': args.reset_every,
    'smooth': args.smooth,
  }


def _predict_all(args) -> tuple[Predictor, list[dict]]:
  """Predicts the command line's videos: (predictor, results)."""
  outputs = _outputs(args.videos, args.annotate)
  predictor = load_predictor(
    args.workdir, args.step, calibrated=args.calibrated
  )
  _check_window(predictor, args.window)
  results = []
  for video, out in zip(args.videos, outputs, strict=True):
    result = predict_video(
      predictor,
      video,
      top_k=args.top_k,
      annotate=out,
      short_video=args.short_video,
      strict=args.strict,
      views=args.views,
      **_stream_args(args),
    )
    # On stderr, as each video ends: stdout stays the table or the JSON.
    for warning in result['warnings']:
      print(f'hpr: warning: {warning}', file=sys.stderr)
    results.append(result)
  return predictor, results


def _check_args(args) -> None:
  for flag in (
    'top_k', 'window', 'stride', 'frame_step', 'smooth', 'queue_size'
  ):  # fmt: skip
    value = getattr(args, flag)
    if value is not None and value < 1:
      raise UserError(f'--{flag} must be at least 1, got {value}')
  if args.reset_every < 0:
    raise UserError(f'--reset_every must be 0 or more, got {args.reset_every}')
  if args.views:
    _check_views(*args.views)
  if args.source is not None:
    if args.videos:
      raise UserError('give video files or --source, not both')
    return
  if not args.videos:
    raise UserError('give video files, or --source for live input')
  for video in args.videos:
    if os.path.isdir(video):
      raise UserError(
        f'{video} is a directory, not a video file (give the videos in it, '
        f'e.g. {os.path.join(video, "*.mp4")})'
      )
    if not os.path.exists(video):
      raise UserError(f'no such video file: {video}')
    if not os.path.isfile(video):
      raise UserError(f'{video} is not a regular file')


def _live(args) -> None:
  """--source: JSON lines until the source ends or SIGINT (exit 130)."""
  if args.annotate:
    if os.path.isdir(args.annotate):
      raise UserError('--annotate with --source is one file, OUT.mp4')
    annotate_lib.check_writable(os.path.dirname(os.path.abspath(args.annotate)))
  predictor = load_predictor(
    args.workdir, args.step, calibrated=args.calibrated
  )
  _check_window(predictor, args.window)
  _, interrupted = live_lib.predict_live(
    predictor,
    args.source,
    source_format=args.source_format,
    annotate=args.annotate,
    queue_size=args.queue_size,
    drop=args.drop,
    **_stream_args(args),
  )
  if interrupted:
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  args = _parser().parse_args(argv)
  _check_args(args)
  if args.source is not None:
    _live(args)
    return
  # An --annotate directory made here is removed again if the run fails
  # before writing in it.
  with rundirs.removed_on_failure(*filter(None, [args.annotate])):
    predictor, results = _predict_all(args)
  if args.json:
    for r in results:
      r.pop('probabilities')
    json.dump(
      {
        'workdir': args.workdir,
        'model': predictor.config.model.name,
        'checkpoint_step': predictor.step,
        'videos': results,
      },
      sys.stdout,
      indent=2,
    )
    print()
  else:
    _print_table(results, predictor)


def _check_window(predictor: Predictor, window: int | None) -> None:
  config = predictor.config
  name = config.model.name
  if (
    window
    and window != config.input.num_frames
    and name == 'convlstm'
    and config.model.convlstm.head == 'flatten'
  ):
    raise UserError(
      f'--window must be {config.input.num_frames} for convlstm with head '
      "'flatten': its Dense layer takes exactly input.num_frames frames"
    )


if __name__ == '__main__':
  cli.run(main)
