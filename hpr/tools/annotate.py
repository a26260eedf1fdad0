"""Annotated copies of videos: a label and confidence bar drawn on every
frame, and a per-frame CSV timeline (used by hpr.tools.predict)."""

import csv
import functools
import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hpr import video_io
from hpr.errors import UserError


def check_writable(directory: str, create: bool = False) -> None:
  """Fails early, with one line, where the outputs cannot be written.

  Args:
    directory: where the annotated videos and timelines go.
    create: make it (and its parents) if missing.

  Raises:
    UserError: `directory` is missing (without `create`), cannot be made,
      or refuses a new file (a read-only place, a file in the way).
  """
  try:
    if create:
      os.makedirs(directory, exist_ok=True)
    elif not os.path.isdir(directory):
      raise UserError(f'--annotate: no directory {directory}')
    # A real file, not os.access: root passes access() on read-only places.
    with tempfile.TemporaryFile(dir=directory, prefix='.hpr-write-check'):
      pass
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise UserError(
      f'--annotate: cannot write in {directory} ({reason})'
    ) from e


@functools.cache
def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def draw_label(frame: np.ndarray, text: str, confidence: float) -> np.ndarray:
  """The frame with `text` on a dark box and a confidence bar, top left."""
  image = Image.fromarray(frame)
  draw = ImageDraw.Draw(image)
  height, width = frame.shape[:2]
  size = max(10, height // 16)
  font = _font(size)
  _, _, right, bottom = draw.textbbox((4, 4), text, font=font)
  bar = max(2, size // 4)
  box = (0, 0, min(width, right + 4), min(height, bottom + bar + 6))
  draw.rectangle(box, fill=(0, 0, 0))
  draw.text((4, 4), text, fill=(0, 255, 0), font=font)
  bar_top = bottom + 3
  bar_width = int((box[2] - 8) * confidence)
  draw.rectangle((4, bar_top, 4 + bar_width, bar_top + bar), fill=(0, 255, 0))
  return np.asarray(image)


class Annotator:
  """Writes annotated frames and timeline rows as predictions arrive."""

  def __init__(self, path: str, timeline: str, fps: float, class_names):
    self.writer = video_io.VideoWriter(path, fps)
    try:
      self.csv_file = open(timeline, 'w', newline='')
    except OSError as e:
      self.writer.close()
      os.remove(path)
      raise UserError(
        f'cannot write {timeline} ({e.strerror or type(e).__name__})'
      ) from e
    self.csv = csv.writer(self.csv_file)
    self.csv.writerow(
      ['frame', 'time_s', 'label', 'confidence', 'window_start', 'window_end']
    )
    self.fps, self.class_names = fps, class_names
    self.pending = []  # Frames waiting for the first window.
    self.paths = (path, timeline)

  def add(self, number: int, frame: np.ndarray, current) -> None:
    """Queues frame `number`; writes what it can once `current`, the
    prediction (probs, window_start, window_end), is known."""
    self.pending.append((number, frame))
    if current is not None:
      self.flush(current)

  def flush(self, current) -> None:
    probs, start, end = current
    label = int(np.argmax(probs))
    name, confidence = self.class_names[label], float(probs[label])
    for number, frame in self.pending:
      text = f'{name} {confidence:.0%}'
      self.writer.write(draw_label(frame, text, confidence))
      self.csv.writerow(
        [number, f'{number / self.fps:.3f}', name, f'{confidence:.4f}']
        + [start, end]
      )
    self.pending = []

  def close(self, failed: bool = False) -> None:
    self.writer.close()
    self.csv_file.close()
    if failed:
      for path in self.paths:
        if os.path.exists(path):
          os.remove(path)
