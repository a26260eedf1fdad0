"""Prediction on video files: streaming equals the model on each window,
annotated copies keep every frame, and bad inputs give one-line errors."""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

import av
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from PIL import Image

from hpr import models, video_io
from hpr.datasets import synthetic_render
from hpr.errors import UserError
from hpr.tools import predict, streaming
from hpr.train_state import build_model
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(__file__))
SIZE = (80, 60)  # (width, height) of the generated videos.


def _model(name: str, **kwargs) -> nnx.Module:
  small = {
    'lrcn': {'conv_features': (4, 8), 'pool_sizes': (2, 2), 'lstm_features': 8},
    'single_frame': {'conv_features': (4, 8), 'pool_sizes': (2, 2)},
    'convlstm': {'filters': (4, 4)},
  }[name]
  model = models.build_model(
    name,
    {**small, **kwargs},
    num_classes=5,
    input_shape=(6, 32, 32, 3),
    rngs=nnx.Rngs(0),
  )
  model.eval()
  return model


def _stream(model, frames, window, stride, frame_step, chunk=4):
  """Runs `streaming` over `frames` chunk by chunk, as predict does."""
  stream = streaming.streaming_model(model, batch=4)
  queue = streaming.WindowQueue(window, frame_step)
  ends_all, logits = [], []
  for start in range(0, len(frames), chunk):
    part = frames[start : start + chunk]
    queue.push(stream.encode(part))
    ends = streaming.window_ends(start + len(part), window, stride, frame_step)
    ends = ends[ends >= start]
    if len(ends):
      logits.append(stream.classify_at(queue.cache, queue.indices(ends)))
      np.testing.assert_allclose(
        logits[-1], stream.classify(queue.windows(ends)), atol=1e-6
      )
      ends_all.extend(ends)
  return stream, queue, np.asarray(ends_all), np.concatenate(logits)


