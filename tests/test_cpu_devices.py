"""`parallel.configure_cpu_devices`: a CPU-only host split into XLA devices."""

import os
import subprocess
import sys

import jax
import pytest

CPU_DEVICES_SCRIPT = """
import sys
from hpr import parallel
count = parallel.configure_cpu_devices(int(sys.argv[1]), tuple(map(int, sys.argv[2:])))
import jax
print(count, jax.device_count())
"""


@pytest.mark.parametrize(
  'args, expected',
  [
    (['2', '32', '32'], '2 2'),
    (['4', '6', '12'], '3 3'),  # Lowered to divide both batch sizes.
    (['2', '5'], '1 1'),
  ],
)
def test_configure_cpu_devices(args, expected):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run(
    [sys.executable, '-c', CPU_DEVICES_SCRIPT, *args],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  assert out.stdout.split('\n')[-2] == expected


def test_configure_cpu_devices_leaves_fake_devices_and_a_started_jax():
  # This process has XLA_FLAGS' 8 fake devices (conftest) and JAX started.
  from hpr import parallel

  assert parallel.configure_cpu_devices(2, (8,)) == 0
  assert jax.device_count() == 8
