r"""Export a trained workdir's model for serving and devices, checked.

  python -m hpr.tools.export --workdir W --format stablehlo --out DIR
  python -m hpr.tools.export --workdir W --format savedmodel --out DIR
  python -m hpr.tools.export --workdir W --format tflite --out DIR \
      [--step N] [--check 8]

Formats (docs/deployment.md shows how each is loaded and served):

  stablehlo   DIR/NAME.stablehlo, one per function: a serialized
              `jax.export` artifact for cpu, cuda and tpu in one file
              (`jax.export.deserialize`; `load_stablehlo` reads them all);
  savedmodel  DIR/savedmodel: jax2tf, each function a named serving
              signature ('serving_default' is the whole model), for TF
              Serving; the StableHLO runs inside TF's XlaCallModule op;
  tflite      DIR/model.tflite: TFLiteConverter over that SavedModel, with
              the built-in ops only (no SELECT_TF_OPS); it runs with the
              default XNNPACK delegate.

Every format holds `classify`: video float32 (b, T, S, S, C), preprocessed
as the test split is (the manifest says how; C is 3, or 6 for
input.modality 'rgb+diff') -> {'logits', 'probabilities'} (b, K), any batch
size b. An LRCN also holds its two halves, so a device can
run sliding windows without encoding a frame twice:

  encode  frames (n, S, S, C) -> {'features': (n, D)}, each frame alone;
  head    features (b, T, D) -> {'logits', 'probabilities'} (b, K).

DIR/manifest.json records the input (shape, dtype, preprocessing), the
class names, the functions, the check and where the model came from.

The exported computation is always the models' reference path
(model.impl='reference', hpr.kernels.reference): plain jax.lax, no call of
hpr's CPU kernels. Before DIR is written, each function is run on --check
real clips of the workdir's test split and compared with JAX: the largest
absolute difference of a class probability must be at most
TOLERANCE[format] (float32). A failed check, a layer the exporter does not
know (named in a one-line error) or any other failure leaves no DIR: the
export is written beside it in a temporary directory, renamed to DIR at the
end.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

from hpr import cli  # noqa: E402
from hpr import workdir as workdir_lib  # noqa: E402
from hpr.errors import UserError  # noqa: E402
from hpr.schema import MODALITY_CHANNELS  # noqa: E402

FORMATS = ('stablehlo', 'savedmodel', 'tflite')
# The outputs of 'classify' and 'head'.
SCORES = ('logits', 'probabilities')
# One StableHLO module for all three; a caller's platform picks its lowering.
PLATFORMS = ('cpu', 'cuda', 'tpu')
# Largest |exported - JAX| class probability a check accepts (float32).
# TFLite's kernels (XNNPACK) sum in their own order; on the seed-size
# models (20 frames of 64x64) they differ from XLA by < 1e-6 (measured,
# docs/deployment.md), so 1e-5 holds for every format.
TOLERANCE = {'stablehlo': 1e-5, 'savedmodel': 1e-5, 'tflite': 1e-5}
# Clips for a per-clip latency figure: the checked clips, one at a time.
LATENCY_REPEATS = 3


def _supported_layers() -> tuple[type, ...]:
  """The module classes whose computation the exporter has checked to
  export to every format (containers and layers of hpr's models)."""
  # Late: keeps JAX out of the exporter's --help.
  from flax import nnx

  from hpr import models
  from hpr.models import layers

  return (
    models.LRCN,
    models.FrameCNN,
    models.ConvLSTMClassifier,
    models.ConvLSTM,
    models.ConvLSTMCell,
    models.SingleFrame,
    models.LSTM,
    models.LSTMCell,
    layers.Conv2D,
    nnx.Linear,
    nnx.Dropout,
    nnx.List,
  )


def check_layers(model) -> None:
  """Refuses a model with a layer the exporter does not know.

  Raises:
    UserError: naming the first such layer (its path in the model) and its
      class.
  """
  # Late: keeps JAX out of the exporter's --help.
  from flax import nnx

  supported = _supported_layers()
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Module) and not isinstance(node, supported):
      where = '.'.join(map(str, path)) or 'the model itself'
      raise UserError(
        f'cannot export layer {where} ({type(node).__name__}): the '
        f'exporter handles {", ".join(c.__name__ for c in supported)}'
      )


