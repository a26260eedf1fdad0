"""A folder of class folders of video files: finding them, naming, decoding.

The layout UCF50, UCF101 and HMDB51 unpack to: ROOT/<Class>/<video file>.
UCF names carry the group (actor and scene) and the clip:
`v_<Class>_g<GG>_c<CC>.avi`; other names have no group (0).

`encode_video` runs in the preparation's worker processes: it imports no
TensorFlow, decodes one file with PyAV and returns its frames JPEG-encoded,
or the reason the file cannot be used.
"""

import dataclasses
import io
import os
import re

import numpy as np
from PIL import Image

from hpr import video_io
from hpr.errors import UserError

# Files with these extensions are decoded (PyAV detects the container from
# the content, so a .avi that is really an MP4 still reads); other files in
# a class folder are quarantined unread.
VIDEO_EXTENSIONS = ('.avi', '.mp4', '.mkv', '.webm', '.mov')
# A video is taken as truncated when it decodes fewer than this fraction of
# the frames its container declares.
TRUNCATED_FRACTION = 0.9
SHORT_VIDEO_POLICIES = ('loop', 'repeat_last', 'drop')

_UCF_NAME = re.compile(r'^v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$', re.I)


@dataclasses.dataclass(frozen=True)
class VideoFile:
  """One video file of the folder.

  Attributes:
    path: absolute path.
    relpath: `<Class>/<file name>`, relative to the root; unique.
    label: index of the class in the dataset's class names.
    class_name: the class folder's name.
    group: UCF group (gGG), 0 when the name has none.
    clip: UCF clip (cCC), 0 when the name has none.
  """

  path: str
  relpath: str
  label: int
  class_name: str
  group: int = 0
  clip: int = 0


def parse_ucf_name(filename: str) -> tuple[int, int]:
  """(group, clip) of a UCF file name `v_<Class>_g<GG>_c<CC>.<ext>`; (0, 0)
  for other names."""
  match = _UCF_NAME.match(os.path.splitext(os.path.basename(filename))[0])
  if not match:
    return 0, 0
  return int(match['group']), int(match['clip'])


def list_classes(root: str) -> list[str]:
  """The class folders under `root`, sorted.

  Raises:
    UserError: `root` is missing, not a folder, or holds no class folders.
  """
  if not root:
    raise UserError(
      'dataset.video_folder.root is empty: set it to the folder of class '
      'folders (e.g. --config.dataset.video_folder.root=/data/UCF50)'
    )
  if not os.path.exists(root):
    raise UserError(f'dataset.video_folder.root: no such folder: {root}')
  if not os.path.isdir(root):
    raise UserError(f'dataset.video_folder.root: {root} is not a folder')
  classes = sorted(
    name
    for name in os.listdir(root)
    if not name.startswith('.') and os.path.isdir(os.path.join(root, name))
  )
  if not classes:
    raise UserError(
      f'dataset.video_folder.root: {root} holds no class folders (expected '
      f'{root}/<Class>/<video files>)'
    )
  return classes


def scan(
  root: str, classes: tuple[str, ...] = ()
) -> tuple[list[str], list[VideoFile], list[dict[str, str]]]:
  """Finds the videos of the chosen classes.

  Args:
    root: folder of class folders.
    classes: class folder names to use, in label order; empty: all, sorted.

  Returns:
    (class names, videos sorted by relpath, skipped) where `skipped` lists
    {'path', 'reason'} of files without a video extension.

  Raises:
    UserError: a bad root, an unknown class, or a class without files.
  """
  available = list_classes(root)
  if classes:
    unknown = [c for c in classes if c not in available]
    if unknown:
      raise UserError(
        f'dataset.video_folder.classes: no folder for {", ".join(unknown)} '
        f'in {root} (it has {len(available)} classes: '
        f'{", ".join(available[:10])}{", ..." if len(available) > 10 else ""})'
      )
    names = list(classes)
  else:
    names = available
  videos, skipped = [], []
  for label, name in enumerate(names):
    folder = os.path.join(root, name)
    files = sorted(f for f in os.listdir(folder) if not f.startswith('.'))
    files = [f for f in files if os.path.isfile(os.path.join(folder, f))]
    if not files:
      raise UserError(f'class {name}: {folder} holds no files')
    for filename in files:
      path = os.path.abspath(os.path.join(folder, filename))
      if os.path.splitext(filename)[1].lower() not in VIDEO_EXTENSIONS:
        skipped.append(
          {
            'path': path,
            'reason': 'not a video file name (extensions read: '
            f'{" ".join(VIDEO_EXTENSIONS)})',
          }
        )
        continue
      group, clip = parse_ucf_name(filename)
      videos.append(
        VideoFile(path, f'{name}/{filename}', label, name, group, clip)
      )
  return names, videos, skipped


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
  """How `encode_video` stores a video (see VideoFolderConfig)."""

  short_side: int = 128
  max_frames: int = 0
  min_frames: int = 0
  short_video: str = 'loop'
  jpeg_quality: int = 90


