"""Reading and writing video files with PyAV (FFmpeg).

Frames are uint8 RGB arrays (H, W, 3). Problems with a file (missing, not a
video, undecodable) raise `UserError` with one line naming the file.
"""

import fractions
import os
from collections.abc import Iterable, Iterator

import av
import numpy as np

from hpr.errors import UserError

# Used when a file does not say its frame rate.
DEFAULT_FPS = 25.0


class VideoReader:
  """Decodes a video file frame by frame.

  Attributes:
    path: the file.
    fps: frames per second (average rate of the first video stream).
    width, height: frame size in pixels.
  """

  def __init__(self, path: str):
    if not os.path.exists(path):
      raise UserError(f'no such video file: {path}')
    if os.path.isdir(path):
      raise UserError(f'{path} is a directory, not a video file')
    self.path = path
    try:
      self._container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
      raise UserError(f'cannot read {path} as a video ({_reason(e)})') from e
    if not self._container.streams.video:
      self._container.close()
      raise UserError(f'{path} has no video stream')
    stream = self._container.streams.video[0]
    # Threaded decoding: several times faster for H.264 on 2+ cores.
    stream.thread_type = 'AUTO'
    self._stream = stream
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    self.fps = float(rate) if rate else DEFAULT_FPS
    self.width = stream.codec_context.width
    self.height = stream.codec_context.height
    # What the container says; 0 where it does not say (Matroska, WebM).
    self.declared_frames = stream.frames

  def frames(self) -> Iterator[av.VideoFrame]:
    """Yields every decoded frame as PyAV frames, in display order."""
    count = 0
    try:
      for frame in self._container.decode(self._stream):
        count += 1
        yield frame
    except av.error.FFmpegError as e:
      raise UserError(
        f'cannot decode {self.path} after {count} frames ({_reason(e)})'
      ) from e
    if count == 0:
      raise UserError(f'{self.path} has no video frames')

  def __iter__(self) -> Iterator[np.ndarray]:
    """Yields every frame, uint8 (H, W, 3) RGB, in display order."""
    for frame in self.frames():
      yield frame.to_ndarray(format='rgb24')

  def chunks(self, size: int) -> Iterator[np.ndarray]:
    """Yields frames in stacks of `size` (the last may be shorter)."""
    chunk = []
    for frame in self:
      chunk.append(frame)
      if len(chunk) == size:
        yield np.stack(chunk)
        chunk = []
    if chunk:
      yield np.stack(chunk)

  def close(self) -> None:
    self._container.close()

  def __enter__(self) -> 'VideoReader':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_video(path: str) -> tuple[np.ndarray, float]:
  """All frames of a video file.

  Args:
    path: a video file PyAV can open (MP4, AVI, MKV, WebM, ...).

  Returns:
    frames uint8 (N, H, W, 3) RGB and the frame rate.

  Raises:
    UserError: the file is missing, is not a video, cannot be decoded or has
      no frames.
  """
  with VideoReader(path) as reader:
    return np.stack(list(reader)), reader.fps


def to_rgb(frame: av.VideoFrame, short_side: int = 0) -> np.ndarray:
  """A decoded frame as uint8 (H, W, 3) RGB, upright, optionally smaller.

  Args:
    frame: a PyAV video frame.
    short_side: if > 0 and the frame is larger, scale it (FFmpeg's area
      filter) so that its shorter side has this many pixels; the aspect
      ratio is kept. Frames are never enlarged.

  Returns:
    The frame, turned as its rotation metadata says (phone videos record
    portrait frames as rotated landscape ones).
  """
  width, height = frame.width, frame.height
  short = min(width, height)
  if 0 < short_side < short:
    width = max(1, round(width * short_side / short))
    height = max(1, round(height * short_side / short))
  rgb = frame.to_ndarray(
    format='rgb24', width=width, height=height, interpolation='AREA'
  )
  # `rotation`: degrees the display turns the frame counterclockwise;
  # np.rot90 turns counterclockwise too.
  quarter_turns = round((getattr(frame, 'rotation', 0) or 0) / 90) % 4
  return np.ascontiguousarray(np.rot90(rgb, quarter_turns))


