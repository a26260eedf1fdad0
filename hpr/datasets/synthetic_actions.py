"""synthetic_actions: procedurally rendered human actions, built into hpr.

The framework's default dataset: it is rendered on the spot (see
synthetic_render), so hpr runs end to end with no download.
"""

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from hpr.datasets import synthetic_hard, synthetic_render

_DESCRIPTION = """\
Procedurally rendered videos of an articulated figure performing 12 actions:
{classes}.

StandUp is SitDown played backwards and LowerArms is RaiseArms played
backwards, with the same set of frames: a model that ignores frame order can
only guess between them.

Like UCF101, clips come in groups (g01..gNN): a group's clips share the actor
(body proportions, clothes) and the room (colours, texture, clutter), whatever
the class. Each clip varies in speed, phase, position, scale, facing, lighting,
distractor objects, camera shake and pixel noise. Splits are by group, so test
actors and rooms are never seen in training: {splits}.
"""


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticActionsConfig(tfds.core.BuilderConfig):
  """The size of the dataset and how hard it is.

  Attributes:
    image_size: frames are image_size x image_size.
    num_frames: frames per clip.
    num_groups: groups (actors and rooms), split about 72/12/16 % into train,
      validation and test.
    clips_per_group: clips of each class in each group.
    seed: every pixel depends on the seed and the clip's (group, class, clip).
    fps: the nominal frame rate stored with each clip.
    nuisance: how much clips vary besides the action.
    renderer: 'synthetic_render' (the figure's 12 actions at image_size and
      fps) or 'synthetic_hard' (issue 25's 8 classes, each clip with its own
      size, rate, length and codec; image_size, num_frames, fps and nuisance
      are then unused).
    flip_label_map: what a horizontal flip makes of the labels, which the
      input pipeline's random flip applies (hpr.input_pipeline.flip_policy):
      {class: class it becomes}, classes not in it keep their label; None
      means clips must not be flipped. synthetic_render's figure faces left
      or right at random, so a flip changes no class; synthetic_hard's
      rotations swap (synthetic_hard.FLIP_LABEL_MAP).
  """

  image_size: int = 64
  num_frames: int = 40
  num_groups: int = 25
  clips_per_group: int = 5
  seed: int = 0
  fps: float = 25.0
  nuisance: synthetic_render.Nuisance = synthetic_render.Nuisance()
  renderer: str = 'synthetic_render'
  flip_label_map: dict[str, str] | None = dataclasses.field(
    default_factory=dict
  )


def split_groups(num_groups: int) -> dict[str, list[int]]:
  """Groups (1-based, like UCF's gGG) of each split, disjoint and in order.

  Args:
    num_groups: how many groups there are; at least 3.

  Returns:
    {'train': [...], 'validation': [...], 'test': [...]}; 25 groups give
    1-18, 19-21 and 22-25.
  """
  if num_groups < 3:
    raise ValueError(f'need at least 3 groups, one per split; got {num_groups}')
  test = max(1, round(0.16 * num_groups))
  validation = max(1, round(0.12 * num_groups))
  train = num_groups - validation - test
  groups = list(range(1, num_groups + 1))
  return {
    'train': groups[:train],
    'validation': groups[train : train + validation],
    'test': groups[train + validation :],
  }


