"""Live input for hpr.tools.predict: a camera, a stream URL or stdin.

  python -m hpr.tools.predict --workdir W --source /dev/video0
  python -m hpr.tools.predict --workdir W --source rtsp://host/stream
  ffmpeg -i in.mp4 -f mpegts - | python -m hpr.tools.predict --workdir W \
      --source - --annotate out.mp4

A reader thread decodes frames (PyAV) into a bounded queue; the main thread
takes what has arrived (up to `CHUNK` frames at a time), classifies it
(hpr.tools.streaming, window or stateful) and prints one JSON line per
frame: {"frame", "time_s", "label", "confidence", "window_start",
"window_end", "latency_ms"}, then a summary line {"summary": {...}}.

Drop policy: when the queue is full (the model is slower than the source),
the OLDEST queued frame is dropped ('--drop oldest', the default), so what
is classified stays close to now and latency stays bounded; dropped frames
get no line and are not in the annotated copy; the summary counts them.
'--drop none' blocks the reader instead (every frame is classified; for a
file piped on stdin, whose producer can wait).

latency_ms is per frame: from the moment the frame was decoded to the
moment its line is printed (queueing, preprocessing and the model; frames
before the first full window wait for it). The one-frame path is compiled
on blank frames before reading starts, so compilation is not in it.

Ctrl-C (SIGINT) stops reading; the frames already taken are finished, the
annotated MP4 and its timeline are finalised (a valid file), the summary
is printed, and the process exits with 130. A second Ctrl-C stops at once.
"""

import json
import os
import queue
import signal
import sys
import threading
import time

import av
import numpy as np

from hpr import video_io
from hpr.errors import UserError
from hpr.tools import annotate as annotate_lib
from hpr.tools import predictor as predictor_lib

# Frames classified together at most (what arrived since the last batch).
CHUNK = 16
DROP_POLICIES = ('oldest', 'none')
_END = 'end'


def open_source(source: str, source_format: str | None = None):
  """The PyAV container of `source`: '-' (a container on stdin), a camera
  device (/dev/video*: format v4l2 unless `source_format` says), a URL or
  a file.

  Raises:
    UserError: it cannot be opened or has no video stream.
  """
  if source_format is None and source.startswith('/dev/video'):
    source_format = 'v4l2'
  # FFmpeg's own pipe reader returns what has arrived; a Python file
  # object's read(n) would wait for all n bytes.
  target = 'pipe:0' if source == '-' else source
  name = 'stdin' if source == '-' else source
  try:
    # Small probes: a live source must not wait for seconds of data
    # before its first frame.
    container = av.open(
      target,
      mode='r',
      format=source_format,
      options={'probesize': '32768', 'analyzeduration': '0'},
    )
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise UserError(f'--source: cannot open {name} ({_reason(e)})') from e
  if not container.streams.video:
    container.close()
    raise UserError(f'--source: {name} has no video stream')
  return container


def _reason(error: Exception) -> str:
  text = getattr(error, 'strerror', None) or str(error)
  return str(text).strip().splitlines()[0] if text else type(error).__name__


class FrameQueue:
  """A bounded queue of (number, frame, arrival time) with a drop policy."""

  def __init__(self, size: int, drop: str):
    if drop not in DROP_POLICIES:
      raise ValueError(f'unknown drop policy {drop!r}')
    self._queue = queue.Queue(size)
    self.drop, self.dropped, self.decoded = drop, 0, 0
    self.stop = threading.Event()

  def put(self, item) -> None:
    """Adds `item`; when full, drops the oldest ('oldest') or waits until
    there is room or `stop` is set ('none')."""
    while not self.stop.is_set():
      try:
        self._queue.put(item, block=self.drop == 'none', timeout=0.1)
        return
      except queue.Full:
        if self.drop == 'oldest':
          try:
            old = self._queue.get_nowait()
            if old[0] is _END:  # Never dropped: put it back first.
              self._queue.put_nowait(old)
            else:
              self.dropped += 1
          except queue.Empty:
            pass

  def take(self, most: int, timeout: float) -> list:
    """What has arrived, up to `most` items: waits up to `timeout` s for the
    first, not for the rest; [] on a timeout."""
    try:
      items = [self._queue.get(timeout=timeout)]
    except queue.Empty:
      return []
    while len(items) < most and items[-1][0] is not _END:
      try:
        items.append(self._queue.get_nowait())
      except queue.Empty:
        break
    return items


def _read(container, frames: FrameQueue) -> None:
  """The reader thread: decodes into `frames`, then (_END, error or None)."""
  error = None
  try:
    stream = container.streams.video[0]
    for number, frame in enumerate(container.decode(stream)):
      if frames.stop.is_set():
        break
      frames.decoded += 1
      frames.put((number, frame.to_ndarray(format='rgb24'), time.monotonic()))
  except Exception as e:  # noqa: BLE001 (handed to the main thread)
    error = e
  frames.put((_END, error, None))