def encode_video(task: tuple[str, EncodeOptions]) -> dict:
  """Decodes, resizes and JPEG-encodes one video (in a worker process).

  Args:
    task: (path, options).

  Returns:
    {'path', 'status'} and, by status: 'ok' or 'short' (fewer than
    `min_frames` frames, padded by the 'loop' or 'repeat_last' policy):
    'frames' (list of JPEG bytes), 'fps', 'width', 'height' (of the source,
    upright), 'source_frames'; 'dropped' (short, policy 'drop'):
    'source_frames'; 'bad': 'reason'. Never raises.
  """
  path, options = task
  try:
    if os.path.getsize(path) == 0:
      return {'path': path, 'status': 'bad', 'reason': 'empty file (0 bytes)'}
    with video_io.VideoReader(path) as reader:
      frames = [video_io.to_rgb(f, options.short_side) for f in reader.frames()]
      fps, declared = reader.fps, reader.declared_frames
      width, height = reader.width, reader.height
    if (frames[0].shape[0] > frames[0].shape[1]) != (height > width):
      width, height = height, width  # Rotation metadata turned the frames.
  except UserError as e:
    return {'path': path, 'status': 'bad', 'reason': _short(str(e), path)}
  except Exception as e:  # Any FFmpeg or PyAV failure: never fatal.
    reason = f'{type(e).__name__}: {_short(str(e), path)}'
    return {'path': path, 'status': 'bad', 'reason': reason}
  count = len(frames)
  if declared and count < TRUNCATED_FRACTION * declared:
    return {
      'path': path,
      'status': 'bad',
      'reason': f'truncated: {count} of the {declared} frames its container '
      'declares decode',
    }
  result = {
    'path': path,
    'status': 'ok',
    'fps': fps,
    'width': width,
    'height': height,
    'source_frames': count,
  }
  if options.max_frames and count > options.max_frames:
    # Evenly spaced over the whole video; the frame rate scales with them.
    keep = np.arange(options.max_frames) * count // options.max_frames
    frames = [frames[i] for i in keep]
    result['fps'] = fps * options.max_frames / count
  if len(frames) < options.min_frames:
    if options.short_video == 'drop':
      return {**result, 'status': 'dropped'}
    result['status'] = 'short'
  encoded = [_jpeg(frame, options.jpeg_quality) for frame in frames]
  result['frames'] = pad_frames(
    encoded, options.min_frames, options.short_video
  )
  return result


def pad_frames(frames: list, min_frames: int, policy: str) -> list:
  """Lengthens a list of frames to `min_frames`: 'loop' plays it again from
  the start, 'repeat_last' holds the last frame; longer lists are kept."""
  n = len(frames)
  if n >= min_frames or policy == 'drop':
    return frames
  if policy == 'loop':
    return [frames[i % n] for i in range(min_frames)]
  if policy == 'repeat_last':
    return frames + [frames[-1]] * (min_frames - n)
  raise ValueError(f'unknown short_video policy {policy!r}')


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, 'JPEG', quality=quality)
  return buffer.getvalue()


def _short(text: str, path: str) -> str:
  """An error message without the (already known) path, on one line."""
  text = text.replace(f"'{path}'", 'file').replace(path, 'file')
  return ' '.join(text.split())
