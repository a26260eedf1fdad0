r"""Imports a trained Keras ConvLSTM or LRCN model into an hpr workdir.

  python -m hpr.keras.importer MODEL.h5|MODEL.keras --class_names A,B,C \
      --workdir W [--dataset NAME] [--config FILE] [--num_frames T]

W then holds config.json, class_names.json, config.py and a checkpoint at
step 0, and is evaluated, used for prediction and fine-tuned like a workdir
that hpr trained:

  python -m hpr.main --config W/config.py --workdir W --mode=evaluate
  python -m hpr.main --config W/config.py --workdir W   # fine-tunes

The file is read with h5py, zipfile and json (hpr/keras/files.py), so no
Keras is needed and nothing from the file runs; hpr/keras/convert.py says
which Sequential models import (the notebook's ConvLSTM and LRCN and their
variants), exactly: softmax(hpr logits) is the Keras model's output.

A model file is untrusted: data it keeps outside itself (HDF5 links,
external storage, virtual datasets) is refused, and nothing is read until
the arrays it declares are within 1 GiB and of the shapes its architecture
gives. W/config.py holds the file's name only as a string literal.
"""

import json
import keyword
import math
import os
import shlex

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import ml_collections  # noqa: E402
from absl import logging  # noqa: E402

from hpr import cli  # noqa: E402
from hpr import config as config_lib  # noqa: E402
from hpr.errors import UserError  # noqa: E402
from hpr.keras import convert as keras_convert  # noqa: E402
from hpr.keras import files as keras_format  # noqa: E402


def read(path: str, num_frames: int | None = None) -> keras_convert.Imported:
  """Reads a Keras .h5 or .keras file as an hpr model description.

  The arrays are read only once the shapes the file declares are those of
  the model its architecture describes (and within keras_format's bounds),
  so a file cannot make hpr allocate more than that model's parameters.

  Raises:
    UserError: the file cannot be read, holds a model hpr cannot express,
      or declares arrays of other shapes than its architecture gives.
  """
  with keras_format.open_model(path) as model:
    imported = keras_convert.convert(model, num_frames)
    _, expected = _abstract_model(imported)
    _check_declared_shapes(imported, expected)
    return keras_convert.read_params(imported)


def _abstract_model(imported: keras_convert.Imported, seed: int = 0):
  """The hpr model `imported` describes, built abstractly (shapes only), and
  its parameters' pure dict."""
  # Late: keeps JAX out of the importer's --help.
  from flax import nnx

  from hpr import models

  try:
    model = nnx.eval_shape(
      lambda: models.build_model(
        imported.name,
        imported.kwargs,
        num_classes=imported.num_classes,
        input_shape=input_shape(imported),
        rngs=nnx.Rngs(seed),
      )
    )
  # The model rejects its arguments or input size, or a size overflows.
  except (ValueError, OverflowError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise UserError(
      f'{imported.source.path}: hpr cannot build the {imported.name} model '
      f'it describes: {first}'
    ) from e
  return model, nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _check_declared_shapes(imported: keras_convert.Imported, expected) -> None:
  """Refuses arrays whose declared shape is not the architecture's."""
  # Late: keeps JAX out of the importer's --help.
  import jax

  want = {
    jax.tree_util.keystr(k): v
    for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]
  }
  for key, array in jax.tree_util.tree_flatten_with_path(imported.params)[0]:
    shape = want.get(jax.tree_util.keystr(key))
    if shape is not None and tuple(shape.shape) != tuple(array.shape):
      raise UserError(
        f'{imported.source.path}: {array.layer} weight {array.name!r} '
        f'declares shape {tuple(array.shape)}, but the architecture in the '
        f'file gives {tuple(shape.shape)}; nothing was read'
      )


def input_shape(imported: keras_convert.Imported) -> tuple[int, ...]:
  """(T, H, W, C) of one clip, as hpr.train_state.build_model makes it."""
  size = imported.image_size
  return (imported.num_frames, size, size, 3)


