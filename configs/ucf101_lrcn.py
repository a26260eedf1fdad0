"""LRCN on UCF101, official split 1.

Data: unpack UCF101.rar to ~/data/UCF-101/<Class>/*.avi and
UCF101TrainTestSplits-RecognitionTask.zip to ~/data/ucfTrainTestlist
(classInd.txt, trainlist01..03.txt, testlist01..03.txt). Then

  python -m hpr.main --config configs/ucf101_lrcn.py --workdir /tmp/hpr/ucf101

prepares the 13,320 videos once (frames with a 128-pixel short side, at
most 64 per video evenly spaced; hours on 2 cores, see benchmarks/README.md
for videos/s), trains and tests on testlist01 (3,783 videos) with 3 clips
per video. Splits 2 and 3: --config.dataset.video_folder.split_number=2.
Validation is carved from the training groups (the last 3 of groups 8-25),
so no actor is in two splits.

Result: not measured here (no UCF101 on the machine this was written on).
"""

from configs import default


def real_video_input(config) -> None:
  """Input settings for real videos: crops, flips, TSN sampling."""
  i = config.input
  i.num_frames = 20
  i.image_size = 64
  i.train_sampling = i.eval_sampling = 'segments'
  i.train_crop = 'random_resized'
  i.eval_crop = 'center'
  i.color_jitter = 0.2
  # Plain [-1, 1] pixels (as the default), not 'clip_centered': real videos
  # move the camera, so subtracting the clip's mean frame removes no
  # background.
  i.normalization = 'centered'
  v = config.dataset.video_folder
  v.short_side = 128
  v.max_frames = 64
  v.min_frames = 20
  v.short_video = 'loop'
  t = config.training
  t.batch_size = 32
  t.num_epochs = 30
  t.monitor = 'val_accuracy'
  t.patience = 6
  config.eval.num_test_clips = 3


def get_config():
  config = default.get_config()
  config.dataset.name = 'video_folder'
  v = config.dataset.video_folder
  v.root = '~/data/UCF-101'
  v.split = 'official'
  v.split_dir = '~/data/ucfTrainTestlist'
  v.split_number = 1
  v.val_groups = 3
  real_video_input(config)
  config.model.name = 'lrcn'
  return config
