r"""Speed of video_folder: preparation (videos/s) and the input pipeline
(clips/s at 20x64x64), beside the LRCN training step it has to feed.

  python benchmarks/dataset_speed.py            # 360 videos of 80 frames
  python benchmarks/dataset_speed.py --videos 96 --frames 40 --clips 640

1. Renders synthetic_actions clips of --frames frames and writes them as a
   UCF-style folder of 320x240 MPEG-4 AVIs, v_<Class>_gGG_cCC.avi
   (hpr.tools.export_synthetic); not timed, and kept in --workdir for the next
   run.
2. Prepares the folder with the video_folder builder, from scratch (PyAV
   decode, 128-pixel short side, JPEG; one worker process per CPU):
   videos/s and frames/s, the whole of `download_and_prepare`.
3. Reads training batches of 32 clips of 20x64x64 from the prepared
   dataset with input_pipeline.train_batches, epoch after epoch as training
   does (the last group is the test split and the one before validation,
   so the training split has all but 24 videos), in two settings: the
   notebook's (uniform sampling, whole frame resized, pixel / 255) and the
   augmented default (random resized crop, flip, colour jitter,
   pixels in [-1, 1]): clips/s over whole epochs, each epoch's start (file
   reading, shuffle buffer, first batch) included; the first batch of the
   run, which traces the tf.data functions, is left out.
4. Times the jitted training step of the notebook's LRCN ('seed_lrcn' of
   benchmarks/train_speed.py, whose worker times it in a process of its
   own) at batch 32 on 20x64x64 clips on the same machine (median of
   --steps steps) and prints how many times faster the
   pipeline is; it must be at least 3x, so input is never the bottleneck.
"""

import argparse
import os
import platform
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

NUM_CLASSES = 12  # synthetic_actions' classes.


