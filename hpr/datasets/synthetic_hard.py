"""A harder synthetic folder: time-reversed pairs, camera motion, real sizes.

The 'small_video' config of synthetic_actions: 8 classes, three pairs of
which are exact time reversals of each other and two periodic, in
textured, cluttered rooms, with camera shake, sensor noise and moving
distractors. Every clip has its own frame size (160x120 to 320x240), frame
rate (15 to 30 fps) and codec (MPEG-4 in AVI or H.264 in MP4), as a small
real-video folder has, so that hpr.tools.export_synthetic writes one that a
recipe can be developed on (issue 25).

Every clip shows the same things: the group's actor in the group's room,
a wheel on the wall and moving distractors. Only what moves tells the
classes apart: the actor sits down, stands up, waves or jumps (JumpingJack),
the camera zooms in or out, or the wheel turns clockwise or
counter-clockwise; in the other classes the actor idles, the camera holds and
the wheel stays still. StandUp, ZoomOut and RotateCCW are SitDown, ZoomIn and
RotateCW played backwards, with the same frames: a model that ignores frame
order can only guess within a pair, and a horizontal flip turns RotateCW
into RotateCCW.

Randomness comes from streams keyed by integers, as in synthetic_render:
group (seed, group): the room and the actor; clip (seed, group, program,
clip): size, rate, codec, length, placement and every motion; frame (seed,
group, class, clip): shake and noise.
"""

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from hpr.datasets import synthetic_render as sr

CLASS_NAMES = (
  'SitDown', 'StandUp', 'ZoomIn', 'ZoomOut', 'RotateCW', 'RotateCCW',
  'Waving', 'JumpingJack',
)  # fmt: skip
# Class -> the class whose clip it plays backwards.
REVERSED = {'StandUp': 'SitDown', 'ZoomOut': 'ZoomIn', 'RotateCCW': 'RotateCW'}
# What a horizontal flip makes of each class that it changes.
FLIP_LABEL_MAP = {'RotateCW': 'RotateCCW', 'RotateCCW': 'RotateCW'}

SIZES = ((160, 120), (176, 144), (240, 180), (320, 240))  # (width, height)
RATES = (15.0, 20.0, 24.0, 25.0, 30.0)
CODECS = (('mpeg4', '.avi'), ('libx264', '.mp4'))

_GROUP, _CLIP, _FRAME = (
  11,
  12,
  13,
)  # Stream tags, apart from synthetic_render's.


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How a clip is stored: frame size, rate, length and codec."""

  width: int
  height: int
  fps: float
  num_frames: int
  codec: str
  extension: str


def clip_spec(class_name: str, group: int, clip: int, seed: int = 0):
  """The size, rate, length and codec of a clip (a pair shares them)."""
  program = REVERSED.get(class_name, class_name)
  rng = _clip_rng(seed, group, program, clip)
  return _spec(rng)


def _clip_rng(seed, group, program, clip):
  return np.random.default_rng(
    (seed, _CLIP, group, CLASS_NAMES.index(program), clip)
  )


def _spec(rng) -> ClipSpec:
  width, height = SIZES[rng.integers(len(SIZES))]
  fps = RATES[rng.integers(len(RATES))]
  codec, extension = CODECS[int(rng.uniform() < 0.4)]
  num_frames = max(24, round(rng.uniform(1.6, 2.6) * fps))
  return ClipSpec(width, height, fps, num_frames, codec, extension)


def _room(rng, width, height):
  """A textured, cluttered wall and floor: float (H, W, 3), floor row."""
  floor = int(height * rng.uniform(0.5, 0.68))
  y, x = np.mgrid[:height, :width] / height
  wall = rng.uniform(0.2, 0.85) + rng.uniform(-0.2, 0.2, 3)
  ground = rng.uniform(0.1, 0.75) + rng.uniform(-0.15, 0.15, 3)
  room = np.where((y < floor / height)[..., None], wall, ground)
  for _ in range(2):  # Two layers of texture: coarse and fine.
    period = rng.uniform(0.03, 0.12)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    blotches = Image.fromarray(rng.uniform(-1, 1, (6, 8)).astype(np.float32))
    texture = [
      np.sign(np.sin(2 * np.pi * u / period)),
      np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)),
      np.asarray(blotches.resize((width, height), Image.BILINEAR)),
    ][rng.integers(3)]
    room = room + rng.uniform(0.04, 0.12) * texture[..., None]
  image = Image.fromarray(np.uint8(np.clip(room, 0, 1) * 255))
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(2, 6)):
    w, h = rng.uniform(0.05, 0.25, 2) * width
    x0, y0 = rng.uniform(0, width - w), rng.uniform(0, floor)
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    shape = draw.rectangle if rng.uniform() < 0.6 else draw.ellipse
    shape((x0, y0, x0 + w, y0 + h), fill, tuple(c // 2 for c in fill), 1)
  return np.asarray(image), floor


def _actor(rng, room):
  """The group's body proportions and colours."""
  build = rng.uniform(0.85, 1.25)
  scales = dict.fromkeys(('arm_w', 'leg_w', 'depth', 'shoulder', 'hip'), build)
  body = sr._Body(**{
    k: v * scales.get(k, rng.uniform(0.92, 1.08))
    for k, v in sr._AVERAGE.items()
  })  # fmt: skip
  lum = sr._luminance(room.mean((0, 1)) / 255)
  shirt = sr._contrasting(rng, lum, 0.25)
  skin = np.array([0.98, 0.84, 0.72]) * rng.uniform(0.35, 1.0)
  colours = {
    'skin': skin, 'shirt': shirt,
    'sleeve': shirt if rng.uniform() < 0.5 else skin,
    'pants': sr._contrasting(rng, lum, 0.25),
    'shoes': rng.uniform(0, 0.4, 3),
    'prop': sr._contrasting(rng, lum, 0.4),
  }  # fmt: skip
  return body, colours


