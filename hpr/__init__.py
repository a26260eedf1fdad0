"""hpr: human action recognition in video with JAX and Flax NNX."""

__version__ = '0.1.0'
