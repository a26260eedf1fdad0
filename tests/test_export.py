"""The train and eval steps of every model lower for cuda and tpu from this
CPU host, and export (`jax.export`) for cuda, tpu and cpu, at the seed
shapes (20 frames of 64x64, batch 8), in float32 and bfloat16: the
accelerator programs hold no call of hpr's CPU kernels, so a model change
that could not run on an accelerator fails here. Trace and lower only;
nothing is compiled or run."""

import jax
import jax.numpy as jnp
import pytest

from hpr import config as config_lib
from hpr import parallel, train_state

CPU_TARGETS = (
  'hpr_conv_relu_pool_forward',
  'hpr_conv_relu_pool_kernel_grad',
  'hpr_conv_relu_pool_backward',
  'hpr_conv_lstm_forward',
  'hpr_conv_lstm_backward',
)
BATCH, FRAMES, SIZE, CLASSES = 8, 20, 64, 4


def seed_config(name, impl='auto'):
  """The default config's model (ConvLSTM: the notebook's) at the seed
  shapes."""
  config = config_lib.default_config()
  config.model.name = name
  config.model.impl = impl
  config.input.num_frames = FRAMES
  config.input.image_size = SIZE
  config.training.batch_size = BATCH
  return config


def steps(config):
  """(train step, eval step, their abstract arguments) on the 8 devices."""
  mesh = parallel.make_mesh()
  ts = train_state.create_train_state(config, CLASSES, mesh, 100)
  train = train_state.jit_train_step(ts, mesh, seed=0, label_smoothing=0.0)
  evaluate = train_state.jit_eval_step(ts, mesh)
  state = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
    ts.state,
  )
  batch_sharding = parallel.batch_sharding(mesh)
  batch = {
    'video': jax.ShapeDtypeStruct(
      (BATCH, FRAMES, SIZE, SIZE, 3), jnp.float32, sharding=batch_sharding
    ),
    'label': jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=batch_sharding),
  }
  step_number = jax.ShapeDtypeStruct((), jnp.int32)
  return (train, (state, batch, step_number)), (evaluate, (state, batch))


def export(fn, args, platforms):
  """jax.export of fn over its arguments' leaves (nnx's state types have
  no registered serialization), so the result serializes too."""
  leaves, treedef = jax.tree.flatten(args)

  def flat(*leaves):
    return jax.tree.leaves(fn(*jax.tree.unflatten(treedef, leaves)))

  return jax.export.export(jax.jit(flat), platforms=platforms)(*leaves)


def cpu_calls(module_text: str) -> list[str]:
  return [
    t for t in CPU_TARGETS + ('CustomSPMDPartitioning',) if t in module_text
  ]


@pytest.mark.parametrize('name', ['lrcn', 'convlstm', 'single_frame'])
def test_steps_export_for_accelerators_without_cpu_kernels(name):
  config = seed_config(name)
  for fn, args in steps(config):
    # On this CPU host the same step holds the CPU kernels ...
    assert cpu_calls(fn.trace(*args).lower().as_text())
    # ... and lowered for the accelerators, none of them.
    exported = export(fn, args, ('cuda', 'tpu'))
    assert exported.platforms == ('cuda', 'tpu')
    assert not cpu_calls(exported.mlir_module())
    for platform in ('cuda', 'tpu'):
      exported = export(fn, args, (platform,))
      assert not cpu_calls(exported.mlir_module())
      assert exported.nr_devices == 8


@pytest.mark.parametrize('name', ['lrcn', 'convlstm', 'single_frame'])
def test_reference_steps_export_for_the_cpu(name):
  for fn, args in steps(seed_config(name, impl='reference')):
    exported = export(fn, args, ('cpu',))
    assert not cpu_calls(exported.mlir_module())
    assert exported.serialize()


@pytest.mark.parametrize('name', ['lrcn', 'convlstm', 'single_frame'])
def test_bfloat16_steps_export_for_accelerators(name):
  config = seed_config(name)
  config.model.dtype = 'bfloat16'
  for fn, args in steps(config):
    exported = export(fn, args, ('cuda', 'tpu'))
    module = exported.mlir_module()
    assert not cpu_calls(module)
    assert 'bf16' in module
    # The parameters and the returned values (logits, loss) stay float32.
    assert {str(a.dtype) for a in exported.out_avals} <= {
      'float32',
      'int32',
      'uint32',
      'key<fry>',
    }