@pytest.mark.parametrize(
  'name,kwargs,window,stride,frame_step',
  [
    ('lrcn', {}, 6, 1, 1),
    ('lrcn', {'readout': 'mean'}, 4, 3, 2),
    ('single_frame', {}, 5, 2, 1),
    ('convlstm', {}, 6, 2, 1),
    ('convlstm', {'head': 'avgpool'}, 4, 1, 2),
  ],
)
def test_streaming_equals_the_model_on_every_window(
  name, kwargs, window, stride, frame_step
):
  model = _model(name, **kwargs)
  frames = np.random.default_rng(0).random((17, 32, 32, 3), np.float32)
  stream, _, ends, logits = _stream(model, frames, window, stride, frame_step)
  span = (window - 1) * frame_step
  np.testing.assert_array_equal(ends, np.arange(span, 17, stride))
  windows = np.stack([frames[e - span : e + 1 : frame_step] for e in ends])
  np.testing.assert_allclose(logits, model(windows), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(
    stream(windows[:2]), model(windows[:2]), atol=1e-5, rtol=1e-5
  )


def test_short_video_window_repeats_the_last_frame():
  model = _model('lrcn')
  frames = np.random.default_rng(1).random((3, 32, 32, 3), np.float32)
  stream = streaming.streaming_model(model)
  queue = streaming.WindowQueue(6)
  queue.push(stream.encode(frames))
  assert len(streaming.window_ends(3, 6, 1)) == 0
  padded = frames[[0, 1, 2, 2, 2, 2]][None]
  np.testing.assert_allclose(
    stream.classify_at(queue.cache, queue.padded_indices()),
    model(padded),
    atol=1e-5,
  )


def _write_video(path, class_name='Waving', num_frames=45, fps=25.0):
  clip = synthetic_render.render_clip(
    class_name, 30, 1, num_frames=num_frames, image_size=64
  )
  frames = [np.asarray(Image.fromarray(f).resize(SIZE)) for f in clip]
  video_io.write_video(str(path), frames, fps)
  return str(path)


def _preprocess(frames, size):
  # More than 2x smaller: area averaging (video_ops.resize_frames).
  assert max(frames.shape[1:3]) > 2 * size
  video = tf.image.resize(frames, [size, size], 'area')
  return tf.cast(video, tf.float32).numpy()


def _normalize(clips, mode):
  """Clips (B, T, S, S, 3) of pixel values as input.normalization says."""
  if mode == 'clip_centered':
    return (clips - clips.mean(axis=1, keepdims=True)) / 64.0
  return clips / 255.0 if mode == 'unit' else clips / 127.5 - 1.0


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _timeline(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _check_annotation(predictor, video, result, stride):
  """Output video like the input; timeline rows = model on each window."""
  frames, fps = video_io.read_video(video)
  out, out_fps = video_io.read_video(result['annotated'])
  assert out.shape == frames.shape and out_fps == pytest.approx(fps)
  # The label box is drawn top left; the rest of the frame is the video.
  assert np.abs(out[:, :6, :30].astype(int) - frames[:, :6, :30]).mean() > 20
  assert np.abs(out[:, 40:, 40:].astype(int) - frames[:, 40:, 40:]).mean() < 8
  with av.open(result['annotated']) as container:
    assert not container.streams.audio
    codec = container.streams.video[0].codec_context
    assert codec.name in ('h264', 'mpeg4') and codec.pix_fmt == 'yuv420p'

  rows = _timeline(result['timeline'])
  assert [int(r['frame']) for r in rows] == list(range(len(frames)))
  x = _preprocess(frames, predictor.config.input.image_size)
  window = predictor.config.input.num_frames
  ends = sorted({int(r['window_end']) for r in rows})
  assert ends == list(range(window - 1, len(frames), stride))
  mode = predictor.config.input.normalization
  windows = np.stack([x[e - window + 1 : e + 1] for e in ends])
  probs = _softmax(predictor.module(_normalize(windows, mode)))
  by_end = dict(zip(ends, probs, strict=True))
  for r in rows:
    p = by_end[int(r['window_end'])]
    assert int(r['window_start']) == int(r['window_end']) - window + 1
    # The latest window that ends at or before the frame (the first
    # window for the frames before it).
    lag = int(r['frame']) - int(r['window_end'])
    assert 0 <= lag < stride or (lag < 0 and int(r['window_end']) == ends[0])
    assert r['label'] == predictor.class_names[int(np.argmax(p))]
    assert float(r['confidence']) == pytest.approx(p.max(), abs=1e-4)

  # The whole-video prediction: one clip sampled as the test split is.
  idx = predictor.clip_indices(len(frames))
  whole = _softmax(predictor.module(_normalize(x[idx][None], mode)))[0]
  top = result['top_k']
  assert [t['class'] for t in top] == [
    predictor.class_names[k] for k in np.argsort(-whole)[: len(top)]
  ]
  np.testing.assert_allclose(
    [t['confidence'] for t in top], np.sort(whole)[::-1][: len(top)], atol=1e-5
  )


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  d = tmp_path_factory.mktemp('videos')
  return {
    'wave': _write_video(d / 'wave.mp4'),
    'squat': _write_video(d / 'squat.mp4', 'Squats', 30, fps=30000 / 1001),
    'short': _write_video(d / 'short.mp4', num_frames=3),
  }


def test_preprocess_crops_as_the_eval_pipeline(trained_workdir):
  predictor = predict.load_predictor(trained_workdir[1])
  i = predictor.config.input
  i.normalization = 'unit'
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, SIZE[1], SIZE[0], 3), dtype=np.uint8)
  size = i.image_size
  whole = predictor.preprocess(frames)
  np.testing.assert_allclose(
    whole, _preprocess(frames, size) / 255.0, atol=1e-5
  )
  i.eval_crop = 'center'
  # The central square of the short side (an 80x60 frame: columns 10..69).
  left = (SIZE[0] - SIZE[1]) // 2
  square = frames[:, :, left : left + SIZE[1]]
  # 60 -> 32 is less than 2x: plain bilinear (video_ops.resize_frames).
  expected = tf.image.resize(square, [size, size]).numpy() / 255.0
  np.testing.assert_allclose(predictor.preprocess(frames), expected, atol=1e-5)


def test_predict_and_annotate_trained_lrcn(trained_workdir, videos, tmp_path):
  predictor = predict.load_predictor(trained_workdir[1])
  assert predictor.config.model.name == 'lrcn'
  for name, stride in (('wave', 1), ('squat', 4)):
    result = predict.predict_video(
      predictor,
      videos[name],
      top_k=3,
      annotate=str(tmp_path / f'{name}.mp4'),
      stride=stride,
    )
    assert (result['width'], result['height']) == SIZE
    assert result['timeline'] == str(tmp_path / f'{name}.csv')
    _check_annotation(predictor, videos[name], result, stride)


