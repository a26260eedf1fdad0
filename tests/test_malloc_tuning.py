"""hpr.malloc_tuning: the glibc tunables, the restart that applies them, and
what they change (freed memory is reused instead of faulted in again)."""

import os
import subprocess
import sys
import textwrap

import pytest

from hpr import malloc_tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc_only = pytest.mark.skipif(
  not malloc_tuning.enabled({}), reason='glibc on Linux only'
)


@glibc_only
def test_environ_adds_the_tunables_once_after_the_users():
  env = malloc_tuning.environ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert env['GLIBC_TUNABLES'] == (
    f'glibc.malloc.arena_max=2:{malloc_tuning.TUNABLES}'
  )
  assert malloc_tuning.environ(env) == env
  assert malloc_tuning.environ({})['GLIBC_TUNABLES'] == malloc_tuning.TUNABLES


@pytest.mark.parametrize('value', ['0', 'false', ' False '])
def test_turned_off_leaves_the_environment_alone(value):
  base = {malloc_tuning.DISABLE_VARIABLE: value}
  assert not malloc_tuning.enabled(base)
  assert malloc_tuning.environ(base) == base
  # Inherited from a tuned parent: taken out again, the user's kept.
  inherited = malloc_tuning.environ(
    {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}
  )
  inherited[malloc_tuning.DISABLE_VARIABLE] = value
  assert malloc_tuning.environ(inherited) == {
    **base,
    'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2',
  }
  alone = {**base, 'GLIBC_TUNABLES': malloc_tuning.TUNABLES}
  assert malloc_tuning.environ(alone) == base


@glibc_only
def test_describe_says_whether_and_why():
  assert malloc_tuning.describe(malloc_tuning.environ({})) == 'on'
  assert malloc_tuning.describe({}) == 'off'
  off = {malloc_tuning.DISABLE_VARIABLE: '0'}
  assert malloc_tuning.describe(off) == 'off (HPR_MALLOC_TUNING=0)'


# Mallocs and frees 64 MiB (over glibc's largest dynamic mmap threshold)
# 8 times, touching every page, and prints the minor page faults that
# took, after restarting itself through reexec().
_SCRIPT = textwrap.dedent("""
  import ctypes, os, resource, sys
  sys.path.insert(0, sys.argv[1])
  from hpr import malloc_tuning
  malloc_tuning.reexec()
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  size = 64 << 20
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(8):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  print(faults, os.environ.get('GLIBC_TUNABLES', ''), sys.argv[2:])
""")


def _run(disable: str):
  env = dict(os.environ)
  env.pop('GLIBC_TUNABLES', None)
  env[malloc_tuning.DISABLE_VARIABLE] = disable
  out = subprocess.run(
    [sys.executable, '-c', _SCRIPT, ROOT, 'a', '--b=c'],
    capture_output=True,
    text=True,
    check=True,
    env=env,
  ).stdout.split(' ', 2)
  return int(out[0]), out[1], out[2].strip()


@glibc_only
def test_reexec_keeps_the_command_line_and_reuses_freed_memory():
  tuned_faults, tunables, argv = _run('1')
  default_faults, default_tunables, _ = _run('0')
  assert tunables == malloc_tuning.TUNABLES
  assert default_tunables == ''
  assert argv == "['a', '--b=c']"
  pages = 8 * (64 << 20) // os.sysconf('SC_PAGE_SIZE')
  # glibc's defaults map (and fault in) every 64 MiB afresh; tuned, the
  # freed block stays in the heap and is reused.
  assert default_faults > pages // 2
  assert tuned_faults < pages // 8
