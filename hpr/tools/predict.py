r"""Predict the action in video files with a trained workdir's model.

  python -m hpr.tools.predict --workdir W video.mp4 [more.avi ...] [--json] [--strict]
  python -m hpr.tools.predict --workdir W video.mp4 --annotate out.mp4 \
      [--window 20] [--stride 1] [--frame_step 1]

For each video: the top-k classes with their confidence, from one clip of
input.num_frames frames sampled over the whole video exactly as the test
split is (the notebook's predict_single_action). `--annotate` also writes a
copy of the video with the prediction of a sliding window of the last
`window` frames, and its confidence, drawn on every frame, and a CSV
timeline with one row per frame (the notebook's predict_on_video). Frames
before the first full window show the first window's prediction.

Each frame is decoded once and goes through the per-frame part of the model
once (see hpr/tools/streaming.py for what each model costs per frame).

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

  def preprocess(self, frames: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, 3) -> float32 (n, S, S, 3), as the eval pipeline
    (input.eval_crop: the whole frame resized, or its central square)."""
    from hpr import video_ops

    tf = cli.tensorflow_on_cpu()
    i = self.config.input
    features = {'video': tf.convert_to_tensor(frames)}
    if i.eval_crop == 'center':
      features = video_ops.center_crop(i.image_size)(features)
    else:
      features = video_ops.resize(i.image_size)(features)
    if i.normalization not in PER_FRAME_NORMALIZATIONS:
      # 'clip_centered': pixel / 64 here; the streaming model subtracts each
      # window's mean frame (see streaming.streaming_model).
      return (features['video'] / 64.0).numpy()
    return video_ops.normalize(i.normalization)(features)['video'].numpy()

  def clip_indices(self, num_frames: int) -> np.ndarray:
    """The frames of the whole-video clip (input.eval_sampling)."""
    from hpr import video_ops

    i = self.config.input
    return video_ops.frame_indices(
      num_frames, i.num_frames, i.eval_sampling, stride=i.frame_stride
    ).numpy()


def load_predictor(workdir: str, step: int | None = None) -> Predictor:
  """Rebuilds the model of `workdir` from its config.json and restores its
  best checkpoint (or `step`), as `hpr.workdir.load_trained` does.

  Raises:
    UserError: not a workdir, no checkpoints, or a checkpoint that does not
      fit the config.
  """
  from hpr import workdir as workdir_lib

  model, config, class_names, step = workdir_lib.load_trained_step(
    workdir, step
  )
  return make_predictor(config, class_names, step, model)