def predict_live(
  predictor,
  source: str,
  *,
  source_format: str | None = None,
  annotate: str | None = None,
  window: int | None = None,
  stride: int = 1,
  frame_step: int = 1,
  stream: str = 'window',
  reset_every: int = 0,
  smooth: int = 1,
  queue_size: int = 32,
  drop: str = 'oldest',
  out=None,
) -> tuple[dict, bool]:
  """Classifies `source`'s frames as they arrive; one JSON line per frame.

  Args:
    predictor: from `hpr.tools.predictor.load_predictor`.
    source: see `open_source`.
    source_format: FFmpeg's input format name (v4l2, mpegts, ...); None:
      probed (v4l2 for /dev/video*).
    annotate: the annotated MP4 (its timeline beside it, .csv), or None.
    window, stride, frame_step, stream, reset_every, smooth: as in
      `hpr.tools.predictor.make_timeline`.
    queue_size: frames the queue holds.
    drop: 'oldest' or 'none' (module docstring).
    out: where the lines go (default sys.stdout).

  Returns:
    (summary, interrupted): the summary line's dict, and whether SIGINT
    ended it.

  Raises:
    UserError: the source cannot be opened or decoded.
  """
  out = out or sys.stdout
  options = {
    'window': window,
    'stride': stride,
    'frame_step': frame_step,
    'stream': stream,
    'reset_every': reset_every,
    'smooth': smooth,
  }
  timeline = predictor_lib.make_timeline(predictor, **options)
  container = open_source(source, source_format)
  video = container.streams.video[0]
  _warm_up(predictor, options, video.codec_context)
  rate = video.average_rate or video.guessed_rate or video.base_rate
  fps = float(rate) if rate else video_io.DEFAULT_FPS
  annotator = None
  if annotate:
    csv_path = os.path.splitext(annotate)[0] + '.csv'
    annotator = annotate_lib.Annotator(
      annotate, csv_path, fps, predictor.class_names
    )
  frames = FrameQueue(queue_size, drop)
  reader = threading.Thread(target=_read, args=(container, frames), daemon=True)
  interrupted = threading.Event()
  previous = None
  if threading.current_thread() is threading.main_thread():

    def on_sigint(signum, frame):
      interrupted.set()
      frames.stop.set()
      signal.signal(signal.SIGINT, previous)  # A second one stops at once.

    previous = signal.signal(signal.SIGINT, on_sigint)
  numbers = []  # Source frame number of each classified frame.
  pending = []  # (number, frame, arrival) waiting for a first prediction.
  latencies, current, error = [], None, None
  started = time.monotonic()

  def emit(prediction):
    probs, start, end = prediction
    label = int(np.argmax(probs))
    for number, frame, arrival in pending:
      if annotator:
        annotator.add(number, frame, prediction)
      latency = 1e3 * (time.monotonic() - arrival)
      latencies.append(latency)
      line = {
        'frame': number,
        'time_s': round(number / fps, 3),
        'label': predictor.class_names[label],
        'confidence': round(float(probs[label]), 4),
        'window_start': numbers[start],
        'window_end': numbers[end],
        'latency_ms': round(latency, 2),
      }
      out.write(json.dumps(line) + '\n')
    out.flush()
    pending.clear()

  try:
    reader.start()
    while not interrupted.is_set():
      items = frames.take(CHUNK, timeout=0.1)
      if not items:
        continue
      ended = items[-1][0] is _END
      if ended:
        error = items.pop()[1]
      if items:
        raw = np.stack([frame for _, frame, _ in items])
        cache = predictor.model.encode(predictor.preprocess(raw))
        news = timeline.push(cache)
        for (number, frame, arrival), new in zip(items, news, strict=True):
          numbers.append(number)
          pending.append((number, frame, arrival))
          current = new or current
          if current is not None:
            emit(current)
      if ended:
        break
    # Interrupted or ended: the frames taken are finished.
    if pending:
      final = current or timeline.finish()
      if final is not None:
        emit(final)
  except BaseException:
    if annotator:
      annotator.close(failed=True)
    raise
  finally:
    frames.stop.set()
    if previous is not None and not interrupted.is_set():
      signal.signal(signal.SIGINT, previous)
  if annotator:
    # Finalising must not be cut short by a second Ctrl-C.
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
      annotator.close()
    finally:
      if previous is not None:
        signal.signal(signal.SIGINT, previous)
  if error is not None and not interrupted.is_set():
    raise UserError(
      f'--source: cannot decode {source} after {frames.decoded} frames '
      f'({_reason(error)})'
    )
  elapsed = time.monotonic() - started
  summary = {
    'source': source,
    'frames': len(latencies),
    'decoded': frames.decoded,
    'dropped': frames.dropped,
    'drop': drop,
    'interrupted': interrupted.is_set(),
    'stream': timeline.describe(),
    **predictor.calibration(),
    'latency_ms': _percentiles(latencies),
    'frames_per_s': round(len(latencies) / elapsed, 2) if elapsed else None,
  }
  if annotate:
    summary['annotated'], summary['timeline'] = annotate, csv_path
  out.write(json.dumps({'summary': summary}) + '\n')
  out.flush()
  return summary, interrupted.is_set()


def _warm_up(predictor, options: dict, codec) -> None:
  """Compiles the one-frame path (a live source is mostly one frame at a
  time) on blank frames of the source's size before reading starts, so
  the first frames' latency is not the compilation's."""
  if not (codec.width and codec.height):
    return
  timeline = predictor_lib.make_timeline(predictor, **options)
  frame = np.zeros((1, codec.height, codec.width, 3), np.uint8)
  for _ in range(timeline.queue.span):
    timeline.push(predictor.model.encode(predictor.preprocess(frame)))


def _percentiles(latencies: list[float]) -> dict | None:
  if not latencies:
    return None
  values = np.asarray(latencies)
  return {
    'median': round(float(np.median(values)), 2),
    'p95': round(float(np.percentile(values, 95)), 2),
    'max': round(float(values.max()), 2),
  }