def _reason(error: Exception) -> str:
  text = getattr(error, 'strerror', None) or str(error)
  return str(text).strip().splitlines()[0] if text else type(error).__name__


class VideoWriter:
  """Encodes RGB frames into an audio-free MP4.

  H.264 (libx264, yuv420p: what browsers and common players open) when
  FFmpeg has it, else MPEG-4 part 2. yuv420p needs even sizes: a frame with
  an odd width or height gets its last column or row repeated once.
  """

  def __init__(self, path: str, fps: float, *, crf: int = 20):
    self.path = path
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
      raise UserError(f'cannot write {path}: no directory {directory}')
    try:
      self._container = av.open(
        path, 'w', format='mp4', options={'movflags': 'faststart'}
      )
    except av.error.FFmpegError as e:
      raise UserError(f'cannot write {path} ({_reason(e)})') from e
    # A rational rate, so 29.97 fps stays 30000/1001.
    self._rate = fractions.Fraction(fps).limit_denominator(1001)
    self._crf = crf
    self._stream = None
    self._count = 0

  def _open_stream(self, height: int, width: int) -> None:
    codecs = av.codecs_available
    codec = 'libx264' if 'libx264' in codecs else 'mpeg4'
    stream = self._container.add_stream(codec, rate=self._rate)
    stream.width, stream.height = width + width % 2, height + height % 2
    stream.pix_fmt = 'yuv420p'
    stream.codec_context.time_base = 1 / self._rate
    if codec == 'libx264':
      # 'veryfast' keeps encoding well above real time on 2 cores.
      stream.options = {'crf': str(self._crf), 'preset': 'veryfast'}
    else:
      stream.options = {'qscale': '3'}
    self._stream = stream

  def write(self, frame: np.ndarray) -> None:
    """Appends one uint8 (H, W, 3) RGB frame."""
    if self._stream is None:
      self._open_stream(*frame.shape[:2])
    height, width = frame.shape[:2]
    if height % 2 or width % 2:
      frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), 'edge')
    video_frame = av.VideoFrame.from_ndarray(
      np.ascontiguousarray(frame), format='rgb24'
    )
    video_frame.pts = self._count
    video_frame.time_base = 1 / self._rate
    self._count += 1
    self._container.mux(self._stream.encode(video_frame))

  def close(self) -> None:
    """Flushes the encoder and finishes the file."""
    if self._stream is not None:
      self._container.mux(self._stream.encode(None))
    self._container.close()

  def __enter__(self) -> 'VideoWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def write_video(path: str, frames: Iterable[np.ndarray], fps: float) -> None:
  """Writes uint8 (H, W, 3) RGB frames to an audio-free MP4 at `fps`."""
  with VideoWriter(path, fps) as writer:
    for frame in frames:
      writer.write(frame)


def write_file(
  path: str, frames: Iterable[np.ndarray], fps: float, codec: str = 'mpeg4'
) -> None:
  """Writes uint8 (H, W, 3) RGB frames with `codec` ('mpeg4', 'libx264',
  'libvpx-vp9', ...) in the container the extension names (.avi, .mp4,
  .mkv, .webm, .mov), e.g. UCF-like MPEG-4 AVIs. Sizes must be even."""
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with av.open(path, 'w') as container:
    stream = None
    for frame in frames:
      if stream is None:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frame.shape[:2]
        stream.pix_fmt = 'yuv420p'
        if codec == 'mpeg4':
          stream.options = {'qscale': '3'}
      video_frame = av.VideoFrame.from_ndarray(
        np.ascontiguousarray(frame), format='rgb24'
      )
      container.mux(stream.encode(video_frame))
    if stream is not None:
      container.mux(stream.encode(None))