def reference_model(model, config, num_classes: int):
  """`model`'s weights in a model built with impl='reference', in eval
  mode: the path every platform can run, without hpr's CPU kernels."""
  # Late: keeps JAX out of the exporter's --help.
  from flax import nnx

  from hpr import train_state

  config = config.copy_and_resolve_references()
  config.model.impl = 'reference'
  ref = train_state.build_model(config, num_classes)
  ref.eval()
  nnx.update(ref, nnx.state(model))
  return ref


class Function:
  """One exported function: a pure JAX function of one float32 array.

  Attributes:
    name: 'classify', 'encode' or 'head'.
    fn: x -> dict of arrays.
    input_name: the array's name in the SavedModel / TFLite signature.
    shape: its shape; None is the batch (any size).
    outputs: the names of fn's outputs.
  """

  def __init__(self, name, fn, input_name, shape, outputs):
    self.name, self.fn, self.input_name = name, fn, input_name
    self.shape, self.outputs = tuple(shape), tuple(outputs)

  def spec(self) -> dict:
    return {
      'input': {
        'name': self.input_name,
        'shape': list(self.shape),
        'dtype': 'float32',
      },
      'outputs': list(self.outputs),
    }


def functions(model, config) -> list[Function]:
  """The functions to export: 'classify', and for an LRCN 'encode' and
  'head' (its per-frame CNN and its LSTM + Dense)."""
  # Late: keeps JAX out of the exporter's --help.
  import jax
  from flax import nnx

  from hpr import models

  graphdef, state = nnx.split(model)
  t, s = config.input.num_frames, config.input.image_size
  c = MODALITY_CHANNELS[config.input.modality]

  def scores(logits):
    return {'logits': logits, 'probabilities': jax.nn.softmax(logits, -1)}

  def classify(video):
    return scores(nnx.merge(graphdef, state)(video))

  out = [Function('classify', classify, 'video', (None, t, s, s, c), SCORES)]
  if isinstance(model, models.LRCN):
    dim = model.encoder.out_features

    def encode(frames):
      return {'features': nnx.merge(graphdef, state).encode_frames(frames)}

    def head(features):
      return scores(nnx.merge(graphdef, state).classify_encoded(features))

    out += [
      Function('encode', encode, 'frames', (None, s, s, c), ['features']),
      Function('head', head, 'features', (None, t, dim), SCORES),
    ]
  return out


def _symbolic(shape) -> tuple:
  # Late: keeps JAX out of the exporter's --help.
  import jax

  spec = ', '.join('b' if d is None else str(d) for d in shape)
  return jax.export.symbolic_shape(spec)


# Custom calls of hpr's CPU kernels (hpr.kernels.cpu); none may be exported.
_CPU_KERNELS = ('hpr_conv_relu_pool', 'hpr_conv_lstm')


def export_stablehlo(fn: Function, platforms=PLATFORMS):
  """`jax.export.Exported` of `fn` for `platforms`, any batch size.

  Raises:
    UserError: the function does not lower, or its module calls one of
      hpr's CPU kernels.
  """
  # Late: keeps JAX out of the exporter's --help.
  import jax
  import jax.numpy as jnp

  arg = jax.ShapeDtypeStruct(_symbolic(fn.shape), jnp.float32)
  try:
    exported = jax.export.export(jax.jit(fn.fn), platforms=platforms)(arg)
  except Exception as e:  # Whatever JAX raises, as one line.
    raise UserError(
      f'cannot export {fn.name} for {", ".join(platforms)}: {_first_line(e)}'
    ) from e
  text = exported.mlir_module()
  for target in _CPU_KERNELS:
    if target in text:
      raise UserError(
        f'{fn.name}: the exported module calls the CPU kernel {target}; '
        "export needs model.impl='reference'"
      )
  return exported


