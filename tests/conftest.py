"""Hypothesis profiles: ``ci`` (default) and ``long``.

``ci`` is small and derandomized, so CI runs the same examples every time;
select ``long`` with ``pytest --hypothesis-profile=long`` (or the
``HYPOTHESIS_PROFILE`` environment variable) for a deeper random search.
"""

import os
import shutil
import sys
import tempfile

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


# One persistent XLA compilation cache per test session, in a temporary
# folder: the xdist workers and the scripts the tests start (how-to snippets,
# the experiments' commands) compile many of the same programs, and each is
# then compiled once. Set before the workers and subprocesses start, which
# inherit it; a cache the caller set is left alone.
_CACHE_ENV = {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
              'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def pytest_configure(config):
  # When this file is imported after the Hypothesis plugin has applied
  # ``--hypothesis-profile``, apply it again over the default above.
  profile = config.getoption('--hypothesis-profile', None)
  if profile:
    settings.load_profile(profile)
  if (hasattr(config, 'workerinput')
      or 'JAX_COMPILATION_CACHE_DIR' in os.environ):
    return
  config.sgg_xla_cache = tempfile.mkdtemp(prefix='sgg-tests-xla-cache-')
  os.environ.update(JAX_COMPILATION_CACHE_DIR=config.sgg_xla_cache,
                    **_CACHE_ENV)
  if 'jax' in sys.modules:  # read from the environment at import
    import jax  # noqa: PLC0415
    jax.config.update('jax_compilation_cache_dir', config.sgg_xla_cache)
    for name, value in _CACHE_ENV.items():
      jax.config.update(name.lower(), int(value))


def pytest_unconfigure(config):
  cache = getattr(config, 'sgg_xla_cache', None)
  if cache:
    shutil.rmtree(cache, ignore_errors=True)


# Parametrized cases marked `slow` here rather than in their parametrize
# lists (others are rewriting those files): the rest of each test stays in
# the fast set, which keeps every form and assignment. A renamed case just
# runs in the fast set.
_SLOW_CASES = {
    # One case in the fast set: the kernel count is the same code path for
    # every form and assignment.
    'tests/test_compile.py::'
    'test_more_layers_of_the_same_shapes_compile_no_new_kernel': (
        '[with_sgg-dynamic]', '[chain link-frozen]', '[chain link-dynamic]'),
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
    # The trajectory properties of the aliases whose SGG is adamw_sgg's:
    # their base updates before the first refresh stay in the fast set
    # (test_aliases_diagnostics.py), their trajectories run here.
    'tests/test_properties.py::test_trajectory_properties': (
        '[lamb_sgg]', '[adafactor_sgg]'),
    # Half-precision and float64 states: bfloat16 and float32 in the fast set.
    'tests/test_optax_compat.py::test_state_types_stable_and_update_dtype_kept':
        ('[float16]', '[float64]'),
    # Injected float32 hyperparameters beside a bfloat16 model: the fast set
    # keeps bfloat16 with its own hyperparameter dtype, and float64.
    'tests/test_defects.py::test_injected_hyperparameters_keep_state_float32':
        ('[bfloat16-float32]',),
}

# Tests whose parametrized cases form a grid: only these cases run in the
# fast set, the rest in the `slow` one. The fast cases cover every pair of
# the grid's values (a pairwise cover), so each value meets each other once.
_FAST_CASES = {
    'tests/test_sharding.py::test_stacked_layers_sharded_on_the_layer_axis': (
        "[chain-select_chain-frozen-P('data', None, None)]",
        "[chain-gather-dynamic-P('data', None, None)]",
        "[momentum-select_chain-dynamic-P('data', None, None)]",
        "[momentum-gather-frozen-P('data', None, None)]"),
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    name, _, params = item.nodeid.partition('[')
    params = '[' + params
    if (any(case in params for case in _SLOW_CASES.get(name, ()))
        or (name in _FAST_CASES and params not in _FAST_CASES[name])):
      item.add_marker(pytest.mark.slow)
