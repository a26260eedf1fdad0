"""Metrics: NNX accumulators for training, exact NumPy metrics for evaluation,
and the writers (clu: TensorBoard + console; metrics.jsonl for plots)."""

import json
import os
from collections.abc import Mapping

import numpy as np
from absl import logging
from flax import nnx

from hpr import workdir as workdir_lib
from hpr.errors import UserError


def train_metrics() -> nnx.MultiMetric:
  """Running mean of the training loss and accuracy (reduced inside jit)."""
  return nnx.MultiMetric(
    loss=nnx.metrics.Average('loss'), accuracy=nnx.metrics.Accuracy()
  )


def log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def classification_metrics(
  logits: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict:
  """Exact metrics of a whole split (no padding rows).

  Args:
    logits: float (N, K) unnormalised scores (or log-probabilities).
    labels: int (N,) true classes.
    num_classes: K.

  Returns:
    loss (mean cross-entropy), accuracy (top-1), top5 accuracy (top-k with
    k = min(5, K)), mean_class_accuracy (over classes present), per_class
    accuracy (NaN for absent classes), the confusion matrix
    (rows: true, columns: predicted) and the count N.
  """
  labels = labels.astype(np.int64)
  logp = log_softmax(logits.astype(np.float64))
  pred = logp.argmax(axis=-1)
  k = min(5, num_classes)
  topk = np.argsort(-logp, axis=-1, kind='stable')[:, :k]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, pred), 1)
  support = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.diag(confusion) / support
  n = len(labels)
  return {
    'loss': float(-logp[np.arange(n), labels].mean()) if n else float('nan'),
    'accuracy': float((pred == labels).mean()) if n else float('nan'),
    'top5': float((topk == labels[:, None]).any(-1).mean())
    if n
    else float('nan'),
    'mean_class_accuracy': float(np.nanmean(per_class))
    if support.any()
    else float('nan'),
    'per_class': per_class.tolist(),
    'confusion': confusion.tolist(),
    'count': n,
  }


class MetricLogger:
  """Writes scalars to clu's writers and appends them to metrics.jsonl.

  Only process 0 writes files; other processes just log.
  """

  def __init__(self, workdir: str, *, is_main: bool):
    # Late: clu's writers import TensorFlow, which the train and eval
    # steps (benchmarks/train_speed.py on a GPU image) do not need.
    from clu import metric_writers

    self.writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main
    )
    self.path = os.path.join(workdir, 'metrics.jsonl') if is_main else None

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self.writer.write_scalars(step, scalars)
    if self.path:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, **scalars}) + '\n')

  def truncate_after(self, step: int) -> None:
    """Drops what a resumed run writes again: records beyond `step` and the
    final test results. The file is replaced atomically."""
    if not self.path or not os.path.exists(self.path):
      return
    keep = [
      json.dumps(r) + '\n'
      for r in read_jsonl(self.path)
      if r['step'] <= step and not any(k.startswith('test_') for k in r)
    ]
    workdir_lib.write_atomic(self.path, ''.join(keep))

  def flush(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics.jsonl file.

  A torn last line (a run killed while writing it) is dropped with a
  warning; a damaged line before it is an error.

  Raises:
    UserError: a line other than the last is not a JSON record.
  """
  with open(path, 'rb') as f:
    lines = f.read().decode(errors='replace').splitlines()
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or 'step' not in record:
        raise ValueError('not a record with a step')
    except ValueError as e:
      if all(not rest.strip() for rest in lines[number:]):
        logging.warning(
          'dropping the torn last line %d of %s (%s)', number, path, e
        )
        break
      raise UserError(f'{path} is damaged at line {number} ({e})') from None
    records.append(record)
  return records