def make_folder(out: str, videos: int, frames: int, data_dir: str) -> int:
  """Writes `videos` synthetic videos of `frames` frames to `out` (once)."""
  from hpr.datasets import synthetic_actions
  from hpr.tools.export_synthetic import export_builder

  if os.path.isdir(out):
    return sum(len(files) for _, _, files in os.walk(out))
  config = synthetic_actions.SyntheticActionsConfig(
    name=f'bench{frames}x{videos}',
    num_frames=frames,
    num_groups=max(3, -(-videos // NUM_CLASSES)),
    clips_per_group=1,
  )
  builder = synthetic_actions.SyntheticActions(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  # Written aside and renamed, so an interrupted run leaves no half folder.
  partial = out + '.partial'
  shutil.rmtree(partial, ignore_errors=True)
  paths = export_builder(builder, partial, width=320, height=240, limit=videos)
  os.rename(partial, out)
  return len(paths)


def folder_config(root: str, data_dir: str):
  """The default config on the folder: 20x64x64 clips, batch 32; the last
  group is the test split and the one before it validation."""
  from hpr import config as config_lib
  from hpr.datasets import video_files

  config = config_lib.default_config()
  config.dataset.name = 'video_folder'
  config.dataset.data_dir = data_dir
  v = config.dataset.video_folder
  v.root = root
  groups = {
    video_files.parse_ucf_name(name)[0]
    for _, _, files in os.walk(root)
    for name in files
  }
  v.test_groups = (max(groups),)
  v.val_groups = 1
  config.input.num_frames = 20
  config.input.image_size = 64
  config.training.batch_size = 32
  config.jax_cache_dir = ''
  return config


def time_prepare(config) -> tuple[float, object]:
  """Seconds to prepare the folder from scratch, and the builder."""
  from hpr import input_pipeline
  from hpr.datasets import video_folder

  name = video_folder.config_from(config.dataset.video_folder).name
  shutil.rmtree(
    os.path.join(config.dataset.data_dir, 'video_folder', name),
    ignore_errors=True,
  )
  start = time.perf_counter()
  builder = input_pipeline.get_builder(config.dataset)
  return time.perf_counter() - start, builder


def time_pipeline(config, builder, clips: int) -> dict:
  """input_pipeline.train_batches epoch after epoch, as training reads it.

  Returns:
    'clips_per_s' over whole epochs (every epoch's start included; only
    the run's first batch, which traces the tf.data functions, left out),
    'cpu_ms_per_clip' (CPU time of the whole process, all threads, per
    clip: what a busy machine does not change much),
    'within_epoch_clips_per_s' (after each epoch's first batch),
    'epoch_startup_s' (mean seconds from an epoch's start to its first
    batch, the first epoch left out) and 'epochs'.
  """
  from hpr import input_pipeline

  per_epoch = builder.info.splits[config.dataset.train_split].num_examples
  if per_epoch < config.training.batch_size:
    raise SystemExit(
      f'the training split has {per_epoch} videos, fewer than a batch of '
      f'{config.training.batch_size}: use more --videos'
    )
  clips_spec = input_pipeline.clip_spec(config, training=True)
  seen = within = 0
  within_s = 0.0
  startups = []
  epoch, start, cpu_start = 0, None, None
  while seen < clips:
    epoch_start = time.perf_counter()
    first = None
    for batch in input_pipeline.train_batches(
      builder,
      config.dataset.train_split,
      clips_spec,
      batch_size=config.training.batch_size,
      seed=config.seed,
      epoch=epoch,
      shuffle_buffer=config.input.shuffle_buffer,
    ):
      now = time.perf_counter()
      n = len(batch['label'])
      if first is None:
        first = now
        if start is None:
          start, cpu_start = now, time.process_time()
          continue
        startups.append(now - epoch_start)
      else:
        within += n
      seen += n
    within_s += time.perf_counter() - first
    epoch += 1
  return {
    'clips_per_s': seen / (time.perf_counter() - start),
    'cpu_ms_per_clip': 1e3 * (time.process_time() - cpu_start) / seen,
    'within_epoch_clips_per_s': within / within_s,
    'epoch_startup_s': statistics.mean(startups) if startups else 0.0,
    'epochs': epoch,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--videos', type=int, default=360)
  parser.add_argument('--frames', type=int, default=80)
  parser.add_argument('--clips', type=int, default=3200, help='per setting')
  parser.add_argument('--steps', type=int, default=10, help='LRCN steps')
  parser.add_argument('--workdir', default='/tmp/hpr_dataset_speed')
  args = parser.parse_args()
  sys.stdout.reconfigure(line_buffering=True)

  from absl import logging

  logging.set_verbosity(logging.ERROR)
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')
  data_dir = os.path.join(args.workdir, 'tfds')
  root = os.path.join(args.workdir, f'videos{args.frames}x{args.videos}')
  videos = make_folder(root, args.videos, args.frames, data_dir)
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')
  print(f'load average before: {os.getloadavg()}')
  config = folder_config(root, data_dir)
  seconds, builder = time_prepare(config)
  frames = videos * args.frames
  print(
    f'prepare: {videos} videos ({frames} frames, 320x240 MPEG-4 AVI) in '
    f'{seconds:.1f} s: {videos / seconds:.1f} videos/s, '
    f'{frames / seconds:.0f} frames/s'
  )
  print(f'splits: {dict(builder.info.splits)}')

  notebook = config.copy_and_resolve_references()
  i = notebook.input
  i.random_flip, i.color_jitter, i.normalization = False, 0.0, 'unit'
  augmented = config.copy_and_resolve_references()
  augmented.input.train_crop = 'random_resized'
  rates = {}
  for name, c in (('notebook', notebook), ('augmented', augmented)):
    r = time_pipeline(c, builder, args.clips)
    rates[name] = r['clips_per_s']
    print(
      f'pipeline ({name}): {r["clips_per_s"]:.0f} clips/s over '
      f'{r["epochs"]} epochs ({r["within_epoch_clips_per_s"]:.0f} within '
      f'an epoch; {r["epoch_startup_s"]:.2f} s from the start of an epoch '
      f'to its first batch; {r["cpu_ms_per_clip"]:.2f} CPU ms per clip)'
    )
  if args.steps:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_speed import measure

    step = measure('seed_lrcn', 32, args.steps, NUM_CLASSES)['clips_per_s']
    print(f'LRCN train step (seed_lrcn, batch 32): {step:.1f} clips/s')
    for name, rate in rates.items():
      print(f'pipeline ({name}) / train step: {rate / step:.1f}x')
  print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
  main()