@pytest.mark.parametrize('normalization', ['unit', 'clip_centered'])
def test_convlstm_predictor_recomputes_windows_exactly(
  data_dir, videos, tmp_path, normalization
):
  # 'unit' takes the per-frame cache of the first layer's input convolution;
  # 'clip_centered' runs the whole model on every centred window.
  config = tiny_config(data_dir, 'convlstm')
  config.input.normalization = normalization
  model = build_model(config, 12)
  model.eval()
  predictor = predict.Predictor(
    config,
    list(synthetic_render.CLASS_NAMES),
    0,
    streaming.streaming_model(
      model, center_windows=normalization == 'clip_centered'
    ),
    model,
  )
  result = predict.predict_video(
    predictor, videos['squat'], annotate=str(tmp_path / 'c.mp4'), stride=2
  )
  _check_annotation(predictor, videos['squat'], result, 2)


def test_short_video_policy(trained_workdir, videos, tmp_path):
  predictor = predict.load_predictor(trained_workdir[1])
  out = str(tmp_path / 'short.mp4')
  result = predict.predict_video(predictor, videos['short'], annotate=out)
  assert result['num_frames'] == 3
  assert video_io.read_video(out)[0].shape == (3, SIZE[1], SIZE[0], 3)
  rows = _timeline(result['timeline'])
  assert len(rows) == 3 and {r['window_end'] for r in rows} == {'2'}
  os.remove(out)
  with pytest.raises(UserError, match='has 3 frames, fewer than the 6'):
    predict.predict_video(
      predictor, videos['short'], annotate=out, short_video='error'
    )
  assert not os.path.exists(out)  # No half-written output is left.


@pytest.mark.slow
def test_cli_json_and_annotate_directory(trained_workdir, videos, tmp_path):
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'hpr.tools.predict',
      f'--workdir={trained_workdir[1]}',
      videos['wave'],
      videos['squat'],
      '--json',
      '--top_k=2',
      f'--annotate={tmp_path / "out"}',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr
  report = json.loads(run.stdout)
  assert report['model'] == 'lrcn'
  got = report['videos']
  assert [v['num_frames'] for v in got] == [45, 30]
  assert all(len(v['top_k']) == 2 for v in got)
  assert os.path.exists(tmp_path / 'out' / 'wave.annotated.mp4')
  assert len(_timeline(tmp_path / 'out' / 'squat.annotated.csv')) == 30


def test_table_output(trained_workdir, videos, capsys):
  predict.main(['--workdir', trained_workdir[1], videos['wave']])
  out = capsys.readouterr().out
  assert out.startswith(f'{videos["wave"]}: 45 frames, 80x60, 25.00 fps')
  assert len([line for line in out.splitlines() if '%' in line]) == 5


def _bad_workdir(trained_workdir, tmp_path, num_classes):
  workdir = tmp_path / 'other'
  workdir.mkdir(parents=True)
  shutil.copy(os.path.join(trained_workdir[1], 'config.json'), workdir)
  with open(workdir / 'class_names.json', 'w') as f:
    json.dump([f'c{i}' for i in range(num_classes)], f)
  return workdir


