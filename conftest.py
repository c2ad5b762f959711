"""Test set-up, before jax starts its backend.

* 8 fake CPU devices for the sharding tests.
* The fast set (``-m "not slow"``, the README's test command) compiles with
  XLA's CPU backend at ``-O0``: the same HLO programs (fusion, memory,
  collectives), LLVM's code generation left unoptimised, which cuts the
  compile time that dominates these tests by about a fifth. The slow set
  (and any other selection) compiles at the default level, as users do.
"""

import os

_DEVICES = '--xla_force_host_platform_device_count=8'
_FAST_SET_ONLY = '--xla_backend_optimization_level=0'


def _add_xla_flag(flag):
  if flag.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                               flag).strip()


_add_xla_flag(_DEVICES)


def pytest_configure(config):
  if config.getoption('markexpr', '') == 'not slow':
    _add_xla_flag(_FAST_SET_ONLY)