def _idle(t, rng, body):
  """Standing, shifting weight and swinging the arms a little."""
  u = 2 * np.pi * (rng.uniform() + rng.uniform(0.3, 0.8) * t)
  arms = (6 + 4 * np.sin(u), 8 + 6 * np.sin(u), 3, 3)
  return sr._Motion(sr._pose(t, arms, mirror=True, head=3 * np.sin(u / 2)))


_ACTOR = {
  'SitDown': sr._sit_down,
  'Waving': sr._waving,
  'JumpingJack': sr._jumping_jack,
}


def _figure(program, t, rng, body, view, floor):
  """The actor's joints per frame (canvas pixels), capsules and chair."""
  x, y, width, height = view
  motion = _ACTOR.get(program, _idle)(t, rng, body)
  facing = rng.choice([-1, 1])
  world = sr._skeleton(motion, body) * [facing, 1]
  n = len(t)
  lowest = world[..., 1].min(1) - body.leg_w / 2
  world[..., 1] += (np.broadcast_to(motion.lift, (n,)) - lowest)[:, None]
  anchor = np.vectorize(sr._J.get)(np.broadcast_to(motion.anchor, (n,)))
  world[..., 0] -= world[np.arange(n), anchor, 0][:, None]
  ground = y + rng.uniform(max(0.75, (floor - y) / height), 0.95) * height
  top = world[..., 1].max() + body.head
  scale = min(rng.uniform(0.55, 0.75) * height, (ground - y) / top)
  x0 = x + rng.uniform(0.3, 0.7) * width

  def to_canvas(xy):
    xy = np.asarray(xy)
    return np.stack([x0 + xy[..., 0] * scale, ground - xy[..., 1] * scale], -1)

  points = to_canvas(world)
  chair = []
  if motion.chair:
    chair = [
      (to_canvas(a), to_canvas(b), w * scale)
      for a, b, w in sr._chair(world, body, facing)
    ]
  widths = {
    'arm': body.arm_w, 'leg': body.leg_w, 'foot': 0.8 * body.leg_w,
    'head': 2 * body.head,
    'torso': body.depth if motion.side else 2 * body.shoulder,
  }  # fmt: skip
  segments = [
    (sr._J[a], sr._J[b], max(1.5, widths[w] * scale), c,
     0.7 if motion.side and a[:2] == 'l_' else 1.0)
    for a, b, w, c in sr._segments(motion.side)
  ]  # fmt: skip
  return points, segments, chair


def _clock(draw, rng, view, floor, rim):
  """A still wheel on the wall: the same in every class."""
  x, y, width, _ = view
  radius = rng.uniform(0.06, 0.1) * width
  cx = x + rng.uniform(radius, width - radius)
  cy = y + rng.uniform(radius, max(radius + 1, floor - y - radius))
  draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), rim)
  mark = (255,) * 3 if sum(rim) < 384 else (0,) * 3
  for k, a in enumerate(rng.uniform(0, 2 * np.pi) + np.arange(3) * 2.1):
    end = (cx + 0.9 * radius * np.cos(a), cy + 0.9 * radius * np.sin(a))
    draw.line([(cx, cy), end], mark, max(1, round(radius / (5 + 3 * k))))


