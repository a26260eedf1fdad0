"""Live input: a real video container piped on stdin to a real
`python -m hpr.tools.predict --source -` process, classified frame by
frame; SIGINT finalises the annotated file."""

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hpr import video_io
from hpr.datasets import synthetic_render
from hpr.errors import UserError
from hpr.tools import live, predict

ROOT = os.path.dirname(os.path.dirname(__file__))
SIZE = (80, 60)
NUM_FRAMES = 30


def _stream_file(path, num_frames=NUM_FRAMES):
  """An MPEG-TS (a container that streams: no index at the end) of MPEG-4
  frames of a synthetic action, made with PyAV."""
  clip = synthetic_render.render_clip(
    'Waving', 30, 2, num_frames=num_frames, image_size=64
  )
  frames = [np.asarray(Image.fromarray(f).resize(SIZE)) for f in clip]
  video_io.write_file(str(path), frames, 25.0, codec='mpeg4')
  return str(path)


@pytest.fixture(scope='module')
def stream_file(tmp_path_factory):
  return _stream_file(tmp_path_factory.mktemp('live') / 'wave.ts')


def _command(workdir, *args):
  return [
    sys.executable,
    '-m',
    'hpr.tools.predict',
    f'--workdir={workdir}',
    '--source=-',
    *args,
  ]


def _lines(text):
  lines = [json.loads(line) for line in text.splitlines() if line.strip()]
  assert 'summary' in lines[-1]
  return lines[:-1], lines[-1]['summary']


@pytest.mark.slow
def test_a_container_on_stdin_is_classified_frame_by_frame(
  trained_workdir, stream_file, tmp_path
):
  workdir = trained_workdir[1]
  out = str(tmp_path / 'live.mp4')
  with open(stream_file, 'rb') as f:
    data = f.read()
  run = subprocess.run(
    _command(workdir, '--drop=none', '--smooth=2', f'--annotate={out}'),
    input=data,
    capture_output=True,
    cwd=ROOT,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr.decode()
  lines, summary = _lines(run.stdout.decode())
  # '--drop none': every decoded frame has its line, in order.
  assert [x['frame'] for x in lines] == list(range(NUM_FRAMES))
  assert summary['frames'] == summary['decoded'] == NUM_FRAMES
  assert summary['dropped'] == 0 and not summary['interrupted']
  assert summary['stream'] == {'mode': 'window', 'window': 6, 'stride': 1,
                               'frame_step': 1, 'smooth': 2}  # fmt: skip
  assert all(x['latency_ms'] > 0 for x in lines)
  assert summary['latency_ms']['median'] > 0
  # The same predictions as the file's annotation with the same flags.
  predictor = predict.load_predictor(workdir)
  result = predict.predict_video(
    predictor, stream_file, annotate=str(tmp_path / 'file.mp4'), smooth=2
  )
  with open(result['timeline']) as f:
    rows = list(csv.DictReader(f))
  assert [x['label'] for x in lines] == [r['label'] for r in rows]
  np.testing.assert_allclose(
    [x['confidence'] for x in lines],
    [float(r['confidence']) for r in rows],
    atol=2e-4,
  )
  assert [x['window_end'] for x in lines] == [
    int(r['window_end']) for r in rows
  ]
  # The annotated copy is finalised: every frame decodes.
  frames, _ = video_io.read_video(out)
  assert frames.shape == (NUM_FRAMES, SIZE[1], SIZE[0], 3)
  with open(os.path.splitext(out)[0] + '.csv') as f:
    assert len(list(csv.DictReader(f))) == NUM_FRAMES


@pytest.mark.slow
def test_sigint_finalises_the_annotated_file(
  trained_workdir, stream_file, tmp_path
):
  # The pipe stays open (a live source that has not ended): the process
  # classifies what arrived; after its first line, SIGINT ends it with 130
  # and a decodable annotated file.
  out = str(tmp_path / 'interrupted.mp4')
  process = subprocess.Popen(
    _command(trained_workdir[1], '--stream=stateful', f'--annotate={out}'),
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    cwd=ROOT,
  )
  try:
    with open(stream_file, 'rb') as f:
      process.stdin.write(f.read())
    process.stdin.flush()
    first = json.loads(process.stdout.readline())
    assert first['frame'] == 0 and first['window_end'] == 5
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == 130, err.decode()
  assert 'Traceback' not in err.decode()
  lines, summary = _lines(rest.decode())
  assert summary['interrupted'] and summary['stream']['mode'] == 'stateful'
  assert summary['frames'] == 1 + len(lines) >= 6
  frames, _ = video_io.read_video(out)
  assert len(frames) == summary['frames']


def test_a_full_queue_drops_the_oldest_frame():
  queue = live.FrameQueue(2, 'oldest')
  for number in range(5):
    queue.put((number, None, 0.0))
  queue.put((live._END, None, None))  # The end is never dropped.
  assert [x[0] for x in queue.take(10, timeout=1)] == [4, live._END]
  assert queue.dropped == 4


def test_bad_sources_are_one_line(trained_workdir, stream_file, tmp_path):
  workdir = trained_workdir[1]
  for args, message in (
    (['--source=-', stream_file], 'video files or --source, not both'),
    ([f'--source={tmp_path / "none.ts"}'], 'cannot open'),
    (['--source=-', '--queue_size=0'], '--queue_size must be at least 1'),
  ):
    with pytest.raises(UserError, match=message) as info:
      predict.main(['--workdir', workdir, *args])
    assert '\n' not in str(info.value)
  run = subprocess.run(
    _command(workdir),
    input=b'not a video at all' * 100,
    capture_output=True,
    cwd=ROOT,
    timeout=300,
  )
  assert run.returncode == 1
  last = run.stderr.decode().strip().splitlines()[-1]
  assert last.startswith('hpr: error: --source:'), run.stderr.decode()
