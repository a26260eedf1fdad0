"""Figures the core writes itself: the confusion matrix of an evaluation
(a PNG and a TensorBoard image), its reliability diagram, and the helpers
hpr.tools.plots shares.

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


RELIABILITY_SIZE = (640, 640)


def reliability_figure(calibration: dict, title: str = '') -> plt.Figure:
  """The reliability diagram of an evaluation report's `calibration`.

  Top: the accuracy of each equal-width confidence bin (bars) against the
  diagonal a calibrated model follows, as they are and with the fitted
  temperature (points at each bin's mean confidence). Bottom: how many
  videos fall in each bin.
  """
  bins = calibration['reliability']
  scaled = calibration.get('calibrated')
  num_bins = len(bins['count'])
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  centers = (edges[:-1] + edges[1:]) / 2
  width = 1.0 / num_bins

  def values(column):
    return np.array([np.nan if v is None else v for v in column], float)

  fig = figure(RELIABILITY_SIZE)
  top, bottom = fig.subplots(
    2, 1, sharex=True, gridspec_kw={'height_ratios': [3, 1]}
  )
  top.plot([0, 1], [0, 1], color='gray', linestyle='--', label='calibrated')
  top.bar(centers, np.nan_to_num(values(bins['accuracy'])), width=width,
          edgecolor='tab:blue', color='tab:blue', alpha=0.35,
          label=f'T = 1: ECE {calibration["ece"]:.3f}')  # fmt: skip
  bottom.bar(centers, bins['count'], width=width, color='tab:blue', alpha=0.35,
             label='T = 1')  # fmt: skip
  if scaled is not None:
    t = calibration['temperature']
    sb = scaled['reliability']
    top.plot(values(sb['confidence']), values(sb['accuracy']), 'o-',
             color='tab:orange',
             label=f'T = {t:.2f}: ECE {scaled["ece"]:.3f}')  # fmt: skip
    bottom.step(edges[:-1], sb['count'], where='post', color='tab:orange',
                label=f'T = {t:.2f}')  # fmt: skip
  top.set_xlim(0, 1)
  top.set_ylim(0, 1)
  top.set_ylabel('accuracy')
  top.set_title(
    f'{title or "Reliability"} ({num_bins} bins, NLL {calibration["nll"]:.3f})'
  )
  top.legend(loc='upper left', fontsize=8)
  bottom.set_xlabel('confidence (top-class probability)')
  bottom.set_ylabel('videos')
  bottom.legend(loc='upper left', fontsize=8)
  return fig


def plot_reliability(calibration: dict, path: str, title: str = '') -> str:
  """Writes the reliability diagram as a PNG; returns the path."""
  return save(reliability_figure(calibration, title), path)


def figure_to_array(fig: plt.Figure) -> np.ndarray:
  """uint8 (H, W, 3) pixels of a figure (e.g. for TensorBoard); closes it."""
  fig.canvas.draw()
  pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return pixels