def _camera(program, rng, t, view):
  """Per frame: the view's centre (canvas pixels), its size relative to the
  output (1: one canvas pixel per output pixel) and its roll in radians
  (positive: the picture turns clockwise on screen)."""
  x, y, width, height = view
  n = len(t)
  centre = np.broadcast_to([x + width / 2, y + height / 2], (n, 2)).copy()
  size = np.ones(n)
  roll = np.zeros(n)
  s = sr._transition(t, rng)
  if program == 'ZoomIn':
    zoom = rng.uniform(1.3, 1.7)
    # Towards a point that keeps the zoomed view inside the first one.
    room = (1 - 1 / zoom) / 2 * np.array([width, height])
    target = centre[0] + rng.uniform(-1, 1, 2) * room
    # Interpolating the inverse size keeps the zoom speed even.
    k = (1 / (1 + (zoom - 1) * s) - 1) / (1 / zoom - 1)
    size = 1 / (1 + (zoom - 1) * s)
    centre += k[:, None] * (target - centre[0])
  elif program == 'RotateCW':
    roll += np.radians(rng.uniform(12, 20)) * s
  return centre, size, roll


def _distractors(rng, t, view):
  """Shapes moving on their own: [(corners (T, K, 2), rgb, in front)]."""
  x0, y0, width, height = view
  out = []
  for _ in range(rng.integers(1, 4)):
    r = rng.uniform(0.03, 0.06) * width
    vx = rng.choice([-1, 1]) * rng.uniform(0.2, 1.0) * width
    x = x0 + sr._bounce(rng.uniform(0, width) + vx * t, r, width - r)
    vy = rng.uniform(-0.6, 0.6) * height
    y = y0 + sr._bounce(rng.uniform(0, height) + vy * t, r, height - r)
    sides = int(rng.choice([3, 4, 5, 16]))
    turn = rng.uniform(0, 2 * np.pi) + rng.uniform(-6, 6) * t
    corners = turn[:, None] + np.linspace(0, 2 * np.pi, sides, False)
    xy = np.stack([np.cos(corners), np.sin(corners)], -1)
    xy = r * xy + np.stack([x, y], -1)[:, None]
    rgb = tuple(int(c) for c in rng.integers(0, 256, 3))
    out.append((xy, rgb, rng.uniform() < 0.4))
  return out


def _scene(program, rng, shared, spec):
  """The clip's canvas images before the camera, shake and noise, and the
  camera per frame."""
  room, floor, body, colours = shared
  t = np.linspace(0, 1, spec.num_frames)
  height, width = room.shape[:2]
  view = (
    (width - spec.width) / 2,
    (height - spec.height) / 2,
    spec.width,
    spec.height,
  )
  gain = 1 + rng.uniform(-0.15, 0.15)
  background = Image.fromarray(np.uint8(np.clip(room * gain, 0, 255)))

  def paint(rgb, shade=1.0):
    return tuple(int(c) for c in np.clip(rgb * gain * shade * 255, 0, 255))

  draw = ImageDraw.Draw(background)
  _clock(draw, rng, view, floor, paint(colours['prop']))
  points, segments, chair = _figure(program, t, rng, body, view, floor)
  for a, b, w in chair:
    sr._capsule(draw, a, b, w, paint(colours['prop'], 0.6))
  segments = [
    (a, b, w, paint(colours[c], shade)) for a, b, w, c, shade in segments
  ]
  objects = _distractors(rng, t, view)
  camera = _camera(program, rng, t, view)
  frames = []
  for i in range(len(t)):
    image = background.copy()
    draw = ImageDraw.Draw(image)
    for xy, rgb, front in objects:
      if not front:
        draw.polygon([tuple(p) for p in xy[i]], rgb)
    for a, b, w, fill in segments:
      sr._capsule(draw, points[i, a], points[i, b], w, fill)
    for xy, rgb, front in objects:
      if front:
        draw.polygon([tuple(p) for p in xy[i]], rgb)
    frames.append(image)
  return frames, camera


_SHARED = {}


def _actor_and_room(seed, group):
  """What a group's clips share, the room drawn at the largest canvas."""
  key = (seed, group)
  if key not in _SHARED:
    if len(_SHARED) > 8:
      _SHARED.clear()
    rng = np.random.default_rng((seed, _GROUP, group))
    room, floor = _room(rng, *_canvas(*SIZES[-1]))
    body, colours = _actor(rng, room)
    _SHARED[key] = room, floor, body, colours
  return _SHARED[key]


