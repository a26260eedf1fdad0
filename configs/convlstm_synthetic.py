"""The notebook's ConvLSTM (4 ConvLSTM2D layers) on synthetic_actions.

  python -m hpr.main --config configs/convlstm_synthetic.py \
      --workdir /tmp/hpr/convlstm

Result (test split of synthetic_actions/default, 240 clips): 0.838,
time-reversed pairs 0.75 / 0.85, in 5 min 39 s on a 2-core CPU VM with the
dataset prepared (commit 85b490e; 0.846 in another run, docs/results.md).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'convlstm'
  # A ConvLSTM step costs several LRCN steps on a CPU: fewer epochs. The
  # input is the one this config was measured with (README.md, Results): 20
  # frames, the clip's mean frame subtracted.
  config.training.num_epochs = 8
  config.input.num_frames = 20
  config.input.normalization = 'clip_centered'
  return config
