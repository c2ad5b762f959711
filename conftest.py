"""Test set-up: 8 fake CPU devices for the sharding tests, before jax loads."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
