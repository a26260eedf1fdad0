"""Procedural action videos: an articulated figure, motion programs, scenes.

Pure NumPy and PIL, so worker processes import it cheaply. A clip's
randomness comes from three streams keyed by integers, never global state, so
no clip depends on which clips were made before it or where:
  group (seed, group): the actor and the room, shared by all of a group's
    clips and classes (so the room says nothing about the class);
  clip (seed, group, program, clip): speed, phase, placement, scale, facing,
    lighting and distractor objects;
  frame (seed, group, class, clip): camera shake and pixel noise.
A reversed class (StandUp) uses its partner's (SitDown) program and clip
stream and shows its frames in reverse order: only the order tells them apart.

Geometry is in units of the actor's height, y up. Limb angles are absolute in
degrees: 0 points down and positive angles turn towards +x (forward in the
side view, the image's right in the front view).
"""

import collections
import dataclasses
import functools

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = (
  'JumpingJack', 'PushUps', 'Lunges', 'JumpRope', 'Squats', 'Waving',
  'Clapping', 'Walking', 'SitDown', 'StandUp', 'RaiseArms', 'LowerArms',
)  # fmt: skip
# Class -> the class whose motion it plays backwards.
REVERSED = {'StandUp': 'SitDown', 'LowerArms': 'RaiseArms'}

_GROUP, _CLIP, _FRAME = 1, 2, 3  # Stream tags, so that keys never collide.
_CANVAS = 192  # Drawing resolution, downsampled to the frame: anti-aliasing.


@dataclasses.dataclass(frozen=True)
class Nuisance:
  """Difficulty knobs: how much clips vary besides the action.

  The defaults are the 'default' builder config's; HARD is the 'hard' one.
  """

  scale: tuple[float, float] = (0.75, 0.92)  # Figure height / frame height.
  min_contrast: float = 0.35  # Least clothes-vs-room luminance difference.
  texture: float = 0.03  # Wall and floor texture amplitude (of 1).
  clutter: int = 1  # Most static objects in a room.
  distractors: int = 1  # Most moving objects in a clip.
  shake: float = 0.5  # Most camera shake, in frame pixels.
  noise: float = 2.0  # Most pixel noise standard deviation (of 255).
  lighting: float = 0.1  # Most relative brightness change of a clip.


# Smaller figures, busier rooms, more moving objects, more shake and noise.
HARD = Nuisance(
  scale=(0.55, 0.75),
  min_contrast=0.25,
  texture=0.08,
  clutter=4,
  distractors=2,
  shake=1.0,
  noise=4.0,
  lighting=0.15,
)


# Angles per frame: torso (from upright), head, then the left and right limbs
# as (arm, forearm, thigh, shin). Seen from the side, left is the far side.
_JOINTS = (
  'pelvis', 'waist', 'neck', 'head', 'l_shoulder', 'l_elbow', 'l_wrist',
  'l_hip', 'l_knee', 'l_ankle', 'l_toe', 'r_shoulder', 'r_elbow', 'r_wrist',
  'r_hip', 'r_knee', 'r_ankle', 'r_toe',
)  # fmt: skip
_J = {name: i for i, name in enumerate(_JOINTS)}


# Average proportions. head: radius; shoulder, hip: half widths; *_w: limb
# thickness; depth: the torso's thickness seen from the side.
_AVERAGE = dict(
  torso=0.30, neck=0.035, head=0.07, upper_arm=0.16, forearm=0.16, thigh=0.24,
  shin=0.23, foot=0.07, shoulder=0.085, hip=0.05, arm_w=0.055, leg_w=0.07,
  depth=0.13,
)  # fmt: skip
_Body = collections.namedtuple('_Body', _AVERAGE)


