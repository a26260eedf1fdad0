"""A trained workdir's model as a video predictor: load it, sample views
as the test split does, and classify a whole video or a timeline of
sliding windows (the library under hpr.tools.predict's command line).

  predictor = load_predictor(workdir)
  result = predict_video(predictor, 'clip.mp4')  # top classes, confidence

Each frame is decoded once and goes through the per-frame part of the model
once per crop. A file that decodes fewer frames than its container declares
is predicted from the frames that decode, with a warning (`strict=True`
refuses it).
"""

import dataclasses
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

from hpr import calibration, cli, video_io  # noqa: E402
from hpr import workdir as workdir_lib  # noqa: E402
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
  # Logits are divided by it before the softmax (`--calibrated`); None: 1.
  temperature: float | None = None

  def preprocess(self, frames: np.ndarray, crop: int | None = None):
    """uint8 (n, H, W, 3) -> float32 (n, S, S, 3), as the eval pipeline.

    crop None: input.eval_crop (the whole frame resized, or its central
    square); 0, 1 or 2: the square at the start, middle or end of the long
    side (eval.num_test_crops = 3, `video_ops.center_crop`).
    """
    # Late: keeps TensorFlow out of the predict tool's --help.
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
    # Late: keeps TensorFlow out of the predict tool's --help.
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
  temperature = _temperature(workdir) if calibrated else None
  model, config, class_names, step = workdir_lib.load_trained_step(
    workdir, step
  )
  predictor = make_predictor(config, class_names, step, model)
  predictor.temperature = temperature
  return predictor


def _temperature(workdir: str) -> float:
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
  check_views(clips, crops)
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


def check_views(clips: int, crops: int) -> None:
  if clips < 1:
    raise UserError(f'--views: temporal clips must be at least 1, got {clips}')
  if crops not in (1, 3):
    raise UserError(f'--views: spatial crops must be 1 or 3, got {crops}')
