"""video_folder: real video files (made here with PyAV) -> TFDS -> training.

One folder of 3 classes x 5 groups in several codecs and containers, plus
the awkward files the issue names: a zero-byte file, a truncated one, a text
file named .mp4, a short clip, a Matroska file named .avi, a variable frame
rate file and an odd frame size. It is prepared once for the module.
"""

import fractions
import io
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from hpr import input_pipeline
from hpr.datasets import video_files, video_folder
from hpr.errors import UserError
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASSES = ('Jump', 'Push', 'Wave')
# Class -> (codec, extension): MPEG-4 AVI (UCF's), H.264 MP4, VP9 Matroska.
CODECS = {
  'Jump': ('mpeg4', '.avi'),
  'Push': ('libx264', '.mp4'),
  'Wave': ('libvpx-vp9', '.mkv'),
}
FRAMES = 12
MIN_FRAMES = 6


def write_video(path, codec, num_frames, size=(32, 24), *, label=0, pts=None):
  """A small video whose frames show the class (a bar at label's place)
  and move (a bright column walking across); `pts` in ms gives variable
  frame rate."""
  width, height = size
  fmt = 'matroska' if path.endswith('.avi') and codec != 'mpeg4' else None
  with av.open(path, 'w', format=fmt) as container:
    stream = container.add_stream(codec, rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    if pts is not None:
      stream.codec_context.time_base = fractions.Fraction(1, 1000)
    for i in range(num_frames):
      frame = np.full((height, width, 3), 40, np.uint8)
      frame[:, (i * 3) % width] = 250
      frame[label * 6 : label * 6 + 5] = (200, 40, 40)
      vf = av.VideoFrame.from_ndarray(frame, format='rgb24')
      if pts is not None:
        vf.pts, vf.time_base = pts[i], fractions.Fraction(1, 1000)
      container.mux(stream.encode(vf))
    container.mux(stream.encode(None))


@pytest.fixture(scope='module')
def video_root(tmp_path_factory):
  """The folder, and {kind: path} of its awkward files."""
  root = tmp_path_factory.mktemp('videos')
  for label, name in enumerate(CLASSES):
    (root / name).mkdir()
    codec, ext = CODECS[name]
    for group in range(1, 6):
      path = str(root / name / f'v_{name}_g{group:02d}_c01{ext}')
      write_video(path, codec, FRAMES, label=label)
  special = {
    'zero': root / 'Jump' / 'v_Jump_g01_c02.mp4',
    'truncated': root / 'Push' / 'v_Push_g02_c02.mp4',
    'text': root / 'Wave' / 'v_Wave_g03_c02.mp4',
    'short': root / 'Jump' / 'v_Jump_g04_c02.avi',
    'lying': root / 'Wave' / 'v_Wave_g04_c03.avi',
    'vfr': root / 'Push' / 'v_Push_g03_c03.mkv',
    'odd': root / 'Jump' / 'v_Jump_g02_c03.avi',
  }
  special['zero'].write_bytes(b'')
  write_video(str(special['truncated']), 'libx264', FRAMES, label=1)
  data = special['truncated'].read_bytes()
  special['truncated'].write_bytes(data[: len(data) // 2])
  special['text'].write_text('this is not a video\n')
  write_video(str(special['short']), 'mpeg4', 3, label=0)
  write_video(str(special['lying']), 'libx264', FRAMES, label=2)
  pts = [0, 40, 60, 150, 160, 300, 310, 320, 500, 540, 560, 700]
  write_video(str(special['vfr']), 'libx264', FRAMES, label=1, pts=pts)
  write_video(str(special['odd']), 'mpeg4', FRAMES, (33, 25), label=0)
  return str(root), {k: str(v) for k, v in special.items()}


def folder_config(root, data_dir, **video_folder):
  config = tiny_config(data_dir)
  config.dataset.name = 'video_folder'
  vf = config.dataset.video_folder
  vf.root = root
  vf.short_side = 16
  vf.min_frames = MIN_FRAMES
  vf.test_groups = (5,)
  vf.val_groups = 1
  vf.num_workers = 2
  vf.update(video_folder)
  config.input.num_frames = MIN_FRAMES
  config.input.image_size = 16
  config.training.batch_size = 8
  config.training.num_epochs = 1
  return config


@pytest.fixture(scope='module')
def prepared(video_root, tmp_path_factory):
  root, special = video_root
  config = folder_config(root, str(tmp_path_factory.mktemp('tfds')))
  return config, input_pipeline.get_builder(config.dataset), special


def _examples(builder, split):
  ds = builder.as_dataset(split=split)
  return list(tfds.as_numpy(ds))


def test_quarantines_exactly_the_bad_files_with_reasons(prepared):
  _, builder, special = prepared
  quarantined = {
    q['path']: q['reason'] for q in video_folder.quarantine(builder)
  }
  bad = {special[k]: k for k in ('zero', 'truncated', 'text')}
  assert set(quarantined) == set(bad)
  assert 'empty file' in quarantined[special['zero']]
  assert 'cannot read' in quarantined[special['text']]
  assert quarantined[special['truncated']]
  meta = builder.info.metadata
  assert meta['num_quarantined'] == 3
  assert meta['num_short'] == 1 and meta['num_dropped_short'] == 0
  total = sum(s.num_examples for s in builder.info.splits.values())
  assert total == 15 + 4  # 15 regular videos, short, lying, vfr, odd.


def test_examples_carry_the_folder_metadata(prepared):
  _, builder, special = prepared
  examples = {}
  for split in builder.info.splits:
    for ex in _examples(builder, split):
      examples[ex['path'].decode()] = ex
  names = builder.info.features['label'].names
  assert tuple(names) == CLASSES
  for ex in examples.values():
    name = ex['class_name'].decode()
    assert names[ex['label']] == name
    assert ex['video_id'].decode().startswith(f'{name}/v_{name}_g')
    assert 1 <= ex['group'] <= 5 and ex['clip'] >= 1
    assert min(ex['video'].shape[1:3]) == 16  # short_side.
  short = examples[special['short']]
  assert short['num_frames'] == MIN_FRAMES and short['source_frames'] == 3
  # 'loop': the 3 frames play twice.
  np.testing.assert_array_equal(short['video'][:3], short['video'][3:])
  assert examples[special['lying']]['source_frames'] == FRAMES
  assert examples[special['vfr']]['num_frames'] == FRAMES
  odd = examples[special['odd']]
  assert (odd['width'], odd['height']) == (33, 25)
  assert odd['video'].shape[1:3] == (16, 21)


def test_grouped_split_shares_no_group(prepared):
  _, builder, _ = prepared
  groups = {
    split: {int(ex['group']) for ex in _examples(builder, split)}
    for split in ('train', 'validation', 'test')
  }
  assert groups['test'] == {5}
  assert groups['validation'] == {4}  # The last of the training groups.
  assert groups['train'] == {1, 2, 3}


def test_prepared_once_then_reused(prepared, monkeypatch):
  config, builder, _ = prepared

  def fail(*args, **kwargs):
    raise AssertionError('prepared again')

  monkeypatch.setattr(video_folder.VideoFolder, 'download_and_prepare', fail)
  again = input_pipeline.get_builder(config.dataset)
  assert again.data_dir == builder.data_dir


def test_preparation_parameters_name_the_config(video_root, tmp_path):
  root, _ = video_root
  base = folder_config(root, str(tmp_path))
  name = video_folder.config_from(base.dataset.video_folder).name
  assert name.startswith(os.path.basename(root).lower()[:4])
  workers = folder_config(root, str(tmp_path), num_workers=1)
  assert video_folder.config_from(workers.dataset.video_folder).name == name
  for change in ({'short_side': 32}, {'classes': ('Jump',)}, {'fold': 2}):
    other = folder_config(root, str(tmp_path), **change)
    assert video_folder.config_from(other.dataset.video_folder).name != name


@pytest.mark.slow
def test_training_and_three_crop_test_run_on_the_prepared_folder(
  prepared, tmp_path
):
  from hpr import train

  config, builder, _ = prepared
  config = config.copy_and_resolve_references()
  config.eval.num_test_clips = 2
  config.eval.num_test_crops = 3
  config.input.train_crop = 'random_resized'
  result = train.train_and_evaluate(config, str(tmp_path))
  num_test = builder.info.splits['test'].num_examples
  assert result['count'] == num_test
  with open(tmp_path / 'eval' / 'report.json') as f:
    protocol = json.load(f)['protocol']
  assert protocol['views'] == {'temporal': 2, 'spatial': 3}
  assert protocol['num_clips'] == 6 * num_test
  assert protocol['dataset'] == 'video_folder'


def test_a_class_whose_files_all_fail_stops_preparation(tmp_path):
  root = tmp_path / 'videos'
  for name in ('Good', 'Broken'):
    (root / name).mkdir(parents=True)
  for group in (1, 2, 3):
    write_video(str(root / 'Good' / f'v_Good_g0{group}_c01.avi'), 'mpeg4', 8)
    (root / 'Broken' / f'v_Broken_g0{group}_c01.avi').write_text('junk')
  config = folder_config(str(root), str(tmp_path / 'tfds'), num_workers=1)
  config.dataset.video_folder.test_groups = (3,)
  with pytest.raises(UserError, match='Broken'):
    input_pipeline.get_builder(config.dataset)


@pytest.mark.parametrize(
  'setting, message',
  [
    ({'root': '/no/such/folder'}, 'no such folder: /no/such/folder'),
    ({'root': ''}, 'dataset.video_folder.root is empty'),
    ({'classes': ('Jump', 'Swim')}, 'no folder for Swim'),
    ({'test_groups': (9,)}, 'no videos of group(s) [9]'),
    ({'split': 'stratified'}, 'would put clips of one group'),
  ],
)
def test_bad_settings_are_one_line_errors(
  video_root, tmp_path, setting, message
):
  root, _ = video_root
  config = folder_config(root, str(tmp_path), num_workers=1)
  config.dataset.video_folder.update(setting)
  with pytest.raises(UserError) as e:
    input_pipeline.get_builder(config.dataset)
  assert message in str(e.value) and '\n' not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize(
  'flags, message',
  [
    (
      ['--config.dataset.video_folder.root=/no/such/UCF50'],
      'dataset.video_folder.root: no such folder: /no/such/UCF50',
    ),
    (
      ["--config.dataset.video_folder.classes=('Jump','Swim')"],
      'dataset.video_folder.classes: no folder for Swim in ',
    ),
  ],
)
def test_cli_user_mistakes_are_one_line_errors(
  video_root, tmp_path, flags, message
):
  root, _ = video_root
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'hpr.main',
      '--config=configs/ucf50_lrcn_notebook.py',
      f'--workdir={tmp_path / "w"}',
      f'--config.dataset.video_folder.root={root}',
      f'--config.dataset.data_dir={tmp_path / "tfds"}',
      *flags,
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
    # One CPU device, as a user has (the notebook config's batch is 4).
    env={**os.environ, 'XLA_FLAGS': ''},
  )
  assert run.returncode == 1, run.stderr[-2000:]
  assert (
    run.stderr.strip().splitlines()[-1].startswith(f'hpr: error: {message}')
  )
  assert 'Traceback' not in run.stderr
  if 'root' in message:  # Checked before TFDS makes a directory for it.
    assert not (tmp_path / 'tfds' / 'video_folder').exists()


@pytest.fixture(scope='module')
def mixed_root(tmp_path_factory):
  """UCF-named videos, 2 clips of each class and group, and one video whose
  name has no group."""
  root = tmp_path_factory.mktemp('mixed')
  for label, name in enumerate(('Jump', 'Wave')):
    (root / name).mkdir()
    for group in (1, 2, 3, 4):
      for clip in (1, 2):
        path = root / name / f'v_{name}_g{group:02d}_c{clip:02d}.avi'
        write_video(str(path), 'mpeg4', MIN_FRAMES, label=label)
  write_video(str(root / 'Wave' / 'waving_at_home.avi'), 'mpeg4', MIN_FRAMES)
  return str(root)


def test_stratified_split_of_a_ucf_folder_with_one_ungrouped_file(
  mixed_root, tmp_path, caplog
):
  config = folder_config(
    mixed_root,
    str(tmp_path / 'tfds'),
    num_workers=1,
    split='stratified',
    test_fraction=0.25,
    val_fraction=0.25,
  )
  with pytest.raises(UserError) as e:
    input_pipeline.get_builder(config.dataset)
  message = str(e.value)
  assert 'leaky split' in message and '(class, group) pairs' in message
  assert 'Wave/waving_at_home.avi' in message and '\n' not in message
  # Accepted with the flag, with the leak counted in the warning and the
  # dataset's metadata.
  config.dataset.video_folder.allow_leaky_split = True
  with caplog.at_level('WARNING'):
    builder = input_pipeline.get_builder(config.dataset)
  pairs = {}
  for split in ('train', 'validation', 'test'):
    for ex in _examples(builder, split):
      if ex['group']:
        key = (ex['class_name'].decode(), int(ex['group']))
        pairs.setdefault(key, set()).add(split)
  leaked = sum(len(sides) > 1 for sides in pairs.values())
  assert leaked > 0
  assert builder.info.metadata['num_shared_pairs'] == leaked
  assert f'{leaked} (class, group) pairs' in caplog.text


def test_empty_root_names_the_layout(tmp_path):
  (tmp_path / 'videos').mkdir()
  config = folder_config(str(tmp_path / 'videos'), str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match='holds no class folders'):
    input_pipeline.get_builder(config.dataset)


def test_jpeg_ratio_decodes_as_small_as_the_crops_allow():
  config = folder_config('/videos', '/tfds')
  config.dataset.video_folder.short_side = 128
  config.input.image_size = 64
  i = config.input

  def ratio(training=True):
    return input_pipeline.jpeg_ratio(config, training=training)

  assert ratio() == 2  # 'resize': a 64-pixel short side is enough.
  i.image_size = 32
  assert ratio() == 4
  i.image_size, i.train_crop = 64, 'random_resized'
  # A box of 40% of the area is 0.63 of the side: 101 pixels are needed.
  assert ratio() == 1 and ratio(training=False) == 2
  i.train_crop, i.scale_jitter = 'scale_jitter', (1.0, 1.5)
  assert ratio() == 1
  config.dataset.video_folder.short_side = 256
  assert ratio() == 2
  config.dataset.name = 'synthetic_actions/tiny'
  assert ratio() == 0  # Other datasets: format detected, full size.


@pytest.mark.parametrize(
  'rotation, corner', [(90, (1, 0)), (-90, (0, 1)), (180, (1, 1))]
)
def test_rotation_metadata_turns_frames_upright(tmp_path, rotation, corner):
  # A phone-style file: 32x24 frames with a display rotation; a white block
  # in the stored frames' top-left corner.
  path = str(tmp_path / f'rotated{rotation}.mp4')
  with av.open(path, 'w') as container:
    stream = container.add_stream('mpeg4', rate=25)
    stream.width, stream.height, stream.pix_fmt = 32, 24, 'yuv420p'
    stream.set_display_rotation(rotation)
    for _ in range(4):
      frame = np.zeros((24, 32, 3), np.uint8)
      frame[:6, :8] = 255
      vf = av.VideoFrame.from_ndarray(frame, format='rgb24')
      container.mux(stream.encode(vf))
    container.mux(stream.encode(None))
  options = video_files.EncodeOptions(short_side=0, min_frames=0)
  result = video_files.encode_video((path, options))
  assert result['status'] == 'ok'
  upright = (24, 32) if rotation == 180 else (32, 24)  # (height, width)
  assert (result['height'], result['width']) == upright
  first = np.asarray(Image.open(io.BytesIO(result['frames'][0])))
  assert first.shape[:2] == upright
  # Display rotation is counterclockwise: 90 takes the block to the
  # bottom-left, -90 to the top-right, 180 to the bottom-right.
  rows, cols = np.nonzero(first[..., 0] > 200)
  assert (rows.mean() > upright[0] / 2, cols.mean() > upright[1] / 2) == (
    bool(corner[0]),
    bool(corner[1]),
  )


def test_short_videos_follow_the_policy(tmp_path):
  path = str(tmp_path / 'v_Jump_g01_c01.avi')
  write_video(path, 'mpeg4', 3)
  for policy, status in (('drop', 'dropped'), ('repeat_last', 'short')):
    options = video_files.EncodeOptions(
      short_side=16, min_frames=5, short_video=policy
    )
    result = video_files.encode_video((path, options))
    assert result['status'] == status and result['source_frames'] == 3
  assert len(result['frames']) == 5
  assert result['frames'][2:] == [result['frames'][2]] * 3


def test_counts_are_saved_in_the_dataset_info(prepared):
  _, builder, _ = prepared
  # Read back from disk, as a later run sees them.
  meta = tfds.builder_from_directory(builder.data_dir).info.metadata
  assert meta['num_quarantined'] == 3 and meta['num_short'] == 1
  assert meta['num_files'] == 15 + 7 and meta['short_video_policy'] == 'loop'


def test_pad_frames_policies():
  assert video_files.pad_frames([1, 2, 3], 7, 'loop') == [1, 2, 3, 1, 2, 3, 1]
  assert video_files.pad_frames([1, 2], 4, 'repeat_last') == [1, 2, 2, 2]
  assert video_files.pad_frames([1, 2, 3], 2, 'loop') == [1, 2, 3]


def test_ucf_names():
  assert video_files.parse_ucf_name('v_JumpRope_g08_c03.avi') == (8, 3)
  assert video_files.parse_ucf_name('v_Apply_Eye_g25_c07.mp4') == (25, 7)
  assert video_files.parse_ucf_name('April_09_brush_hair_u_nm.avi') == (0, 0)


def test_export_synthetic_writes_a_ucf_folder(data_dir, tmp_path):
  from hpr.tools import export_synthetic

  paths = export_synthetic.export(
    str(tmp_path), 'synthetic_actions/tiny', data_dir=data_dir, limit=3
  )
  assert len(paths) == 3
  for path in paths:
    class_name = os.path.basename(os.path.dirname(path))
    assert os.path.basename(path).startswith(f'v_{class_name}_g')
    group, clip = video_files.parse_ucf_name(path)
    assert group >= 1 and clip >= 1
    with av.open(path) as container:
      frames = list(container.decode(video=0))
    assert len(frames) == 12 and frames[0].width == 32