def load_module(path: str, num_frames: int | None = None, *, seed: int = 0):
  """The Keras model of `path` as an hpr nnx module, in eval mode.

  Its logits' softmax is what the Keras model predicts; usable without a
  workdir or config (notebooks, tests).

  Args:
    path: a Keras .h5 or .keras file.
    num_frames: clip length, for models that leave it open.
    seed: seeds the dropout streams (used only in train mode).
  """
  # Late: keeps JAX out of the importer's --help.
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from hpr import checkpoint

  imported = read(path, num_frames)
  # Built abstractly: random initialisation would compile a kernel per
  # parameter shape (seconds on CPU) only for its values to be replaced.
  model, _ = _abstract_model(imported, seed)
  params = nnx.state(model, nnx.Param)
  fitted = checkpoint.fit_to(imported.params, nnx.to_pure_dict(params), path)
  nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, fitted))
  leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.RngState))
  key = jax.random.key(seed)
  rngs = [
    jax.random.fold_in(key, i)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    else jnp.zeros(leaf.shape, leaf.dtype)
    for i, leaf in enumerate(leaves)
  ]
  nnx.update(model, params, jax.tree.unflatten(treedef, rngs))
  model.eval()
  return model


def make_config(
  imported: keras_convert.Imported,
  base: ml_collections.ConfigDict | None = None,
  dataset: str | None = None,
) -> ml_collections.ConfigDict:
  """`base` (default: hpr/schema.py's defaults) with the imported model's keys.

  Sets model.name, model.<name>.*, input.num_frames, input.image_size and
  input.normalization = 'unit' (pixel / 255, what the notebook's models were
  trained on); dataset.name when `dataset` is given. Everything else
  (optimizer, training, the rest of the input pipeline) comes from `base`.

  Raises:
    UserError: `base` asks for another input.modality than 'rgb' (a Keras
      model takes RGB frames).
  """
  modality = base.input.get('modality', 'rgb') if base is not None else 'rgb'
  if modality != 'rgb':
    raise UserError(
      f"input.modality {modality!r}: an imported Keras model takes 'rgb' "
      "frames; import it with input.modality = 'rgb'"
    )

  if base is None:
    config = config_lib.default_config()
  else:
    config = ml_collections.ConfigDict(base.to_dict())
  config.model.name = imported.name
  for key, value in imported.kwargs.items():
    config.model[imported.name][key] = value
  config.input.num_frames = imported.num_frames
  config.input.image_size = imported.image_size
  config.input.normalization = 'unit'
  if dataset:
    config.dataset.name = dataset
  config_lib.validate(config)
  return config


def import_model(
  path: str,
  workdir: str,
  class_names: list[str],
  *,
  base: ml_collections.ConfigDict | None = None,
  dataset: str | None = None,
  num_frames: int | None = None,
) -> ml_collections.ConfigDict:
  """Writes an hpr workdir holding the Keras model of `path`.

  Args:
    path: a Keras .h5 or .keras file (the whole model, not weights only).
    workdir: a new directory (or an empty one).
    class_names: one name per output of the model's last Dense layer.
    base: config for everything but the model and clip shape (default:
      hpr/schema.py).
    dataset: dataset.name to evaluate and fine-tune on.
    num_frames: clip length, for models that leave it open.

  Returns:
    The workdir's config (also in workdir/config.json and config.py).

  Raises:
    UserError: an unreadable or unsupported model, class names that do not
      match its outputs, or a workdir that already holds a run.
  """
  imported = read(path, num_frames)
  if len(class_names) != imported.num_classes:
    raise UserError(
      f'{path} predicts {imported.num_classes} classes, but '
      f'{len(class_names)} class names were given'
    )
  config = make_config(imported, base, dataset)
  if os.path.exists(os.path.join(workdir, 'config.json')) or os.path.exists(
    os.path.join(workdir, 'checkpoints')
  ):
    raise UserError(f'{workdir} already holds a run; use a new --workdir')
  os.makedirs(workdir, exist_ok=True)
  # Late: keeps JAX out of the importer's --help.
  from hpr import checkpoint, parallel, train_state

  mesh = parallel.make_mesh()
  ts = train_state.create_train_state(config, imported.num_classes, mesh, 1)
  target = ts.checkpoint_tree()['model']
  ts.load_checkpoint_tree(
    {'model': checkpoint.fit_to(imported.params, target, path)}
  )
  t = config.training
  ckpts = checkpoint.Checkpoints(
    os.path.join(workdir, 'checkpoints'),
    keep=t.checkpoints_to_keep,
    monitor=t.monitor,
  )
  # The meta of a run that has not started: training resumes from here at
  # epoch 0 (fine-tuning), evaluation takes this step as the only one.
  meta = {
    'epoch': 0,
    'batch': 0,
    'stopped': False,
    'early_stopping': None,
    'imported_from': os.path.abspath(path),
    'keras_version': imported.source.keras_version,
  }
  ckpts.save(0, ts.checkpoint_tree(), meta)
  ckpts.wait()
  ckpts.close()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))
  with open(os.path.join(workdir, 'class_names.json'), 'w') as f:
    json.dump(list(class_names), f)
  with open(os.path.join(workdir, 'config.py'), 'w', encoding='utf-8') as f:
    f.write(config_file(config, path, workdir))
  return config


