"""Calibration of predicted confidences: ECE, NLL, reliability bins, temperature.

Pure numpy, so predict and the evaluation share it without JAX. A classifier
is calibrated when, among the clips it predicts with confidence ~p, a fraction
~p is right. Temperature scaling (Guo et al. 2017, "On calibration of modern
neural networks") divides the logits by one scalar T > 0 fitted on the
validation split; it changes confidences, never the predicted class.

`WORKDIR/calibration.json` holds the fitted temperature:
`{"temperature": T, "fitted_on": "validation", "count": N, "nll_before": ...,
"nll_after": ..., "ece_before": ..., "ece_after": ...}`.
"""

import json
import math
import os

import numpy as np

from hpr import errors

CALIBRATION_FILE = 'calibration.json'
# The usual choice since Guo et al. 2017: 15 equal-width confidence bins.
NUM_BINS = 15


def load_temperature(workdir: str) -> float | None:
  """Returns the temperature in `workdir/calibration.json`, None if absent.

  Raises:
    errors.UserError: the file exists but is not a calibration file with a
      finite, positive temperature.
  """
  path = os.path.join(workdir, CALIBRATION_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      data = json.load(f)
    temperature = float(data['temperature'])
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise errors.UserError(
      f'{path} is damaged ({type(e).__name__}: {e}); evaluate the workdir '
      'again to refit the temperature'
    ) from None
  if not math.isfinite(temperature) or temperature <= 0:
    raise errors.UserError(
      f'{path} holds temperature {temperature!r}; it must be a positive number'
    )
  return temperature


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """Softmax of `logits / temperature` over the last axis, in float64."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """Log-softmax of `logits / temperature` over the last axis, in float64."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(
  logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0
) -> float:
  """Mean negative log-likelihood of `labels` under softmax(logits / T).

  Args:
    logits: (N, C) scores.
    labels: (N,) integer classes.
    temperature: divides the logits.
  """
  labels = np.asarray(labels, np.int64)
  logp = log_softmax(logits, temperature)
  return float(-logp[np.arange(len(labels)), labels].mean())


def nll_from_probs(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean negative log-likelihood of `labels` under `probs` (N, C)."""
  labels = np.asarray(labels, np.int64)
  p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
  # A probability of exactly 0 (float underflow) would give inf.
  return float(-np.log(np.maximum(p, 1e-300)).mean())


def reliability_bins(
  probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
) -> list[dict]:
  """Groups predictions into equal-width bins of confidence.

  The confidence of a prediction is its top probability; bin b holds the
  confidences in (b / num_bins, (b + 1) / num_bins] (bin 0 also holds 0).

  Args:
    probs: (N, C) probabilities.
    labels: (N,) integer classes.
    num_bins: number of bins over [0, 1].

  Returns:
    One dict per bin: `lower`, `upper`, `count`, `confidence` (mean top
    probability in the bin) and `accuracy`; the last two are None for an
    empty bin.
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels, np.int64)
  confidence = probs.max(axis=-1)
  correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
  # ceil(c * B) - 1 puts c in (b/B, (b+1)/B]; clip keeps 0 in bin 0.
  index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0,
                  num_bins - 1)  # fmt: skip
  bins = []
  for b in range(num_bins):
    mask = index == b
    count = int(mask.sum())
    bins.append(
      {
        'lower': b / num_bins,
        'upper': (b + 1) / num_bins,
        'count': count,
        'confidence': float(confidence[mask].mean()) if count else None,
        'accuracy': float(correct[mask].mean()) if count else None,
      }
    )
  return bins


def ece(
  probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
) -> float:
  """Expected calibration error with `num_bins` equal-width bins.

  ECE = sum_b (n_b / N) * |accuracy_b - confidence_b| (Naeini et al. 2015).
  """
  total = len(labels)
  if total == 0:
    return 0.0
  error = 0.0
  for b in reliability_bins(probs, labels, num_bins):
    if b['count']:
      error += b['count'] / total * abs(b['accuracy'] - b['confidence'])
  return float(error)


def fit_temperature(
  logits: np.ndarray,
  labels: np.ndarray,
  *,
  log_range: tuple[float, float] = (-3.0, 3.0),
  num_points: int = 121,
  refinements: int = 3,
) -> float:
  """The temperature T that minimises the NLL of softmax(logits / T).

  A deterministic search over log T: a grid over `log_range`, then
  `refinements` finer grids around the best point. The NLL is convex in
  1 / T, so the grid finds the minimum to within the last grid's spacing
  (~1e-5 in log T with the defaults).

  Args:
    logits: (N, C) scores on held-out (validation) clips.
    labels: (N,) integer classes.
    log_range: natural-log bounds of the search (e^-3 ~ 0.05 to e^3 ~ 20).
    num_points: grid points per pass.
    refinements: passes after the first, each on a grid 2 steps wide
      around the previous best.

  Returns:
    The fitted temperature (1.0 when there are no clips).
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.int64)
  if len(labels) == 0:
    return 1.0
  lo, hi = log_range
  best = 0.0
  for _ in range(refinements + 1):
    grid = np.linspace(lo, hi, num_points)
    losses = [nll(logits, labels, math.exp(g)) for g in grid]
    i = int(np.argmin(losses))
    best = float(grid[i])
    step = grid[1] - grid[0]
    lo, hi = best - step, best + step
  return math.exp(best)


def calibration_summary(
  logits: np.ndarray, labels: np.ndarray, temperature: float
) -> dict:
  """The calibration file's record for `temperature` fitted on these clips."""
  before = softmax(logits)
  after = softmax(logits, temperature)
  return {
    'temperature': float(temperature),
    'fitted_on': 'validation',
    'count': int(len(labels)),
    'nll_before': nll(logits, labels),
    'nll_after': nll(logits, labels, temperature),
    'ece_before': ece(before, labels),
    'ece_after': ece(after, labels),
    'num_bins': NUM_BINS,
  }
