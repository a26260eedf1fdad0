"""Per-class and time-reversed-pair test accuracy of a trained workdir.

  python -m experiments.synthetic_baselines.pairs WORKDIR

Reads WORKDIR/config.json, evaluates the best checkpoint on the test split
(hpr.evaluate) and prints the accuracy on each time-reversed pair: among the
clips of SitDown and StandUp, how many got their own label.
"""

import json
import os
import sys

import numpy as np


def main(workdir: str) -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from hpr import evaluate
  from hpr import workdir as workdir_lib
  from hpr.datasets import synthetic_render

  config = workdir_lib.load_config(workdir)
  result = evaluate.evaluate(config, workdir)
  confusion = np.asarray(result['confusion'])
  names = list(synthetic_render.CLASS_NAMES)
  out = {'accuracy': result['accuracy'], 'count': result['count']}
  for reverse, forward in sorted(synthetic_render.REVERSED.items()):
    idx = [names.index(forward), names.index(reverse)]
    correct = confusion[idx, idx].sum()
    out[f'{forward}/{reverse}'] = float(correct / confusion[idx].sum())
  others = [
    i
    for i in range(len(names))
    if names[i] not in synthetic_render.REVERSED
    and names[i] not in synthetic_render.REVERSED.values()
  ]
  out['other 8 classes'] = float(
    confusion[others, others].sum() / confusion[others].sum()
  )
  print(json.dumps({os.path.basename(workdir.rstrip('/')): out}))


if __name__ == '__main__':
  main(sys.argv[1])