def config_file(
  config: ml_collections.ConfigDict, path: str, workdir: str
) -> str:
  """A config file (`get_config()`) giving `config`: the keys that differ
  from hpr/schema.py, so `--config W/config.py` finds them.

  File names and config values are untrusted text (a model's file name may
  hold quotes or newlines), so the file holds them only as `repr()` string
  literals, never in its docstring or comments.
  """
  default = dict(_leaves(config_lib.default_config()))
  config_py = os.path.join(workdir, 'config.py')
  command = (
    f'python -m hpr.main --config {shlex.quote(config_py)} '
    f'--workdir {shlex.quote(workdir)}'
  )
  lines = [
    '"""hpr config of a Keras model, written by hpr.keras.importer.',
    '',
    'KERAS_MODEL is the file it was imported from; EVALUATE and FINE_TUNE are',
    'the commands that use this config.',
    '"""',
    '',
    'from hpr import config as config_lib',
    '',
    f'KERAS_MODEL = {_literal(os.path.abspath(path))}',
    f'EVALUATE = {_literal(command + " --mode=evaluate")}',
    f'FINE_TUNE = {_literal(command)}',
    '',
    '',
    'def get_config():',
    '  config = config_lib.default_config()',
  ]
  for key, value in _leaves(config):
    if default.get(key) != value:
      lines.append(f'  {_target(key)} = {_literal(value)}')
  lines.append('  return config')
  return '\n'.join(lines) + '\n'


def _literal(value) -> str:
  """Python source that evaluates to `value`, a config leaf."""
  if isinstance(value, float) and not math.isfinite(value):
    return f'float({str(value)!r})'
  if isinstance(value, str | int | float | bool | None):
    return repr(value)  # Escapes quotes, newlines, any non-printable.
  if isinstance(value, tuple | list):
    items = [_literal(v) for v in value]
    if isinstance(value, tuple):
      return f'({", ".join(items)}{"," if len(items) == 1 else ""})'
    return f'[{", ".join(items)}]'
  if isinstance(value, dict):
    items = [f'{_literal(k)}: {_literal(v)}' for k, v in value.items()]
    return '{' + ', '.join(items) + '}'
  raise TypeError(f'cannot write a config value of type {type(value)}')


def _target(key: str) -> str:
  """`config.a.b`, or `config['a']['b']` for keys that are not names."""
  parts = key.split('.')
  if all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
    return f'config.{key}'
  return 'config' + ''.join(f'[{p!r}]' for p in parts)


def _leaves(config, prefix: str = ''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def main(argv: list[str] | None = None) -> None:
  parser = cli.ArgumentParser(
    prog='python -m hpr.keras.importer',
    description='Import a Keras ConvLSTM or LRCN model into an hpr workdir.',
  )
  parser.add_argument('model', help='Keras .h5 or .keras file (whole model)')
  parser.add_argument(
    '--class_names',
    required=True,
    help='comma-separated class names, in the order of the model outputs',
  )
  parser.add_argument('--workdir', required=True, help='new hpr workdir')
  parser.add_argument(
    '--dataset', help='dataset.name to evaluate and fine-tune on'
  )
  parser.add_argument(
    '--config',
    help='config file for everything but the model (default: hpr/schema.py)',
  )
  parser.add_argument(
    '--num_frames',
    type=int,
    help='clip length, only for models that leave it open',
  )
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # orbax logs every save.
  try:
    base = None
    if args.config:
      base = config_lib.load_config_file(args.config)
    names = [n.strip() for n in args.class_names.split(',') if n.strip()]
    config = import_model(
      args.model,
      args.workdir,
      names,
      base=base,
      dataset=args.dataset,
      num_frames=args.num_frames,
    )
  except UserError as e:
    cli.fail(e)
  print(
    f'imported {config.model.name} ({len(names)} classes, '
    f'{config.input.num_frames}x{config.input.image_size}x'
    f'{config.input.image_size} clips) into {args.workdir}; evaluate with\n'
    f'  python -m hpr.main --config '
    f'{shlex.quote(os.path.join(args.workdir, "config.py"))} '
    f'--workdir {shlex.quote(args.workdir)} --mode=evaluate'
  )


def run() -> None:
  """The `hpr-import-keras` command."""
  main()


if __name__ == '__main__':
  run()
