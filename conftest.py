"""Test set-up, before jax loads: 8 fake CPU devices for the sharding
tests, and for the fast set XLA's LLVM backend at -O0.

The fast set (the README's test command, pyproject's ``-m "not slow"``)
spends nearly all of its time compiling small XLA programs. At
``--xla_backend_optimization_level=0`` XLA runs the same HLO passes (the
same fusions, memory and collectives, which the tests read) and only LLVM
optimizes less: about a quarter less compile time. Results agree with the
default level to float rounding (the tests compare with tolerances, or
bitwise only between programs compiled alike). Users compile at the default
level, so CI runs the fast set there too (``SGG_TESTS_DEFAULT_XLA=1``,
``.ci/run optimized``), and the slow set (``-m slow``: end-to-end runs,
bitwise re-runs of committed results) always runs there.
"""

import os

_DEVICES = '--xla_force_host_platform_device_count=8'
_FAST_COMPILE = '--xla_backend_optimization_level=0'


def _add_xla_flag(flag: str) -> None:
  flags = os.environ.get('XLA_FLAGS', '')
  if flag.split('=')[0] not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {flag}'.strip()


_add_xla_flag(_DEVICES)


def pytest_configure(config):
  """-O0 for the fast set unless SGG_TESTS_DEFAULT_XLA is set; jax has not
  initialized its backend yet (it reads XLA_FLAGS then), and the xdist
  workers and the tests' subprocesses inherit the flag."""
  if (config.getoption('markexpr', '') == 'not slow'
      and not os.environ.get('SGG_TESTS_DEFAULT_XLA')):
    _add_xla_flag(_FAST_COMPILE)
