"""Hypothesis profiles: ``ci`` (default) and ``long``.

``ci`` is small and derandomized, so CI runs the same examples every time;
select ``long`` with ``pytest --hypothesis-profile=long`` (or the
``HYPOTHESIS_PROFILE`` environment variable) for a deeper random search.
"""

import os

import pytest
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


# Parametrized cases marked `slow` here rather than in their parametrize
# lists (others are rewriting those files): the rest of each test stays in
# the fast set, which keeps every form and assignment. A renamed case just
# runs in the fast set.
_SLOW_CASES = {
    # Each form and each assignment once in the fast set.
    'tests/test_compile.py::'
    'test_more_layers_of_the_same_shapes_compile_no_new_kernel': (
        '[with_sgg-dynamic]', '[chain link-frozen]'),
    # The layer axis sharded alone in the fast set (every form, K and
    # assignment); also on 'model': slow.
    'tests/test_sharding.py::test_stacked_layers_sharded_on_the_layer_axis': (
        "-P('data', 'model', None)]",),
    # The collectives: each form and each mode (explicit, auto axes) once in
    # the fast set.
    'tests/test_sharding.py::'
    'test_steps_without_refresh_communicate_as_the_base_optimizer': (
        '[momentum form-explicit]', '[chain link-auto]'),
    'tests/test_sharding.py::'
    'test_loop_decided_steps_communicate_as_adam_or_move_the_sample': (
        '[momentum form-explicit]', '[chain link-auto]'),
    'tests/test_sharding.py::'
    'test_stacked_layer_axis_sharded_plain_steps_communicate_as_adam': (
        '[momentum-explicit]', '[chain-auto]'),
    # Jit against eager: the SGG forms (chain link, momentum form and its
    # alias adamw_sgg) in the fast set; the lamb and adafactor aliases (whose
    # SGG is adamw_sgg's) slow.
    'tests/test_properties.py::test_jit_matches_eager': (
        '[lamb_sgg]', '[adafactor_sgg]'),
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    name, _, params = item.nodeid.partition('[')
    if any(case in '[' + params for case in _SLOW_CASES.get(name, ())):
      item.add_marker(pytest.mark.slow)
