"""LRCN (per-frame CNN -> LSTM) on synthetic_actions: the default experiment.

  python -m hpr.main --config configs/lrcn_synthetic.py --workdir /tmp/hpr/lrcn

Result: see README.md (Results).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'lrcn'
  return config