@dataclasses.dataclass
class _Motion:
  angles: np.ndarray  # (T, 10) degrees.
  side: bool = False  # Seen from the side (limbs overlap) or the front.
  lift: np.ndarray | float = 0.0  # Lowest point's height above the ground.
  anchor: np.ndarray | str = 'pelvis'  # Joint whose x stays put (plus dx).
  dx: np.ndarray | float = 0.0  # Horizontal travel.
  chair: bool = False
  rope: np.ndarray | None = None  # Rope turns; whole numbers: overhead.


def _pose(t, right, left=None, torso=0.0, head=0.0, mirror=False):
  """Angles (T, 10); a missing left side copies or mirrors the right one."""
  if left is None:
    left = [np.negative(a) for a in right] if mirror else right
  values = (torso, head, *left, *right)
  return np.stack([np.broadcast_to(v, t.shape) for v in values], -1)


def _cycles(t, rng, low, high):
  """Unwrapped cycle position: a random phase, low..high cycles per clip."""
  return rng.uniform() + rng.uniform(low, high) * t


def _wave(u):
  """0 at whole cycles, 1 half-way: a smooth back and forth."""
  return 0.5 - 0.5 * np.cos(2 * np.pi * u)


def _transition(t, rng):
  """0 -> 1 once, in a window placed symmetrically in time."""
  centre, width = rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.55)
  x = np.clip((t - centre) / width + 0.5, 0.0, 1.0)
  return x * x * (3 - 2 * x)


# Motion programs: (t in [0, 1], shape (T,); clip rng; body) -> _Motion.


def _jumping_jack(t, rng, body):
  u = _cycles(t, rng, 1.5, 3.0)
  s = _wave(u)  # 0: arms down, feet together; 1: arms up, feet apart.
  limbs = (8 + 160 * s, 10 + 170 * s, 3 + 20 * s, 3 + 20 * s)
  lift = 0.05 * np.abs(np.sin(2 * np.pi * u))
  return _Motion(_pose(t, limbs, mirror=True), lift=lift)


def _push_ups(t, rng, body):
  s = _wave(_cycles(t, rng, 1.5, 3.0))  # 0: arms straight; 1: chest down.
  arm, forearm = -65 * s, -5 * s  # Elbows bend backwards.
  # Tilt the straight body so that both the hands and the toes are down.
  cos = np.cos(np.radians([arm, forearm]))
  reach = body.upper_arm * cos[0] + body.forearm * cos[1]
  length = body.thigh + body.shin + 0.9 * body.torso
  tilt = np.degrees(np.arcsin(reach / length))
  limbs = (arm, forearm, tilt - 90, tilt - 90)
  angles = _pose(t, limbs, torso=90 - tilt, head=75 - tilt)
  return _Motion(angles, side=True, anchor='r_toe')


def _lunges(t, rng, body):
  u = _cycles(t, rng, 1.2, 2.2)
  s = np.sin(np.pi * u) ** 2  # 0: standing; 1: deepest.
  left = np.floor(u) % 2 == 1  # The legs take turns stepping forward.
  step, stay = (5, 12, 80 * s, 0 * s), (3, 10, -25 * s, -85 * s)
  right = [np.where(left, b, a) for a, b in zip(step, stay, strict=True)]
  left_ = [np.where(left, a, b) for a, b in zip(step, stay, strict=True)]
  angles = _pose(t, right, left_, torso=4)
  # The standing foot stays put; both feet are together between lunges.
  anchor = np.where(left, 'r_ankle', 'l_ankle')
  return _Motion(angles, side=True, anchor=anchor)


def _jump_rope(t, rng, body):
  u = _cycles(t, rng, 3.0, 5.0)
  turn = np.sin(2 * np.pi * u)
  # Hands circle by the hips; the rope passes under the feet mid-hop.
  angles = _pose(t, (12 + 4 * turn, 40 + 15 * turn, 2, 2), mirror=True)
  return _Motion(angles, lift=0.07 * np.maximum(0, turn), rope=u + 0.25)


