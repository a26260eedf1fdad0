"""hpr's TFDS builders; importing this package registers them with TFDS."""

from hpr.datasets import synthetic_actions, video_folder

# TFDS name -> builder, for the datasets hpr prepares itself.
BUILDERS = {
  'synthetic_actions': synthetic_actions.SyntheticActions,
  'video_folder': video_folder.VideoFolder,
}