def _first_line(error: BaseException) -> str:
  lines = [line for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= 300 else text[:297] + '...'


def _tf_module(fns: list[Function], platforms):
  """A tf.Module with one tf.function per function (jax2tf)."""
  # Late: keeps JAX out of the exporter's --help.
  from jax.experimental import jax2tf

  tf = cli.tensorflow_on_cpu()
  module = tf.Module()
  signatures = {}
  for fn in fns:
    converted = jax2tf.convert(
      fn.fn,
      polymorphic_shapes=[
        '(' + ', '.join('b' if d is None else '_' for d in fn.shape) + ')'
      ],
      with_gradient=False,
      native_serialization_platforms=platforms,
    )
    spec = tf.TensorSpec(fn.shape, tf.float32, name=fn.input_name)
    tf_fn = tf.function(converted, input_signature=[spec], autograph=False)
    setattr(module, fn.name, tf_fn)
    key = 'serving_default' if fn.name == 'classify' else fn.name
    signatures[key] = tf_fn
  return module, signatures


def save_savedmodel(fns: list[Function], path: str, platforms) -> None:
  """Writes a SavedModel of `fns` at `path`, one signature each.

  Raises:
    UserError: the conversion fails (one line).
  """
  tf = cli.tensorflow_on_cpu()
  try:
    module, signatures = _tf_module(fns, platforms)
    tf.saved_model.save(module, path, signatures=signatures)
  except UserError:
    raise
  except Exception as e:
    raise UserError(f'cannot write the SavedModel: {_first_line(e)}') from e


def convert_tflite(savedmodel: str, fns: list[Function]) -> bytes:
  """The TFLite flatbuffer of a SavedModel from `save_savedmodel`, built-in
  ops only.

  Raises:
    UserError: the converter fails (one line, naming the op it could not
      convert where it says).
  """
  tf = cli.tensorflow_on_cpu()
  keys = ['serving_default' if f.name == 'classify' else f.name for f in fns]
  try:
    converter = tf.lite.TFLiteConverter.from_saved_model(
      savedmodel, signature_keys=keys
    )
    return converter.convert()
  except Exception as e:
    raise UserError(f'TFLite cannot convert the model: {_first_line(e)}') from e


def stablehlo_runner(exported: dict) -> Callable:
  """Calls deserialized `jax.export.Exported` functions by name."""
  # Late: keeps JAX out of the exporter's --help.
  import jax

  jitted = {name: jax.jit(e.call) for name, e in exported.items()}

  def call(name, x):
    return jax.tree.map(np.asarray, jitted[name](x))

  return call


def savedmodel_runner(path: str) -> Callable:
  """Calls a SavedModel's signatures by function name."""
  tf = cli.tensorflow_on_cpu()
  loaded = tf.saved_model.load(path)

  def call(name, x):
    key = 'serving_default' if name == 'classify' else name
    fn = loaded.signatures[key]
    (input_name,) = fn.structured_input_signature[1]
    out = fn(**{input_name: tf.constant(x)})
    return {k: v.numpy() for k, v in out.items()}

  return call


def tflite_runner(flatbuffer: bytes) -> Callable:
  """Calls a TFLite model's signatures by function name (the default
  interpreter, XNNPACK delegate on)."""
  tf = cli.tensorflow_on_cpu()
  with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation.
    warnings.simplefilter('ignore')
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
  runners = {}

  def call(name, x):
    key = 'serving_default' if name == 'classify' else name
    if key not in runners:
      runners[key] = interpreter.get_signature_runner(key)
    runner = runners[key]
    (input_name,) = runner.get_input_details()
    return runner(**{input_name: x})

  return call


def test_clips(config, count: int) -> np.ndarray:
  """`count` clips of the workdir's test split (fewer if it is smaller),
  preprocessed as evaluation does: float32 (n, T, S, S, 3).

  Raises:
    UserError: the dataset cannot be read.
  """
  # Late: keeps TensorFlow and JAX out of the exporter's --help.
  from hpr import input_pipeline

  builder = input_pipeline.get_builder(config.dataset)
  clips = []
  for batch in input_pipeline.eval_batches(
    builder,
    config.dataset.test_split,
    input_pipeline.clip_spec(config, training=False),
    batch_size=config.eval.batch_size,
    seed=config.seed,
    rows=(0, config.eval.batch_size),
  ):
    clips.extend(batch['video'][batch['mask']])
    if len(clips) >= count:
      break
  if not clips:
    raise UserError(f'the test split {config.dataset.test_split} is empty')
  return np.stack(clips[:count]).astype(np.float32)


def check(call, fns: list[Function], clips: np.ndarray, expected: np.ndarray):
  """Runs the artifact on `clips`, one clip at a time and all together.

  Returns:
    {'clips', 'max_abs_prob_diff' (over every function path: classify, and
     encode -> head where exported), 'latency_ms' (median per clip, batch
     1, classify)}.
  """
  names = {f.name for f in fns}
  got = call('classify', clips)['probabilities']
  diff = float(np.max(np.abs(got - expected)))
  if {'encode', 'head'} <= names:
    b, t = clips.shape[:2]
    frames = clips.reshape((b * t,) + clips.shape[2:])
    features = call('encode', frames)['features']
    split = call('head', features.reshape((b, t) + features.shape[1:]))
    diff = max(diff, float(np.max(np.abs(split['probabilities'] - expected))))
  times = []
  call('classify', clips[:1])  # Compiles / allocates for batch 1.
  for _ in range(LATENCY_REPEATS):
    for clip in clips:
      start = time.perf_counter()
      call('classify', clip[None])
      times.append(time.perf_counter() - start)
  return {
    'clips': len(clips),
    'max_abs_prob_diff': diff,
    'latency_ms': 1000 * float(np.median(times)),
  }


def _size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(
    os.path.getsize(os.path.join(root, f))
    for root, _, files in os.walk(path)
    for f in files
  )


def _check_out(out: str) -> str:
  """The absolute --out, checked to be creatable; its parent is made.

  Raises:
    UserError: it exists and is not an empty directory, or its parent
      cannot be written.
  """
  out = os.path.abspath(os.path.expanduser(out))
  if os.path.lexists(out):
    if not os.path.isdir(out):
      raise UserError(f'--out {out} is a file; give a directory to create')
    if os.listdir(out):
      raise UserError(
        f'--out {out} exists and is not empty; remove it or choose another'
      )
  workdir_lib.make(os.path.dirname(out), 'the parent directory of --out')
  return out


def export(
  workdir: str,
  fmt: str,
  out: str,
  *,
  step: int | None = None,
  num_check: int = 8,
) -> dict:
  """Exports the model of `workdir` to `out` (see the module docstring).

  Args:
    workdir: a trained workdir.
    fmt: one of FORMATS.
    out: the directory to create; nothing is written there on failure.
    step: the checkpoint step (default: the best one).
    num_check: test clips to check the export on (0: no check).

  Returns:
    The manifest, as written to OUT/manifest.json.

  Raises:
    UserError: a bad workdir, step or --out; a layer the exporter cannot
      handle; a failed check.
  """
  # Late: keeps JAX out of the exporter's --help.
  import jax

  if fmt not in FORMATS:
    raise UserError(f'unknown format {fmt!r}; valid: {", ".join(FORMATS)}')
  out = _check_out(out)
  model, config, class_names, step = workdir_lib.load_trained_step(
    workdir, step
  )
  check_layers(model)
  model = reference_model(model, config, len(class_names))
  fns = functions(model, config)
  clips = test_clips(config, num_check) if num_check > 0 else None
  expected = None
  if clips is not None:
    expected = np.asarray(
      jax.jit(lambda x: fns[0].fn(x)['probabilities'])(clips)
    )

  tmp = tempfile.mkdtemp(
    dir=os.path.dirname(out), prefix=f'.{os.path.basename(out)}.'
  )
  try:
    files, call, platforms = _write(fmt, fns, tmp)
    result = None
    if clips is not None:
      result = check(call, fns, clips, expected)
      result['tolerance'] = TOLERANCE[fmt]
      if not result['max_abs_prob_diff'] <= TOLERANCE[fmt]:
        raise UserError(
          f'{fmt} export check failed: max abs probability difference '
          f'{result["max_abs_prob_diff"]:.3g} > {TOLERANCE[fmt]:g} on '
          f'{result["clips"]} test clips; nothing written'
        )
    manifest = _manifest(
      fmt, files, fns, config, class_names, workdir, step, platforms
    )
    manifest['size_bytes'] = sum(_size(os.path.join(tmp, f)) for f in files)
    manifest['check'] = result
    workdir_lib.write_atomic(
      os.path.join(tmp, 'manifest.json'), json.dumps(manifest, indent=2) + '\n'
    )
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700.
    if os.path.isdir(out):
      os.rmdir(out)  # Empty (checked above): replaced by the export.
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def _write(fmt: str, fns: list[Function], tmp: str):
  """Writes the artifact into `tmp`; returns (the files written, a runner
  that calls them as written, their platforms)."""
  if fmt == 'stablehlo':
    files = {}
    for fn in fns:
      files[fn.name] = f'{fn.name}.stablehlo'
      with open(os.path.join(tmp, files[fn.name]), 'wb') as f:
        f.write(export_stablehlo(fn).serialize())
    loaded = load_stablehlo(tmp)
    return list(files.values()), stablehlo_runner(loaded), PLATFORMS
  if fmt == 'savedmodel':
    path = os.path.join(tmp, 'savedmodel')
    save_savedmodel(fns, path, PLATFORMS)
    return ['savedmodel'], savedmodel_runner(path), PLATFORMS
  # tflite: from a CPU SavedModel (TFLite runs the CPU lowering).
  path = os.path.join(tmp, 'savedmodel')
  save_savedmodel(fns, path, ('cpu',))
  flatbuffer = convert_tflite(path, fns)
  shutil.rmtree(path)
  with open(os.path.join(tmp, 'model.tflite'), 'wb') as f:
    f.write(flatbuffer)
  return ['model.tflite'], tflite_runner(flatbuffer), ('cpu',)


def load_stablehlo(directory: str) -> dict:
  """The functions of a stablehlo export: {name: jax.export.Exported} of
  its NAME.stablehlo files; call one with `exported.call(x)` (under
  jax.jit, on any of its platforms).

  Raises:
    UserError: the directory holds no such file, or a damaged one.
  """
  # Late: keeps JAX out of the exporter's --help.
  import jax

  out = {}
  for name in sorted(os.listdir(directory)):
    if name.endswith('.stablehlo'):
      with open(os.path.join(directory, name), 'rb') as f:
        data = f.read()
      try:
        out[name[: -len('.stablehlo')]] = jax.export.deserialize(
          bytearray(data)
        )
      except Exception as e:
        raise UserError(f'{directory}/{name} is damaged ({e})') from e
  if not out:
    raise UserError(f'{directory} holds no .stablehlo file')
  return out


def _manifest(fmt, files, fns, config, class_names, workdir, step, plats):
  i = config.input
  return {
    'format': fmt,
    'files': list(files),
    'platforms': list(plats),
    'model': config.model.name,
    'class_names': list(class_names),
    'functions': {f.name: f.spec() for f in fns},
    'input': {
      'shape': list(fns[0].shape),
      'dtype': 'float32',
      'num_frames': i.num_frames,
      'image_size': i.image_size,
      'modality': i.modality,
      'normalization': i.normalization,
      'eval_crop': i.eval_crop,
      'eval_sampling': i.eval_sampling,
      'frame_stride': i.frame_stride,
    },
    'workdir': os.path.abspath(workdir),
    'checkpoint_step': step,
    'hpr_commit': workdir_lib.source_commit(),
  }


def _parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
    prog='python -m hpr.tools.export',
    description='Export a trained workdir model (StableHLO, SavedModel or '
    'TFLite), checked against JAX on test clips.',
  )
  p.add_argument('--workdir', required=True, help='a trained workdir')
  p.add_argument('--format', required=True, choices=FORMATS)
  p.add_argument('--out', required=True, help='the directory to create')
  p.add_argument('--step', type=int, help='checkpoint step (default: best)')
  p.add_argument(
    '--check',
    type=int,
    default=8,
    help='test clips to check the export on (0: none; default 8)',
  )
  return p


def main(argv: list[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  args = _parser().parse_args(argv)
  if args.check < 0:
    raise UserError(f'--check must be >= 0, got {args.check}')
  manifest = export(
    args.workdir, args.format, args.out, step=args.step, num_check=args.check
  )
  print(
    f'exported {manifest["model"]} (step {manifest["checkpoint_step"]}) as '
    f'{args.format} to {args.out} ({", ".join(manifest["files"])}): '
    f'{manifest["size_bytes"] / 1024:.1f} KiB, functions '
    f'{", ".join(manifest["functions"])}'
  )
  result = manifest['check']
  if result is None:
    print('check: not run (--check 0)')
  else:
    print(
      f'check: {result["clips"]} test clips, max abs probability '
      f'difference {result["max_abs_prob_diff"]:.2g} <= '
      f'{result["tolerance"]:g}: ok; latency {result["latency_ms"]:.2f} '
      'ms per clip (batch 1, this machine)'
    )


def run() -> None:
  """The command line, with user errors as one line."""
  cli.run(main)


if __name__ == '__main__':
  run()
