"""Single-frame baseline (per-frame CNN, predictions averaged over frames).

Ignores frame order, so it cannot tell the time-reversed classes of
synthetic_actions apart (SitDown/StandUp, RaiseArms/LowerArms): compare its
per-pair accuracy with LRCN's and ConvLSTM's.

  python -m hpr.main --config configs/single_frame_synthetic.py \
      --workdir /tmp/hpr/single_frame

Result (test split of synthetic_actions/default, 240 clips): 0.808, but
0.575 / 0.65 within the time-reversed pairs (chance 0.5), in 7 min 51 s on
a 2-core CPU VM next to other jobs (an upper bound; docs/results.md).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'single_frame'
  return config
