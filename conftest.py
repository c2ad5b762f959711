"""Test set-up: 8 fake CPU devices for the sharding tests, before jax loads."""

import os

_DEVICES = '--xla_force_host_platform_device_count=8'
if _DEVICES not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             _DEVICES).strip()