def _jpeg(frame: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  # No chroma subsampling: the limbs are only a few pixels wide.
  Image.fromarray(frame).save(buffer, 'JPEG', quality=90, subsampling=0)
  return buffer.getvalue()


class SyntheticActions(tfds.core.GeneratorBasedBuilder):
  """Procedurally rendered human actions (no download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'First release: 12 classes, two of them time-reversed pairs.',
  }
  BUILDER_CONFIGS = [
    SyntheticActionsConfig(
      name='default',
      description=(
        "hpr's default experiment: 64x64, 40 frames, 25 groups x 5 clips x "
        '12 classes = 1500 clips; builds in under a minute on 2 cores.'
      ),
    ),
    SyntheticActionsConfig(
      name='hard',
      description=(
        'Like default, with smaller figures, busier rooms, more distractors, '
        'shake and noise (synthetic_render.HARD).'
      ),
      nuisance=synthetic_render.HARD,
    ),
    SyntheticActionsConfig(
      name='small_video',
      description=(
        'A small real-video folder to export (synthetic_hard): 8 classes, '
        'three time-reversed pairs and two periodic, 25 groups x 2 clips = '
        '400 clips of 160x120 to 320x240 at 15-30 fps, MPEG-4 or H.264.'
      ),
      clips_per_group=2,
      renderer='synthetic_hard',
      flip_label_map=dict(synthetic_hard.FLIP_LABEL_MAP),
    ),
    SyntheticActionsConfig(
      name='tiny',
      description='For tests: 32x32, 12 frames, 5 groups x 1 clip x 12 '
      'classes = 60 clips; builds in a few seconds.',
      image_size=32,
      num_frames=12,
      num_groups=5,
      clips_per_group=1,
    ),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    splits = ', '.join(
      f'{name} g{groups[0]:02d}-g{groups[-1]:02d}'
      for name, groups in split_groups(config.num_groups).items()
    )
    size = config.image_size
    features = {
      'video': tfds.features.Video(
        shape=(None, size, size, 3), encoding_format='jpeg'
      ),
      'label': tfds.features.ClassLabel(names=_renderer(config).CLASS_NAMES),
      'group': np.int32,  # 1..num_groups (UCF's gGG).
      'clip': np.int32,  # Index within (group, class) (UCF's cCC).
      'video_id': tfds.features.Text(),  # v_<Class>_g<GG>_c<CC>.
      'fps': np.float32,
      'num_frames': np.int32,
    }
    description = _DESCRIPTION
    if config.renderer == 'synthetic_hard':
      features['video'] = tfds.features.Video(
        shape=(None, None, None, 3), encoding_format='jpeg'
      )
      # How hpr.tools.export_synthetic writes the clip: 'mpeg4' or 'libx264',
      # and the file's extension.
      features['codec'] = tfds.features.Text()
      features['extension'] = tfds.features.Text()
      description = synthetic_hard.__doc__ + '\n{classes}; {splits}.'
    return self.dataset_info_from_configs(
      description=description.format(
        classes=', '.join(_renderer(config).CLASS_NAMES), splits=splits
      ),
      features=tfds.features.FeaturesDict(features),
      supervised_keys=('video', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
      split: self._generate_examples(groups)
      for split, groups in split_groups(self.builder_config.num_groups).items()
    }

  def _generate_examples(self, groups: list[int]):
    config = self.builder_config
    if config.renderer == 'synthetic_hard':
      yield from _generate_hard(config, groups)
      return
    for group in groups:
      for class_name in synthetic_render.CLASS_NAMES:
        for clip in range(1, config.clips_per_group + 1):
          video = synthetic_render.render_clip(
            class_name,
            group,
            clip,
            seed=config.seed,
            num_frames=config.num_frames,
            image_size=config.image_size,
            nuisance=config.nuisance,
          )
          video_id = f'v_{class_name}_g{group:02d}_c{clip:02d}'
          yield (
            video_id,
            {
              # Already JPEG: TFDS stores file objects' bytes as they are.
              'video': [io.BytesIO(_jpeg(frame)) for frame in video],
              'label': class_name,
              'group': group,
              'clip': clip,
              'video_id': video_id,
              'fps': config.fps,
              'num_frames': len(video),
            },
          )


def _renderer(config: SyntheticActionsConfig):
  renderers = {
    'synthetic_render': synthetic_render,
    'synthetic_hard': synthetic_hard,
  }
  if config.renderer not in renderers:
    raise ValueError(
      f'unknown renderer {config.renderer!r}; valid: {sorted(renderers)}'
    )
  return renderers[config.renderer]


def _generate_hard(config: SyntheticActionsConfig, groups: list[int]):
  """synthetic_hard's clips, each with its own size, rate and codec."""
  for group in groups:
    for class_name in synthetic_hard.CLASS_NAMES:
      for clip in range(1, config.clips_per_group + 1):
        video, spec = synthetic_hard.render_clip(
          class_name, group, clip, seed=config.seed
        )
        video_id = f'v_{class_name}_g{group:02d}_c{clip:02d}'
        yield (
          video_id,
          {
            'video': [io.BytesIO(_jpeg(frame)) for frame in video],
            'label': class_name,
            'group': group,
            'clip': clip,
            'video_id': video_id,
            'fps': spec.fps,
            'num_frames': len(video),
            'codec': spec.codec,
            'extension': spec.extension,
          },
        )
