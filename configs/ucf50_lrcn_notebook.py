"""The notebook's LRCN on its four UCF50 classes, with a group-wise split.

Data and split as configs/ucf50_convlstm_notebook.py (UCF50 unpacked to
~/data/UCF50/<Class>/*.avi; test groups 20-25, validation groups 16-19):

  python -m hpr.main --config configs/ucf50_lrcn_notebook.py \
      --workdir /tmp/hpr/ucf50_lrcn

The notebook's LRCN: TimeDistributed Conv2D 16, 32, 64, 64 (3x3, relu,
'same') each followed by MaxPooling 4, 4, 2, 2 and Dropout 0.25 (not after
the last), Flatten, LSTM(32), Dense softmax; Adam at 1e-3, batch 4, 70
epochs, EarlyStopping on val_loss with patience 15 and the best weights
restored.

Result: not measured here (no UCF50 on the machine this was written on).
"""

from configs import default
from configs.ucf50_convlstm_notebook import notebook_data


def get_config():
  config = default.get_config()
  notebook_data(config)
  m = config.model
  m.name = 'lrcn'
  m.lrcn.conv_features = (16, 32, 64, 64)
  m.lrcn.pool_sizes = (4, 4, 2, 2)
  m.lrcn.dropout = 0.25
  m.lrcn.lstm_features = 32
  m.lrcn.readout = 'last'
  config.training.num_epochs = 70
  config.training.patience = 15
  return config