def make_predictor(config, class_names: list[str], step: int, model):
  """A `Predictor` for `model` (restored or not), streamed as the config's
  input.normalization allows."""
  center = config.input.normalization not in PER_FRAME_NORMALIZATIONS
  return Predictor(
    config,
    class_names,
    step,
    streaming.streaming_model(model, center_windows=center),
    model,
  )


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


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

  Returns:
    {'video', 'num_frames' (decoded and used), 'declared_frames' (what the
     container says; None where it does not say), 'fps', 'width', 'height',
     'top_k': [{'class', 'confidence'}], 'probabilities', 'warnings' (one
     line each)} (+ 'annotated', 'timeline').

  Raises:
    UserError: an unreadable file, a short video with short_video='error',
      or a truncated one with `strict`.
  """
  model = predictor.model
  num_frames = predictor.config.input.num_frames
  window = window or num_frames
  queue = streaming.WindowQueue(window, frame_step)
  kept, current, count = [], None, 0
  annotator = None
  with video_io.VideoReader(path) as reader:
    if annotate:
      timeline = os.path.splitext(annotate)[0] + '.csv'
      annotator = annotate_lib.Annotator(
        annotate, timeline, reader.fps, predictor.class_names
      )
    try:
      for raw in reader.chunks(CHUNK):
        x = predictor.preprocess(raw)
        cache = model.encode(x) if annotate or not model.keep_frames else None
        kept.append(x if model.keep_frames else cache)
        if annotator:
          queue.push(cache)
          ends = streaming.window_ends(
            count + len(raw), window, stride, frame_step
          )
          ends = ends[ends >= count]
          probs = (
            softmax(model.classify_at(queue.cache, queue.indices(ends)))
            if len(ends)
            else []
          )
          for i, frame in enumerate(raw):
            hits = np.flatnonzero(ends == count + i)
            if len(hits):
              end = count + i
              current = (probs[hits[0]], end - queue.span + 1, end)
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
      needed = max(num_frames, queue.span) if annotate else num_frames
      if count < needed and short_video == 'error':
        raise UserError(
          f'{path} has {count} frames, fewer than the {needed} a clip needs '
          '(--short_video=pad repeats its last frame instead)'
        )
      if annotator and current is None:  # Shorter than one window.
        idx = queue.padded_indices()
        probs = softmax(model.classify_at(queue.cache, idx))[0]
        annotator.flush((probs, 0, count - 1))
    except BaseException:
      if annotator:
        annotator.close(failed=True)
      raise
    if annotator:
      annotator.close()
    kept = np.concatenate(kept)
    clip = kept[predictor.clip_indices(count)][None]
    logits = model(clip) if model.keep_frames else model.classify(clip)
    probs = softmax(logits)[0]
    order = np.argsort(-probs, kind='stable')[: min(top_k, len(probs))]
    result = {
      'video': path,
      'num_frames': count,
      'declared_frames': declared,
      'fps': reader.fps,
      'width': reader.width,
      'height': reader.height,
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
    result['annotated'], result['timeline'] = annotate, timeline
  return result


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


def _parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
    prog='python -m hpr.tools.predict',
    description='Top-k actions of video files with a trained workdir; '
    'optionally an annotated copy with a sliding-window prediction.',
  )
  parser.add_argument('videos', nargs='+', metavar='VIDEO')
  parser.add_argument('--workdir', required=True, help='a training workdir')
  parser.add_argument(
    '--step', type=int, help='checkpoint step (default: the best)'
  )
  parser.add_argument('--top_k', type=int, default=5, help='classes shown')
  parser.add_argument('--json', action='store_true', help='print JSON')
  parser.add_argument(
    '--annotate',
    metavar='OUT',
    help='write the annotated video to OUT.mp4 and its per-frame timeline '
    'to OUT.csv; with several videos OUT is a directory',
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
  return parser


def _print_table(results: list[dict], predictor: Predictor) -> None:
  name = predictor.config.model.name
  for r in results:
    frames = f'{r["num_frames"]} frames'
    if r['declared_frames'] and r['num_frames'] < r['declared_frames']:
      frames += f' (of {r["declared_frames"]} declared)'
    print(
      f'{r["video"]}: {frames}, {r["width"]}x{r["height"]}, '
      f'{r["fps"]:.2f} fps ({name}, checkpoint {predictor.step})'
    )
    for rank, p in enumerate(r['top_k'], start=1):
      print(f'  {rank}. {p["class"]:<24} {p["confidence"]:7.2%}')
    if 'annotated' in r:
      print(f'  annotated: {r["annotated"]} (timeline {r["timeline"]})')


def _predict_all(args) -> tuple[Predictor, list[dict]]:
  """Predicts the command line's videos: (predictor, results)."""
  outputs = _outputs(args.videos, args.annotate)
  predictor = load_predictor(args.workdir, args.step)
  _check_window(predictor, args.window)
  results = []
  for video, out in zip(args.videos, outputs, strict=True):
    result = predict_video(
      predictor,
      video,
      top_k=args.top_k,
      annotate=out,
      window=args.window,
      stride=args.stride,
      frame_step=args.frame_step,
      short_video=args.short_video,
      strict=args.strict,
    )
    # On stderr, as each video ends: stdout stays the table or the JSON.
    for warning in result['warnings']:
      print(f'hpr: warning: {warning}', file=sys.stderr)
    results.append(result)
  return predictor, results


def main(argv: list[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  args = _parser().parse_args(argv)
  for flag in ('top_k', 'window', 'stride', 'frame_step'):
    value = getattr(args, flag)
    if value is not None and value < 1:
      raise UserError(f'--{flag} must be at least 1, got {value}')
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