def test_bad_inputs_are_user_errors(trained_workdir, videos, tmp_path):
  workdir = trained_workdir[1]
  text = tmp_path / 'notes.mp4'
  text.write_text('not a video')
  empty = _bad_workdir(trained_workdir, tmp_path, 12)
  cases = [
    ([str(tmp_path / 'missing.mp4')], 'no such video file'),
    ([str(tmp_path)], f'{tmp_path} is a directory, not a video file'),
    (
      [videos['wave'], f'--annotate={text}/out'],
      f'--annotate: cannot write in {text}/out',
    ),
    ([videos['wave'], f'--annotate={text}/out.mp4'], '--annotate: no dir'),
    ([str(text)], 'cannot read .*notes.mp4 as a video'),
    ([videos['short'], '--short_video=error'], 'fewer than the 6'),
    ([videos['wave'], '--window=0'], '--window must be at least 1'),
    (
      [videos['wave'], videos['squat'], f'--annotate={tmp_path / "a.mp4"}'],
      'pass a directory',
    ),
    ([videos['wave'], f'--annotate={videos["wave"]}'], 'would overwrite'),
  ]
  for args, message in cases:
    with pytest.raises(UserError, match=message) as info:
      predict.main(['--workdir', workdir, *args])
    assert '\n' not in str(info.value)
  with pytest.raises(UserError, match='no checkpoints in'):
    predict.main(['--workdir', str(empty), videos['wave']])
  with pytest.raises(UserError, match='not a training workdir'):
    predict.main(['--workdir', str(tmp_path), videos['wave']])
  # A checkpoint for 12 classes, a workdir that says 10.
  ten = _bad_workdir(trained_workdir, tmp_path / 'x', 10)
  os.symlink(os.path.join(workdir, 'checkpoints'), ten / 'checkpoints')
  with pytest.raises(UserError, match='different model or number of classes'):
    predict.main(['--workdir', str(ten), videos['wave']])


@pytest.mark.slow
def test_cli_errors_are_one_line(trained_workdir, videos, tmp_path):
  empty = _bad_workdir(trained_workdir, tmp_path, 12)
  for args, code, message in (
    ([f'--workdir={empty}', videos['wave']], 1, 'no checkpoints in'),
    ([f'--workdir={empty}', '--top_k=x', videos['wave']], 2, 'top_k'),
    ([f'--workdir={empty}', '--views=3', videos['wave']], 2, 'is not T,S'),
  ):
    run = subprocess.run(
      [sys.executable, '-m', 'hpr.tools.predict', *args],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=300,
    )
    assert run.returncode == code, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith('hpr: error:') and message in last, run.stderr
    assert 'Traceback' not in run.stderr and not run.stdout


def _truncated_avi(path, num_frames=60):
  """An MPEG-4 AVI of `num_frames` frames of noise (little to compress),
  cut to half its bytes: its header still declares `num_frames`."""
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (num_frames, SIZE[1], SIZE[0], 3), np.uint8)
  video_io.write_file(str(path), frames, 25.0)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return str(path)


@pytest.mark.slow
def test_a_truncated_video_warns_with_the_frames_used(
  trained_workdir, tmp_path
):
  video = _truncated_avi(tmp_path / 'cut.avi')
  predictor = predict.load_predictor(trained_workdir[1])
  result = predict.predict_video(predictor, video)
  used = result['num_frames']
  assert 0 < used < 60 and result['declared_frames'] == 60
  assert result['warnings'] == [
    f'{video}: only {used} of the 60 frames its container declares decode '
    f'(the file looks truncated); predicted from those {used} frames'
  ]
  out = str(tmp_path / 'cut.annotated.mp4')
  with pytest.raises(UserError, match=f'only {used} of the 60 .*--strict'):
    predict.main(
      ['--workdir', trained_workdir[1], video, '--strict', f'--annotate={out}']
    )
  assert not os.path.exists(out)  # No half-written output is left.
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'hpr.tools.predict',
      f'--workdir={trained_workdir[1]}',
      video,
      '--json',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr
  (got,) = json.loads(run.stdout)['videos']
  assert (got['num_frames'], got['declared_frames']) == (used, 60)
  assert got['warnings'] == result['warnings']
  assert f'hpr: warning: {result["warnings"][0]}' in run.stderr
  # An intact file: no warning, its declared count.
  whole = str(tmp_path / 'whole.avi')
  video_io.write_file(whole, np.zeros((8, 60, 80, 3), np.uint8), 25.0)
  result = predict.predict_video(predictor, whole)
  assert result['num_frames'] == result['declared_frames'] == 8
  assert result['warnings'] == []


def _can_write(directory):
  try:
    with tempfile.TemporaryFile(dir=directory):
      return True
  except OSError:
    return False


@pytest.mark.skipif(
  _can_write('/sys'), reason='needs a place no process can write (sysfs)'
)
def test_annotate_into_a_read_only_place_is_one_line(trained_workdir, videos):
  # sysfs refuses new files even to root, which a chmod would not.
  for out in ('/sys/hpr_annotated', '/sys/hpr_annotated.mp4'):
    with pytest.raises(UserError, match='cannot write in /sys') as info:
      predict.main(
        ['--workdir', trained_workdir[1], videos['wave'], f'--annotate={out}']
      )
    assert '\n' not in str(info.value)


