"""LRCN (per-frame CNN -> LSTM) on synthetic_actions: the default experiment.

  python -m hpr.main --config configs/lrcn_synthetic.py --workdir /tmp/hpr/lrcn

Result (test split of synthetic_actions/default, 240 clips, best
validation checkpoint): 0.975, time-reversed pairs 1.0 / 0.95, in 4 min 15 s
on a 2-core CPU VM with the dataset prepared (commit 4a0005a, 2026-12-02);
reruns differing only in float rounding spread over 0.946-0.996
(docs/results.md).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'lrcn'
  return config
