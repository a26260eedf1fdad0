"""Single-frame baseline (per-frame CNN, predictions averaged over frames).

Ignores frame order, so it cannot tell the time-reversed classes of
synthetic_actions apart (SitDown/StandUp, RaiseArms/LowerArms): compare its
per-pair accuracy with LRCN's and ConvLSTM's.

  python -m hpr.main --config configs/single_frame_synthetic.py \
      --workdir /tmp/hpr/single_frame

Result: see README.md (Results).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'single_frame'
  return config