def test_a_failed_prediction_leaves_no_empty_annotate_directory(
  trained_workdir, videos, tmp_path
):
  empty = _bad_workdir(trained_workdir, tmp_path, 12)
  out = tmp_path / 'new' / 'annotated'
  with pytest.raises(UserError, match='no checkpoints in'):
    predict.main(['--workdir', str(empty), videos['wave'], f'--annotate={out}'])
  assert not (tmp_path / 'new').exists()


def test_views_average_the_eval_pipelines_clips_and_crops(
  trained_workdir, videos
):
  # --views 3,3: the softmax averaged over the test split's 3 temporal
  # views x 3 crops, each made by the input pipeline's own ops (frames
  # stored losslessly as PNG, as TFDS would hold them).
  from hpr import input_pipeline, video_ops

  predictor = predict.load_predictor(trained_workdir[1])
  frames, _ = video_io.read_video(videos['squat'])
  encoded = tf.stack([tf.io.encode_png(f) for f in frames])
  ops = video_ops.compose(
    input_pipeline.preprocess_ops(
      input_pipeline.clip_spec(predictor.config, training=False),
      training=False,
      num_views=3,
      num_crops=3,
    )
  )
  probs = []
  for view in range(3):
    for crop in range(3):
      clip = ops({'video': encoded, 'view': view, 'crop': crop})['video']
      probs.append(_softmax(predictor.module(clip.numpy()[None]))[0])
  expected = np.mean(probs, axis=0)
  result = predict.predict_video(
    predictor, videos['squat'], views=(3, 3), top_k=3
  )
  assert result['views'] == {'clips': 3, 'crops': 3}
  got = [result['probabilities'][n] for n in predictor.class_names]
  np.testing.assert_allclose(got, expected, atol=1e-5)
  assert (
    result['top_k'][0]['class']
    == predictor.class_names[int(np.argmax(expected))]
  )
  # By default, the workdir's test protocol.
  predictor.config.eval.num_test_clips = 3
  predictor.config.eval.num_test_crops = 3
  default = predict.predict_video(predictor, videos['squat'], top_k=3)
  assert default['views'] == {'clips': 3, 'crops': 3}
  assert default['probabilities'] == result['probabilities']
  with pytest.raises(UserError, match='spatial crops must be 1 or 3'):
    predict.predict_video(predictor, videos['squat'], views=(1, 2))


def _calibrated_workdir(trained_workdir, tmp_path, temperature):
  workdir = _bad_workdir(trained_workdir, tmp_path, 12)
  shutil.copy(os.path.join(trained_workdir[1], 'class_names.json'), workdir)
  os.symlink(
    os.path.join(trained_workdir[1], 'checkpoints'), workdir / 'checkpoints'
  )
  if temperature is not None:
    with open(workdir / 'calibration.json', 'w') as f:
      json.dump({'temperature': temperature}, f)
  return str(workdir)


@pytest.mark.slow
def test_calibrated_divides_the_logits_by_the_temperature(
  trained_workdir, videos, tmp_path
):
  workdir = _calibrated_workdir(trained_workdir, tmp_path, 2.0)
  plain = predict.predict_video(
    predict.load_predictor(workdir), videos['wave'], views=(1, 1)
  )
  assert (plain['calibrated'], plain['temperature']) == (False, None)
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'hpr.tools.predict',
      f'--workdir={workdir}',
      videos['wave'],
      '--json',
      '--calibrated',
      '--views=1,1',
      '--top_k=12',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr
  (got,) = json.loads(run.stdout)['videos']
  assert (got['calibrated'], got['temperature']) == (True, 2.0)
  assert got['views'] == {'clips': 1, 'crops': 1}
  # softmax(z / 2) is proportional to softmax(z) ** 0.5.
  p = np.array(list(plain['probabilities'].values())) ** 0.5
  expected = dict(zip(plain['probabilities'], p / p.sum(), strict=True))
  for top in got['top_k']:
    assert top['confidence'] == pytest.approx(expected[top['class']], abs=1e-5)
  # No calibration.json: one line that says to evaluate first.
  bare = _calibrated_workdir(trained_workdir, tmp_path / 'bare', None)
  with pytest.raises(UserError, match='no calibration.json; evaluate it'):
    predict.main(['--workdir', bare, videos['wave'], '--calibrated'])


