"""8-way and within-pair accuracy, from logits or a workdir's predictions.

  python -m experiments.small_video.pairs WORKDIR [WORKDIR ...]

prints each workdir's scores, then their mean and standard deviation.

Within-pair accuracy: among the test clips of a time-reversed pair's two
classes, the fraction whose score is higher for the right one of the two
(the argmax over the pair's two classes only; chance 0.5). Reads
WORKDIR/eval/predictions.npz, which hpr's evaluation writes.
"""

import json
import sys

import numpy as np

# synthetic_actions/small_video's time-reversed pairs (synthetic_hard.REVERSED).
PAIRS = (
  ('SitDown', 'StandUp'),
  ('ZoomIn', 'ZoomOut'),
  ('RotateCW', 'RotateCCW'),
)


def scores(logits, labels, class_names) -> dict:
  """{'accuracy', 'within_pair', 'pair/<A>/<B>'...} of video scores."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  names = [str(n) for n in class_names]
  out = {'accuracy': float(np.mean(logits.argmax(1) == labels))}
  right = total = 0
  for a, b in PAIRS:
    idx = np.array([names.index(a), names.index(b)])
    mask = np.isin(labels, idx)
    pick = idx[logits[mask][:, idx].argmax(1)]
    hits = int((pick == labels[mask]).sum())
    out[f'pair/{a}/{b}'] = hits / max(1, int(mask.sum()))
    right, total = right + hits, total + int(mask.sum())
  out['within_pair'] = right / max(1, total)
  out['count'] = len(labels)
  return out


def workdir_scores(workdir: str) -> dict:
  data = np.load(f'{workdir}/eval/predictions.npz')
  return scores(data['video_logits'], data['video_labels'], data['class_names'])


def summary(results: list[dict]) -> dict:
  """Mean and sample standard deviation of each metric over runs."""
  keys = [k for k in results[0] if k != 'count']
  out = {}
  for key in keys:
    values = np.array([r[key] for r in results], float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out[key] = {'mean': float(values.mean()), 'std': std, 'n': len(values)}
  return out


if __name__ == '__main__':
  runs = [workdir_scores(path) for path in sys.argv[1:]]
  for path, result in zip(sys.argv[1:], runs, strict=True):
    print(json.dumps({path: result}))
  print(json.dumps({'mean_std': summary(runs)}, indent=2))