def _squats(t, rng, body):
  s = _wave(_cycles(t, rng, 1.2, 2.5))  # 0: standing; 1: thighs level.
  arms = 10 + 75 * s  # Arms reach forward for balance.
  angles = _pose(t, (arms, arms, 90 * s, -30 * s), torso=45 * s, head=30 * s)
  return _Motion(angles, side=True, anchor='r_ankle')


def _waving(t, rng, body):
  wave = np.sin(2 * np.pi * _cycles(t, rng, 2.5, 4.5))
  right = (135 + 5 * wave, 175 + 30 * wave, 4, 4)
  return _Motion(_pose(t, right, (-6, -4, -4, -4), head=4 * wave))


def _clapping(t, rng, body):
  s = 1 - _wave(_cycles(t, rng, 3.0, 5.0))  # 1: hands together.
  arm = 35 - 5 * s
  # Forearms point up and in, so that closed hands meet in the middle.
  elbow = body.shoulder + body.upper_arm * np.sin(np.radians(arm))
  closed = 180 - np.degrees(np.arcsin(np.minimum(1, elbow / body.forearm)))
  forearm = -(172 + (closed - 172) * s)
  return _Motion(_pose(t, (arm, forearm, 4, 4), mirror=True))


def _walking(t, rng, body):
  cycles = rng.uniform(1.0, 1.6)
  u = 2 * np.pi * (rng.uniform() + cycles * t)
  # Each leg swings, its knee bent while it moves forward; arms swing against
  # the legs.
  thigh, knee = 22 * np.sin(u), 40 * np.cos(u)
  right = (-0.8 * thigh, 15 - 0.8 * thigh, thigh, thigh - np.maximum(0, knee))
  left = (0.8 * thigh, 15 + 0.8 * thigh, -thigh, np.minimum(0, knee) - thigh)
  angles = _pose(t, right, left, torso=5)
  return _Motion(angles, side=True, dx=0.35 * cycles * t)


def _sit_down(t, rng, body):
  s = _transition(t, rng)  # 0: standing; 1: seated.
  # Lean forward to bring the weight over the feet, then sit back.
  lean = 35 * np.sin(np.pi * s) + 8 * s
  arm = 25 * np.sin(np.pi * s) + 15 * s
  limbs = (arm, arm + 45 * s, 88 * s, -8 * s)
  angles = _pose(t, limbs, torso=lean, head=0.6 * lean)
  return _Motion(angles, side=True, anchor='r_ankle', chair=True)


def _raise_arms(t, rng, body):
  s = _transition(t, rng)  # 0: arms by the sides; 1: arms overhead.
  stance = rng.uniform(2, 7)
  limbs = (8 + 165 * s, 12 + 166 * s, stance, stance)
  return _Motion(_pose(t, limbs, mirror=True))


_PROGRAMS = {
  'JumpingJack': _jumping_jack, 'PushUps': _push_ups, 'Lunges': _lunges,
  'JumpRope': _jump_rope, 'Squats': _squats, 'Waving': _waving,
  'Clapping': _clapping, 'Walking': _walking, 'SitDown': _sit_down,
  'RaiseArms': _raise_arms,
}  # fmt: skip


def _direction(degrees):
  a = np.radians(degrees)
  return np.stack([np.sin(a), -np.cos(a)], -1)


