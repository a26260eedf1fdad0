"""hpr.kernels' primitives with impl='auto' on a batch sharded over 8
devices: the same numbers as the reference on one device, forward and
backward, each device running its own part of the batch (no all-gather of
it, the compiled kernels in the program), and programs that the persistent
compilation cache finds again in a second process."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from test_kernels import NATIVE, block_inputs, layer_inputs

from hpr import kernels, parallel


def assert_sharded_auto_matches_reference(fn, args, spec, argnums, target):
  """jit(grad(fn, impl='auto')) on args[0] sharded by `spec` against the
  reference on one device."""
  cotangent = jax.random.normal(jax.random.key(1), fn(*args, 'reference').shape)

  def value_and_grad(impl):
    def loss(*a):
      return jnp.sum(jnp.tanh(fn(*a, impl)) * cotangent)

    return jax.value_and_grad(loss, argnums)

  mesh = parallel.make_mesh()
  sharded = jax.device_put(args[0], NamedSharding(mesh, spec))
  step = jax.jit(value_and_grad('auto'))
  hlo = step.lower(sharded, *args[1:]).compile().as_text()
  assert 'all-gather' not in hlo
  if NATIVE and target:
    assert target in hlo
  loss8, grads8 = step(sharded, *args[1:])
  loss1, grads1 = value_and_grad('reference')(*args)
  if 0 in argnums:
    # The input's gradient stays sharded like the input.
    assert grads8[0].sharding.is_equivalent_to(sharded.sharding, args[0].ndim)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  # The weights' gradients are summed in another order (per device, then
  # over the devices).
  for g8, g1 in zip(grads8, grads1, strict=True):
    scale = float(jnp.abs(g1).max())
    assert scale > 0
    np.testing.assert_allclose(g8, g1, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.slow
@pytest.mark.parametrize(
  'shape, features, pool, argnums, target',
  [
    # RGB frames: the forward kernel and the kernel-gradient one.
    ((8, 16, 16, 3), 16, 4, (1, 2), 'hpr_conv_relu_pool_forward'),
    # 16 channels: the native backward pass, the input's gradient included.
    ((16, 8, 8, 16), 32, 2, (0, 1, 2), 'hpr_conv_relu_pool_backward'),
  ],
)
def test_conv_relu_pool_on_eight_devices(
  shape, features, pool, argnums, target
):
  args = block_inputs(shape, features, True)
  assert_sharded_auto_matches_reference(
    lambda x, k, b, impl: kernels.conv_relu_pool(x, k, b, pool, impl=impl),
    args,
    PartitionSpec('data'),
    argnums,
    target,
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  'features, argnums', [(4, (1, 2, 3)), (4, (0, 1, 2, 3)), (14, (1, 2, 3))]
)
def test_convlstm_layer_on_eight_devices(features, argnums):
  # 4 features: the compiled layer (with and without the input's
  # gradient); 14: the time-major loop.
  x, kernel, recurrent_kernel, bias, _ = layer_inputs(3, features, 8, False)
  x = jnp.concatenate([x, x[:, ::-1]] * 4, axis=1)  # 24 clips.
  mask = jax.random.bernoulli(jax.random.key(3), 0.7, (24, 6, 6, features))
  mask = mask / 0.7

  def layer(x, kernel, recurrent_kernel, bias, impl):
    return kernels.convlstm_layer(
      x, kernel, recurrent_kernel, bias, mask, impl=impl
    )

  assert_sharded_auto_matches_reference(
    layer,
    (x, kernel, recurrent_kernel, bias),
    PartitionSpec(None, 'data'),
    argnums,
    'hpr_conv_lstm_backward' if features == 4 else None,
  )


@pytest.mark.slow
def test_a_second_process_hits_the_persistent_cache(tmp_path):
  # On a sharded batch, where the compiled kernels are partitioned (on one
  # device the cache hits without cli's setting too).
  script = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    from hpr import cli, kernels, parallel
    cli.enable_compilation_cache(sys.argv[1])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    mesh = parallel.make_mesh()
    x = jax.device_put(jnp.ones((8, 16, 16, 3)), parallel.batch_sharding(mesh))
    f = jax.jit(jax.grad(lambda k, x: kernels.conv_relu_pool(
        x, k, jnp.zeros(16), 4).sum()))
    f(jnp.ones((3, 3, 3, 16)), x).block_until_ready()
    """
  )
  cache = tmp_path / 'cache'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  entries = []
  for _ in range(2):
    subprocess.run(
      [sys.executable, '-c', script, str(cache)], check=True, env=env
    )
    entries.append(sorted(e for e in os.listdir(cache) if 'lambda' in e))
  assert len(entries[0]) == 1  # The first run wrote the program ...
  assert entries[1] == entries[0]  # ... which the second one found.
