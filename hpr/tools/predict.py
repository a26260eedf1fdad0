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
import json
import os
import sys

from hpr import cli, rundirs
from hpr.errors import UserError
from hpr.tools import annotate as annotate_lib
from hpr.tools import live as live_lib
from hpr.tools import streaming
from hpr.tools.predictor import (  # noqa: F401 (the library's names, here too)
  CHUNK,
  PER_FRAME_NORMALIZATIONS,
  Predictor,
  check_views,
  load_predictor,
  make_predictor,
  make_timeline,
  predict_video,
)


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
    check_views(*args.views)
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


def run() -> None:
  """The hpr-predict console script."""
  cli.run(main)


if __name__ == '__main__':
  run()
