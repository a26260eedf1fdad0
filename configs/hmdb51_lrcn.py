"""LRCN on HMDB51, official split 1.

Data: unpack hmdb51_org.rar and then each class's .rar in it, so that
~/data/hmdb51/<class>/*.avi exist, and test_train_splits.rar to
~/data/testTrainMulti_7030_splits (<class>_test_split1..3.txt; 1 = train,
2 = test, 0 = unused). Then

  python -m hpr.main --config configs/hmdb51_lrcn.py --workdir /tmp/hpr/hmdb51

prepares the split's 5,100 videos (3,570 train, 1,530 test) once, trains
and tests. HMDB51 names carry no groups: validation is 10% of each class's
training videos, at random (seeded). Splits 2 and 3:
--config.dataset.video_folder.split_number=2.

Result: not measured here (no HMDB51 on the machine this was written on).
"""

from configs import default
from configs.ucf101_lrcn import real_video_input


def get_config():
  config = default.get_config()
  config.dataset.name = 'video_folder'
  v = config.dataset.video_folder
  v.root = '~/data/hmdb51'
  v.split = 'official'
  v.split_dir = '~/data/testTrainMulti_7030_splits'
  v.split_number = 1
  v.val_fraction = 0.1
  real_video_input(config)
  config.model.name = 'lrcn'
  return config
