"""Hypothesis profiles: ``ci`` (default) and ``long``.

``ci`` is small and derandomized, so CI runs the same examples every time;
select ``long`` with ``pytest --hypothesis-profile=long`` (or the
``HYPOTHESIS_PROFILE`` environment variable) for a deeper random search.
"""

import os

from hypothesis import HealthCheck, settings

# JAX compiles per tree, shape and dtype, so one example costs seconds: no
# deadline, and "too slow" generation is expected.
_SLOW_OK = dict(deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
settings.register_profile('ci', max_examples=3, derandomize=True,
                          print_blob=True, **_SLOW_OK)
settings.register_profile('long', max_examples=30, print_blob=True,
                          **_SLOW_OK)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


def pytest_configure(config):
  # When this file is imported after the Hypothesis plugin has applied
  # ``--hypothesis-profile``, apply it again over the default above.
  profile = config.getoption('--hypothesis-profile', None)
  if profile:
    settings.load_profile(profile)
