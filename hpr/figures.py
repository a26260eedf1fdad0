"""Figures the core writes itself: the confusion matrix of an evaluation
(a PNG and a TensorBoard image) and the helpers hpr.tools.plots shares.

Image sizes are fixed (`confusion_size`), so figures of different runs line
up.
"""

import matplotlib

matplotlib.use('Agg')  # Files only: no display needed, none opened.

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100


def confusion_size(num_classes: int) -> tuple[int, int]:
  """Pixel size of the confusion-matrix figure for `num_classes`."""
  side = max(640, 30 * num_classes + 240)
  return side, side


def figure(size: tuple[int, int]) -> plt.Figure:
  return plt.figure(
    figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout='constrained'
  )


def save(fig: plt.Figure, path: str) -> str:
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def confusion_figure(
  confusion, class_names, title: str = 'Confusion matrix'
) -> plt.Figure:
  """Rows: true class, columns: predicted; colour is the row fraction."""
  confusion = np.asarray(confusion)
  k = len(class_names)
  fig = figure(confusion_size(k))
  ax = fig.add_subplot()
  support = confusion.sum(axis=1, keepdims=True)
  rates = confusion / np.maximum(support, 1)
  image = ax.imshow(rates, cmap='Blues', vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='row fraction')
  ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
  ax.set_yticks(range(k), class_names, fontsize=8)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  if k <= 30:  # Counts stay legible up to about 30 classes.
    for i in range(k):
      for j in range(k):
        if confusion[i, j]:
          color = 'white' if rates[i, j] > 0.5 else 'black'
          ax.text(j, i, str(confusion[i, j]), ha='center', va='center',
                  fontsize=7, color=color)  # fmt: skip
  return fig


def plot_confusion(confusion, class_names, path: str, title: str = '') -> str:
  """Writes the confusion matrix as a PNG; returns the path."""
  return save(
    confusion_figure(confusion, class_names, title or 'Confusion matrix'), path
  )


def figure_to_array(fig: plt.Figure) -> np.ndarray:
  """uint8 (H, W, 3) pixels of a figure (e.g. for TensorBoard); closes it."""
  fig.canvas.draw()
  pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return pixels