def _skeleton(motion: _Motion, body: _Body) -> np.ndarray:
  """Joint positions (T, len(_JOINTS), 2), pelvis at the origin."""
  torso, head, *limbs = np.moveaxis(motion.angles, -1, 0)
  up = -_direction(-torso)
  # Seen from the side, left and right differ only in depth.
  across = _direction(torso + 90) * (0 if motion.side else 1)
  out = {'pelvis': 0 * up, 'waist': 0.3 * body.torso * up}
  out['neck'] = body.torso * up
  out['head'] = out['neck'] - (body.neck + body.head) * _direction(-head)
  for side, sign, angles in (('l', -1, limbs[:4]), ('r', 1, limbs[4:])):
    arm, forearm, thigh, shin = angles
    shoulder = 0.9 * body.torso * up + sign * body.shoulder * across
    elbow = shoulder + body.upper_arm * _direction(arm)
    out[f'{side}_shoulder'], out[f'{side}_elbow'] = shoulder, elbow
    out[f'{side}_wrist'] = elbow + body.forearm * _direction(forearm)
    out[f'{side}_hip'] = sign * body.hip * across
    out[f'{side}_knee'] = out[f'{side}_hip'] + body.thigh * _direction(thigh)
    out[f'{side}_ankle'] = out[f'{side}_knee'] + body.shin * _direction(shin)
    # Feet point forward seen from the side, outward seen from the front.
    toe = shin + 90 * (1 if motion.side else sign)
    out[f'{side}_toe'] = out[f'{side}_ankle'] + body.foot * _direction(toe)
  return np.stack([out[name] for name in _JOINTS], 1)


def _segments(side_view: bool):
  """Capsules (joint, joint, width, colour), back to front."""
  limbs = {
    s: [
      (f'{s}_{a}', f'{s}_{b}', width, colour)
      for a, b, width, colour in (
        ('hip', 'knee', 'leg', 'pants'), ('knee', 'ankle', 'leg', 'pants'),
        ('ankle', 'toe', 'foot', 'shoes'), ('shoulder', 'elbow', 'arm', 'shirt'),
        ('elbow', 'wrist', 'arm', 'sleeve'),
      )
    ]
    for s in 'lr'
  }  # fmt: skip
  trunk = [
    ('pelvis', 'neck', 'torso', 'shirt'), ('pelvis', 'waist', 'torso', 'pants'),
    ('l_hip', 'r_hip', 'leg', 'pants'), ('head', 'head', 'head', 'skin'),
  ]  # fmt: skip
  if side_view:  # The near (right) limbs in front of the trunk.
    return limbs['l'] + trunk + limbs['r']
  legs, arms = limbs['l'][:3] + limbs['r'][:3], limbs['l'][3:] + limbs['r'][3:]
  return legs + trunk + arms  # Seen from the front, arms before everything.


def _luminance(rgb):
  return float(np.dot(rgb, (0.299, 0.587, 0.114)))


def _contrasting(rng, background, min_contrast):
  """A random colour whose luminance differs enough from `background`."""
  rgb = rng.uniform(0, 1, 3)
  lum = _luminance(rgb)
  if abs(lum - background) < min_contrast:
    target = background + min_contrast * (1 if background < 0.5 else -1)
    rgb = np.clip(rgb + target - lum, 0, 1)
  return rgb


