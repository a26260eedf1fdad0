"""The notebook's ConvLSTM (4 ConvLSTM2D layers) on synthetic_actions.

  python -m hpr.main --config configs/convlstm_synthetic.py \
      --workdir /tmp/hpr/convlstm

Result: see README.md (Results).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'convlstm'
  # A ConvLSTM step costs several LRCN steps on a CPU: fewer epochs.
  config.training.num_epochs = 8
  return config
