"""hpr's TFDS builders; importing this package registers them with TFDS."""

from hpr.datasets import synthetic_actions

# TFDS name -> builder, for the datasets hpr prepares itself.
BUILDERS = {'synthetic_actions': synthetic_actions.SyntheticActions}
