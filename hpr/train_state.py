"""The train state (model, optimizer, running metrics) and the jitted steps.

The NNX objects are split once into graph definitions and a state pytree; the
jitted steps take and return only the state, so no Python object graph is
traversed per step. The state is replicated on the ('data',) mesh and batches
are sharded, so `jax.jit` makes each step data parallel.
"""

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from hpr import metrics, models, optim, parallel
from hpr.errors import ConfigError
from hpr.schema import MODALITY_CHANNELS

Batch = dict[str, jax.Array]


def train_step(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  metrics: nnx.MultiMetric,
  batch: Batch,
  dropout_key: jax.Array,
  *,
  label_smoothing: float,
) -> jax.Array:
  """One optimisation step on a batch; returns the mean loss."""
  nnx.reseed(model, dropout=dropout_key)

  def loss_fn(model):
    logits = model(batch['video'])  # (B, T, H, W, C) -> (B, K)
    targets = jax.nn.one_hot(batch['label'], logits.shape[-1])
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean(), logits

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  metrics.update(loss=loss, logits=logits, labels=batch['label'])
  return loss


def eval_step(model: nnx.Module, batch: Batch) -> jax.Array:
  """Logits of a batch: (B, T, H, W, C) -> (B, K)."""
  return model(batch['video'])


@dataclasses.dataclass
class TrainState:
  """Graph definitions plus one state pytree:
  {'model', 'rng', 'optimizer', 'metrics'}.

  'rng' (the dropout stream) is reseeded every step from (seed, step), so
  it is the one part a checkpoint does not need.
  """

  model_def: Any
  eval_def: Any
  optimizer_def: Any
  metrics_def: Any
  state: dict

  @classmethod
  def create(
    cls,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    metrics: nnx.MultiMetric,
    mesh: Mesh,
  ) -> 'TrainState':
    model.train()
    model_def, rng, params = nnx.split(model, nnx.RngState, ...)
    model.eval()
    eval_def = nnx.graphdef(model)
    model.train()
    optimizer_def, opt_state = nnx.split(optimizer)
    metrics_def, met_state = nnx.split(metrics)
    state = {
      'model': params,
      'rng': rng,
      'optimizer': opt_state,
      'metrics': met_state,
    }
    return cls(
      model_def,
      eval_def,
      optimizer_def,
      metrics_def,
      parallel.replicate(state, mesh),
    )

  def model(self, state: dict | None = None, *, training: bool = False):
    state = self.state if state is None else state
    graphdef = self.model_def if training else self.eval_def
    return nnx.merge(graphdef, state['rng'], state['model'])

  def objects(self, state: dict):
    return (
      self.model(state, training=True),
      nnx.merge(self.optimizer_def, state['optimizer']),
      nnx.merge(self.metrics_def, state['metrics']),
    )

  def metrics(self) -> nnx.MultiMetric:
    return nnx.merge(self.metrics_def, self.state['metrics'])

  def reset_metrics(self) -> None:
    metrics = self.metrics()
    metrics.reset()
    self.state = {**self.state, 'metrics': nnx.state(metrics)}

  @property
  def step(self) -> int:
    return int(self.state['optimizer']['step'][...])

  def checkpoint_tree(self) -> dict:
    """What a checkpoint saves: everything but the reseeded rng state."""
    return {k: nnx.to_pure_dict(v) for k, v in self.state.items() if k != 'rng'}

  def load_checkpoint_tree(self, tree: dict) -> None:
    state = dict(self.state)
    for key, pure in tree.items():
      part = state[key]
      nnx.replace_by_pure_dict(part, pure)
      state[key] = part
    self.state = state


def create_train_state(
  config: ml_collections.ConfigDict,
  num_classes: int,
  mesh,
  steps_per_epoch: int,
  model: nnx.Module | None = None,
) -> TrainState:
  """Builds the model (unless given), optimizer and metrics from the
  config."""
  model = build_model(config, num_classes) if model is None else model
  tx = optim.make_optimizer(
    config.optimizer,
    steps_per_epoch=steps_per_epoch,
    num_epochs=config.training.num_epochs,
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  return TrainState.create(model, optimizer, metrics.train_metrics(), mesh)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """The configured model, initialised from `config.seed`; its input
  channels follow input.modality (3, or 6 for 'rgb+diff')."""
  name = config.model.name
  input_shape = (
    config.input.num_frames,
    config.input.image_size,
    config.input.image_size,
    MODALITY_CHANNELS[config.input.modality],
  )
  try:
    return models.build_model(
      name,
      config.model[name].to_dict(),
      num_classes=num_classes,
      input_shape=input_shape,
      impl=config.model.impl,
      dtype=config.model.dtype,
      rngs=nnx.Rngs(params=config.seed, dropout=config.seed),
    )
  except ValueError as e:  # The model rejects its arguments or input size.
    raise ConfigError(f'model.{name}: {e}') from e


def jit_train_step(
  ts: TrainState, mesh: Mesh, *, seed: int, label_smoothing: float
):
  """`step(state, batch, step_number) -> (state, loss)`, jitted; the state
  argument is donated."""
  base_key = jax.random.key(seed)

  def step(state, batch, step_number):
    model, optimizer, metrics = ts.objects(state)
    key = jax.random.fold_in(base_key, step_number)
    loss = train_step(
      model, optimizer, metrics, batch, key, label_smoothing=label_smoothing
    )
    _, rng, params = nnx.split(model, nnx.RngState, ...)
    new_state = {
      'model': params,
      'rng': rng,
      'optimizer': nnx.state(optimizer),
      'metrics': nnx.state(metrics),
    }
    return new_state, loss

  replicated = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def jit_eval_step(ts: TrainState, mesh: Mesh):
  """`logits(state, batch) -> (B, K)` in evaluation mode, jitted."""

  @functools.partial(jax.jit, out_shardings=parallel.batch_sharding(mesh))
  def step(state, batch):
    return eval_step(ts.model(state), batch)

  return step