def test_stateful_annotation_equals_the_window_after_each_reset(
  trained_workdir, videos, tmp_path
):
  predictor = predict.load_predictor(trained_workdir[1])
  window = predict.predict_video(
    predictor, videos['wave'], annotate=str(tmp_path / 'w.mp4')
  )
  result = predict.predict_video(
    predictor,
    videos['wave'],
    annotate=str(tmp_path / 's.mp4'),
    stream='stateful',
    reset_every=20,
  )
  assert result['stream'] == {
    'mode': 'stateful', 'window': 6, 'reset_every': 20, 'smooth': 1
  }  # fmt: skip
  assert window['stream']['mode'] == 'window'
  rows, exact = _timeline(result['timeline']), _timeline(window['timeline'])
  assert (
    len(rows) == 45
    and video_io.read_video(result['annotated'])[0].shape[0] == 45
  )
  for r in rows:
    frame, end = int(r['frame']), int(r['window_end'])
    # Resets at 0, 20 and 40; the 5 frames after each later reset hold the
    # last prediction before it.
    reset = frame - frame % 20
    expected = reset - 1 if reset and frame < reset + 5 else max(frame, 5)
    assert end == expected, r
    assert int(r['window_start']) == end - end % 20
  # The first window after each reset is the sliding window's (logits
  # within 1e-5: the same computation in another order).
  for frame in (5, 25):
    assert rows[frame]['label'] == exact[frame]['label']
    assert float(rows[frame]['confidence']) == pytest.approx(
      float(exact[frame]['confidence']), abs=1e-4
    )
  # The whole-video prediction does not depend on the stream mode.
  assert result['top_k'] == window['top_k']


def test_stream_flags_are_checked(trained_workdir, videos, tmp_path):
  workdir = trained_workdir[1]
  for args, message in (
    (['--stream=stateful', '--stride=2'], '--stride and --frame_step are'),
    (['--stream=stateful', '--reset_every=3'], 'at least the window'),
    (['--views=2,2'], 'spatial crops must be 1 or 3'),
    (['--smooth=0'], '--smooth must be at least 1'),
  ):
    with pytest.raises(UserError, match=message) as info:
      predict.main(
        [
          '--workdir',
          workdir,
          videos['wave'],
          f'--annotate={tmp_path / "out"}',
          *args,
        ]
      )
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('modality', ['diff', 'rgb+diff', 'rgb+flow'])
def test_predict_respects_the_input_modality(
  data_dir, videos, tmp_path, modality
):
  # The model's input is the modality of each window (and of the whole
  # clip), as the input pipeline's TensorFlow op makes it.
  from hpr import video_ops

  config = tiny_config(data_dir, 'lrcn')
  config.input.modality = modality
  model = build_model(config, 12)
  model.eval()
  predictor = predict.make_predictor(
    config, list(synthetic_render.CLASS_NAMES), 0, model
  )
  result = predict.predict_video(
    predictor, videos['squat'], annotate=str(tmp_path / 'm.mp4'), stride=3
  )
  frames, _ = video_io.read_video(videos['squat'])
  x = _normalize(_preprocess(frames, config.input.image_size), 'centered')
  op = video_ops.modality(modality)

  def probs(clip):
    clip = op({'video': tf.constant(clip)})['video'].numpy()
    return _softmax(model(clip[None]))[0]

  idx = predictor.clip_indices(len(frames))
  whole = [result['probabilities'][n] for n in predictor.class_names]
  np.testing.assert_allclose(whole, probs(x[idx]), atol=1e-5)
  rows = _timeline(result['timeline'])
  for r in rows[5::3]:
    end = int(r['window_end'])
    assert int(r['frame']) == end
    p = probs(x[end - 5 : end + 1])
    assert r['label'] == predictor.class_names[int(np.argmax(p))]
    assert float(r['confidence']) == pytest.approx(p.max(), abs=1e-4)
  with pytest.raises(UserError, match='takes differences in a window'):
    predict.predict_video(
      predictor,
      videos['squat'],
      annotate=str(tmp_path / 's.mp4'),
      stream='stateful',
    )
