"""native_block.conv_relu_pool, the compiled CPU kernels of the LRCN's conv
blocks: built here, the numbers of conv2d -> ReLU -> max_pool under autodiff
(with the native input gradient for a multiple of 16 input channels), the
same on 8 devices as on one, taken by FrameCNN, and cached by the persistent
compilation cache."""

import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from test_conv_block import assert_matches_plain, inputs
from test_cpu_layouts import (
  assert_close_tree,
  assert_same_rng_counts,
  build_lrcn,
  clip,
  loss_and_grads,
  plain_frame_cnn,
)

from hpr import parallel
from hpr.models import native_block


def test_the_library_is_built_and_loads():
  if platform.system() != 'Linux' or platform.machine() != 'x86_64':
    pytest.skip('CI builds it on x86-64 Linux')
  assert native_block.available()
  assert native_block.supports((2, 16, 16, 3), (3, 3, 3, 16), 4, jnp.float32)


@pytest.mark.parametrize(
  'shape, kernel_size, features, pool, ties',
  [
    ((3, 16, 16, 3), 3, 16, 4, False),
    ((3, 16, 16, 3), 3, 16, 4, True),
    ((2, 13, 10, 3), 3, 16, 3, True),  # Remainders on both axes.
    ((2, 12, 12, 2), 3, 32, 2, False),  # Two groups of 16 channels.
    ((2, 10, 12, 1), 3, 16, 5, True),  # 25 window pixels: 25 mask bits.
    ((2, 12, 12, 3), 5, 16, 2, False),
    ((2, 12, 12, 3), 2, 16, 2, False),  # Even kernel: padding after only.
    # A multiple of 16 input channels: the native backward pass, input
    # gradient included.
    ((3, 16, 16, 16), 3, 32, 4, False),
    ((3, 16, 16, 16), 3, 32, 4, True),
    ((2, 13, 10, 32), 3, 16, 3, True),
    ((3, 4, 4, 32), 3, 64, 2, False),
    ((3, 2, 2, 64), 3, 64, 2, False),  # One window: the LRCN's last block.
    ((2, 10, 12, 16), 3, 16, 5, True),
    ((2, 12, 12, 16), 5, 16, 2, False),
    ((2, 12, 12, 16), 2, 16, 2, True),
  ],
)
def test_matches_the_plain_formulation(
  shape, kernel_size, features, pool, ties
):
  x, kernel, bias = inputs(shape, features, ties)
  kernel = jax.random.normal(
    jax.random.key(2), (kernel_size, kernel_size, shape[-1], features)
  ) / np.sqrt(kernel_size * kernel_size * shape[-1] / 3)
  assert_matches_plain(
    lambda x, k, b: native_block.conv_relu_pool(x, k, b, pool),
    (x, kernel, bias),
    pool,
  )


@pytest.mark.parametrize(
  'shape, features, pool, argnums, target',
  [
    # RGB frames: the forward kernel and the kernel-gradient one.
    ((8, 16, 16, 3), 16, 4, (1, 2), 'hpr_conv_relu_pool_forward'),
    # 16 channels: the native backward pass, the input's gradient included.
    ((16, 8, 8, 16), 32, 2, (0, 1, 2), 'hpr_conv_relu_pool_backward'),
  ],
)
def test_eight_devices_equal_one_and_the_batch_is_not_gathered(
  shape, features, pool, argnums, target
):
  x, kernel, bias = inputs(shape, features, True)
  out = (shape[0], shape[1] // pool, shape[2] // pool, features)
  cotangent = jax.random.normal(jax.random.key(1), out)

  def f(x, kernel, bias):
    def loss(x, k, b):
      return jnp.sum(native_block.conv_relu_pool(x, k, b, pool) * cotangent)

    return jax.value_and_grad(loss, argnums)(x, kernel, bias)

  mesh = parallel.make_mesh()
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec('data')))
  step = jax.jit(f)
  hlo = step.lower(sharded, kernel, bias).compile().as_text()
  assert 'all-gather' not in hlo
  assert target in hlo
  (loss8, grads8), (loss1, grads1) = (
    step(sharded, kernel, bias),
    f(x, kernel, bias),
  )
  if 0 in argnums:
    # The input's gradient stays sharded like the input.
    assert grads8[0].sharding.is_equivalent_to(sharded.sharding, 4)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
  # The kernel's gradient is summed in another order (per device, then
  # over the devices).
  for g8, g1 in zip(grads8, grads1, strict=True):
    scale = float(jnp.abs(g1).max())
    assert scale > 0
    np.testing.assert_allclose(g8, g1, rtol=1e-5, atol=1e-6 * scale)


def test_unsupported_shapes_are_refused_with_the_reason():
  x, kernel, bias = inputs((2, 8, 8, 3), 8, False)
  with pytest.raises(ValueError, match=r'kernel \(3, 3, 3, 8\)'):
    native_block.conv_relu_pool(x, kernel, bias, 2)
  assert not native_block.supports(x.shape, (3, 3, 3, 16), 6, jnp.float32)
  assert not native_block.supports(x.shape, (3, 3, 3, 16), 2, jnp.bfloat16)


@pytest.mark.parametrize(
  'conv_features, chunk_frames, native_inputs',
  [
    # A second block of 8 channels runs in the chunk loop.
    ((16, 8), 0, [(12, 16, 16, 3)]),
    ((16, 8), 4, [(12, 16, 16, 3)]),
    # 16 channels in, 32 out: both blocks native, no loop.
    ((16, 32), 4, [(12, 16, 16, 3), (12, 4, 4, 16)]),
  ],
)
def test_frame_cnn_takes_it_and_matches_the_plain_formulation(
  monkeypatch, conv_features, chunk_frames, native_inputs
):
  calls = []
  native = native_block.conv_relu_pool

  def counted(x, *args):
    calls.append(x.shape)
    return native(x, *args)

  monkeypatch.setattr(native_block, 'conv_relu_pool', counted)

  def build():
    return build_lrcn(conv_features, (4, 2), chunk_frames)

  x = clip()
  ours, plain_model = build(), build()
  loss, grads = loss_and_grads(ours, lambda m, x: m.encoder(x), x)
  # The whole batch of frames at once, before the chunk loop.
  assert calls == native_inputs
  ref_loss, ref_grads = loss_and_grads(
    plain_model, lambda m, x: plain_frame_cnn(m.encoder, x), x
  )
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert_close_tree(grads, ref_grads)
  assert_same_rng_counts(ours, plain_model)


def test_a_second_process_hits_the_persistent_cache(tmp_path):
  # On a sharded batch, where the op is partitioned (on one device the
  # cache hits without cli's setting too).
  script = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    from hpr import cli, parallel
    from hpr.models import native_block
    cli.enable_compilation_cache(sys.argv[1])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    mesh = parallel.make_mesh()
    x = jax.device_put(jnp.ones((8, 16, 16, 3)), parallel.batch_sharding(mesh))
    f = jax.jit(jax.grad(lambda k, x: native_block.conv_relu_pool(
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