def _room(rng, size, nuisance):
  """Wall and floor, textured and cluttered: (float (S, S, 3), floor row)."""
  floor = int(size * rng.uniform(0.55, 0.72))
  y, x = np.mgrid[:size, :size] / size
  wall = rng.uniform(0.15, 0.9) + rng.uniform(-0.2, 0.2, 3)
  ground = rng.uniform(0.1, 0.8) + rng.uniform(-0.15, 0.15, 3)
  room = np.where((y < floor / size)[..., None], wall, ground)
  room *= 1 + rng.uniform(-0.15, 0.15) * (y[..., None] - 0.5)
  period = rng.uniform(0.04, 0.15)
  blotches = Image.fromarray(rng.uniform(-1, 1, (8, 8)).astype(np.float32))
  texture = [
    np.sign(np.sin(2 * np.pi * x / period)),  # Stripes.
    np.sign(np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period)),
    np.asarray(blotches.resize((size, size), Image.BILINEAR)),
  ][rng.integers(3)]
  room += nuisance.texture * rng.uniform(0.5, 1) * texture[..., None]
  image = Image.fromarray(np.uint8(np.clip(room, 0, 1) * 255))
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(0, nuisance.clutter + 1)):
    w, h = rng.uniform(0.06, 0.3, 2) * size
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, floor)
    fill = rng.integers(0, 256, 3)
    shape = draw.rectangle if rng.uniform() < 0.6 else draw.ellipse
    outline = tuple(fill // 2)
    shape((x0, y0, x0 + w, y0 + h), tuple(fill), outline, size // 60)
  return np.asarray(image) / 255, floor


@functools.lru_cache(maxsize=8)
def _actor_and_room(seed, group, size, nuisance):
  """Everything a group's clips share (treat the arrays as read-only)."""
  rng = np.random.default_rng((seed, _GROUP, group, 0, 0))
  room, floor = _room(rng, size, nuisance)
  build = rng.uniform(0.85, 1.25)  # Thickness of the limbs and trunk.
  scales = {'head': rng.uniform(0.9, 1.12)}
  scales |= dict.fromkeys(('arm_w', 'leg_w', 'depth', 'shoulder', 'hip'), build)
  body = _Body(**{
    k: v * scales.get(k, rng.uniform(0.92, 1.08)) for k, v in _AVERAGE.items()
  })  # fmt: skip
  lum = _luminance(room.mean((0, 1)))
  skin = np.array([0.98, 0.84, 0.72]) * rng.uniform(0.35, 1.0)
  shirt = _contrasting(rng, lum, nuisance.min_contrast)
  colours = {
    'skin': skin, 'shirt': shirt,
    'sleeve': shirt if rng.uniform() < 0.5 else skin,
    'pants': _contrasting(rng, lum, nuisance.min_contrast),
    'shoes': rng.uniform(0, 0.4, 3),
    'prop': _contrasting(rng, lum, 2 * nuisance.min_contrast),
  }  # fmt: skip
  return room, floor, body, colours


def _bounce(x, low, high):
  """x folded into [low, high], as if it bounced off both ends."""
  span = 2 * (high - low)
  p = (x - low) % span
  return low + np.minimum(p, span - p)


def _distractors(rng, t, view, ground, nuisance):
  """Objects moving on their own: [(corners (T, K, 2), rgb, in front)]."""
  out = []
  for _ in range(rng.integers(0, nuisance.distractors + 1)):
    r = rng.uniform(0.04, 0.08) * view
    vx = rng.choice([-1, 1]) * rng.uniform(0.2, 1.0) * view
    x = _bounce(rng.uniform(0, view) + vx * t, r, view - r)
    sides = rng.choice([3, 4, 5, 16])  # 16 sides: a ball, which bounces.
    if sides == 16:
      hops = np.pi * (rng.uniform() + rng.uniform(1.5, 4) * t)
      y = ground - r - rng.uniform(0.15, 0.4) * view * np.abs(np.sin(hops))
    else:  # A drifting, turning shape.
      y = rng.uniform(0, ground) + rng.uniform(-0.5, 0.5) * view * t
      y = _bounce(y, r, ground - r)
    turn = rng.uniform(0, 2 * np.pi) + rng.uniform(-6, 6) * t
    corners = turn[:, None] + np.linspace(0, 2 * np.pi, sides, False)
    xy = np.stack([np.cos(corners), np.sin(corners)], -1)
    xy = r * xy + np.stack([x, y], -1)[:, None]
    out.append((xy, rng.uniform(0, 1, 3), rng.uniform() < 0.3))
  return out


def _rope(points, body, turns):
  """(T, K, 2): from hand to hand, over the head or under the feet."""
  left, right = points[:, _J['l_wrist']], points[:, _J['r_wrist']]
  mid = (left + right) / 2
  top = points[:, _J['head'], 1] + body.head + 0.08
  bottom = points[:, [_J['l_toe'], _J['r_toe']], 1].min(1) - 0.03
  c = np.cos(2 * np.pi * turns)
  apex = mid.copy()
  apex[:, 1] += np.where(c > 0, top - mid[:, 1], mid[:, 1] - bottom) * c
  # A quadratic Bezier curve through both hands, with `apex` half-way.
  s = np.linspace(0, 1, 12)[:, None]
  curve = [(1 - s) ** 2, 2 * s * (1 - s), s**2]
  ends = [left[:, None], 2 * apex[:, None] - mid[:, None], right[:, None]]
  return sum(w * p for w, p in zip(curve, ends, strict=True))


def _chair(points, body, facing):
  """Capsules (from, to, width) of a chair under the last frame's pelvis."""
  px, py = points[-1, _J['pelvis']]
  seat = py - body.leg_w / 2
  back, front = px - facing * 0.14, px + facing * 0.1
  return [
    ((back, seat), (front, seat), 0.035),
    ((back, seat), (back, seat + 0.32), 0.035),
    ((back, seat), (back, 0.0), 0.03), ((front, seat), (front, 0.0), 0.03),
  ]  # fmt: skip


def _capsule(draw, a, b, width, fill):
  r = width / 2
  draw.line([tuple(a), tuple(b)], fill, max(1, round(width)))
  for x, y in (a, b):
    draw.ellipse((x - r, y - r, x + r, y + r), fill)


def _place(points, motion, body, rng, view, floor, margin, nuisance):
  """Stands the figure on the ground and fits the whole clip in the view.

  Returns:
    The joints (T, J, 2) on the ground, the function that maps such points
    to canvas pixels, its scale, and the ground's canvas row.
  """
  n = len(points)
  lowest = points[..., 1].min(1) - body.leg_w / 2
  points[..., 1] += (np.broadcast_to(motion.lift, (n,)) - lowest)[:, None]
  anchor = np.vectorize(_J.get)(np.broadcast_to(motion.anchor, (n,)))
  points[..., 0] += (np.asarray(motion.dx) - points[np.arange(n), anchor, 0])[
    :, None
  ]
  pad = body.head + body.arm_w
  low, high = points.min((0, 1)) - pad, points.max((0, 1)) + pad
  # Feet somewhere on the floor, between its far edge and the frame's bottom.
  ground = floor + rng.uniform(0.2, 0.85) * (0.97 * view + margin - floor)
  top = 0.03 * view + margin
  scale = min(
    rng.uniform(*nuisance.scale) * view,
    (ground - top) / high[1],
    0.94 * view / (high[0] - low[0]),
  )
  left = margin + 0.03 * view - low[0] * scale
  x0 = rng.uniform(left, max(left, margin + 0.97 * view - high[0] * scale))

  def to_canvas(xy):
    xy = np.asarray(xy)
    return np.stack([x0 + xy[..., 0] * scale, ground - xy[..., 1] * scale], -1)

  return points, to_canvas, scale, ground


def _scene(program, t, rng, shared, view, margin, nuisance):
  """The clip's frames in program time, before shake and noise: PIL images."""
  room, floor, body, colours = shared
  motion = _PROGRAMS[program](t, rng, body)
  facing = rng.choice([-1, 1])
  motion.dx = facing * np.asarray(motion.dx)
  world = _skeleton(motion, body) * [facing, 1]
  world, to_canvas, scale, ground = _place(
    world, motion, body, rng, view, floor, margin, nuisance
  )
  points = to_canvas(world)
  gain = 1 + rng.uniform(-1, 1) * nuisance.lighting

  def paint(rgb, shade=1.0):
    return tuple(np.uint8(np.clip(rgb * gain * shade, 0, 1) * 255))

  background = Image.fromarray(np.uint8(np.clip(room * gain, 0, 1) * 255))
  draw = ImageDraw.Draw(background)
  for a, b, width in _chair(world, body, facing) if motion.chair else []:
    _capsule(
      draw, to_canvas(a), to_canvas(b), width * scale, paint(colours['prop'])
    )
  rope = None
  if motion.rope is not None:
    rope = to_canvas(_rope(world, body, motion.rope))
  objects = _distractors(rng, t, view, ground - margin, nuisance)
  widths = {
    'arm': body.arm_w, 'leg': body.leg_w, 'foot': 0.8 * body.leg_w,
    'head': 2 * body.head,
    'torso': body.depth if motion.side else 2 * body.shoulder,
  }  # fmt: skip
  segments = [
    (_J[a], _J[b], widths[w] * scale,
     paint(colours[c], 0.7 if motion.side and a[:2] == 'l_' else 1.0))
    for a, b, w, c in _segments(motion.side)
  ]  # fmt: skip
  frames = []
  for i in range(len(t)):
    image = background.copy()
    draw = ImageDraw.Draw(image)
    behind = [(xy[i] + margin, rgb) for xy, rgb, front in objects if not front]
    ahead = [(xy[i] + margin, rgb) for xy, rgb, front in objects if front]
    for xy, rgb in behind:
      draw.polygon([tuple(p) for p in xy], paint(rgb))
    for a, b, width, fill in segments:
      _capsule(draw, points[i, a], points[i, b], width, fill)
    if rope is not None:
      width = max(1, round(0.025 * scale))
      draw.line([tuple(p) for p in rope[i]], paint(colours['prop']), width)
    for xy, rgb in ahead:
      draw.polygon([tuple(p) for p in xy], paint(rgb))
    frames.append(image)
  return frames


def render_clip(
  class_name: str,
  group: int,
  clip: int,
  *,
  seed: int = 0,
  num_frames: int = 40,
  image_size: int = 64,
  nuisance: Nuisance = Nuisance(),
  frame_effects: bool = True,
) -> np.ndarray:
  """Renders one clip of `class_name` performed by `group`'s actor.

  Args:
    class_name: one of CLASS_NAMES.
    group: the actor and room, UCF's gGG; any non-negative integer.
    clip: the clip's index within (group, class), UCF's cCC.
    seed: the dataset's seed. The clip depends on (seed, group, class, clip,
      num_frames, image_size, nuisance) only.
    num_frames: frames in the clip. The motion spans the clip whatever this
      is, so more frames means a higher frame rate.
    image_size: frames are image_size x image_size.
    nuisance: how much clips vary besides the action.
    frame_effects: camera shake and pixel noise. Without them a reversed
      class (StandUp) is exactly its partner (SitDown) played backwards.

  Returns:
    uint8 (num_frames, image_size, image_size, 3).
  """
  if class_name not in CLASS_NAMES:
    raise ValueError(f'unknown class {class_name!r}; valid: {CLASS_NAMES}')
  program = REVERSED.get(class_name, class_name)
  ss = max(2, round(_CANVAS / image_size))
  view = image_size * ss
  margin = int(np.ceil(nuisance.shake * ss)) + 1  # Room for camera shake.
  shared = _actor_and_room(seed, group, view + 2 * margin, nuisance)
  key = (seed, _CLIP, group, CLASS_NAMES.index(program), clip)
  t = np.linspace(0, 1, num_frames)
  scene = _scene(
    program, t, np.random.default_rng(key), shared, view, margin, nuisance
  )
  if class_name in REVERSED:
    scene.reverse()

  rng = np.random.default_rng(
    (seed, _FRAME, group, CLASS_NAMES.index(class_name), clip)
  )
  shake = rng.uniform(0, nuisance.shake * ss) if frame_effects else 0.0
  offsets = margin + np.rint(shake * rng.uniform(-1, 1, (num_frames, 2)))
  frames = np.stack(
    [
      np.asarray(image.crop((x, y, x + view, y + view)).reduce(ss))
      for image, (x, y) in zip(scene, offsets.astype(int), strict=True)
    ]
  ).astype(np.float32)
  if frame_effects:
    sigma = rng.uniform(0, nuisance.noise)
    frames += sigma * rng.standard_normal(frames.shape, dtype=np.float32)
  return np.uint8(np.clip(np.rint(frames), 0, 255))