def _canvas(width, height):
  """The drawn canvas around a view: room for the camera to roll and shake."""
  return 2 * round(width / _VIEW / 2), 2 * round(height / _VIEW / 2)


_VIEW = 0.66  # The view's share of the canvas (a 23 degree roll fits).


def _look(image, centre, size, roll, out_size):
  """The camera's picture of a canvas image (PIL affine, bilinear)."""
  w, h = out_size
  # Output pixel p samples the canvas at centre + size * R(-roll) (p - mid),
  # so the picture turns by +roll (clockwise, as image y points down).
  cos, sin = size * np.cos(-roll), size * np.sin(-roll)
  a, b, d, e = cos, -sin, sin, cos
  c = centre[0] - a * w / 2 - b * h / 2
  f = centre[1] - d * w / 2 - e * h / 2
  return image.transform(
    out_size, Image.AFFINE, (a, b, c, d, e, f), Image.BILINEAR
  )


def render_clip(
  class_name: str,
  group: int,
  clip: int,
  *,
  seed: int = 0,
  frame_effects: bool = True,
) -> tuple[np.ndarray, ClipSpec]:
  """Renders one clip.

  Args:
    class_name: one of CLASS_NAMES.
    group: the actor and room (UCF's gGG).
    clip: the clip's index within (group, class) (UCF's cCC).
    seed: the dataset's seed; the clip depends on (seed, group, class, clip)
      only.
    frame_effects: camera shake and sensor noise. Without them a reversed
      class is exactly its partner played backwards.

  Returns:
    uint8 (T, H, W, 3) frames and the clip's ClipSpec.
  """
  if class_name not in CLASS_NAMES:
    raise ValueError(f'unknown class {class_name!r}; valid: {CLASS_NAMES}')
  program = REVERSED.get(class_name, class_name)
  rng = _clip_rng(seed, group, program, clip)
  spec = _spec(rng)
  room, floor, body, colours = _actor_and_room(seed, group)
  # The group's room at this clip's canvas size.
  full = Image.fromarray(room)
  size = _canvas(spec.width, spec.height)
  ratio = size[1] / full.height
  room = np.asarray(full.resize(size, Image.BILINEAR))
  shared = room, floor * ratio, body, colours
  scene, (centre, zoom, roll) = _scene(program, rng, shared, spec)
  if class_name in REVERSED:
    scene.reverse()
    centre, zoom, roll = centre[::-1], zoom[::-1], roll[::-1]

  rng = np.random.default_rng(
    (seed, _FRAME, group, CLASS_NAMES.index(class_name), clip)
  )
  n = spec.num_frames
  if frame_effects:
    # A hand-held camera: shake drifts a little from frame to frame.
    walk = np.cumsum(rng.normal(0, 0.5, (n, 2)), 0)
    walk = walk / max(1.0, np.abs(walk).max())
    centre = centre + rng.uniform(0.003, 0.015) * spec.width * walk
  out_size = (spec.width, spec.height)
  if program in ('ZoomIn', 'RotateCW'):
    frames = [
      _look(image, centre[i], zoom[i], roll[i], out_size)
      for i, image in enumerate(scene)
    ]
  else:  # A still camera: whole-pixel crops are enough, and much faster.
    corners = np.rint(centre - np.array(out_size) / 2).astype(int)
    frames = [
      image.crop((x, y, x + spec.width, y + spec.height))
      for image, (x, y) in zip(scene, corners, strict=True)
    ]
  frames = np.stack([np.asarray(image) for image in frames])
  if frame_effects:
    frames = _add_noise(frames, rng, rng.uniform(2.0, 7.0))
  return frames, spec


def _add_noise(frames, rng, sigma, pad=16):
  """Gaussian sensor noise of `sigma`, drawn from a small bank of noise
  images at random offsets (drawing every pixel anew is the slowest step)."""
  n, h, w, _ = frames.shape
  bank = np.rint(sigma * rng.standard_normal((4, h + pad, w + pad, 3)))
  bank = bank.astype(np.int16)
  picks = rng.integers(0, [4, pad, pad], (n, 3))
  out = np.empty_like(frames)
  for i, (k, dy, dx) in enumerate(picks):
    noisy = frames[i] + bank[k, dy : dy + h, dx : dx + w]
    out[i] = np.clip(noisy, 0, 255)
  return out
